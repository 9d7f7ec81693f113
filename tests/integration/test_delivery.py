"""clipia_tasks.delivery against a real Redis: signals once, answered chains, callback flags.

The worker-level crash tests (``test_crash.py``) kill processes at each point of
delivery; these pin the module's own rules, in-process, with a real Redis and a
real HTTP receiver on loopback.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from clipia_tasks import _runtime, delivery
from clipia_tasks.callbacks import delivery_id
from clipia_tasks.delivery import CallbackDone, CallbackRetry
from clipia_tasks.record import (
    CHAINS_KEY,
    DELIVERY_LOCK_PREFIX,
    DeliveryTurn,
    RecordStore,
    record_key,
)
from clipia_tasks.signals import request_completed, request_failed
from tests.conftest import Receiver

pytestmark = pytest.mark.integration

RESULT = {"request_id": "", "status": "COMPLETED", "model": "sim/image",
          "output": {"images": [{"url": "http://127.0.0.1/x.png"}]}, "cost": 1}


@pytest.fixture
def store(celery_env: dict[str, str]) -> RecordStore:
    _runtime.reset()
    return _runtime.get_store()


@pytest.fixture
def fired() -> Iterator[list[tuple[str, str, str]]]:
    """Signals fired in this process: (signal, request_id, delivery_id)."""
    seen: list[tuple[str, str, str]] = []

    def on_completed(sender: Any, request_id: str, delivery_id: str, **_: Any) -> None:
        time.sleep(0.05)  # a receiver that takes a moment widens any race
        seen.append(("completed", request_id, delivery_id))

    def on_failed(sender: Any, request_id: str, delivery_id: str, **_: Any) -> None:
        seen.append(("failed", request_id, delivery_id))

    request_completed.connect(on_completed, weak=False)
    request_failed.connect(on_failed, weak=False)
    yield seen
    request_completed.disconnect(on_completed)
    request_failed.disconnect(on_failed)


def _completed(store: RecordStore) -> str:
    rid = str(uuid.uuid4())
    assert store.finish(rid, {"outcome": "COMPLETED", "status": "COMPLETED",
                              "result": {**RESULT, "request_id": rid}})
    return rid


def test_signals_fire_once_however_many_callers_race(
    store: RecordStore, fired: list[tuple[str, str, str]]
) -> None:
    # Given a recorded outcome
    rid = _completed(store)
    state = store.get(rid)
    assert state is not None
    # When eight threads try to deliver it at once
    turns: list[DeliveryTurn] = []
    threads = [threading.Thread(target=lambda: turns.append(delivery.fire_signals(state)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then exactly one fired, with the request id as delivery id, and the record says so
    assert turns.count(DeliveryTurn.GO) == 1
    assert fired == [("completed", rid, rid)]
    after = store.get(rid)
    assert after is not None and after.delivered
    # And a later caller is told it is done
    assert delivery.fire_signals(after) is DeliveryTurn.SKIP
    assert len(fired) == 1


def test_no_outcome_no_signal(store: RecordStore, fired: list[tuple[str, str, str]]) -> None:
    rid = str(uuid.uuid4())
    store.claim(rid, "t1", 0, first_enqueued_at=time.time(), timeout_s=60, lease_s=30,
                run_s=10)
    state = store.get(rid)
    assert state is not None
    assert delivery.fire_signals(state) is DeliveryTurn.SKIP
    assert fired == []


def test_a_delivery_lock_of_a_dead_process_is_taken_over_and_a_live_one_waits(
    store: RecordStore, redis_client: redis.Redis, fired: list[tuple[str, str, str]]
) -> None:
    rid = _completed(store)
    state = store.get(rid)
    assert state is not None
    import socket

    # Given a lock held by a live process on another host: wait for it
    redis_client.set(DELIVERY_LOCK_PREFIX + rid, "other-host|1|deliver|0", px=60_000)
    assert delivery.fire_signals(state) is DeliveryTurn.BUSY
    assert fired == []
    # Given a lock left by a process of this host that died (pid far beyond pid_max)
    redis_client.set(DELIVERY_LOCK_PREFIX + rid, f"{socket.gethostname()}|99999999|d|0",
                     px=60_000)
    # Then it is taken over at once
    assert delivery.fire_signals(state) is DeliveryTurn.GO
    assert fired == [("completed", rid, rid)]


def test_failed_outcomes_fire_request_failed_with_the_error(
    store: RecordStore, fired: list[tuple[str, str, str]]
) -> None:
    rid = str(uuid.uuid4())
    store.finish(rid, {"outcome": "TIMED_OUT", "error": {
        "type": "PollTimeoutError", "args": [rid, 60.0, "IN_PROGRESS", ""]}})
    state = store.get(rid)
    assert state is not None
    assert delivery.fire_signals(state) is DeliveryTurn.GO
    assert fired == [("failed", rid, rid)]


def test_delivery_flags_never_recreate_an_expired_record(
    store: RecordStore, redis_client: redis.Redis
) -> None:
    # Given a chain whose record expired
    rid = str(uuid.uuid4())
    store.plan(rid, "t1", time.time())
    # When it is marked answered and its callback done
    delivery.chain_answered(rid, "t1")
    assert not store.mark_callback_done(rid, "t1")
    store.end_delivery(rid, "token")
    # Then no record without a TTL appears, and the chain left the index
    assert not redis_client.exists(record_key(rid))
    assert redis_client.zscore(CHAINS_KEY, f"{rid} t1") is None


def test_an_answered_chain_is_recorded_and_leaves_the_index(
    store: RecordStore, redis_client: redis.Redis
) -> None:
    rid = _completed(store)
    store.plan(rid, "t1", time.time())
    delivery.chain_answered(rid, "t1")
    state = store.get(rid)
    assert state is not None and state.answered == frozenset({"t1"})
    assert redis_client.zscore(CHAINS_KEY, f"{rid} t1") is None
    assert redis_client.ttl(record_key(rid)) > 0


def test_a_2xx_callback_is_recorded_and_never_posted_again(
    store: RecordStore, receiver: Receiver
) -> None:
    rid = _completed(store)
    hook = receiver
    hook.codes = [204, 204]
    now = time.time()
    first = delivery.attempt_callback(rid, "t1", hook.url, attempt=0, first_attempt_at=now)
    assert first == CallbackDone({"delivered": True, "status_code": 204,
                                  "delivery_id": delivery_id(rid, "t1")})
    again = delivery.attempt_callback(rid, "t1", hook.url, attempt=0, first_attempt_at=now)
    assert again == CallbackDone({"delivered": False, "reason": "already delivered"})
    assert len(hook.posts) == 1
    assert hook.posts[0]["headers"]["X-Clipia-Webhook-Id"] == delivery_id(rid, "t1")
    # Another chain of the same request has its own flag
    other = delivery.attempt_callback(rid, "t2", hook.url, attempt=0, first_attempt_at=now)
    assert isinstance(other, CallbackDone) and other.answer["delivered"] is True
    assert len(hook.posts) == 2


def test_callback_5xx_is_retried_with_backoff_and_4xx_given_up(
    store: RecordStore, receiver: Receiver
) -> None:
    rid = _completed(store)
    receiver.codes = [503, 410, 503]
    now = time.time()
    retry = delivery.attempt_callback(rid, "t1", receiver.url, attempt=3, first_attempt_at=now)
    assert retry == CallbackRetry(8.0, "HTTP 503")
    done = delivery.attempt_callback(rid, "t2", receiver.url, attempt=0, first_attempt_at=now)
    assert done == CallbackDone({"delivered": False, "status_code": 410})
    # Past CLIPIA_CALLBACK_GIVE_UP_AFTER (default 1 h) a failing endpoint is given up
    late = delivery.attempt_callback(rid, "t3", receiver.url, attempt=9,
                                     first_attempt_at=now - 7200)
    assert late == CallbackDone({"delivered": False, "reason": "gave up (HTTP 503)"})


def test_a_callback_without_an_outcome_sends_nothing(
    store: RecordStore, receiver: Receiver
) -> None:
    answer = delivery.attempt_callback(str(uuid.uuid4()), "t1", receiver.url, attempt=0,
                                       first_attempt_at=time.time())
    assert answer == CallbackDone({"delivered": False, "reason": "no outcome"})
    assert receiver.posts == []
