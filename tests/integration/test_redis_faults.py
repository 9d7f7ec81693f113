"""Redis refusing writes, Redis losing its data, and a first message lost before it ran.

Each test runs its own Redis (the session's stays clean) with a real worker, beat
(the sweep) and the simulator over loopback.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from clipia_tasks.redis_server import RedisServer
from tests.conftest import TEST_KEY, WORKER_ENV, Beat, Worker, signal_counts, use_env, wait_for

pytestmark = pytest.mark.integration


def test_a_first_message_lost_before_it_ran_is_resent_by_the_sweep(
    simulator: Any, worker: Worker, redis_client: redis.Redis, celery_env: dict[str, str],
    worker_logs: Path,
) -> None:
    from clipia_tasks import get_state, poll_request
    from clipia_tasks.tasks import sweep

    # Given a request enqueued on a queue nobody reads (as if its message were lost)
    rid = simulator.simulator.create({"run_s": 1})
    res = poll_request.apply_async((rid,), queue=f"lost-{uuid.uuid4().hex[:6]}")
    # Then Redis already knows it: enqueued, not polled yet (not "unknown")
    state = get_state(rid)
    assert state is not None and state.status == "SUBMITTED" and state.polls == 0
    assert get_state(str(uuid.uuid4())) is None  # an id nobody enqueued
    # When the sweep runs after CLIPIA_SWEEP_STALE_AFTER (3 s here)
    time.sleep(float(WORKER_ENV["CLIPIA_SWEEP_STALE_AFTER"]) + 0.5)
    sweep.delay()
    # Then the chain is re-sent under its own task id, and the caller's result resolves
    assert res.get(timeout=30)["status"] == "COMPLETED"
    wait_for(lambda: signal_counts(redis_client, rid)["completed"] == 1)


@pytest.fixture
def own_redis(own_redis_factory: Any) -> RedisServer:
    """A Redis of this test's own, keeping nothing on restart."""
    server: RedisServer = own_redis_factory(persistent=False)
    return server


def _env(server: RedisServer, simulator: Any) -> dict[str, str]:
    return {**WORKER_ENV, "REDIS_URL": server.url, "CLIPIA_BASE_URL": simulator.url,
            "CLIPIA_API_KEY": TEST_KEY, "CLIPIA_POLL_POLICY": "fixed",
            "CLIPIA_POLL_INTERVAL": "0.5"}


@pytest.mark.chaos
def test_a_full_redis_loses_nothing_and_says_so_once(
    own_redis: RedisServer, simulator: Any, tmp_path: Path
) -> None:
    env = _env(own_redis, simulator)
    worker = Worker(env, tmp_path, name="full").start()
    beat = Beat(env, tmp_path).start()
    client = redis.Redis.from_url(own_redis.url, decode_responses=True)
    try:
        use_env(env)
        from clipia_tasks import RedisFullError, get_state, poll_request

        # Given 10 requests being followed
        rids = [simulator.simulator.create({"run_s": 6, "progress": "linear"})
                for _ in range(10)]
        for rid in rids:
            poll_request.delay(rid)
        wait_for(lambda: all((s := get_state(r)) and s.polls >= 1 for r in rids), 15)
        # When Redis reaches maxmemory (noeviction) for 6 s
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", "1")  # bytes: every write that adds memory is refused
        late = simulator.simulator.create({"run_s": 1})
        # Then delay() says so at the call site, and nothing of it is left behind
        with pytest.raises(RedisFullError, match="out of memory") as info:
            poll_request.delay(late)
        assert "maxmemory" in str(info.value)
        time.sleep(6)
        client.config_set("maxmemory", "0")
        assert get_state(late) is None
        # And once it has room, every request completes, signals once, the worker never exited
        wait_for(lambda: all((s := get_state(r)) and s.outcome == "COMPLETED" for r in rids),
                 60)
        for rid in rids:
            wait_for(lambda rid=rid: signal_counts(client, rid)["completed"] == 1, 10)
        assert worker.running, worker.log()[-3000:]
        log = worker.log()
        onsets = log.count("Redis is out of memory (maxmemory reached) and refuses writes")
        assert 1 <= onsets <= 3  # once per worker process (main + 2 pool children) at most
        assert "Redis accepts writes again" in log
        assert "Unrecoverable error" not in log
        time.sleep(1)
        assert all(signal_counts(client, r) == {"completed": 1} for r in rids)
        refusals = log.count("out of memory")
        print(f"\nfull Redis: 10 requests in flight, 0 lost, 0 doubled, {onsets} onset ERROR(s), "
              f"{refusals} log lines naming memory")
    finally:
        beat.stop()
        worker.stop()


@pytest.mark.chaos
def test_a_redis_that_lost_its_data_is_noticed_and_resume_follows_the_ids_again(
    own_redis: RedisServer, simulator: Any, tmp_path: Path
) -> None:
    env = _env(own_redis, simulator)
    worker = Worker(env, tmp_path, name="lost").start()
    try:
        use_env(env)
        from clipia_tasks import ResumeAction, get_state, poll_request, resume

        # Given one request done and five in flight, on a Redis without persistence
        done = simulator.simulator.create({"run_s": 0.2})
        assert poll_request.delay(done).get(timeout=20)["status"] == "COMPLETED"
        rids = [simulator.simulator.create({"run_s": 8}) for _ in range(5)]
        for rid in rids:
            poll_request.delay(rid)
        wait_for(lambda: all((s := get_state(r)) and s.polls >= 1 for r in rids), 15)
        # When Redis restarts empty (no AOF, no snapshots: it keeps nothing)
        own_redis.restart()
        # Then the worker notices and says how to resume, and get_state says "unknown"
        wait_for(lambda: "Redis lost its data" in worker.log(), 20)
        assert "clipia_tasks.resume" in worker.log()
        assert all(get_state(r) is None for r in rids)
        # When the app resumes the ids it still has (and one that ended)
        use_env(env)
        done_again = poll_request.delay(done).get(timeout=20)  # a new record: it ended
        assert done_again["status"] == "COMPLETED"
        outcome = resume([*rids, done])
        # Then the lost ones are followed again and complete; the ended one is left alone
        assert [r.action for r in outcome] == [ResumeAction.RESUMED] * 5 + [
            ResumeAction.ALREADY_ENDED]
        for r in outcome[:5]:
            assert r.result.get(timeout=30)["status"] == "COMPLETED"
        assert worker.running and "Unrecoverable error" not in worker.log()
        print("\ndata loss: 5 in flight lost by Redis, noticed by the worker, 5 resumed and "
              "completed; 1 ended id left alone")
    finally:
        worker.stop()
