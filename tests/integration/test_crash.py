"""Workers killed with SIGKILL at every point that matters; signals still fire once.

A crash worker loads ``crash_points`` and is restarted whenever it dies; beat
runs the sweep (every 1 s, chains 3 s overdue are re-sent), as in production.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from clipia_tasks import get_state, poll_request
from tests.conftest import WORKER_ENV, Beat, Worker, wait_for

pytestmark = pytest.mark.integration
QUEUE = "crash"
GAP = float(WORKER_ENV["CLIPIA_POLL_INTERVAL"])


@pytest.fixture(scope="module")
def beat(celery_env: dict[str, str], worker_logs: Path) -> Iterator[Beat]:
    b = Beat({**celery_env, "CLIPIA_QUEUE": QUEUE}, worker_logs).start()
    yield b
    b.stop()


def signals_for(client: redis.Redis, rid: str) -> list[dict[str, Any]]:
    return [e for e in (json.loads(x) for x in client.lrange("clipia-test:signals", 0, -1))
            if e["request_id"] == rid]


def assert_gaps(calls: list[Any]) -> None:
    """No two status calls of one request closer than CLIPIA_POLL_INTERVAL (simulator clock)."""
    gaps = [round(b.at - a.at, 4) for a, b in itertools.pairwise(calls)]
    assert all(g >= GAP - 0.01 for g in gaps), f"gaps between status calls: {gaps}"


def run_with_crashes(env: dict[str, str], logs: Path, crash: str, rids: list[str],
                     client: redis.Redis, timeout_s: float = 90) -> list[Any]:
    worker = Worker(env, logs, queue=QUEUE, name=f"crash-{crash.replace(':', '-')}",
                    extra_env={"CLIPIA_TEST_CRASH": crash, "CLIPIA_QUEUE": QUEUE},
                    includes=("tests.integration.signal_recorder",
                              "tests.integration.crash_points")).start()
    results = [poll_request.apply_async((rid,), queue=QUEUE) for rid in rids]
    restarts = 0
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(r.ready() for r in results):
                break
            if worker.proc is not None and worker.proc.poll() is not None:
                worker.kill()  # reap any orphaned pool children too
                worker.start()
                restarts += 1
            time.sleep(0.1)
        assert all(r.ready() for r in results), f"unfinished after {timeout_s} s:\n" + \
            worker.log()[-3000:]
    finally:
        worker.stop()
    return [results, restarts]


@pytest.mark.parametrize("point", ["before_result", "after_finish"])
@pytest.mark.parametrize("target", ["child", "main"])
def test_sigkill_before_the_result_or_after_the_outcome_still_signals_once(
    simulator: Any, celery_env: dict[str, str], worker_logs: Path, redis_client: redis.Redis,
    beat: Beat, point: str, target: str,
) -> None:
    sim = simulator.simulator
    # With the main process killed, other work in flight on that worker meets a
    # different fate each run; one request keeps the crash point exact.
    finals = ("COMPLETED", "FAILED") if target == "child" else ("COMPLETED",)
    rids = [sim.create({"run_s": 0.3, "final": final}) for final in finals]
    results, restarts = run_with_crashes(celery_env, worker_logs, f"{point}:{target}", rids,
                                         redis_client)
    crashes = redis_client.lrange("clipia-test:crashes", 0, -1)
    for rid, res in zip(rids, results, strict=True):
        assert f"{point}:{target}:{rid}" in crashes  # the crash really happened
        fired = signals_for(redis_client, rid)
        wait_for(lambda rid=rid: len(signals_for(redis_client, rid)) >= 1)
        fired = signals_for(redis_client, rid)
        assert len(fired) == 1, fired
        assert fired[0]["signal"] == ("completed" if res.successful() else "failed")
        assert len(sim.calls(request_id=rid, endpoint="result")) <= 2
        # The terminal status was recorded before the crash: the rerun fetches the
        # result without asking /status again, so the gap holds across the crash.
        assert_gaps(sim.calls(request_id=rid, endpoint="status"))
    if target == "main":
        assert restarts >= 1


def test_sigkill_inside_the_receivers_repeats_them_with_one_delivery_id(
    simulator: Any, celery_env: dict[str, str], worker_logs: Path, redis_client: redis.Redis,
    beat: Beat,
) -> None:
    sim = simulator.simulator
    rid = sim.create({"run_s": 0.3})
    run_with_crashes(celery_env, worker_logs, "in_delivery:child", [rid], redis_client)
    fired = wait_for(lambda: len(signals_for(redis_client, rid)) >= 2 and
                     signals_for(redis_client, rid))
    time.sleep(0.5)
    fired = signals_for(redis_client, rid)
    # The documented window: the receiver ran, the process died before the record
    # said so. It runs once more, with the same delivery id to dedupe on.
    assert len(fired) == 2 and {e["delivery_id"] for e in fired} == {rid}


def test_a_worker_killed_between_polls_resumes_through_the_sweep(
    simulator: Any, celery_env: dict[str, str], worker_logs: Path, redis_client: redis.Redis,
    beat: Beat,
) -> None:
    sim = simulator.simulator
    rids = [sim.create({"run_s": 4, "progress": "none"}) for _ in range(3)]
    worker = Worker(celery_env, worker_logs, queue=QUEUE, name="between",
                    extra_env={"CLIPIA_QUEUE": QUEUE}).start()
    results = [poll_request.apply_async((rid,), queue=QUEUE) for rid in rids]
    try:
        # Every request polled once and its next poll planned (no step still running),
        # so the kill lands between polls.
        def between_polls() -> bool:
            states = [get_state(r) for r in rids]
            return all(s is not None and s.polls >= 1 and s.next_poll_at is not None
                       and not redis_client.exists(f"clipia:lock:{s.request_id}")
                       for s in states)

        wait_for(between_polls, timeout_s=20, interval_s=0.02)
        worker.kill()  # main and children, while every request waits out a countdown
        killed_at = time.time()
        worker.start()
        for res in results:
            assert res.get(timeout=60)["status"] == "COMPLETED"
    finally:
        worker.stop()
    for rid in rids:
        assert [e["signal"] for e in signals_for(redis_client, rid)] == ["completed"]
        state_calls = sim.calls(request_id=rid, endpoint="status")
        assert_gaps(state_calls)
        # Resumed within sweep interval + staleness, well before the 60 s visibility timeout
        after = [c.at for c in state_calls if c.at > killed_at]
        assert after and after[0] - killed_at < 15
