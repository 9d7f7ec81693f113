"""watch / awatch: a request's record pushed from Redis as it changes (real Redis, worker)."""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
import uuid
from typing import Any

import pytest
import redis

from clipia_tasks import awatch, get_state, poll_request, watch
from clipia_tasks.record import Field
from tests.conftest import Worker, use_env, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def sim(simulator: Any, worker: Worker, celery_env: dict[str, str]) -> Any:
    return simulator.simulator


def collect(it: Any, out: queue.Queue[Any]) -> threading.Thread:
    """Drain a watch() in a thread, putting each snapshot (or the exception) on ``out``."""
    def run() -> None:
        try:
            for snap in it:
                out.put(snap)
            out.put("END")
        except Exception as exc:  # handed to the test
            out.put(exc)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_watch_follows_a_request_from_submitted_to_its_outcome(sim: Any) -> None:
    # Given a request that queues, then runs with linear progress
    rid = sim.create({"queue_s": 0.5, "run_s": 3.0, "progress": "linear"})
    poll_request.delay(rid)
    # When a web process watches it
    snaps = list(watch(rid, timeout_s=30))
    # Then it sees it start, progress rise, and the outcome last, once
    statuses = [s["status"] for s in snaps]
    assert statuses[-1] == "COMPLETED" and snaps[-1]["outcome"] == "COMPLETED"
    assert [s for s in snaps if s["outcome"]] == [snaps[-1]]
    progress = [s["progress"] for s in snaps
                if s["status"] == "IN_PROGRESS" and s["progress"] is not None]
    assert len(progress) >= 2 and progress == sorted(progress) and progress[0] < progress[-1]
    assert snaps[-1]["progress"] == 100
    # and once it has a percentage, the bar never goes blank (the poll that sees the
    # end, before the result is fetched, keeps the last reading)
    first = next(i for i, s in enumerate(snaps) if s["progress"] is not None)
    assert all(s["progress"] is not None for s in snaps[first:]), snaps
    assert snaps[-1]["result"]["output"] == sim.result_of(rid)["output"]
    # An ETA while it ran with a measurable rate, none once ended
    assert any(s["eta_at"] for s in snaps if s["status"] == "IN_PROGRESS")
    assert snaps[-1]["eta_at"] is None
    # And consecutive snapshots always differ (no duplicates)
    assert all(a != b for a, b in itertools.pairwise(snaps))
    # The snapshot is get_state's as_dict
    state = get_state(rid)
    assert state is not None and snaps[-1] == state.as_dict()


def test_watching_a_request_that_already_ended_gives_its_final_state_at_once(sim: Any) -> None:
    rid = sim.create({"run_s": 0.2})
    poll_request.delay(rid).get(timeout=20)
    started = time.monotonic()
    snaps = list(watch(rid, timeout_s=30))
    assert len(snaps) == 1 and snaps[0]["outcome"] == "COMPLETED"
    assert time.monotonic() - started < 5  # it did not wait for anything


def test_an_unknown_id_is_waited_for_then_followed(sim: Any) -> None:
    rid = sim.create({"run_s": 0.5})
    out: queue.Queue[Any] = queue.Queue()
    collect(watch(rid, timeout_s=30), out)
    time.sleep(0.6)
    assert out.empty()  # nothing yet: Redis does not know the id
    poll_request.delay(rid)
    first = out.get(timeout=10)
    assert first["status"] in ("SUBMITTED", "IN_QUEUE", "IN_PROGRESS", "COMPLETED")
    last = first
    while last != "END":
        final, last = last, out.get(timeout=20)
    assert final["outcome"] == "COMPLETED"


def test_an_id_that_never_comes_times_out_naming_it(celery_env: dict[str, str]) -> None:
    rid = str(uuid.uuid4())
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=f"{rid} is not known to Redis after 0.5 s"):
        list(watch(rid, timeout_s=0.5))
    assert time.monotonic() - started < 3
    with pytest.raises(ValueError, match="watch: 'not-a-uuid' is not a Clipia request id"):
        list(watch("not-a-uuid"))


def test_a_change_is_pushed_not_found_by_a_later_reread(
    celery_env: dict[str, str], redis_client: redis.Redis
) -> None:
    """A record change reaches the watcher by its published hint, long before RESYNC_S."""
    from clipia_tasks import _runtime
    from clipia_tasks.live import RESYNC_S

    store = _runtime.get_store()
    rid = str(uuid.uuid4())
    now = time.time()
    store.claim(rid, "t1", 0, first_enqueued_at=now, timeout_s=600, lease_s=600, run_s=10)
    out: queue.Queue[Any] = queue.Queue()
    collect(watch(rid, timeout_s=30), out)
    assert out.get(timeout=5)["status"] == "SUBMITTED"
    time.sleep(0.5)  # subscribed by now
    for progress in (10, 20):
        sent = time.monotonic()
        assert store.schedule(rid, "t1", gen_next=1, lease_until=now + 600,
                              wake_at=now + 300,
                              fields={Field.STATUS: "IN_PROGRESS", Field.PROGRESS: progress})
        snap = out.get(timeout=10)
        assert snap["progress"] == progress
        assert time.monotonic() - sent < RESYNC_S / 4
    store.finish(rid, {Field.OUTCOME: "COMPLETED", Field.STATUS: "COMPLETED",
                       Field.RESULT: "{}"})
    assert out.get(timeout=10)["outcome"] == "COMPLETED"
    assert out.get(timeout=10) == "END"


def test_awatch_is_the_async_twin(sim: Any) -> None:
    rid = sim.create({"queue_s": 0.3, "run_s": 1.5, "progress": "linear"})
    poll_request.delay(rid)

    async def follow() -> list[dict[str, Any]]:
        return [s async for s in awatch(rid, timeout_s=30)]

    snaps = asyncio.run(follow())
    assert snaps[-1]["outcome"] == "COMPLETED"
    assert any(s["status"] == "IN_PROGRESS" for s in snaps)

    async def unknown() -> None:
        async for _ in awatch(str(uuid.uuid4()), timeout_s=0.3):
            pass

    with pytest.raises(TimeoutError, match="not known to Redis"):
        asyncio.run(unknown())


def test_many_watchers_share_one_subscription_per_process(
    celery_env: dict[str, str], redis_client: redis.Redis
) -> None:
    from clipia_tasks.live import _hub

    ids = [str(uuid.uuid4()) for _ in range(50)]
    stop = threading.Event()
    threads = []
    for rid in ids:
        def run(rid: str = rid) -> None:
            with pytest.raises(TimeoutError):
                for _ in watch(rid, timeout_s=3):
                    pass
        t = threading.Thread(target=run, daemon=True)
        t.start()
        threads.append(t)
    try:
        wait_for(lambda: _hub().watched() == 50, timeout_s=5)
        # One pub/sub connection in all, subscribed to the 50 channels
        channels = [f"clipia:changes:{r}" for r in ids]
        wait_for(lambda: [n for _, n in redis_client.pubsub_numsub(*channels)] == [1] * 50,
                 timeout_s=5)
        # (Celery's result consumer has a pub/sub connection of its own, with few channels)
        ours = [c for c in redis_client.client_list(_type="pubsub") if int(c["sub"]) >= 50]
        assert len(ours) == 1 and int(ours[0]["sub"]) == 50, ours
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)


@pytest.mark.chaos
def test_a_watcher_follows_redis_through_a_restart(
    simulator: Any, celery_env: dict[str, str], own_redis_factory: Any, worker_logs: Any
) -> None:
    """Redis restarts (persistent) while a request runs: the watcher re-subscribes and
    still ends with the outcome, which the worker recorded after the restart."""
    server = own_redis_factory(persistent=True)
    env = {**celery_env, "REDIS_URL": server.url}
    use_env(env)
    sim = simulator.simulator
    with Worker(env, worker_logs, queue="live-restart", name="live-restart") as w:
        rid = sim.create({"queue_s": 0.2, "run_s": 5.0, "progress": "linear"})
        poll_request.apply_async((rid,), queue="live-restart")
        out: queue.Queue[Any] = queue.Queue()
        collect(watch(rid, timeout_s=60), out)
        first = out.get(timeout=10)
        assert first["outcome"] is None
        server.restart()
        seen = [first]
        try:
            while (item := out.get(timeout=45)) != "END":
                assert not isinstance(item, Exception), item
                seen.append(item)
        except queue.Empty:
            state = get_state(rid)
            saw = [(s["status"], s["progress"]) for s in seen]
            raise AssertionError(f"no outcome seen; saw {saw}, record now "
                                 f"{state and state.as_dict()}\n{w.log()[-3000:]}") from None
        assert seen[-1]["outcome"] == "COMPLETED"
        assert w.running
