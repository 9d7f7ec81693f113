"""The Django, Flask and FastAPI examples in examples/, run against the simulator and a worker.

One simulator that signs webhooks (the session one has no webhook secret) and one real
worker on its own queue, which also loads the Django example's signal receivers, serve
all three examples. The Flask and FastAPI apps run in this process (test clients, plus a
real loopback HTTP server where the worker or the simulator must reach them); the Django
app runs as ``manage.py runserver``, as its README says, since Django's settings are
process-wide and other tests configure them their own way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from clipia_tasks.callbacks import sign
from clipia_tasks.redis_server import free_port
from tests.conftest import ROOT, WORKER_ENV, WebStack, wait_for, web_stack

pytestmark = pytest.mark.integration

QUEUE = "examples"
WH_SECRET = WORKER_ENV["CLIPIA_WEBHOOK_SECRET"]
CB_SECRET = WORKER_ENV["CLIPIA_CALLBACK_SECRET"]
#: Long enough that a poll or two sees the request queued and running.
SCRIPT = {"queue_s": 0.4, "run_s": 1.6, "progress": "linear"}


@pytest.fixture(scope="module")
def stack(celery_env: dict[str, str], worker_logs: Path) -> Iterator[WebStack]:
    with web_stack(celery_env, worker_logs, queue=QUEUE, name="examples",
                   includes=("examples.django_app.receivers",)) as ws:
        yield ws


def follow(get: Callable[[], tuple[int, Any]], timeout_s: float = 30.0
           ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Poll a progress endpoint like a front end until the outcome is there."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        code, body = get()
        assert code in (200, 404), (code, body)  # 404 until the first poll
        if code == 200:
            seen.append(body)
            if body["outcome"]:
                return body, seen
        time.sleep(0.05)
    raise AssertionError(f"no outcome in {timeout_s} s; last seen: {seen[-3:]}")


def assert_progress_was_visible(seen: list[dict[str, Any]]) -> None:
    statuses = [s["status"] for s in seen]
    assert {"IN_QUEUE", "IN_PROGRESS"} & set(statuses), statuses
    assert statuses[-1] == "COMPLETED"


# -- Django: transaction.on_commit, a Clipia webhook, a signal receiver in the worker --


def test_django_example_submits_on_commit_with_a_webhook_and_hears_the_signal(
    stack: WebStack, tmp_path: Path
) -> None:
    port = free_port()
    env = {**os.environ, **stack.env, "PYTHONUNBUFFERED": "1"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    log_path = tmp_path / "runserver.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "examples/django_app/manage.py", "runserver",
             f"127.0.0.1:{port}", "--noreload"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=10)

    def up() -> bool:
        try:
            return http.get("/generations/00000000-0000-4000-8000-000000000000").status_code == 404
        except httpx.TransportError:
            if proc.poll() is not None:
                raise AssertionError(f"runserver exited:\n{log_path.read_text()}") from None
            return False

    def get(rid: str) -> Callable[[], tuple[int, Any]]:
        def call() -> tuple[int, Any]:
            r = http.get(f"/generations/{rid}")
            return r.status_code, r.json()
        return call

    try:
        wait_for(up, timeout_s=30, interval_s=0.1)
        assert http.post("/generations", json={}).status_code == 400
        ok = http.post("/generations", json={"prompt": "a cat", "sim": SCRIPT})
        failed = http.post("/generations", json={
            "prompt": "a dog", "sim": {"run_s": 0.5, "final": "FAILED", "error_code": "nsfw"}})
        assert ok.status_code == failed.status_code == 202, ok.text + failed.text
        rid, bad_rid = ok.json()["request_id"], failed.json()["request_id"]
        assert ok.json()["task_id"]

        final, seen = follow(get(rid))
        assert final["outcome"] == "COMPLETED" and final["result"]["output"]
        assert final["status"] == "COMPLETED" and final["progress"] == 100
        # It ended by Clipia's signed webhook, delivered to this app's /hooks/clipia
        # (submitted with webhook_url), with no status call: polling was only the
        # safety net, and the request ended long before its fallback delay.
        (attempt,) = stack.sim.webhook_attempts(rid)
        assert attempt.url == f"http://127.0.0.1:{port}/hooks/clipia"
        assert attempt.status_code == 200
        assert stack.sim.calls(request_id=rid, endpoint="status") == []
        assert len(stack.sim.calls(request_id=rid, endpoint="result")) == 1
        # Until then the record said the request was submitted, not that it ended
        assert {s["status"] for s in seen[:-1]} <= {"SUBMITTED"}
        # The receiver ran in the worker (not here) and left the outcome for the web side
        notified = wait_for(lambda: get(rid)()[1]["notified"])
        assert notified["outcome"] == "COMPLETED" and notified["delivery_id"] == rid
        assert notified["output"] == final["result"]["output"]
        assert notified["worker_pid"] not in (os.getpid(), proc.pid)

        final, _ = follow(get(bad_rid))
        assert final["outcome"] == "FAILED"
        notified = wait_for(lambda: get(bad_rid)()[1]["notified"])
        assert notified["outcome"] == "FAILED"
        assert notified["error"]["type"] == "RequestFailedError"
    finally:
        http.close()
        proc.terminate()
        proc.wait(timeout=10)


# -- Flask: a signed HTTP callback, stored once per delivery --------------------------


@pytest.fixture
def flask_example(stack: WebStack, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from werkzeug.serving import make_server

    from examples.flask_app import app as example

    # The worker POSTs the callback over HTTP: serve the app for real on loopback.
    server = make_server("127.0.0.1", 0, example.app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("PUBLIC_URL", f"http://127.0.0.1:{server.server_port}")
    yield example
    server.shutdown()


def test_flask_example_receives_one_signed_callback_per_request(flask_example: Any) -> None:
    client = flask_example.app.test_client()

    def get(rid: str) -> Callable[[], tuple[int, Any]]:
        def call() -> tuple[int, Any]:
            r = client.get(f"/generations/{rid}")
            return r.status_code, r.get_json()
        return call

    assert client.post("/generations", json={"prompt": ""}).status_code == 400
    ok = client.post("/generations", json={"prompt": "a cat", "sim": SCRIPT})
    failed = client.post("/generations", json={
        "prompt": "a dog", "sim": {"run_s": 0.5, "final": "FAILED", "error_code": "nsfw"}})
    assert ok.status_code == failed.status_code == 202
    rid, bad_rid = ok.get_json()["request_id"], failed.get_json()["request_id"]

    final, seen = follow(get(rid))
    assert_progress_was_visible(seen)
    callback = wait_for(lambda: get(rid)()[1]["callback"], timeout_s=20)
    assert callback["status"] == "OK" and callback["task_id"] == ok.get_json()["task_id"]
    assert callback["payload"]["output"] == final["result"]["output"]
    error = wait_for(lambda: get(bad_rid)()[1]["callback"], timeout_s=20)
    assert error["status"] == "ERROR" and error["error"]["code"] == "nsfw"

    def deliveries(request_id: str) -> list[str]:
        return [d for d, body in flask_example.DELIVERIES.items()
                if body["request_id"] == request_id]

    assert len(deliveries(rid)) == 1
    # The same delivery again (a retry) is answered 200 and stored no second time
    [delivery_id] = deliveries(rid)
    raw = json.dumps(callback).encode()
    t = int(time.time())
    headers = {"X-Clipia-Webhook-Id": delivery_id, "X-Clipia-Timestamp": str(t),
               "X-Clipia-Signature": sign(CB_SECRET, raw, t)}
    again = client.post("/callbacks/clipia", data=raw, headers=headers,
                        content_type="application/json")
    assert again.status_code == 200 and again.get_json()["duplicate"] is True
    assert len(deliveries(rid)) == 1
    # A forged one is refused
    headers["X-Clipia-Signature"] = sign("not-the-secret", raw, t)
    assert client.post("/callbacks/clipia", data=raw, headers=headers).status_code == 401


# -- FastAPI: Clipia's webhook through the bridge --------------------------------------


class AsgiLoopback:
    """Real HTTP on 127.0.0.1 in front of an ASGI app, for the simulator's webhooks.

    (uvicorn is not a dependency; this hands each POST to Starlette's TestClient.)
    """

    def __init__(self, asgi_app: Any) -> None:
        from starlette.testclient import TestClient

        client = TestClient(asgi_app)
        self.answers: list[tuple[str, int, Any]] = []
        answers = self.answers

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items()
                           if k.lower().startswith("x-clipia-") or k.lower() == "content-type"}
                resp = client.post(self.path, content=raw, headers=headers)
                answers.append((self.path, resp.status_code, resp.json()))
                self.send_response(resp.status_code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(resp.content)))
                self.end_headers()
                self.wfile.write(resp.content)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_fastapi_example_completes_through_the_webhook_bridge(
    stack: WebStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    from starlette.testclient import TestClient

    from examples.fastapi_app.app import app

    loopback = AsgiLoopback(app)
    monkeypatch.setenv("PUBLIC_URL", loopback.url)
    client = TestClient(app)

    def get(rid: str) -> Callable[[], tuple[int, Any]]:
        def call() -> tuple[int, Any]:
            r = client.get(f"/generations/{rid}")
            return r.status_code, r.json()
        return call

    try:
        assert client.post("/generations", json={"prompt": ""}).status_code == 422
        # /status breaks after two answers: only the webhook can tell the request ended
        script = {"queue_s": 0.2, "run_s": 2.0, "progress": "linear", "faults": [
            {"endpoint": "status", "http": 503, "after_calls": 2, "count": 1000}]}
        r = client.post("/generations", json={"prompt": "a cat", "sim": script})
        assert r.status_code == 202, r.text
        rid = r.json()["request_id"]

        final, seen = follow(get(rid))
        # Submitted with a webhook_url: no status call is made (the webhook ends it well
        # before CLIPIA_WEBHOOK_FALLBACK_AFTER), so the page shows SUBMITTED, then the end
        assert {s["status"] for s in seen} <= {"SUBMITTED", "COMPLETED"}
        assert stack.sim.calls(request_id=rid, endpoint="status") == []
        assert final["outcome"] == "COMPLETED" and final["result"]["output"]
        # Clipia (the simulator) delivered one signed webhook; the bridge verified it
        # and recorded the terminal status first, then a worker fetched the result once
        [attempt] = stack.sim.webhook_attempts(rid)
        assert attempt.ok and attempt.status_code == 200
        assert attempt.url == f"{loopback.url}/hooks/clipia"
        [(path, code, answer)] = [a for a in loopback.answers if a[2].get("request_id") == rid]
        assert (path, code) == ("/hooks/clipia", 200)
        assert answer == {"ok": True, "request_id": rid, "recorded": "new"}
        assert len(stack.sim.calls(request_id=rid, endpoint="result")) == 1
        # A delivery that is not signed with CLIPIA_WEBHOOK_SECRET changes nothing
        raw = json.dumps({"request_id": rid, "status": "ERROR"}).encode()
        t = int(time.time())
        forged = client.post("/hooks/clipia", content=raw, headers={
            "X-Clipia-Webhook-Id": "forged", "X-Clipia-Timestamp": str(t),
            "X-Clipia-Signature": sign("not-the-secret", raw, t)})
        assert forged.status_code == 401
        assert get(rid)()[1]["outcome"] == "COMPLETED"
    finally:
        loopback.server.shutdown()
