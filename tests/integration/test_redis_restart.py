"""A worker holding countdown messages rides through a Redis restart (clipia_tasks.transport).

The minimal reproduction of kombu 5.7's crash: a worker holds five ``poll_request``
messages in their countdowns, Redis restarts (AOF on), and with kombu's own
transport the worker exits with ``AttributeError: 'NoneType' object has no
attribute 'hostname'``. With this package's transport it reconnects, puts the
held messages back in their queue, and runs each at its ETA once.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from clipia_tasks.redis_server import RedisServer
from tests.conftest import TEST_KEY, WORKER_ENV, Worker, signal_counts, use_env, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

INTERVAL_S = 3.0
RUN_S = 9.0


@pytest.fixture
def own_redis(own_redis_factory: Any) -> RedisServer:
    """A Redis of this test's own, AOF on like production."""
    server: RedisServer = own_redis_factory(persistent=True)
    return server


@pytest.mark.parametrize("down_s", [0.0, 2.0], ids=["restart", "down-2s"])
def test_a_worker_holding_countdowns_survives_a_redis_restart(
    own_redis: RedisServer, simulator: Any, tmp_path: Path, down_s: float
) -> None:
    # Given a worker holding five requests in their countdowns (fixed 3 s polls)
    env = {**WORKER_ENV, "REDIS_URL": own_redis.url, "CLIPIA_BASE_URL": simulator.url,
           "CLIPIA_API_KEY": TEST_KEY, "CLIPIA_POLL_POLICY": "fixed",
           "CLIPIA_POLL_INTERVAL": str(INTERVAL_S), "CLIPIA_POLL_MAX_INTERVAL": "5"}
    worker = Worker(env, tmp_path, queue="celery", name="restart").start()
    try:
        use_env(env)
        from clipia_tasks import get_state, poll_request

        rids = [simulator.simulator.create({"run_s": RUN_S}) for _ in range(5)]
        for rid in rids:
            poll_request.delay(rid)
        client = redis.Redis.from_url(own_redis.url, decode_responses=True)

        def explain() -> str:
            states = {r: get_state(r) for r in rids}
            return (f"unacked: {client.hlen('unacked')}, queue: {client.llen('celery')}, "
                    f"states: {states}\nworker log:\n{worker.log()[-4000:]}")

        wait_for(lambda: all((s := get_state(r)) and s.polls >= 1 for r in rids), 10)
        # ... and holding their next messages: a poll records its answer before it
        # publishes its retry, and a retry that cannot be published is the sweep's to
        # resend (no beat here): restarting in between tests the sweep, not this.
        def held_retries() -> int:
            held = [json.loads(v)[0] for v in client.hvals("unacked")]
            return sum(1 for m in held if m["headers"].get("retries", 0) >= 1)

        wait_for(lambda: held_retries() == len(rids), 10, explain=explain)
        # When Redis restarts (with its data) while they wait
        own_redis.stop(keep_files=True)
        time.sleep(down_s)
        own_redis.start()
        # Then every request completes, and the worker never exited
        wait_for(lambda: all((s := get_state(r)) and s.outcome for r in rids), 40,
                 explain=explain)
        assert worker.running, worker.log()[-3000:]
        assert "Unrecoverable error" not in worker.log()
        assert [get_state(r).outcome for r in rids] == ["COMPLETED"] * 5  # type: ignore[union-attr]
        # And each held message ran once: signals once, no burst of status calls
        for rid in rids:
            wait_for(lambda rid=rid: signal_counts(client, rid)["completed"] == 1)
            calls = simulator.simulator.calls(request_id=rid, endpoint="status")
            assert len(calls) <= RUN_S / INTERVAL_S + 2, [c.at for c in calls]
            gaps = [b.at - a.at for a, b in itertools.pairwise(calls)]
            assert all(g >= INTERVAL_S - 0.05 for g in gaps), gaps
        assert "back in their queues" in worker.log()
        time.sleep(1)
        assert all(signal_counts(client, r) == {"completed": 1} for r in rids)
    finally:
        worker.stop()
