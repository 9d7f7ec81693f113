"""The offline Clipia API: lifecycle, errors, faults, idempotency, webhooks, control.

Everything goes over real loopback HTTP (httpx and the official ``clipia`` SDK) against
a ``SimulatorServer(port=0)``; time-dependent checks move an injected fake clock instead
of sleeping.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import clipia
import httpx
import pytest
from clipia.webhooks import verify_signature

import clipia_tasks.simulator as simulator_pkg
from clipia_tasks.simulator import (
    Call,
    Fault,
    Script,
    Simulator,
    SimulatorServer,
)

LIVE_KEY = "clipia_live_x"
SECRET_KEY = "clipia_live_SuperSecretValue123"
SANDBOX_KEY = "clipia_test_sandbox1"
WEBHOOK_SECRET = "whsec_unit_test"


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(clock: FakeClock) -> Simulator:
    return Simulator(clock=clock, webhook_secret=WEBHOOK_SECRET)


@pytest.fixture
def server(sim: Simulator) -> Iterator[SimulatorServer]:
    with SimulatorServer(sim, port=0) as running:
        yield running


@pytest.fixture
def http(server: SimulatorServer) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Key {LIVE_KEY}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=5) as client:
        yield client


@pytest.fixture
def sdk(server: SimulatorServer) -> Iterator[clipia.Clipia]:
    with clipia.Clipia(api_key=LIVE_KEY, base_url=server.url, max_retries=0) as client:
        yield client


def submit(http: httpx.Client, sim: dict[str, Any] | None = None, **extra: Any) -> str:
    body: dict[str, Any] = {"input": {"prompt": "a cat", **({"sim": sim} if sim else {})}}
    body.update(extra)
    response = http.post("/v1/models/sim-image", json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["request_id"])


def status(http: httpx.Client, rid: str) -> httpx.Response:
    return http.get(f"/v1/requests/{rid}/status")


def result(http: httpx.Client, rid: str) -> httpx.Response:
    return http.get(f"/v1/requests/{rid}")


# -- compatibility with the official SDK ------------------------------------


def test_official_sdk_submits_polls_and_fetches_a_result(
    sdk: clipia.Clipia, clock: FakeClock
) -> None:
    # Given a request scripted to queue 2 s and run 4 s
    job = sdk.submit("nano-banana-2", input={"prompt": "x", "sim": {"queue_s": 2, "run_s": 4}})
    # Then the SDK parses the submit answer
    assert job.status == "IN_QUEUE"
    assert job.queue_position == 5
    assert job.status_url and job.status_url.endswith(f"/v1/requests/{job.request_id}/status")
    assert uuid.UUID(job.request_id)

    # When time passes, the SDK sees each phase
    clock.advance(3)
    running = sdk.status(job.request_id)
    assert (running.status, running.queue_position, running.progress) == ("IN_PROGRESS", None, 25)
    assert sdk.result(job.request_id).pending is True

    clock.advance(3)
    done = sdk.status(job.request_id)
    assert done.is_terminal
    final = sdk.result(job.request_id)
    assert final.pending is False
    assert final.status == "COMPLETED"
    assert final.model == "nano-banana-2"
    assert final.output is not None
    assert final.output["images"][0]["url"].endswith(f"/files/{job.request_id}.png")
    assert final.cost == 10


def test_official_sdk_subscribe_completes_against_the_simulator(sdk: clipia.Clipia) -> None:
    # Given a request that is done at once
    # When the SDK's blocking helper is used
    outcome = sdk.subscribe("m", input={"sim": {"run_s": 0, "media": "audio"}}, poll_interval=0.01)
    # Then it ends with the audio result shape
    assert outcome.status == "COMPLETED"
    assert outcome.output is not None
    assert outcome.output["audio"]["url"].endswith(".mp3")
    assert outcome.output["audios"] == [outcome.output["audio"]]


# -- lifecycle ----------------------------------------------------------------


def test_lifecycle_moves_from_queue_to_progress_to_completed(
    http: httpx.Client, clock: FakeClock
) -> None:
    # Given a request queued 10 s, running 10 s, starting at queue position 4
    rid = submit(http, {"queue_s": 10, "run_s": 10, "queue_position_start": 4})

    # Then while queued, queue_position counts down to 0 and progress is null
    positions = []
    for _ in range(10):
        body = status(http, rid).json()
        assert body["status"] == "IN_QUEUE"
        assert body["progress"] is None
        positions.append(body["queue_position"])
        clock.advance(1)
    assert positions[0] == 4
    assert positions[-1] == 0
    assert positions == sorted(positions, reverse=True)
    assert set(positions) == {0, 1, 2, 3, 4}

    # And while running, progress rises linearly and queue_position is null
    seen = []
    for _ in range(10):
        body = status(http, rid).json()
        assert body["status"] == "IN_PROGRESS"
        assert body["queue_position"] is None
        seen.append(body["progress"])
        pending = result(http, rid)
        assert pending.status_code == 202
        assert pending.json()["status"] == "IN_PROGRESS"
        clock.advance(1)
    assert seen == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90]

    # And once done both are null, the result is 200 with timestamps
    body = status(http, rid).json()
    assert body == {
        "request_id": rid,
        "status": "COMPLETED",
        "queue_position": None,
        "progress": None,
        "logs": [],
    }
    final = result(http, rid)
    assert final.status_code == 200
    data = final.json()
    assert set(data) == {
        "request_id",
        "status",
        "model",
        "output",
        "error",
        "cost",
        "created_at",
        "completed_at",
    }
    assert data["error"] is None
    assert data["created_at"].endswith("Z")
    assert data["completed_at"] == "2023-11-14T22:13:40.000Z"  # created + 20 s


def test_jumpy_progress_advances_in_uneven_steps_and_none_stays_null(
    http: httpx.Client, clock: FakeClock
) -> None:
    # Given a jumpy request and a request without progress
    jumpy = submit(http, {"run_s": 8, "progress": "jumpy"})
    silent = submit(http, {"run_s": 8, "progress": "none"})
    # When polled through their run
    jumps, nones = [], []
    for _ in range(8):
        jumps.append(status(http, jumpy).json()["progress"])
        nones.append(status(http, silent).json()["progress"])
        clock.advance(1)
    # Then jumpy never goes back, repeats values and takes uneven steps
    assert jumps == sorted(jumps)
    assert len(set(jumps)) < len(jumps)
    steps = {b - a for a, b in itertools.pairwise(jumps) if b != a}
    assert len(steps) > 1
    # And "none" is always null while running
    assert nones == [None] * 8
    assert status(http, silent).json()["status"] == "COMPLETED"


@pytest.mark.parametrize(
    ("script", "error"),
    [
        (
            {"final": "FAILED", "error_code": "nsfw", "error_message": "Blocked."},
            {"code": "nsfw", "message": "Blocked."},
        ),
        ({"final": "CANCELED"}, {"code": "canceled", "message": "The request was canceled."}),
    ],
)
def test_failed_and_canceled_results_carry_an_error_and_no_output(
    http: httpx.Client, clock: FakeClock, script: dict[str, Any], error: dict[str, str]
) -> None:
    # Given a request scripted to end badly
    rid = submit(http, {"run_s": 1, **script})
    clock.advance(2)
    # When its result is fetched
    response = result(http, rid)
    # Then it is final, without output, with the error and cost 0
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == script["final"]
    assert body["output"] is None
    assert body["error"] == error
    assert body["cost"] == 0


def test_video_output_has_the_documented_shape(http: httpx.Client, clock: FakeClock) -> None:
    rid = submit(http, {"run_s": 0, "media": "video"})
    video = result(http, rid).json()["output"]["video"]
    assert video["url"].endswith(f"/files/{rid}.mp4")
    assert {"width", "height", "duration"} <= set(video)


@pytest.mark.parametrize(
    ("model", "script", "kind", "suffix"),
    [
        ("sim/video", {}, "video", ".mp4"),
        ("sim/audio", {}, "audio", ".mp3"),
        ("sim/image", {}, "images", ".png"),
        ("acme/text-to-video-v2", {}, "video", ".mp4"),
        ("sim/video", {"media": "image"}, "images", ".png"),  # the script wins
        ("sim/image", {"media": "audio"}, "audio", ".mp3"),
    ],
)
def test_output_media_follows_the_model_unless_the_script_sets_it(
    sdk: clipia.Clipia, clock: FakeClock, model: str, script: dict[str, Any], kind: str, suffix: str
) -> None:
    # Given a request submitted to a model, as docs/running.md does with sim/video
    job = sdk.submit(model, {"prompt": "a cat", "sim": {"run_s": 1, **script}})
    clock.advance(2)
    # When its result is fetched
    output = sdk.result(job.request_id).output
    # Then its output is of the model's kind (or the script's), with a matching file
    assert output is not None
    assert set(output) & {"images", "video", "audio"} == {kind}
    media = output[kind][0] if kind == "images" else output[kind]
    assert media["url"].endswith(f"/files/{job.request_id}{suffix}")


def test_the_media_urls_of_a_result_answer_with_an_image_and_a_tone(
    sdk: clipia.Clipia, clock: FakeClock, http: httpx.Client
) -> None:
    # Given finished image, audio and video requests
    urls = {}
    for model in ("sim/image", "sim/audio", "sim/video"):
        job = sdk.submit(model, {"prompt": "a cat", "sim": {"run_s": 1}})
        clock.advance(2)
        output = sdk.result(job.request_id).output
        assert output is not None
        urls[model] = (output["images"][0] if "images" in output
                       else output.get("audio") or output["video"])["url"]
    # When their media URLs are fetched (no key: as from a CDN)
    image, audio, video = (httpx.get(urls[m]) for m in ("sim/image", "sim/audio", "sim/video"))
    # Then the image is a PNG, the audio a WAV tone, and the video a clear 404
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content.startswith(b"\x89PNG\r\n\x1a\n") and b"IEND" in image.content
    assert audio.status_code == 200 and audio.headers["content-type"] == "audio/wav"
    assert audio.content[:4] == b"RIFF" and audio.content[8:12] == b"WAVE"
    assert video.status_code == 404 and "not video" in video.json()["error"]["message"]
    # and anything else under /files is a 404
    assert http.get("/files/../v1/requests.png").status_code == 404
    assert http.get("/files/nope.png").status_code == 404


def test_set_final_cancels_a_running_request_at_once(
    sim: Simulator, http: httpx.Client, clock: FakeClock
) -> None:
    # Given a long-running request
    rid = submit(http, {"run_s": 600})
    clock.advance(5)
    # When it is canceled out of band
    sim.set_final(rid, "CANCELED")
    # Then status and result say CANCELED immediately
    assert status(http, rid).json()["status"] == "CANCELED"
    body = result(http, rid).json()
    assert body["error"]["code"] == "canceled"
    assert body["completed_at"] == "2023-11-14T22:13:25.000Z"
    assert sim.status_of(rid)["status"] == "CANCELED"
    # And a terminal request cannot be ended again, nor with a non-terminal status
    with pytest.raises(ValueError, match="already CANCELED"):
        sim.set_final(rid, "COMPLETED")
    other = sim.create({"run_s": 60})
    with pytest.raises(ValueError, match="must be one of"):
        sim.set_final(other, "IN_PROGRESS")
    with pytest.raises(KeyError):
        sim.set_final(str(uuid.uuid4()), "CANCELED")


# -- not found, auth ----------------------------------------------------------


@pytest.mark.parametrize("rid", ["0e2caf66-cb02-4740-8328-99d6c6511fe9", "not-a-uuid"])
@pytest.mark.parametrize("suffix", ["/status", ""])
def test_unknown_request_ids_are_404_not_found(http: httpx.Client, rid: str, suffix: str) -> None:
    response = http.get(f"/v1/requests/{rid}{suffix}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert response.json()["error"]["type"] == "not_found_error"


def test_unknown_paths_and_methods_are_404_envelopes(http: httpx.Client) -> None:
    for method, path in [("GET", "/v1/nothing"), ("DELETE", "/v1/requests/x"), ("GET", "/")]:
        response = http.request(method, path)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    "authorization",
    [None, "Key nope", "Bearer clipia_live_", "Token " + SECRET_KEY, SECRET_KEY, "Key"],
)
def test_missing_or_invalid_keys_are_401_without_echoing_the_key(
    server: SimulatorServer, authorization: str | None
) -> None:
    # Given a call with a missing or invalid Authorization header
    headers = {"Authorization": authorization} if authorization else {}
    rid = str(uuid.uuid4())
    # When any /v1 endpoint is called
    for method, path in [
        ("POST", "/v1/models/m"),
        ("GET", f"/v1/requests/{rid}/status"),
        ("GET", f"/v1/requests/{rid}"),
    ]:
        response = httpx.request(
            method, server.url + path, headers=headers, json={"input": {}}, timeout=5
        )
        # Then it is a 401 authentication envelope that never contains the key text
        assert response.status_code == 401
        assert response.json()["error"] == {
            "type": "authentication_error",
            "code": "invalid_api_key",
            "message": response.json()["error"]["message"],
        }
        assert "SuperSecret" not in response.text
        assert all("SuperSecret" not in v for v in response.headers.values())
    # And the call log holds no key material either
    assert "SuperSecret" not in repr(server.simulator.calls())
    assert {c.status_code for c in server.simulator.calls()} == {401}


def test_only_configured_keys_are_accepted_when_api_keys_are_given() -> None:
    simulator = Simulator(api_keys={SECRET_KEY})
    with SimulatorServer(simulator) as server:
        # Given a valid-looking key that is not configured, and the configured one
        other = httpx.post(
            f"{server.url}/v1/models/m",
            json={"input": {}},
            headers={"Authorization": f"Key {LIVE_KEY}"},
        )
        ok = httpx.post(
            f"{server.url}/v1/models/m",
            json={"input": {}},
            headers={"Authorization": f"Key {SECRET_KEY}"},
        )
    # Then only the configured key gets in, and no answer or log contains it
    assert other.status_code == 401
    assert ok.status_code == 200
    for response in (other, ok):
        assert SECRET_KEY not in response.text
    assert SECRET_KEY not in repr(simulator.calls())
    assert SECRET_KEY not in repr(simulator)


@pytest.mark.parametrize("scheme", ["Key", "Bearer"])
def test_key_and_bearer_schemes_are_both_accepted_and_logged(
    server: SimulatorServer, scheme: str
) -> None:
    headers = {"Authorization": f"{scheme} {SECRET_KEY}"}
    response = httpx.post(f"{server.url}/v1/models/m", json={"input": {}}, headers=headers)
    assert response.status_code == 200
    [call] = server.simulator.calls()
    assert call.auth_scheme == scheme
    assert SECRET_KEY not in repr(call)


# -- faults -------------------------------------------------------------------


def test_429_fault_sends_retry_after_that_the_sdk_reads(sdk: clipia.Clipia, sim: Simulator) -> None:
    # Given a request whose first status call is rate limited
    rid = sim.create({"faults": [{"endpoint": "status", "http": 429, "retry_after": "2"}]})
    # When the SDK polls it
    with pytest.raises(clipia.ClipiaApiError) as caught:
        sdk.status(rid)
    # Then it sees a 429 rate_limit_exceeded with Retry-After 2 s, and the next call is fine
    assert caught.value.status == 429
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.retry_after == 2.0
    assert sdk.status(rid).request_id == rid
    assert [c.status_code for c in sim.calls(rid)] == [429, 200]


def test_5xx_burst_then_recovery_with_after_calls(http: httpx.Client, sim: Simulator) -> None:
    # Given: 1 good call, then 3 x 503, then a 500 on the result endpoint only
    rid = sim.create(
        {
            "run_s": 0,
            "faults": [
                {"endpoint": "any", "http": 503, "count": 3, "after_calls": 1},
                {"endpoint": "result", "http": 500, "after_calls": 2},
            ],
        }
    )
    # When status and result are called alternately
    codes = []
    for _ in range(4):
        codes.append(status(http, rid).status_code)
        codes.append(result(http, rid).status_code)
    # Then the burst hits exactly the scripted calls and then the API recovers
    assert codes == [200, 503, 503, 503, 200, 500, 200, 200]
    envelope = status(http, rid)
    assert envelope.status_code == 200
    assert [c.status_code for c in sim.calls(rid, "result")] == [503, 503, 500, 200]


def test_fault_envelope_codes_default_from_the_http_status(
    http: httpx.Client, sim: Simulator
) -> None:
    expected = {
        503: "service_unavailable",
        500: "internal_error",
        401: "invalid_api_key",
        403: "insufficient_scope",
        404: "not_found",
    }
    faults: list[dict[str, Any]] = [
        {"http": code, "after_calls": i} for i, code in enumerate(expected)
    ]
    faults.append({"http": 429, "code": "concurrency_limit_exceeded", "after_calls": 5})
    rid = sim.create({"faults": faults})
    got = {}
    for _ in range(6):
        response = status(http, rid)
        got[response.status_code] = response.json()["error"]["code"]
    assert got == {**expected, 429: "concurrency_limit_exceeded"}


@pytest.mark.parametrize("kind", ["empty", "html", "malformed", "truncated"])
def test_broken_bodies_are_what_a_client_must_survive(
    http: httpx.Client, sdk: clipia.Clipia, sim: Simulator, kind: str
) -> None:
    # Given a status call answered with a broken body
    code = 200 if kind in ("malformed", "truncated") else 502
    rid = sim.create({"faults": [{"http": code, "body": kind, "count": 2}]})
    # When it is called
    response = status(http, rid)
    # Then the body is broken in the scripted way
    assert response.status_code == code
    if kind == "empty":
        assert response.content == b""
    elif kind == "html":
        assert response.headers["content-type"].startswith("text/html")
        assert response.text.startswith("<html>")
    elif kind == "malformed":
        assert response.json() == {"foo": 1}
    else:
        with pytest.raises(json.JSONDecodeError):
            json.loads(response.content)
        assert response.content.startswith(b'{"request_id"')
    # And the official SDK does not get a usable status out of it
    with pytest.raises((clipia.ClipiaApiError, KeyError, TypeError)):
        sdk.status(rid)
    # And the next call is normal again
    assert status(http, rid).json()["request_id"] == rid


def test_result_stays_202_for_scripted_calls_after_status_is_terminal(
    http: httpx.Client, clock: FakeClock
) -> None:
    # Given a finished request whose result store lags two calls behind
    rid = submit(http, {"run_s": 1, "result_pending_calls": 2})
    clock.advance(2)
    assert status(http, rid).json()["status"] == "COMPLETED"
    # When its result is fetched repeatedly
    answers = [result(http, rid) for _ in range(3)]
    # Then the first two still say 202 IN_PROGRESS and the third is the result
    assert [a.status_code for a in answers] == [202, 202, 200]
    assert answers[0].json()["status"] == "IN_PROGRESS"
    assert answers[2].json()["status"] == "COMPLETED"


def test_latency_delays_only_that_requests_answers(http: httpx.Client, sim: Simulator) -> None:
    # Given a slow request and a fast one
    slow = sim.create({"latency_s": 0.4, "run_s": 60})
    fast = sim.create({"run_s": 60})
    timings: dict[str, float] = {}

    def timed(name: str, rid: str) -> None:
        # The client is built outside the timing: only the request is timed.
        with httpx.Client(headers={"Authorization": f"Key {LIVE_KEY}"}) as client:
            started = time.perf_counter()
            client.get(f"{sim.base_url}/v1/requests/{rid}/status").raise_for_status()
            timings[name] = time.perf_counter() - started

    # When both are polled at the same time
    threads = [threading.Thread(target=timed, args=a) for a in (("slow", slow), ("fast", fast))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then only the slow one waits
    assert timings["slow"] >= 0.4
    assert timings["fast"] < 0.3
    # And submitting a slow script is delayed too
    started = time.perf_counter()
    submit(http, {"latency_s": 0.2})
    assert time.perf_counter() - started >= 0.2


def test_submit_fault_still_creates_the_request_so_an_idempotent_retry_finds_it(
    http: httpx.Client, sim: Simulator
) -> None:
    # Given a submit whose answer is lost to a 503
    body = {"input": {"sim": {"faults": [{"endpoint": "submit", "http": 503}]}}}
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    first = http.post("/v1/models/m", json=body, headers=headers)
    # When the client retries with the same Idempotency-Key
    second = http.post("/v1/models/m", json=body, headers=headers)
    # Then the retry returns the one request that was created
    assert first.status_code == 503
    assert second.status_code == 200
    assert [c.request_id for c in sim.calls(endpoint="submit")] == [second.json()["request_id"]] * 2


# -- idempotency, sandbox, validation -------------------------------------------


def test_idempotency_key_same_body_same_request_different_body_409(
    http: httpx.Client, clock: FakeClock
) -> None:
    key = {"Idempotency-Key": str(uuid.uuid4())}
    body = {"input": {"prompt": "a"}}
    # Given a submit with an Idempotency-Key
    first = http.post("/v1/models/m", json=body, headers=key).json()
    # When the same key is sent with the same body, then the same request comes back
    again = http.post("/v1/models/m", json=body, headers=key).json()
    assert again["request_id"] == first["request_id"]
    # When sent with another body (or model), then it is 409 idempotency_key_reuse
    for path, other in [("/v1/models/m", {"input": {"prompt": "b"}}), ("/v1/models/n", body)]:
        conflict = http.post(path, json=other, headers=key)
        assert conflict.status_code == 409
        assert conflict.json()["error"]["code"] == "idempotency_key_reuse"
    # And without a key every submit is a new request
    assert submit(http) != submit(http)
    # And after 24 h the key no longer binds
    clock.advance(24 * 3600 + 1)
    later = http.post("/v1/models/m", json=body, headers=key).json()
    assert later["request_id"] != first["request_id"]


def test_sandbox_key_completes_at_once_with_a_fixed_result_and_no_faults(
    server: SimulatorServer,
) -> None:
    # Given a sandbox key and a script full of delays and faults
    script = {"queue_s": 100, "final": "FAILED", "faults": [{"endpoint": "any", "count": 9}]}
    with clipia.Clipia(api_key=SANDBOX_KEY, base_url=server.url) as sandbox:
        # When two requests are submitted
        jobs = [sandbox.submit("m", input={"sim": script}) for _ in range(2)]
        # Then both are COMPLETED at once with the same mock output
        assert [j.status for j in jobs] == ["COMPLETED", "COMPLETED"]
        results = [sandbox.result(j.request_id) for j in jobs]
        assert sandbox.status(jobs[0].request_id).status == "COMPLETED"
    assert [r.status for r in results] == ["COMPLETED", "COMPLETED"]
    assert results[0].output == results[1].output
    assert results[0].output is not None
    assert results[0].output["images"][0]["url"].endswith("/files/sandbox.png")


def test_script_and_fault_from_dict_reject_unknown_keys_by_name() -> None:
    with pytest.raises(ValueError, match="queue_sec") as caught:
        Script.from_dict({"queue_sec": 1, "run_s": 2, "bogus": True})
    assert "bogus" in str(caught.value)
    with pytest.raises(ValueError, match="status_code"):
        Fault.from_dict({"status_code": 503})
    with pytest.raises(ValueError, match="retry"):
        Script.from_dict({"faults": [{"http": 429, "retry": 1}]})
    for bad in ({"final": "DONE"}, {"progress": "fast"}, {"run_s": -1}, {"media": "gif"}):
        with pytest.raises(ValueError):
            Script.from_dict(bad)
    script = Script.from_dict({"queue_s": 1, "faults": [{"http": 429, "retry_after": 3}]})
    assert script.faults == [Fault(http=429, retry_after="3")]
    assert Script() == Script.from_dict({})


def test_unknown_sim_keys_and_non_json_bodies_are_400(http: httpx.Client) -> None:
    unknown = http.post("/v1/models/m", json={"input": {"sim": {"runtime": 1}}})
    assert unknown.status_code == 400
    assert unknown.json()["error"]["code"] == "invalid_request"
    assert "runtime" in unknown.json()["error"]["message"]
    for content in (b"not json", b"[1, 2]", b'{"input": "x"}'):
        response = http.post("/v1/models/m", content=content)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_request"
    bad_control = httpx.post(f"{http.base_url}/_sim/requests", content=b"{nope")
    assert bad_control.status_code == 400


# -- call log, control endpoints ----------------------------------------------------


def test_call_log_records_each_v1_call_without_control_calls(
    http: httpx.Client, sim: Simulator, clock: FakeClock
) -> None:
    # Given a submit, a status and a result call, plus a control call
    before = time.time()
    rid = submit(http, {"run_s": 1})
    status(http, rid)
    result(http, rid)
    http.get("/_sim/health")
    # Then the log has exactly the three API calls, in order, with their outcome
    calls = sim.calls()
    assert [(c.method, c.endpoint, c.request_id, c.status_code) for c in calls] == [
        ("POST", "submit", rid, 200),
        ("GET", "status", rid, 200),
        ("GET", "result", rid, 202),
    ]
    assert calls[1].path == f"/v1/requests/{rid}/status"
    assert all(c.auth_scheme == "Key" and before <= c.at <= time.time() for c in calls)
    assert sim.calls(endpoint="status") == [calls[1]]
    assert sim.calls(request_id=str(uuid.uuid4())) == []
    assert isinstance(calls[0], Call)


def test_control_endpoints_create_inspect_end_and_reset(server: SimulatorServer) -> None:
    base = server.url
    auth = {"Authorization": f"Key {LIVE_KEY}"}
    with httpx.Client(base_url=base, timeout=5) as control:
        assert control.get("/_sim/health").json() == {"ok": True}
        # Given a request created with a chosen id and a script
        chosen = str(uuid.uuid4())
        made = control.post("/_sim/requests", json={"script": {"run_s": 600}, "request_id": chosen})
        assert made.json() == {"request_id": chosen}
        assert control.post("/_sim/requests", json={"request_id": chosen}).status_code == 400
        bad = control.post("/_sim/requests", json={"script": {"nope": 1}})
        assert bad.status_code == 400
        assert "nope" in bad.json()["error"]["message"]
        # When it is polled, then canceled out of band
        assert control.get(f"/v1/requests/{chosen}/status", headers=auth).status_code == 200
        ended = control.post(f"/_sim/requests/{chosen}/final", json={"status": "CANCELED"})
        assert ended.json()["status"] == "CANCELED"
        again = control.post(f"/_sim/requests/{chosen}/final", json={"status": "CANCELED"})
        assert again.status_code == 409
        wrong = control.post(f"/_sim/requests/{chosen}/final", json={"status": "DONE"})
        assert wrong.status_code == 400
        missing = control.post(f"/_sim/requests/{uuid.uuid4()}/final", json={"status": "CANCELED"})
        assert missing.status_code == 404
        # Then the call log shows the API call (not the control calls)
        calls = control.get("/_sim/calls", params={"request_id": chosen}).json()["calls"]
        assert [(c["endpoint"], c["status_code"], c["auth_scheme"]) for c in calls] == [
            ("status", 200, "Key")
        ]
        assert set(calls[0]) == {
            "method",
            "path",
            "endpoint",
            "request_id",
            "status_code",
            "at",
            "auth_scheme",
        }
        assert control.get("/_sim/calls", params={"endpoint": "submit"}).json() == {"calls": []}
        # And reset forgets everything
        assert control.post("/_sim/reset").json() == {"ok": True}
        assert control.get("/_sim/calls").json() == {"calls": []}
        assert control.get(f"/v1/requests/{chosen}/status", headers=auth).status_code == 404
        assert control.get("/_sim/unknown").status_code == 404


# -- webhooks -----------------------------------------------------------------


class _Receiver:
    """A tiny webhook endpoint that fails the first ``failures`` deliveries."""

    def __init__(self, failures: int = 0) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.arrived = threading.Event()
        self.failures = failures
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.deliveries.append((dict(self.headers.items()), raw))
                code = 500 if receiver.failures > 0 else 200
                receiver.failures -= 1
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()
                if code == 200:
                    receiver.arrived.set()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> _Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_webhook_is_signed_verifiable_and_sent_once(
    sdk: clipia.Clipia, sim: Simulator, clock: FakeClock
) -> None:
    with _Receiver() as receiver:
        # Given a request submitted with a loopback webhook_url
        job = sdk.submit("m", input={"sim": {"run_s": 5}}, webhook_url=receiver.url)
        # When it finishes (found by the server's background tick, no polling needed)
        clock.advance(6)
        assert receiver.arrived.wait(5)
        headers, raw = receiver.deliveries[0]
        # Then the official SDK verifies the signature over the raw body
        assert verify_signature(WEBHOOK_SECRET, headers, raw)
        assert not verify_signature("another-secret", headers, raw)
        assert uuid.UUID(headers["X-Clipia-Webhook-Id"])
        assert headers["Content-Type"] == "application/json"
        assert headers["X-Clipia-Signature"].startswith(f"t={headers['X-Clipia-Timestamp']},v1=")
        body = json.loads(raw)
        assert body["request_id"] == job.request_id
        assert body["status"] == "OK"
        assert body["payload"]["model"] == "m"
        assert body["payload"]["cost"] == 10
        assert body["payload"]["output"]["images"][0]["url"].endswith(".png")
        # And it is delivered once, however often the request is polled afterwards
        sdk.status(job.request_id)
        time.sleep(0.3)
        assert len(receiver.deliveries) == 1


def test_failed_webhook_reports_error_and_is_retried(sdk: clipia.Clipia, sim: Simulator) -> None:
    sim.webhook_retry_delay_s = 0.05
    with _Receiver(failures=1) as receiver:
        # Given a request that fails, and a receiver that answers 500 once
        job = sdk.submit(
            "m", input={"sim": {"run_s": 0, "final": "FAILED"}}, webhook_url=receiver.url
        )
        # When the delivery is attempted
        assert receiver.arrived.wait(5)
    # Then it was retried with the same delivery id and carries the error
    assert len(receiver.deliveries) == 2
    ids = {h["X-Clipia-Webhook-Id"] for h, _ in receiver.deliveries}
    assert len(ids) == 1
    body = json.loads(receiver.deliveries[1][1])
    assert body == {
        "request_id": job.request_id,
        "status": "ERROR",
        "error": {
            "code": "generation_failed",
            "message": "The model failed to generate an output.",
        },
    }
    # (the sender notes attempt 2 only after reading the answer the receiver just sent)
    deadline = time.monotonic() + 5
    while len(sim.webhook_attempts(job.request_id)) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    attempts = sim.webhook_attempts(job.request_id)
    assert [(a.attempt, a.status_code, a.ok) for a in attempts] == [(1, 500, False), (2, 200, True)]


def test_webhooks_to_non_loopback_urls_are_refused(sim: Simulator) -> None:
    # Given a request whose webhook_url points off this machine
    rid = sim.create({"run_s": 0}, webhook_url="http://example.com/hook")
    # When it is terminal
    sim.status_of(rid)
    # Then nothing is sent and the refusal is recorded
    [attempt] = sim.webhook_attempts(rid)
    assert attempt.attempt == 0
    assert attempt.error is not None and "refused" in attempt.error


# -- server behaviour ---------------------------------------------------------


def test_keep_alive_reuses_one_connection_for_many_fast_calls(
    http: httpx.Client, sim: Simulator
) -> None:
    rid = sim.create({"run_s": 60})
    started = time.perf_counter()
    ports = set()
    for _ in range(300):
        response = status(http, rid)
        assert response.status_code == 200
        ports.add(response.extensions["network_stream"].get_extra_info("client_addr")[1])
    assert len(ports) == 1
    assert time.perf_counter() - started < 3


def test_stop_closes_the_server_and_pooled_connections(sim: Simulator) -> None:
    server = SimulatorServer(sim).start()
    with httpx.Client(base_url=server.url, timeout=2) as client:
        assert client.get("/_sim/health").status_code == 200
        server.stop()
        with pytest.raises(httpx.TransportError):
            client.get("/_sim/health")
    server.stop()  # idempotent


def test_module_runs_as_a_cli_and_stops_on_ctrl_c() -> None:
    root = Path(simulator_pkg.__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "clipia_tasks.simulator", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = line.split()[line.split().index("on") + 1]
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{url}/_sim/health", timeout=5).json() == {"ok": True}
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_all_lists_exactly_the_public_names() -> None:
    public = {name for name in dir(simulator_pkg) if not name.startswith("_")}
    assert set(simulator_pkg.__all__) == public
