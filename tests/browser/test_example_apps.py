"""The live view of each example app in Chromium: a real worker, the simulator, the real routes.

One simulator that signs webhooks and one worker on its own queue serve the Django,
Flask and FastAPI examples, each started once for this module as its README says:
Django as ``manage.py runserver``, FastAPI under uvicorn (both subprocesses), Flask on
werkzeug in this process. A test submits with ``"live_progress": true``, opens
``/generations/<id>/view`` and reads what ``clipia-progress.js`` showed over time.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from clipia_tasks.redis_server import free_port
from tests.browser.conftest import NO_EVENT_SOURCE_JS, Browser
from tests.conftest import ROOT, WebStack, wait_for, web_stack

pytestmark = [pytest.mark.browser, pytest.mark.integration]

QUEUE = "browser-examples"
#: Long enough for the worker's polls (every 0.2 s at first) to see the bar move.
RUNNING = {"queue_s": 0.5, "run_s": 3, "progress": "linear"}
FAILURE_MESSAGE = "The prompt was flagged by the safety filter."
FAILING = {"run_s": 1, "final": "FAILED", "error_code": "nsfw",
           "error_message": FAILURE_MESSAGE}


@dataclass
class ExampleApp:
    name: str
    #: Where it answers, e.g. http://127.0.0.1:PORT
    url: str

    def submit(self, sim: dict[str, Any]) -> str:
        """POST /generations with live progress, as the app's form does; the request id."""
        answer = httpx.post(f"{self.url}/generations", trust_env=False, timeout=10, json={
            "prompt": "a lighthouse at dusk", "live_progress": True, "sim": sim})
        assert answer.status_code == 202, answer.text
        return str(answer.json()["request_id"])

    def view(self, request_id: str) -> str:
        return f"{self.url}/generations/{request_id}/view"


@pytest.fixture(scope="module")
def stack(celery_env: dict[str, str], worker_logs: Path) -> Iterator[WebStack]:
    with web_stack(celery_env, worker_logs, queue=QUEUE, name="browser",
                   includes=("examples.django_app.receivers",)) as ws:
        yield ws


@contextmanager
def serve_flask(stack: WebStack, log_dir: Path) -> Iterator[str]:
    from werkzeug.serving import make_server

    from examples.flask_app import app as example

    # Threaded: each open event stream holds a thread.
    server = make_server("127.0.0.1", 0, example.app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    patch = pytest.MonkeyPatch()
    patch.setenv("PUBLIC_URL", url)  # where the worker POSTs the callback
    try:
        yield url
    finally:
        patch.undo()
        server.shutdown()


@contextmanager
def serve_process(name: str, args: Callable[[int], list[str]], stack: WebStack, log_dir: Path
                  ) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, **stack.env, "PYTHONUNBUFFERED": "1"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, *args(port)], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            httpx.get(f"{url}/generations/00000000-0000-4000-8000-000000000000",
                      trust_env=False, timeout=2)
            return True
        except httpx.TransportError:
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited:\n{log_path.read_text()}") from None
            return False

    try:
        wait_for(answers, timeout_s=30, interval_s=0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def serve_django(stack: WebStack, log_dir: Path) -> Any:
    return serve_process("django", lambda port: [
        "examples/django_app/manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
        stack, log_dir)


def serve_fastapi(stack: WebStack, log_dir: Path) -> Any:
    return serve_process("fastapi", lambda port: [
        "-m", "uvicorn", "examples.fastapi_app.app:app", "--host", "127.0.0.1",
        "--port", str(port), "--log-level", "warning"], stack, log_dir)


SERVE = {"django": serve_django, "flask": serve_flask, "fastapi": serve_fastapi}


@pytest.fixture(scope="module", params=sorted(SERVE))
def example_app(request: pytest.FixtureRequest, stack: WebStack,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExampleApp]:
    """One example app, served for real on loopback (once per module and app)."""
    log_dir = tmp_path_factory.mktemp(f"browser-{request.param}")
    with SERVE[request.param](stack, log_dir) as url:
        yield ExampleApp(request.param, url)


def image_urls(stack: WebStack, request_id: str) -> list[tuple[str, str]]:
    """The simulator's output images of a request, as the page should show them."""
    output = stack.sim.result_of(request_id)["output"]
    return [("img", image["url"]) for image in output["images"]]


def assert_rose_then_filled(progress: list[int | None]) -> None:
    values = [v for v in progress if v is not None]
    below = [v for v in values if v < 100]
    assert values and values[-1] == 100, progress
    assert len(set(below)) >= 2 and below == sorted(below), progress


def test_the_view_shows_progress_rising_then_the_generated_image(
    example_app: ExampleApp, stack: WebStack, browser: Browser
) -> None:
    # Given a generation submitted with live progress
    request_id = example_app.submit(RUNNING)
    # When its page is open until the end
    browser.open(example_app.view(request_id))
    seen = browser.wait_for_state("done", "error", timeout_s=30)
    browser.screenshot(f"{example_app.name}-completed")
    # Then the bar rose in steps, streamed, then filled
    assert_rose_then_filled(seen["progress"])
    assert seen["state"] == ["streaming", "done"]
    assert any(s.startswith("Generating — ") for s in seen["status"]), seen["status"]
    assert browser.text("[data-clipia-status]") == "Completed"
    # and the generated image is shown: the simulator's URL, and the image loads
    assert browser.output_media() == image_urls(stack, request_id)
    assert browser.image_loaded() == 256


def test_a_failed_generation_shows_its_error_message(
    example_app: ExampleApp, stack: WebStack, browser: Browser
) -> None:
    # Given a generation that the model fails
    request_id = example_app.submit(FAILING)
    # When its page is open until the end
    browser.open(example_app.view(request_id))
    browser.wait_for_state("done", "error", timeout_s=30)
    browser.screenshot(f"{example_app.name}-failed")
    # Then the page says why, and shows no output
    assert stack.sim.result_of(request_id)["error"]["message"] == FAILURE_MESSAGE
    assert browser.text("[data-clipia-status]") == f"Failed: {FAILURE_MESSAGE}"
    assert [tag for tag, _ in browser.output_media()] == ["p"]  # the error, no media
    assert browser.text("[data-clipia-output] .clipia-error") == FAILURE_MESSAGE


@pytest.mark.parametrize("example_app", ["flask"], indirect=True)
def test_the_form_submits_and_lands_on_a_view_that_completes(
    example_app: ExampleApp, stack: WebStack, browser: Browser
) -> None:
    # Given the form, with a prompt
    browser.open(f"{example_app.url}/")
    browser.js("document.querySelector('form [name=prompt]').value = arguments[0]",
               "a fox in the snow")
    # When it is submitted
    browser.js("document.querySelector('form').requestSubmit()")
    # Then the browser lands on the new generation's view, which completes
    landed = wait_for(lambda: re.search(r"/generations/([0-9a-f-]{36})/view$",
                                        browser.driver.current_url), timeout_s=10)
    request_id = landed.group(1)
    browser.wait_for_state("done", "error", timeout_s=30)
    assert browser.text("[data-clipia-status]") == "Completed"
    assert browser.output_media() == image_urls(stack, request_id)


@pytest.mark.parametrize("example_app", ["flask"], indirect=True)
def test_without_event_source_the_view_polls_to_the_output(
    example_app: ExampleApp, stack: WebStack, browser: Browser
) -> None:
    # Given a browser without EventSource, and a generation
    browser.before_page_scripts(NO_EVENT_SOURCE_JS)
    request_id = example_app.submit({"queue_s": 0.3, "run_s": 1.5, "progress": "linear"})
    # When its page is open until the end
    browser.open(example_app.view(request_id))
    seen = browser.wait_for_state("done", "error", timeout_s=30)
    # Then it polled the snapshot all along, and shows the image
    assert browser.js("return typeof window.EventSource") == "undefined"
    assert seen["state"] == ["polling", "done"]
    assert seen["progress"][-1] == 100
    assert browser.output_media() == image_urls(stack, request_id)
