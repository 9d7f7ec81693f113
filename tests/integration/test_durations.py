"""Learned durations per model, end to end: real worker, real Redis, the simulator."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import redis

from clipia_tasks import get_state, poll_request
from clipia_tasks.durations import MAX_ENCODED_BYTES, decode, prior
from tests.conftest import Worker

pytestmark = pytest.mark.integration


QUEUE = "durations"


@pytest.fixture(scope="module")
def learner(celery_env: dict[str, str], worker_logs: Any) -> Any:
    """A worker with the default poll intervals (1 s, up to 60 s): the session worker's
    0.2-1 s ones would cap every wait at 1 s; 30 s: half the test visibility timeout)."""
    w = Worker(celery_env, worker_logs, queue=QUEUE, name="durations",
               extra_env={"CLIPIA_POLL_INTERVAL": "1", "CLIPIA_POLL_MAX_INTERVAL": "30"})
    w.start()
    yield w
    w.stop()


@pytest.fixture
def sim(simulator: Any, learner: Worker) -> Any:
    return simulator.simulator


def follow(rid: str, model: str) -> Any:
    return poll_request.apply_async((rid,), {"model": model}, queue=QUEUE)


def test_a_model_seen_before_gets_its_first_status_call_near_the_expected_end(
    sim: Any, redis_client: redis.Redis
) -> None:
    model = f"test/learn-{uuid.uuid4().hex[:8]}"
    script = {"queue_s": 0.3, "run_s": 2.5, "progress": "none", "model": model}
    # Given a few requests of one model followed to the end with model=
    warm = [sim.create(script) for _ in range(4)]
    results = [follow(rid, model) for rid in warm]
    for res in results:
        assert res.get(timeout=60)["status"] == "COMPLETED"
    stored = redis_client.get(f"clipia:durations:{model}")
    assert stored is not None and len(stored) <= MAX_ENCODED_BYTES
    learned = prior(decode(stored))
    assert learned is not None, decode(stored)
    # When another request of that model starts
    rid = sim.create(script)
    started = time.time()
    assert follow(rid, model).get(timeout=60)["status"] == "COMPLETED"
    # Then its first status call waited for the model's expected end (less a poll
    # interval and a margin: ~1.6 s here) instead of coming at once as without a prior,
    # and it needed no more calls than the warm-up requests without a prior did
    calls = sim.calls(request_id=rid, endpoint="status")
    assert calls and calls[0].at - started >= 1.0, [c.at - started for c in calls]
    before = min(len(sim.calls(request_id=w, endpoint="status")) for w in warm[:2])
    assert len(calls) <= before, (len(calls), before)
    state = get_state(rid)
    assert state is not None and state.model == model and state.outcome == "COMPLETED"


def test_a_request_much_slower_than_its_model_still_completes(
    sim: Any, redis_client: redis.Redis
) -> None:
    model = f"test/slow-{uuid.uuid4().hex[:8]}"
    fast = {"queue_s": 0.2, "run_s": 1.5, "progress": "linear", "model": model}
    for res in [follow(sim.create(fast), model) for _ in range(4)]:
        res.get(timeout=60)
    assert prior(decode(redis_client.get(f"clipia:durations:{model}"))) is not None
    # A request three times slower than the model's history falls back to backoff
    rid = sim.create({**fast, "run_s": 4.5})
    started = time.time()
    assert follow(rid, model).get(timeout=60)["status"] == "COMPLETED"
    fetched = sim.calls(request_id=rid, endpoint="result")[-1].at
    # and still sees the end within the age-capped backoff's bound (15 % of its age + a poll)
    assert fetched - started - (0.2 + 4.5) <= 0.15 * (0.2 + 4.5) + 1.5
