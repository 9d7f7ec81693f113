"""Live progress in the browser: ``contrib.*.ProgressViews`` in the three example apps.

One simulator that signs webhooks and one real worker on its own queue serve four web
servers: Flask (werkzeug, threaded, in this process), FastAPI (uvicorn, in a thread of
this process), and Django twice, as subprocesses (Django's settings are process-wide):
``manage.py runserver`` (WSGI) and ``uvicorn examples.django_app.asgi:application``
(ASGI). Each serves its example app plus, under ``/t/``, a refusing ``authorize`` and
short timeouts, so every framework is checked the same way. Streams are read with
httpx over real HTTP, frame by frame, with the time each frame arrived.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from clipia_tasks.contrib._sse import aframes, frames
from clipia_tasks.errors import RedisUnavailableError
from clipia_tasks.record import changes_channel
from clipia_tasks.redis_server import free_port
from tests.conftest import ROOT, WebStack, wait_for, web_stack

pytestmark = pytest.mark.integration

QUEUE = "progress"
#: About two seconds: a poll or two sees it queued, several see the progress rise.
SCRIPT = {"queue_s": 0.3, "run_s": 1.5, "progress": "linear"}
FAILING = {"queue_s": 0.2, "run_s": 0.5, "final": "FAILED", "error_code": "nsfw",
           "error_message": "the prompt was refused"}
WIDGET = (ROOT / "clipia_tasks" / "static" / "clipia-progress.js").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def stack(celery_env: dict[str, str], worker_logs: Path) -> Iterator[WebStack]:
    with web_stack(celery_env, worker_logs, queue=QUEUE, name="progress") as ws:
        yield ws


# -- the four servers --------------------------------------------------------------------

#: What every server mounts under /t/<name>/<id>/{events,snapshot}, besides its example
#: app: ProgressViews(**kwargs) of the framework (Django: the same, in urls.py text below).
TEST_VIEWS: dict[str, dict[str, Any]] = {
    "denied": {"authorize": lambda request, request_id: False},
    "short": {"timeout_s": 1.0, "heartbeat_s": 0.3},
    "slow": {"timeout_s": 30.0, "heartbeat_s": 0.3},
}
DJANGO_TEST_URLS = """\
from django.urls import path
from clipia_tasks.contrib.django import ProgressViews
from examples.django_app.urls import urlpatterns as example

views = {
    "denied": ProgressViews(lambda request, request_id: False),
    "short": ProgressViews(timeout_s=1.0, heartbeat_s=0.3),
    "slow": ProgressViews(timeout_s=30.0, heartbeat_s=0.3),
}
urlpatterns = [
    path(f"t/{name}/<str:request_id>/{kind}", getattr(v, kind))
    for name, v in views.items() for kind in ("events", "snapshot")
] + example
"""


def serve_flask() -> tuple[str, Callable[[], None]]:
    from flask import Flask
    from werkzeug.middleware.dispatcher import DispatcherMiddleware
    from werkzeug.serving import make_server

    from clipia_tasks.contrib.flask import ProgressViews
    from examples.flask_app import app as example

    extra = Flask("progress-test-routes")
    for name, kwargs in TEST_VIEWS.items():
        views = ProgressViews(**kwargs)
        extra.add_url_rule(f"/{name}/<request_id>/events", f"{name}_events", views.events)
        extra.add_url_rule(f"/{name}/<request_id>/snapshot", f"{name}_snapshot", views.snapshot)
    server = make_server("127.0.0.1", 0, DispatcherMiddleware(example.app, {"/t": extra}),
                         threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}", server.shutdown


def serve_fastapi() -> tuple[str, Callable[[], None]]:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import Mount, Route

    from clipia_tasks.contrib.starlette import ProgressViews
    from examples.fastapi_app.app import app as example

    routes = [Route(f"/{name}/{{request_id}}/{kind}", getattr(views, kind))
              for name, views in ((n, ProgressViews(**kw)) for n, kw in TEST_VIEWS.items())
              for kind in ("events", "snapshot")]
    asgi = Starlette(routes=[Mount("/t", routes=routes), Mount("/", app=example)])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(asgi, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout_s=10)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)

    return f"http://127.0.0.1:{port}", stop


def serve_django(stack: WebStack, tmp_path: Path, *, asgi: bool) -> tuple[str, Callable[[], None]]:
    # The example's settings and routes, plus /t/: a settings module of the test's own.
    (tmp_path / "progress_test_settings.py").write_text(
        "from examples.django_app.settings import *  # noqa: F403\n"
        "ROOT_URLCONF = 'progress_test_urls'\n")
    (tmp_path / "progress_test_urls.py").write_text(DJANGO_TEST_URLS)
    port = free_port()
    env = {**os.environ, **stack.env, "PYTHONUNBUFFERED": "1",
           "DJANGO_SETTINGS_MODULE": "progress_test_settings",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    if asgi:
        command = [sys.executable, "-m", "uvicorn", "examples.django_app.asgi:application",
                   "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    else:
        command = [sys.executable, "examples/django_app/manage.py", "runserver",
                   f"127.0.0.1:{port}", "--noreload"]
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{base}/clipia/progress.js", trust_env=False).status_code == 200
        except httpx.TransportError:
            if proc.poll() is not None:
                raise AssertionError(f"{command} exited:\n{log_path.read_text()}") from None
            return False

    wait_for(up, timeout_s=30, interval_s=0.1)

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()  # a stuck server must not outlive the test
            proc.wait()

    return base, stop


@dataclass
class Server:
    kind: str
    http: httpx.Client


@pytest.fixture(scope="module", params=["flask", "fastapi", "django-wsgi", "django-asgi"])
def server(request: pytest.FixtureRequest, stack: WebStack,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    kind: str = request.param
    if kind == "flask":
        base, stop = serve_flask()
    elif kind == "fastapi":
        base, stop = serve_fastapi()
    else:
        base, stop = serve_django(stack, tmp_path_factory.mktemp(kind),
                                  asgi=kind == "django-asgi")
    # A read timeout well above the heartbeat: a stream that stops sending fails the test.
    http = httpx.Client(base_url=base, trust_env=False, timeout=httpx.Timeout(10.0))
    try:
        yield Server(kind, http)
    finally:
        http.close()
        stop()


# -- reading a stream ---------------------------------------------------------------------


@dataclass
class Frame:
    #: "message" for a snapshot, "end", or "comment" for a keep-alive.
    event: str
    data: Any
    at: float


@dataclass
class Stream:
    response: httpx.Response
    frames: list[Frame]
    body: str = ""

    @property
    def snapshots(self) -> list[dict[str, Any]]:
        return [f.data for f in self.frames if f.event == "message"]

    @property
    def end(self) -> dict[str, Any]:
        ends = [f for f in self.frames if f.event == "end"]
        assert ends and ends[-1] is self.frames[-1], self.frames[-3:]
        assert len(ends) == 1
        return dict(ends[0].data)


def read_stream(http: httpx.Client, path: str, *, stop_after: int | None = None) -> Stream:
    """GET an SSE endpoint and parse it until the server closes it (or ``stop_after`` frames)."""
    found: list[Frame] = []
    with http.stream("GET", path, headers={"Accept": "text/event-stream"}) as response:
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            return Stream(response, [], response.read().decode())
        event, data, comment = "message", [], False
        for line in response.iter_lines():
            if line == "":
                if data:
                    found.append(Frame(event, json.loads("\n".join(data)), time.monotonic()))
                elif comment:
                    found.append(Frame("comment", None, time.monotonic()))
                event, data, comment = "message", [], False
                if stop_after is not None and len(found) >= stop_after:
                    break
            elif line.startswith(":"):
                comment = True
            elif line.startswith("event:"):
                event = line.partition(":")[2].strip()
            elif line.startswith("data:"):
                data.append(line.partition(":")[2].removeprefix(" "))
    return Stream(response, found)


def submit(server: Server, script: dict[str, Any]) -> str:
    r = server.http.post("/generations", json={"prompt": "a cat", "sim": script,
                                               "live_progress": True})
    assert r.status_code == 202, r.text
    return str(r.json()["request_id"])


# -- the stream ------------------------------------------------------------------------------


def test_the_stream_follows_a_generation_until_its_output(server: Server) -> None:
    # Given a generation submitted the way the page at / submits it
    rid = submit(server, SCRIPT)
    # When a browser follows its event stream
    stream = read_stream(server.http, f"/generations/{rid}/events")
    # Then it is an uncached, unbuffered event stream
    headers = stream.response.headers
    assert stream.response.status_code == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-cache"
    assert headers["x-accel-buffering"] == "no"
    # of snapshots whose progress rises while it runs
    snaps = stream.snapshots
    assert {s["request_id"] for s in snaps} == {rid}
    progress = [s["progress"] for s in snaps if s["progress"] is not None]
    assert progress == sorted(progress), progress
    assert any(0 < p < 100 for p in progress), [(s["status"], s["progress"]) for s in snaps]
    assert {"IN_QUEUE", "IN_PROGRESS"} & {s["status"] for s in snaps}
    # ending with the final snapshot (the output's URL in it), then "end", then closed
    final = snaps[-1]
    assert [s for s in snaps if s["outcome"]] == [final]
    assert final["outcome"] == final["status"] == "COMPLETED" and final["progress"] == 100
    assert final["result"]["output"]["images"][0]["url"].startswith("http")
    assert stream.end == {"reason": "finished"}
    # It streamed: the first snapshot arrived while the generation was still running,
    # not with the rest once the request had ended (a buffered response would).
    first, last = stream.frames[0], stream.frames[-1]
    assert first.event == "message" and first.data["outcome"] is None
    assert last.at - first.at > 0.8, (server.kind, last.at - first.at)


def test_the_stream_of_a_failed_generation_ends_with_its_error(server: Server) -> None:
    rid = submit(server, FAILING)
    stream = read_stream(server.http, f"/generations/{rid}/events")
    final = stream.snapshots[-1]
    assert final["outcome"] == "FAILED"
    assert final["result"]["error"] == {"code": "nsfw", "message": "the prompt was refused"}
    assert final["error"]["type"] == "RequestFailedError"
    assert stream.end == {"reason": "finished"}


def test_a_refused_viewer_gets_403_and_no_stream(server: Server) -> None:
    rid = submit(server, {"run_s": 0.2})
    stream = read_stream(server.http, f"/t/denied/{rid}/events")
    assert stream.response.status_code == 403
    assert stream.response.headers["content-type"].startswith("application/json")
    assert "error" in json.loads(stream.body) and stream.frames == []
    assert server.http.get(f"/t/denied/{rid}/snapshot").status_code == 403


def test_an_id_redis_does_not_know_ends_with_a_timeout_after_keep_alives(
        server: Server) -> None:
    # Given an id nobody enqueued, and views with timeout_s=1, heartbeat_s=0.3
    started = time.monotonic()
    stream = read_stream(server.http, f"/t/short/{uuid.uuid4()}/events")
    # Then the stream stays open with keep-alive comments, then ends, saying why
    assert stream.response.status_code == 200
    assert stream.snapshots == []
    assert [f.event for f in stream.frames].count("comment") >= 2
    end = stream.end
    assert end["reason"] == "timeout"
    assert "not known to Redis within 1 s" in end["detail"]
    assert 0.9 < time.monotonic() - started < 8


def test_a_generation_still_running_at_the_timeout_ends_with_a_timeout(server: Server) -> None:
    rid = submit(server, {"queue_s": 0.2, "run_s": 5.0, "progress": "linear"})
    stream = read_stream(server.http, f"/t/short/{rid}/events")
    assert stream.snapshots and stream.snapshots[-1]["outcome"] is None
    assert stream.end == {"reason": "timeout", "detail": "no outcome within 1 s"}


def test_a_browser_that_goes_away_stops_its_watcher(server: Server,
                                                   redis_client: redis.Redis) -> None:
    # Given a browser following a request (the server's watcher subscribes to its
    # change channel, wherever that server runs)
    rid = str(uuid.uuid4())
    channel = changes_channel(rid)

    def subscribers() -> int:
        return int(redis_client.pubsub_numsub(channel)[0][1])

    with server.http.stream("GET", f"/t/slow/{rid}/events") as response:
        next(response.iter_lines())  # the stream is open: a keep-alive arrived
        wait_for(lambda: subscribers() == 1, timeout_s=5)
    # When it closes the connection, then the server notices (at the next keep-alive at
    # the latest), closes the stream, and the watcher unsubscribes
    wait_for(lambda: subscribers() == 0, timeout_s=5)


# -- the snapshot, the widget, the pages -------------------------------------------------------


def test_snapshot_widget_and_pages(server: Server) -> None:
    http = server.http
    rid = submit(server, {"run_s": 0.2})
    # The snapshot: the record as JSON; 404 for an id Redis does not know; 400 for junk
    snap = http.get(f"/generations/{rid}/snapshot")
    assert snap.status_code == 200 and snap.json()["request_id"] == rid
    assert set(snap.json()) >= {"status", "progress", "queue_position", "outcome", "result",
                                "error", "eta_at"}
    unknown = http.get(f"/generations/{uuid.uuid4()}/snapshot")
    assert unknown.status_code == 404 and "error" in unknown.json()
    assert http.get("/generations/not-a-uuid/snapshot").status_code == 400
    assert http.get("/generations/not-a-uuid/events").status_code == 400
    # The widget's script, from the package
    js = http.get("/clipia/progress.js")
    assert js.status_code == 200 and js.text == WIDGET
    assert js.headers["content-type"] == "text/javascript; charset=utf-8"
    assert "max-age=" in js.headers["cache-control"]
    # The form posts JSON with live_progress, then opens the view
    index = http.get("/")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    assert 'id="generate"' in index.text and "live_progress: true" in index.text
    # The view page: the widget's markup for this id
    view = http.get(f"/generations/{rid}/view")
    assert view.status_code == 200 and view.headers["content-type"].startswith("text/html")
    assert (f'<div data-clipia-events="/generations/{rid}/events" '
            f'data-clipia-snapshot="/generations/{rid}/snapshot">') in view.text
    for part in ('<p data-clipia-status aria-live="polite">Connecting…</p>',
                 '<progress data-clipia-progress max="100"></progress>',
                 "<p data-clipia-eta></p>", "<div data-clipia-output></div>",
                 '<script src="/clipia/progress.js" defer></script>'):
        assert part in view.text
    assert http.get("/generations/%3Cscript%3E/view").status_code == 404
    # JSON clients: the old routes answer as before, live_progress must be a boolean
    assert http.get(f"/generations/{rid}").status_code == 200
    bad = http.post("/generations", json={"prompt": "x", "live_progress": "yes"})
    assert bad.status_code in (400, 422)


# -- Redis unavailable, and the frames themselves ------------------------------------------------


def test_redis_unreachable_is_a_503_snapshot_and_an_unavailable_end(
        stack: WebStack, monkeypatch: pytest.MonkeyPatch) -> None:
    from flask import Flask
    from starlette.applications import Starlette
    from starlette.routing import Route
    from starlette.testclient import TestClient

    import clipia_tasks.live
    from clipia_tasks.contrib import flask as flask_views
    from clipia_tasks.contrib import starlette as starlette_views
    from clipia_tasks.processes import configure_process

    flask_app = Flask("redis-down")
    fv = flask_views.ProgressViews(timeout_s=10, heartbeat_s=5)
    flask_app.add_url_rule("/<request_id>/events", "events", fv.events)
    flask_app.add_url_rule("/<request_id>/snapshot", "snapshot", fv.snapshot)
    sv = starlette_views.ProgressViews(timeout_s=10, heartbeat_s=5)
    asgi = Starlette(routes=[Route("/{request_id}/events", sv.events),
                             Route("/{request_id}/snapshot", sv.snapshot)])
    # Given a web process whose Redis does not answer (a port nothing listens on), and
    # watchers that give up after 0.3 s of that rather than a minute
    monkeypatch.setattr(clipia_tasks.live, "UNAVAILABLE_GRACE_S", 0.3)
    configure_process({"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    try:
        rid = str(uuid.uuid4())
        for client in (flask_app.test_client(), TestClient(asgi)):
            snap = client.get(f"/{rid}/snapshot")
            assert snap.status_code == 503
            assert "127.0.0.1" not in snap.text  # where Redis is stays in the log
            body = client.get(f"/{rid}/events").text
            assert body.endswith('event: end\ndata: {"reason": "unavailable", '
                                 '"detail": "Redis does not answer; try again later"}\n\n')
    finally:
        configure_process({"REDIS_URL": stack.env["REDIS_URL"]})


def test_frames_close_their_source_and_map_each_ending() -> None:
    closed: list[str] = []

    def source(end: BaseException | None) -> Iterator[dict[str, Any] | None]:
        try:
            yield {"outcome": None, "progress": 5}
            yield None
            if end is not None:
                raise end
            yield {"outcome": "COMPLETED", "progress": 100}
            yield {"never": "sent"}
        finally:
            closed.append("closed")

    assert "".join(frames(source(None))) == (
        'data: {"outcome":null,"progress":5}\n\n: keep-alive\n\n'
        'data: {"outcome":"COMPLETED","progress":100}\n\n'
        'event: end\ndata: {"reason": "finished"}\n\n')
    assert closed == ["closed"]  # stopped at the outcome, and closed the source
    assert "".join(frames(source(TimeoutError()), timeout_s=2.5)).endswith(
        'event: end\ndata: {"reason": "timeout", "detail": "no outcome within 2.5 s"}\n\n')
    down = RedisUnavailableError("redis://:***@10.0.0.5:6379/0", "ConnectionError")
    assert '"reason": "unavailable"' in "".join(frames(source(down)))
    # The client went away mid-stream: the framework closes the frames, they close the source
    closed.clear()
    stream = frames(source(None))
    next(stream)
    stream.close()
    assert closed == ["closed"]

    async def asource() -> Any:
        try:
            yield {"outcome": None}
            raise TimeoutError
        finally:
            closed.append("aclosed")

    async def collect() -> str:
        return "".join([f async for f in aframes(asource(), timeout_s=1)])

    import asyncio

    assert asyncio.run(collect()).endswith(
        '"detail": "no outcome within 1 s"}\n\n')
    assert closed[-1] == "aclosed"
