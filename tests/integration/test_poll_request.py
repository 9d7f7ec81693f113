"""poll_request end to end: real Redis, a real worker, the simulator over loopback HTTP."""

from __future__ import annotations

import itertools
import json
import uuid
from typing import Any

import pytest
import redis

from clipia_tasks import (
    AuthenticationError,
    PermissionDeniedError,
    PollTimeoutError,
    RequestCanceledError,
    RequestFailedError,
    RequestNotFoundError,
    get_state,
    poll_request,
)
from tests.conftest import Worker, signal_counts, wait_for

pytestmark = pytest.mark.integration
TIMEOUT = 30


@pytest.fixture
def sim(simulator: Any, worker: Worker, celery_env: dict[str, str]) -> Any:
    return simulator.simulator


def status_calls(sim: Any, rid: str) -> list[Any]:
    return sim.calls(request_id=rid, endpoint="status")


def test_completed_request_returns_the_full_result_and_signals_once(
    sim: Any, redis_client: redis.Redis
) -> None:
    # Given a generation that queues briefly and then runs for a second
    rid = sim.create({"queue_s": 0.3, "run_s": 1.0, "media": "video"})
    # When a web app enqueues the poller and waits for it
    result = poll_request.delay(rid).get(timeout=TIMEOUT)
    # Then it gets the whole result body
    assert result["request_id"] == rid and result["status"] == "COMPLETED"
    assert set(result) >= {"model", "output", "cost", "created_at", "completed_at"}
    assert "video" in result["output"]
    # And request_completed fired once, in the worker
    wait_for(lambda: signal_counts(redis_client, rid)["completed"] == 1)
    assert signal_counts(redis_client, rid) == {"completed": 1}
    # And the state is readable without calling Clipia
    state = get_state(rid)
    assert state is not None and state.outcome == "COMPLETED" and state.polls >= 2
    # And one result call after the status calls
    assert [c.status_code for c in sim.calls(request_id=rid, endpoint="result")] == [200]


def test_progress_is_readable_while_the_request_runs(sim: Any) -> None:
    rid = sim.create({"queue_s": 0.0, "run_s": 4.0, "progress": "linear"})
    async_result = poll_request.delay(rid)
    state = wait_for(
        lambda: (s := get_state(rid)) and s.status == "IN_PROGRESS" and s.progress and s,
        timeout_s=TIMEOUT,
    )
    assert 0 < state.progress < 100
    assert state.last_poll_at is not None and state.next_poll_at >= state.last_poll_at
    assert async_result.state in {"PENDING", "RETRY"}
    assert async_result.get(timeout=TIMEOUT)["status"] == "COMPLETED"


@pytest.mark.parametrize(
    ("final", "cls", "code"),
    [("FAILED", RequestFailedError, "nsfw_detected"),
     ("CANCELED", RequestCanceledError, "canceled")],
)
def test_failed_and_canceled_requests_fail_the_task_with_the_api_error(
    sim: Any, redis_client: redis.Redis, final: str, cls: type, code: str
) -> None:
    script = {"run_s": 0.5, "final": final}
    if final == "FAILED":
        script |= {"error_code": code, "error_message": "Blocked by the safety filter"}
    rid = sim.create(script)
    from tests.integration.signal_recorder import record_link, record_link_error

    tag = str(uuid.uuid4())
    async_result = poll_request.apply_async(
        (rid,), link=record_link.s(tag), link_error=record_link_error.s(tag)
    )
    with pytest.raises(cls) as info:
        async_result.get(timeout=TIMEOUT)
    assert info.value.request_id == rid and info.value.status == final
    assert info.value.code == code
    assert async_result.state == "FAILURE"
    wait_for(lambda: signal_counts(redis_client, rid)["failed"] == 1)
    assert signal_counts(redis_client, rid) == {"failed": 1}
    links = wait_for(lambda: [json.loads(x) for x in redis_client.lrange("clipia-test:links", 0, -1)
                              if json.loads(x)["tag"] == tag])
    assert links == [{"tag": tag, "error": cls.__name__, "code": code}]


def test_a_failed_request_keeps_the_last_progress_it_reported(sim: Any) -> None:
    # Given a request that runs with progress, then fails
    rid = sim.create({"run_s": 2.0, "progress": "linear", "final": "FAILED"})
    with pytest.raises(RequestFailedError):
        poll_request.delay(rid).get(timeout=TIMEOUT)
    # Then its record ends FAILED at the last percentage a poll saw (not blank, not 100)
    state = get_state(rid)
    assert state is not None and state.outcome == "FAILED"
    seen = [o.progress for o in state.history if o.progress is not None]
    assert seen and state.progress == seen[-1] < 100


def test_no_retry_state_is_stored_between_polls(sim: Any, redis_client: redis.Redis) -> None:
    # Given a request that needs several polls
    rid = sim.create({"run_s": 2.5, "progress": "linear"})
    async_result = poll_request.delay(rid)
    meta_key = f"celery-task-meta-{async_result.id}"
    # When the worker polls it, watched closely until it ends
    seen: set[str] = set()
    while not async_result.ready():
        raw = redis_client.get(meta_key)
        if raw:
            seen.add(json.loads(raw)["status"])
    # Then no RETRY state was ever written for it, only the final SUCCESS
    state = get_state(rid)
    assert state is not None and state.polls >= 3  # it did retry, several times
    assert "RETRY" not in seen
    assert json.loads(redis_client.get(meta_key) or "{}")["status"] == "SUCCESS"
    # And the proxy doing that is built once, not per access
    assert poll_request.backend is poll_request.backend


def test_success_fires_link_callbacks(sim: Any, redis_client: redis.Redis) -> None:
    from tests.integration.signal_recorder import record_link, record_link_error

    rid = sim.create({"run_s": 0.2})
    tag = str(uuid.uuid4())
    poll_request.apply_async((rid,), link=record_link.s(tag),
                             link_error=record_link_error.s(tag)).get(timeout=TIMEOUT)
    links = wait_for(lambda: [json.loads(x) for x in redis_client.lrange("clipia-test:links", 0, -1)
                              if json.loads(x)["tag"] == tag])
    assert links == [{"tag": tag, "request_id": rid}]


def test_canceled_out_of_band_is_seen(sim: Any) -> None:
    rid = sim.create({"run_s": 30})
    async_result = poll_request.delay(rid)
    wait_for(lambda: status_calls(sim, rid), timeout_s=TIMEOUT)
    sim.set_final(rid, "CANCELED")
    with pytest.raises(RequestCanceledError):
        async_result.get(timeout=TIMEOUT)


def test_unknown_request_id_is_final_at_once(sim: Any, redis_client: redis.Redis) -> None:
    rid = str(uuid.uuid4())
    with pytest.raises(RequestNotFoundError) as info:
        poll_request.delay(rid).get(timeout=TIMEOUT)
    assert info.value.code == "not_found" and rid in str(info.value)
    assert len(status_calls(sim, rid)) == 1
    assert signal_counts(redis_client, rid) == {}


@pytest.mark.parametrize(
    ("http", "cls", "code"),
    [(401, AuthenticationError, "invalid_api_key"),
     (403, PermissionDeniedError, "insufficient_scope")],
)
def test_auth_errors_are_final_and_name_the_code(sim: Any, http: int, cls: type, code: str) -> None:
    rid = sim.create({"run_s": 5, "faults": [{"endpoint": "status", "http": http}]})
    with pytest.raises(cls) as info:
        poll_request.delay(rid).get(timeout=TIMEOUT)
    assert info.value.code == code and info.value.request_id == rid
    assert len(status_calls(sim, rid)) == 1


def test_429_waits_at_least_retry_after_even_above_the_max_interval(sim: Any) -> None:
    # Given a rate limit whose Retry-After (2 s) exceeds CLIPIA_POLL_MAX_INTERVAL (1 s)
    rid = sim.create({"run_s": 0.2, "faults": [
        {"endpoint": "status", "http": 429, "retry_after": "2", "code": "rate_limit_exceeded"}]})
    # When the request is polled
    assert poll_request.delay(rid).get(timeout=TIMEOUT)["status"] == "COMPLETED"
    # Then the call after the 429 came no sooner than Retry-After
    calls = status_calls(sim, rid)
    assert calls[0].status_code == 429 and calls[1].status_code == 200
    assert calls[1].at - calls[0].at >= 2.0


def test_a_burst_of_server_errors_is_ridden_out(sim: Any) -> None:
    rid = sim.create({"run_s": 0.5, "faults": [
        {"endpoint": "status", "http": 503, "count": 3},
        {"endpoint": "status", "http": 502, "count": 1, "after_calls": 3, "body": "html"}]})
    assert poll_request.delay(rid).get(timeout=TIMEOUT)["status"] == "COMPLETED"
    codes = [c.status_code for c in status_calls(sim, rid)]
    assert codes[:4] == [503, 503, 503, 502] and codes[-1] == 200


def test_malformed_and_slow_answers_are_retried(sim: Any) -> None:
    rid = sim.create({"run_s": 0.5, "faults": [
        {"endpoint": "status", "http": 200, "body": "malformed"},
        {"endpoint": "status", "http": 200, "body": "truncated"},
        {"endpoint": "result", "http": 500, "body": "empty"}]})
    result = poll_request.delay(rid).get(timeout=TIMEOUT)
    assert result["status"] == "COMPLETED"
    assert [c.status_code for c in sim.calls(request_id=rid, endpoint="result")] == [500, 200]


def test_a_202_on_the_result_after_a_terminal_status_is_retried_shortly(sim: Any) -> None:
    rid = sim.create({"run_s": 0.3, "result_pending_calls": 2})
    assert poll_request.delay(rid).get(timeout=TIMEOUT)["status"] == "COMPLETED"
    results = sim.calls(request_id=rid, endpoint="result")
    assert [c.status_code for c in results] == [202, 202, 200]
    # The status call is not repeated once it said terminal
    statuses = status_calls(sim, rid)
    assert statuses[-1].at < results[0].at
    assert results[-1].at - results[0].at < 3.0


def test_a_bad_request_id_is_rejected_at_the_call_site(
    celery_env: dict[str, str], redis_client: redis.Redis
) -> None:
    # A queue no worker reads: anything published would still be there.
    unread = "clipia-test-unread"
    for bad in ("not-a-uuid", "", None, 42, "764cabcf-b745-4b3e-ae38"):
        with pytest.raises(ValueError, match="not a Clipia request id"):
            poll_request.delay(bad)
        with pytest.raises(ValueError, match="not a Clipia request id"):
            poll_request.apply_async((bad,), queue=unread)
    assert redis_client.llen(unread) == 0


def test_a_second_delay_for_the_same_id_follows_without_extra_api_calls(sim: Any) -> None:
    rid = sim.create({"run_s": 2.0, "progress": "none"})
    first = poll_request.delay(rid)
    wait_for(lambda: status_calls(sim, rid), timeout_s=TIMEOUT)
    second = poll_request.delay(rid)
    assert first.get(timeout=TIMEOUT) == second.get(timeout=TIMEOUT)
    calls = status_calls(sim, rid)
    gaps = [b.at - a.at for a, b in itertools.pairwise(calls)]
    # Never two chains polling at once (10 ms allowed for loopback send jitter)
    assert all(g >= 0.2 - 0.01 for g in gaps), gaps
    assert len(sim.calls(request_id=rid, endpoint="result")) == 1
    # And a delay after the outcome is recorded answers at once with no API call
    n = len(sim.calls(request_id=rid))
    assert poll_request.delay(rid).get(timeout=TIMEOUT)["status"] == "COMPLETED"
    assert len(sim.calls(request_id=rid)) == n


@pytest.fixture(scope="module")
def short_deadline_worker(celery_env: dict[str, str], worker_logs: Any) -> Any:
    w = Worker(celery_env, worker_logs, queue="short", name="short", concurrency=1,
               extra_env={"CLIPIA_POLL_TIMEOUT": "2", "CLIPIA_QUEUE": "short"}).start()
    yield w
    w.stop()


def test_the_deadline_fails_the_task_naming_the_request(
    simulator: Any, short_deadline_worker: Worker, redis_client: redis.Redis
) -> None:
    sim = simulator.simulator
    rid = sim.create({"run_s": 60})
    async_result = poll_request.apply_async((rid,), queue="short")
    with pytest.raises(PollTimeoutError) as info:
        async_result.get(timeout=TIMEOUT)
    assert info.value.request_id == rid and 2.0 <= info.value.waited_s < 5.0
    assert info.value.last_status == "IN_PROGRESS"
    wait_for(lambda: signal_counts(redis_client, rid)["failed"] == 1)
    state = get_state(rid)
    assert state is not None and state.outcome == "TIMED_OUT"


@pytest.mark.parametrize(
    ("drop", "extra", "message"),
    [
        ("CLIPIA_API_KEY", {}, "CLIPIA_API_KEY is not set"),
        ("", {"CLIPIA_POLL_INTERVAL": "soon"}, "CLIPIA_POLL_INTERVAL: Input should be a valid"),
        ("", {"CLIPIA_BASE_URL": "http://api.clipia.ai"}, "CLIPIA_BASE_URL: must be an https"),
    ],
)
def test_a_misconfigured_worker_refuses_to_start_with_one_clear_line(
    celery_env: dict[str, str], worker_logs: Any, drop: str, extra: dict[str, str], message: str
) -> None:
    env = {k: v for k, v in celery_env.items() if k != drop}
    w = Worker(env, worker_logs, queue="bad", name=f"bad{len(message)}", extra_env=extra)
    with pytest.raises(RuntimeError, match="worker exited at start"):
        w.start(timeout_s=30)
    assert w.proc is not None and w.proc.wait(timeout=5) == 2
    log = w.log()
    assert "clipia-tasks: cannot start the" in log and message in log
    assert "Traceback" not in log


def test_an_app_that_does_not_import_the_package_can_send_the_task_by_name(
    sim: Any, redis_server: Any
) -> None:
    # Given a separate Celery app that knows only the broker, the backend and the name
    from celery import Celery

    other = Celery("other", broker=redis_server.url, backend=redis_server.url,
                   set_as_current=False)
    other.conf.update(task_serializer="json", accept_content=["json"],
                      result_accept_content=["json"])
    rid = sim.create({"run_s": 0.3})
    # When it sends clipia_tasks.poll_request by name
    result = other.send_task("clipia_tasks.poll_request", args=[rid])
    # Then the worker runs it like any other caller's
    assert result.get(timeout=TIMEOUT)["status"] == "COMPLETED"


def test_the_threads_pool_of_the_procfile_default_runs_the_same_matrix(
    simulator: Any, celery_env: dict[str, str], worker_logs: Any, redis_client: redis.Redis
) -> None:
    sim = simulator.simulator
    w = Worker(celery_env, worker_logs, queue="threads", name="threads", concurrency=16,
               extra_env={"CLIPIA_QUEUE": "threads"})
    w.start_args = ["-P", "threads"]  # type: ignore[attr-defined]
    w.start()
    try:
        ok = [sim.create({"run_s": 0.5, "progress": "linear"}) for _ in range(6)]
        failed = sim.create({"run_s": 0.3, "final": "FAILED"})
        limited = sim.create({"run_s": 0.3, "faults": [
            {"endpoint": "status", "http": 429, "retry_after": "1"}]})
        results = {rid: poll_request.apply_async((rid,), queue="threads")
                   for rid in [*ok, failed, limited]}
        for rid in [*ok, limited]:
            assert results[rid].get(timeout=TIMEOUT)["status"] == "COMPLETED"
        with pytest.raises(RequestFailedError):
            results[failed].get(timeout=TIMEOUT)
        for rid in results:
            wait_for(lambda rid=rid: sum(signal_counts(redis_client, rid).values()) == 1)
    finally:
        w.stop()
