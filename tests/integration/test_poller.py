"""Poller steps against a real Redis with a scripted client and a fake clock (no worker)."""

from __future__ import annotations

import itertools
import logging
import random
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis

from clipia_tasks.client import ResultNotReady, StatusSnapshot
from clipia_tasks.errors import PollTimeoutError, RetryableApiError
from clipia_tasks.policy import BackoffPolicy
from clipia_tasks.poller import Again, Finish, Poller, Stale
from clipia_tasks.record import Field, RecordStore, RequestState, record_key
from clipia_tasks.settings import Settings

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


#: What the result endpoint answers while a request runs (the documented 202).
NOT_READY = ResultNotReady(202, "IN_PROGRESS")


class ScriptedClient:
    """Answers status calls from a list (the last repeats) and result calls alike; counts calls.

    A status item is a status, ``(status, queue_position, progress)`` or an exception.
    """

    def __init__(
        self,
        statuses: list[Any],
        result: dict[str, Any] | ResultNotReady = NOT_READY,
    ) -> None:
        self.key_fingerprint = uuid.uuid4().hex  # per-key pauses must not leak across tests
        self.statuses = list(statuses)
        self.result_answer = result
        self.status_calls = 0
        self.result_calls = 0

    def status(self, rid: str) -> StatusSnapshot:
        self.status_calls += 1
        item = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        if isinstance(item, Exception):
            raise item
        if isinstance(item, tuple):
            return StatusSnapshot(rid, *item)
        return StatusSnapshot(rid, item, None, None)

    def result(self, rid: str) -> dict[str, Any] | ResultNotReady:
        self.result_calls += 1
        return self.result_answer


@pytest.fixture
def store(redis_server: Any) -> RecordStore:
    return RecordStore(redis.Redis.from_url(redis_server.url, decode_responses=True), ttl_s=600)


def make(
    store: RecordStore,
    client: ScriptedClient,
    clock: Clock,
    rng: Callable[[], float] = lambda: 0.0,
    **settings: Any,
) -> Poller:
    delivered: list[RequestState] = []
    # Every value pinned: the environment of other tests must not leak in.
    pinned: dict[str, Any] = {"poll_interval_s": 1.0, "poll_max_interval_s": 10.0,
                              "visibility_timeout_s": 3600, "poll_timeout_s": 3600.0,
                              "http_timeout_s": 10.0}
    s = Settings(**(pinned | settings))
    poller = Poller(s, store, lambda: client, BackoffPolicy(1.0, 10.0, rng=lambda: 0.0),
                    delivered.append, clock=clock, rng=rng)
    poller.delivered = delivered  # type: ignore[attr-defined]
    return poller


def test_unknown_status_is_not_terminal_and_logged_once(
    store: RecordStore, caplog: pytest.LogCaptureFixture
) -> None:
    rid, clock = str(uuid.uuid4()), Clock()
    client = ScriptedClient(["PAUSED"])
    poller = make(store, client, clock)
    caplog.set_level(logging.WARNING, logger="clipia_tasks")
    for retries in range(4):
        step = poller.step(rid, "t1", retries, clock.now)
        assert isinstance(step, Again)
        clock.now += step.countdown_s
    # (the third poll also asks the result endpoint whether it ended: see below)
    assert client.status_calls == 4 and client.result_calls == 1
    assert sum("PAUSED" in r.getMessage() for r in caplog.records) == 1


def test_a_retry_after_longer_than_one_countdown_is_split_into_hops_that_call_nothing(
    store: RecordStore,
) -> None:
    rid, clock = str(uuid.uuid4()), Clock()
    client = ScriptedClient([RetryableApiError(rid, "HTTP 429", 5000.0, 429), "IN_PROGRESS"])
    poller = make(store, client, clock, poll_timeout_s=86400)
    step = poller.step(rid, "t1", 0, clock.now)
    assert isinstance(step, Again) and step.countdown_s == 1800.0 and "hop" in step.note
    clock.now += 1800
    step = poller.step(rid, "t1", 1, None)
    assert isinstance(step, Again) and step.countdown_s == 1800.0
    assert client.status_calls == 1  # the hop polled nothing
    clock.now += 1800
    step = poller.step(rid, "t1", 2, None)
    assert isinstance(step, Again) and step.countdown_s == pytest.approx(1400.0)
    clock.now += 1400
    step = poller.step(rid, "t1", 3, None)
    assert client.status_calls == 2 and isinstance(step, Again)


def test_an_older_message_of_the_chain_is_stale_and_calls_nothing(store: RecordStore) -> None:
    rid, clock = str(uuid.uuid4()), Clock()
    client = ScriptedClient(["IN_QUEUE"])
    poller = make(store, client, clock)
    assert isinstance(poller.step(rid, "t1", 0, clock.now), Again)
    clock.now += 5
    assert isinstance(poller.step(rid, "t1", 1, None), Again)
    # A redelivered copy of message 0 (e.g. restored after a visibility timeout)
    assert isinstance(poller.step(rid, "t1", 0, None), Stale)
    assert client.status_calls == 2


def test_a_second_chain_follows_and_takes_over_only_when_the_owner_is_gone(
    store: RecordStore,
) -> None:
    rid, clock = str(uuid.uuid4()), Clock()
    client = ScriptedClient(["IN_PROGRESS"])
    poller = make(store, client, clock)
    first = poller.step(rid, "owner", 0, clock.now)
    assert isinstance(first, Again)
    follow = poller.step(rid, "other", 0, clock.now)
    assert isinstance(follow, Again) and "following" in follow.note
    assert client.status_calls == 1
    # The owner's message is lost; long after its lease, the follower takes over
    clock.now += 1000
    assert isinstance(poller.step(rid, "other", 1, None), Again)
    assert client.status_calls == 2
    state = store.get(rid)
    assert state is not None and state.owner == "other"
    # The old owner's message, if it ever comes back, follows instead of polling
    late = poller.step(rid, "owner", 1, None)
    assert isinstance(late, Again) and "following" in late.note
    assert client.status_calls == 2


def test_the_deadline_belongs_to_the_request_and_is_set_once(store: RecordStore) -> None:
    rid, clock = str(uuid.uuid4()), Clock()
    client = ScriptedClient(["IN_PROGRESS"])
    poller = make(store, client, clock, poll_timeout_s=30)
    start, retries = clock.now, 0
    while True:
        # Later messages carry a later enqueued_at: it must not move the deadline
        step = poller.step(rid, "t1", retries, clock.now)
        if isinstance(step, Finish):
            break
        assert isinstance(step, Again)
        clock.now += step.countdown_s
        retries += 1
    state = store.get(rid)
    assert state is not None and state.deadline_at == start + 30
    assert isinstance(step.error, PollTimeoutError)
    assert 29.0 <= step.error.waited_s <= 31.5
    assert len(poller.delivered) == 1  # type: ignore[attr-defined]


def test_the_outcome_is_recorded_once_and_late_callers_get_it_without_api_calls(
    store: RecordStore,
) -> None:
    rid, clock = str(uuid.uuid4()), Clock()
    body = {"request_id": rid, "status": "COMPLETED", "output": {"images": []}}
    client = ScriptedClient(["COMPLETED"], result=body)
    poller = make(store, client, clock)
    step = poller.step(rid, "t1", 0, clock.now)
    assert isinstance(step, Finish) and step.result == body
    again = poller.step(rid, "t2", 0, clock.now)
    assert isinstance(again, Finish) and again.result == body
    assert (client.status_calls, client.result_calls) == (1, 1)
    state = store.get(rid)
    assert state is not None and state.outcome == "COMPLETED"
    assert not store.finish(rid, {"outcome": "FAILED"})  # first writer won


def test_a_429_on_one_request_pauses_every_poller_of_the_key(store: RecordStore) -> None:
    clock = Clock()
    client = ScriptedClient([RetryableApiError("x", "Clipia answered HTTP 429 "
                                               "rate_limit_exceeded", 20.0, 429), "IN_PROGRESS"])
    poller = make(store, client, clock)
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    step = poller.step(first, "t1", 0, clock.now)
    assert isinstance(step, Again) and step.countdown_s >= 20.0
    # Another request of the same key does not call the API during the pause
    step = poller.step(second, "t2", 0, clock.now + 1)
    assert isinstance(step, Again) and "rate limited" in step.note
    assert client.status_calls == 1 and 18.0 <= step.countdown_s <= 20.5


def test_a_deadline_reached_while_the_api_fails_says_so(store: RecordStore) -> None:
    from clipia_tasks.errors import NetworkError

    rid, clock = str(uuid.uuid4()), Clock()
    client = ScriptedClient([NetworkError(rid, "ConnectError: [Errno 111] Connection refused")])
    poller = make(store, client, clock, poll_timeout_s=10)
    retries, step = 0, poller.step(rid, "t1", 0, clock.now)
    while isinstance(step, Again):
        clock.now += step.countdown_s
        retries += 1
        step = poller.step(rid, "t1", retries, None)
    assert isinstance(step, Finish) and isinstance(step.error, PollTimeoutError)
    assert "Connection refused" in step.error.last_error
    assert "CLIPIA_BASE_URL" in str(step.error)


def test_a_rerun_after_a_crash_in_the_result_fetch_skips_status_and_keeps_the_gap(
    store: RecordStore,
) -> None:
    rid, clock = str(uuid.uuid4()), Clock()
    done = {"status": "COMPLETED", "data": {"images": []}}

    class Crash(BaseException):
        """Stands in for SIGKILL: nothing after the raise runs."""

    client = ScriptedClient(["IN_PROGRESS", "COMPLETED"], result=done)
    poller = make(store, client, clock)
    step = poller.step(rid, "t1", 0, clock.now)
    assert isinstance(step, Again)
    clock.now += step.countdown_s
    real_result = client.result
    client.result = lambda r: (_ for _ in ()).throw(Crash())  # type: ignore[method-assign]
    with pytest.raises(Crash):
        poller.step(rid, "t1", 1, clock.now)
    assert client.status_calls == 2
    # The redelivered copy of the same message: straight to the result, no /status.
    client.result = real_result  # type: ignore[method-assign]
    clock.now += 0.01
    step = poller.step(rid, "t1", 1, clock.now)
    assert isinstance(step, Finish) and step.result == done
    assert client.status_calls == 2 and client.result_calls == 1


class SlowClient(ScriptedClient):
    """Each status call takes ``rtt_s`` on the fake clock; ``crash`` makes the next one die."""

    def __init__(self, clock: Clock, rtt_s: float, statuses: list[Any]) -> None:
        super().__init__(statuses)
        self.clock, self.rtt_s, self.crash, self.sent = clock, rtt_s, False, []

    def status(self, rid: str) -> StatusSnapshot:
        self.sent.append(self.clock.now)
        self.clock.now += self.rtt_s
        if self.crash:
            raise KeyboardInterrupt  # stands in for SIGKILL mid-call: nothing after runs
        return super().status(rid)


def test_the_gap_counts_from_the_answer_and_from_an_unanswered_call_plus_a_margin(
    store: RecordStore,
) -> None:
    rid, clock = str(uuid.uuid4()), Clock()
    client = SlowClient(clock, 0.4, ["IN_PROGRESS"])
    poller = make(store, client, clock)  # interval 1 s, HTTP timeout 10 s
    step = poller.step(rid, "t1", 0, clock.now)
    # A call answered 0.4 s after it was sent: the next comes 1 s after the answer.
    assert isinstance(step, Again) and step.countdown_s == pytest.approx(1.0)
    clock.now += step.countdown_s
    client.crash = True
    with pytest.raises(KeyboardInterrupt):
        poller.step(rid, "t1", 1, clock.now)
    crashed_at = client.sent[-1]
    client.crash = False
    # The redelivered copy: that call may have reached the API at any moment up to
    # 1 s after it was sent (the margin), so it waits margin + interval from the send.
    clock.now = crashed_at + 1.5
    step = poller.step(rid, "t1", 1, clock.now)
    assert isinstance(step, Again) and "keeping the poll gap" in step.note
    assert clock.now + step.countdown_s == pytest.approx(crashed_at + 2.0 + 0.01)
    clock.now += step.countdown_s
    assert isinstance(poller.step(rid, "t1", 2, clock.now), Again)  # the re-sent message
    assert len(client.sent) == 3
    assert all(b - a >= 1.0 for a, b in itertools.pairwise(client.sent))


def follow(
    poller: Poller, clock: Clock, rid: str, messages: int = 10_000
) -> tuple[Any, list[float]]:
    """Run chain ``t1`` of ``rid`` as a worker would, for at most ``messages`` messages.

    Answers the last step and the countdowns of every ``Again`` on the way.
    """
    step: Any = None
    countdowns: list[float] = []
    for retries in range(messages):
        step = poller.step(rid, "t1", retries, clock.now if retries == 0 else None)
        if not isinstance(step, Again):
            break
        countdowns.append(round(step.countdown_s, 3))
        clock.now += step.countdown_s
    return step, countdowns


def test_a_202_after_a_terminal_status_gets_three_quick_retries_then_backs_off(
    store: RecordStore,
) -> None:
    # Given /status says COMPLETED but the result endpoint keeps answering 202
    rid, clock = str(uuid.uuid4()), Clock()
    client = ScriptedClient(["COMPLETED"], result=ResultNotReady(202, "IN_PROGRESS"))
    poller = make(store, client, clock)  # interval 1 s, max interval 10 s
    # When the chain runs six messages
    step, countdowns = follow(poller, clock, rid, messages=6)
    # Then the documented race gets three retries after 0.5 s, then the wait doubles
    assert countdowns == [0.5, 0.5, 0.5, 1.0, 2.0, 4.0]
    assert (client.status_calls, client.result_calls) == (1, 6)
    # and after six answers without a result the terminal status itself is asked again
    assert "asking /status again" in step.note
    assert isinstance(poller.step(rid, "t1", 6, None), Again)
    assert (client.status_calls, client.result_calls) == (2, 7)


def test_a_result_200_that_is_not_terminal_backs_off_and_is_logged_once(
    store: RecordStore, caplog: pytest.LogCaptureFixture
) -> None:
    # Given /status says COMPLETED but the result endpoint answers 200 with IN_PROGRESS
    rid, clock = str(uuid.uuid4()), Clock()
    client = ScriptedClient(["COMPLETED"], result=ResultNotReady(200, "IN_PROGRESS"))
    poller = make(store, client, clock)
    caplog.set_level(logging.WARNING, logger="clipia_tasks")
    # When the chain runs eight messages
    _, countdowns = follow(poller, clock, rid, messages=8)
    # Then no quick retries: the wait doubles from 0.5 s up to the max interval
    assert countdowns == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    # with one WARNING for the request, naming it and what the API answered
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert rid in warnings[0] and "HTTP 200" in warnings[0] and "IN_PROGRESS" in warnings[0]
    # and after six such answers, each result call follows a /status call that said terminal
    assert (client.status_calls, client.result_calls) == (3, 8)


def test_a_result_endpoint_that_never_finishes_costs_bounded_calls_and_the_timeout_says_why(
    store: RecordStore,
) -> None:
    # Given /status says COMPLETED and the result endpoint never has the result
    rid, clock = str(uuid.uuid4()), Clock()
    client = ScriptedClient(["COMPLETED"], result=ResultNotReady(200, "IN_PROGRESS"))
    poller = make(store, client, clock, poll_timeout_s=120)
    # When the chain runs until the deadline
    step, _ = follow(poller, clock, rid)
    # Then after six result tries each result call follows a /status call that said
    # terminal, at the max interval: under 30 calls in 120 s, not 240 (one per 0.5 s)
    assert client.result_calls == 6 + (client.status_calls - 1)
    assert client.status_calls + client.result_calls <= 30
    # and the timeout names the real cause instead of suggesting a longer timeout
    assert isinstance(step, Finish) and isinstance(step.error, PollTimeoutError)
    assert step.error.cause == PollTimeoutError.RESULT_NOT_TERMINAL
    assert "result endpoint" in str(step.error) and rid in str(step.error)
    assert "raise CLIPIA_POLL_TIMEOUT" not in str(step.error)


def test_an_unknown_status_asks_the_result_after_three_polls_and_records_a_terminal_one(
    store: RecordStore,
) -> None:
    # Given /status keeps answering DONE (not in the API docs), and the request has finished
    rid, clock = str(uuid.uuid4()), Clock()
    body = {"request_id": rid, "status": "COMPLETED", "output": {"images": []}}
    client = ScriptedClient(["DONE"], result=body)
    poller = make(store, client, clock)
    # When the chain runs
    step, _ = follow(poller, clock, rid)
    # Then the third poll asks the result endpoint once, and its answer is the outcome
    assert isinstance(step, Finish) and step.result == body
    assert (client.status_calls, client.result_calls) == (3, 1)
    state = store.get(rid)
    assert state is not None and state.outcome == "COMPLETED"
    assert len(poller.delivered) == 1  # type: ignore[attr-defined]


def test_an_unknown_status_without_a_result_backs_off_and_asks_again_every_third_poll(
    store: RecordStore,
) -> None:
    # Given /status keeps answering DONE and the result endpoint answers 202
    rid, clock = str(uuid.uuid4()), Clock()
    client = ScriptedClient(["DONE"])
    poller = make(store, client, clock)  # interval 1 s, max interval 10 s
    # When the chain runs nine messages
    _, countdowns = follow(poller, clock, rid, messages=9)
    # Then /status is polled with a doubling backoff, and the result asked every third poll
    assert countdowns == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0, 10.0, 10.0]
    assert (client.status_calls, client.result_calls) == (9, 3)


def test_a_deadline_reached_on_an_unknown_status_says_so(store: RecordStore) -> None:
    # Given /status keeps answering DONE and the result endpoint never has a result
    rid, clock = str(uuid.uuid4()), Clock()
    client = ScriptedClient(["DONE"])
    poller = make(store, client, clock, poll_timeout_s=60)
    # When the chain runs until the deadline
    step, _ = follow(poller, clock, rid)
    # Then the timeout names the undocumented status, not the length of the generation
    assert isinstance(step, Finish) and isinstance(step.error, PollTimeoutError)
    assert step.error.cause == PollTimeoutError.UNKNOWN_STATUS
    assert "'DONE'" in str(step.error) and "do not list" in str(step.error)
    assert "raise CLIPIA_POLL_TIMEOUT" not in str(step.error)


def test_pollers_paused_together_wake_at_distinct_moments_after_the_pause(
    store: RecordStore,
) -> None:
    # Given a 429 with Retry-After 20 s on one request of a key
    clock = Clock()
    client = ScriptedClient([RetryableApiError("x", "Clipia answered HTTP 429 "
                                               "rate_limit_exceeded", 20.0, 429), "IN_PROGRESS"])
    poller = make(store, client, clock, rng=random.Random(7).random)
    assert isinstance(poller.step(str(uuid.uuid4()), "t0", 0, clock.now), Again)
    pause_end = store.pause_until(client.key_fingerprint)
    assert pause_end == clock.now + 20
    # When 50 other requests of the same key come up 1 s into the pause
    clock.now += 1
    wakes = []
    for i in range(50):
        step = poller.step(str(uuid.uuid4()), f"t{i}", 0, clock.now)
        assert isinstance(step, Again) and "rate limited" in step.note
        wakes.append(clock.now + step.countdown_s)
    # Then none calls the API, none wakes before the pause ends, and no two wake together:
    # they spread over 10 % of the 19 s left (1.9 s; at least 1 s)
    assert client.status_calls == 1
    assert min(wakes) >= pause_end and max(wakes) <= pause_end + 1.9
    assert len(set(wakes)) == 50
    assert max(wakes) - min(wakes) > 1.5


def test_progress_and_queue_position_out_of_range_are_clamped_and_logged_once(
    store: RecordStore, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clipia_tasks import _runtime
    from clipia_tasks.state import get_state

    monkeypatch.setattr(_runtime, "get_store", lambda: store)
    # Given /status answers a queue position of -5, then a progress of 150, twice
    rid, clock = str(uuid.uuid4()), Clock()
    client = ScriptedClient([("IN_QUEUE", -5, None), ("IN_PROGRESS", None, 150),
                             ("IN_PROGRESS", None, 150)])
    poller = make(store, client, clock)
    caplog.set_level(logging.WARNING, logger="clipia_tasks")
    shown = []
    for retries in range(3):
        # When each answer is polled
        step = poller.step(rid, "t1", retries, clock.now if retries == 0 else None)
        assert isinstance(step, Again)
        clock.now += step.countdown_s
        state = get_state(rid)
        assert state is not None
        shown.append((state.queue_position, state.progress))
        # Then the web app never sees a value outside the documented range, nor does the policy
        assert all(0 <= (o.queue_position or 0) and 0 <= (o.progress or 0) <= 100
                   for o in state.history)
    assert shown == [(0, None), (None, 100), (None, 100)]
    # and one WARNING for the request names it and the raw value
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and rid in warnings[0] and "-5" in warnings[0]
    # and a value written unclamped (by a worker from before the fix) reads clamped too
    store.redis.hset(record_key(rid), mapping={Field.PROGRESS: "150", Field.QUEUE_POSITION: "-5"})
    state = get_state(rid)
    assert state is not None and (state.queue_position, state.progress) == (0, 100)
