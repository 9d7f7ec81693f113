"""clipia-progress.js in Chromium, against a scripted server: rendering, safety, fallbacks.

The server here plays a web app's routes from a script per scenario (each SSE chunk
with the pause before it; the snapshot answers in order), so each case is exact and
takes a second or two. The real routes of the example apps, with a worker and the
simulator, are tested in test_example_apps.py.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.browser.conftest import NO_EVENT_SOURCE_JS, WIDGET_JS, Browser

pytestmark = pytest.mark.browser

#: A 1x1 PNG, so output images load.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c63f8cfc0f01f0005000201a5f1d8dd0000000049454e44ae426082")
HOSTILE = '<img src=x onerror="window.__pwned = true">'

VIEW = """<!doctype html><meta charset="utf-8"><title>{name}</title>
<div id="first" data-clipia-events="/s/{name}/events" data-clipia-snapshot="/s/{name}/snapshot">
  <p data-clipia-status aria-live="polite">Connecting…</p>
  <progress data-clipia-progress max="100"></progress>
  <p data-clipia-eta></p>
  <div data-clipia-output></div>
</div>
<script src="/clipia/progress.js" defer></script>
"""


def snapshot(status: str, **fields: Any) -> dict[str, Any]:
    terminal = status in ("COMPLETED", "FAILED", "CANCELED", "TIMED_OUT")
    return {"request_id": "r-1", "status": status, "queue_position": None, "progress": None,
            "eta_at": None, "last_poll_at": time.time(), "next_poll_at": None, "polls": 1,
            "outcome": status if terminal else None, "result": None, "error": None, **fields}


def completed(output: dict[str, Any]) -> dict[str, Any]:
    return snapshot("COMPLETED", progress=100, result={
        "request_id": "r-1", "status": "COMPLETED", "model": "sim/image", "output": output,
        "error": None, "cost": 10})


def message(snap: dict[str, Any]) -> str:
    return f"data: {json.dumps(snap)}\n\n"


def end(reason: str, detail: str = "") -> str:
    return f"event: end\ndata: {json.dumps({'reason': reason, 'detail': detail})}\n\n"


@dataclass
class Scenario:
    #: SSE chunks as (seconds to wait before, text); the stream closes after the last.
    events: list[tuple[float, str]] = field(default_factory=list)
    #: Status code of the events route (not 200: no stream at all).
    events_code: int = 200
    #: Answers of the snapshot route in order, the last one repeated; None is a 404.
    snapshots: list[dict[str, Any] | None] = field(default_factory=list)


class ScriptedApp:
    """Serves the view page, the widget and scripted events / snapshots on loopback."""

    def __init__(self) -> None:
        self.scenarios: dict[str, Scenario] = {}
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = self.path.strip("/").split("/")
                if self.path == "/clipia/progress.js":
                    self.answer(200, "text/javascript", WIDGET_JS.read_bytes())
                elif self.path.startswith("/files/"):
                    self.answer(200, "image/png", PNG)
                elif len(parts) == 3 and parts[0] == "s" and parts[1] in app.scenarios:
                    self.scenario(parts[1], app.scenarios[parts[1]], parts[2])
                else:
                    self.answer(404, "text/plain", b"not found")

            def scenario(self, name: str, scenario: Scenario, route: str) -> None:
                if route == "view":
                    self.answer(200, "text/html", VIEW.format(name=name).encode())
                elif route == "snapshot":
                    snap = (scenario.snapshots.pop(0) if len(scenario.snapshots) > 1
                            else scenario.snapshots[0])
                    if snap is None:
                        self.answer(404, "application/json", b'{"error": "unknown"}')
                    else:
                        self.answer(200, "application/json", json.dumps(snap).encode())
                elif route == "events" and scenario.events_code != 200:
                    self.answer(scenario.events_code, "text/plain", b"broken")
                elif route == "events":
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Cache-Control", "no-cache")
                    self.end_headers()
                    for pause_s, chunk in scenario.events:
                        time.sleep(pause_s)
                        self.wfile.write(chunk.encode())
                        self.wfile.flush()

            def answer(self, code: int, content_type: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def view(self, name: str, scenario: Scenario) -> str:
        self.scenarios[name] = scenario
        return f"{self.url}/s/{name}/view"


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedApp]:
    app = ScriptedApp()
    yield app
    app.server.shutdown()


def test_a_streamed_request_shows_queue_progress_eta_then_the_video(
    scripted: ScriptedApp, browser: Browser
) -> None:
    # Given a stream: 2nd in line, then 40 % with 30 s to go, then a video, then the end
    video = f"{scripted.url}/files/clip.mp4"
    url = scripted.view("video", Scenario(events=[
        (0.0, ": keep-alive\n\n"),
        (0.2, message(snapshot("IN_QUEUE", queue_position=2))),
        (0.4, message(snapshot("IN_PROGRESS", progress=40, eta_at=time.time() + 30.4))),
        (0.4, message(completed({"video": {"url": video, "width": 1280}}))),
        (0.0, end("finished")),
    ]))
    # When the page is open until the end
    browser.open(url)
    seen = browser.wait_for_state("done", "error", timeout_s=10)
    # Then each step was shown in words, on the bar and as time left
    assert seen["status"] == ["Connecting…", "In queue — position 2", "Generating — 40 %",
                              "Completed"]
    assert seen["progress"] == [None, 40, 100]
    assert re.fullmatch(r"about (2[6-9]|30) s left", seen["eta"][1]), seen["eta"]
    assert seen["eta"][0] == seen["eta"][-1] == ""
    assert seen["state"] == ["streaming", "done"]
    # and the video is playable
    assert browser.output_media() == [("video", video)]
    assert browser.js("return document.querySelector('video').controls") is True


def test_server_text_stays_text_and_only_http_media_urls_are_used(
    scripted: ScriptedApp, browser: Browser
) -> None:
    # Given a failure whose message is HTML, and an output with script and data URLs
    failed = snapshot("FAILED", result={"status": "FAILED", "output": None,
                                        "error": {"code": "x", "message": HOSTILE}})
    first = scripted.view("hostile", Scenario(events=[(0.1, message(failed))]))
    png = f"{scripted.url}/files/a.png"
    mixed = completed({"images": [{"url": "javascript:alert(1)"}, {"url": "data:image/png,x"},
                                  {"url": png}, {"url": png + "?2"}],
                       "audio": {"url": f"{scripted.url}/files/a.mp3"}})
    scripted.view("mixed", Scenario(events=[(0.1, message(mixed))]))
    # When the first page is open, and a second widget, without aria-live, is added later
    browser.open(first)
    browser.wait_for_state("done", "error", timeout_s=10)
    handles_equal = browser.js("""
        const root = document.createElement("div");
        root.id = "later";
        root.setAttribute("data-clipia-events", "/s/mixed/events");
        root.innerHTML = '<p data-clipia-status></p><div data-clipia-output></div>';
        document.body.appendChild(root);
        return ClipiaProgress.follow(root) === ClipiaProgress.follow(root);
    """)
    # Then the message is shown as text, in the status line and as the error
    assert browser.text("[data-clipia-status]") == f"Failed: {HOSTILE}"
    assert browser.text("[data-clipia-output] .clipia-error") == HOSTILE
    assert browser.js("return document.querySelectorAll('#first img').length") == 0
    assert browser.js("return window.__pwned === undefined") is True
    # and the later widget shows the http images and the audio, nothing else
    assert handles_equal is True
    deadline = time.monotonic() + 10
    while browser.js("return document.getElementById('later').dataset.clipiaState") != "done":
        assert time.monotonic() < deadline, "the later widget did not finish"
        time.sleep(0.1)
    assert browser.output_media("#later [data-clipia-output]") == [
        ("img", png), ("img", png + "?2"), ("audio", f"{scripted.url}/files/a.mp3")]
    assert browser.js("return document.querySelector('#later [data-clipia-status]')"
                      ".getAttribute('aria-live')") == "polite"


def test_a_stream_the_server_gives_up_on_continues_by_polling(
    scripted: ScriptedApp, browser: Browser
) -> None:
    # Given a stream that ends early ("timeout"), and a snapshot that is unknown at first
    png = f"{scripted.url}/files/late.png"
    url = scripted.view("timeout", Scenario(
        events=[(0.1, message(snapshot("IN_PROGRESS", progress=30))),
                (0.2, end("timeout", "no change in 60 s"))],
        snapshots=[None, snapshot("IN_PROGRESS", progress=80), completed(
            {"images": [{"url": png}]})]))
    # When the page is open until the end
    browser.open(url)
    seen = browser.wait_for_state("done", "error", timeout_s=10)
    # Then it polled the snapshot to the outcome
    assert seen["state"] == ["streaming", "polling", "done"]
    assert seen["progress"] == [None, 30, 80, 100]
    assert browser.output_media() == [("img", png)]


def test_a_stream_that_cannot_connect_falls_back_to_polling(
    scripted: ScriptedApp, browser: Browser
) -> None:
    # Given an events route that answers 500, and a request that times out
    timed_out = snapshot("TIMED_OUT", error={"type": "PollTimeoutError",
                                             "args": ["gave up after 600 s"]})
    url = scripted.view("broken", Scenario(events_code=500, snapshots=[None, timed_out]))
    # When the page is open until the end
    browser.open(url)
    seen = browser.wait_for_state("done", "error", timeout_s=10)
    # Then it polled, and shows the error of the record
    assert seen["state"] == ["streaming", "polling", "done"]
    assert seen["status"][-1] == "Timed out: gave up after 600 s"
    assert browser.text(".clipia-error") == "gave up after 600 s"
    assert seen["progress"][-1] == 0  # stopped, not spinning


def test_without_event_source_the_widget_polls_from_the_start(
    scripted: ScriptedApp, browser: Browser
) -> None:
    # Given a browser without EventSource
    browser.before_page_scripts(NO_EVENT_SOURCE_JS)
    url = scripted.view("no-es", Scenario(
        snapshots=[snapshot("SUBMITTED"), completed({"images": [{"url": "/files/b.png"}]})]))
    # When the page is open until the end
    browser.open(url)
    seen = browser.wait_for_state("done", "error", timeout_s=10)
    # Then it polled, and a relative media URL was resolved against the page
    assert seen["state"] == ["polling", "done"]
    assert seen["status"] == ["Connecting…", "Submitted", "Completed"]
    assert browser.output_media() == [("img", f"{scripted.url}/files/b.png")]
