"""One step of following a request: what a ``poll_request`` message does when it runs.

:meth:`Poller.step` claims the request record, makes at most one status call
and one result call, records what it saw, and answers with what the Celery
task must do next: :class:`Finish` (return the result or raise the error),
:class:`Again` (re-send itself with a countdown) or :class:`Stale` (exit
quietly; another message carries the chain). Keeping this out of the task
keeps the task thin and lets the logic run against a real Redis without a
worker.

Answers that do not fit the API docs keep the calls bounded:

* ``/status`` said terminal but the result endpoint has no terminal result. A
  202 is the documented race (the result lags ``/status`` by moments): retried
  after 0.5 s (:data:`RESULT_RACE_DELAY_S`, never more than
  ``CLIPIA_POLL_INTERVAL``), :data:`RESULT_RACE_RETRIES` times. After that, and
  at once for a 200 whose status is not terminal (one WARNING per request), the
  wait doubles from 0.5 s (1, 2, 4 ... s), at most ``CLIPIA_POLL_MAX_INTERVAL``.
  After :data:`RESULT_WAITS_BEFORE_STATUS` such answers the terminal status
  itself is doubted: the poller goes back to ``/status`` and asks for the result
  only when ``/status`` says terminal again, so from then on there is at most
  one result call per status call, at the backed-off pace. (The record keeps the
  terminal status meanwhile: ``schedule`` never overwrites one with a pending one;
  the history shows what ``/status`` said.)
* A status the docs do not list (one WARNING per request) is polled with a
  backoff that doubles from ``CLIPIA_POLL_INTERVAL`` up to
  ``CLIPIA_POLL_MAX_INTERVAL`` (or the policy's delay, if longer); at every
  :data:`UNKNOWN_POLLS_PER_RESULT`-th such answer in a row the result endpoint
  is asked once, and a terminal result there is recorded as usual.
* In both cases a deadline that passes says so (``PollTimeoutError.cause``)
  instead of suggesting a longer ``CLIPIA_POLL_TIMEOUT``.
* A progress outside 0..100 or a negative queue position is clamped before it is
  recorded (one WARNING per request, with the raw value).

After a 429 every poller of the key holds off until the shared pause ends, then
wakes at a random moment within :data:`PAUSE_JITTER_RATIO` of the pause left
(at least :data:`PAUSE_JITTER_MIN_S`, at most ``CLIPIA_POLL_MAX_INTERVAL``), so
they do not all call at the same instant. The random source is injectable
(``rng``), like the clock.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from . import _runtime
from .client import ClipiaClient, ResultNotReady, StatusSnapshot, api_duration_s
from .durations import decode as decode_durations
from .durations import encode as encode_durations
from .durations import learn as learn_durations
from .durations import prior
from .errors import (
    ApiError,
    ClipiaTasksError,
    PollTimeoutError,
    RequestCanceledError,
    RequestFailedError,
    RetryableApiError,
    TransientError,
    error_from_dict,
    error_to_dict,
)
from .metrics import NullMetrics, PrometheusMetrics
from .nouns import (
    Observation,
    Outcome,
    Phase,
    check_model,
    check_request_id,
    classify,
)
from .policy import (
    DelayPolicy,
    PollContext,
    estimate_remaining_s,
    make_policy,
    split_countdown,
)
from .record import (
    HISTORY_LEN,
    Claim,
    DeliveryTurn,
    Field,
    Gate,
    GateAsk,
    RecordStore,
    RequestState,
    Role,
    encode_history,
    holder_is_dead,
    lock_token,
    trim_history,
)
from .redis_health import note_epoch
from .settings import Settings, get_settings

__all__ = ["Again", "Finish", "Poller", "Stale", "check_request_id", "get_poller"]

log = logging.getLogger("clipia_tasks.poller")

#: Extra time a follower waits past the owner's planned poll before reading the record.
FOLLOWER_SLACK_S = 0.25
#: A 202 on the result after a terminal status is retried after at most this long.
RESULT_RACE_DELAY_S = 0.5
#: ... at most this many times in a row; later answers without a result back off.
RESULT_RACE_RETRIES = 3
#: Result answers in a row without a terminal result before ``/status`` is asked again.
RESULT_WAITS_BEFORE_STATUS = 6
#: An undocumented status this many times in a row: ask the result endpoint (again every so many).
UNKNOWN_POLLS_PER_RESULT = 3
#: After a shared 429 pause, pollers spread their wake-ups over this fraction of the pause left.
PAUSE_JITTER_RATIO = 0.1
#: ... but over at least this many seconds.
PAUSE_JITTER_MIN_S = 1.0
#: After CLIPIA_WEBHOOK_FALLBACK_AFTER, a request that expects a webhook is polled at
#: most every this fraction of its age (a lost webhook costs at most ~25 % of its length).
WEBHOOK_SAFETY_NET_RATIO = 0.2
#: At most one WARNING per this many seconds about requests ended by the fallback.
FALLBACK_WARNING_EVERY_S = 60.0
#: A status call that was sent but never answered (its worker died) may have reached
#: the API up to this long after it was stamped; the next call keeps its gap from there.
UNANSWERED_MARGIN_S = 1.0
#: How far past its planned poll an owner may be before another caller replaces it.
LEASE_GRACE_S = 30.0


@dataclass(frozen=True)
class Finish:
    """The outcome is known: return ``result`` or raise ``error``."""

    result: dict[str, Any] | None = None
    error: Exception | None = None


@dataclass(frozen=True)
class Again:
    """Re-send this message after ``countdown_s``; ``note`` is shown in Flower."""

    countdown_s: float
    note: str


@dataclass
class _Held:
    """The poll lock a step holds, until the schedule after the call releases it."""

    token: str
    held: bool = True


@dataclass(frozen=True)
class Stale:
    """This message has been superseded: exit without storing a result."""

    reason: str


Step = Finish | Again | Stale
#: Fires the completion signals for a recorded outcome (:func:`clipia_tasks.delivery.fire_signals`).
Deliver = Callable[[RequestState], DeliveryTurn]


def outcome_of(state: RequestState) -> Finish:
    """What a recorded outcome means for a caller."""
    if state.outcome == Outcome.COMPLETED:
        return Finish(result=state.result)
    if state.error:
        return Finish(error=error_from_dict(state.error))
    return Finish(error=RequestFailedError(state.request_id, state.outcome or "", "", ""))


#: Schedule fields for a step that opened the poll gate but makes no call: the call
#: stamp would otherwise count as a call never answered, and delay the next one.
_UNSTAMPED: dict[str, Any] = {Field.CALL_STARTED_AT: ""}


def _model_of(body: dict[str, Any]) -> str | None:
    """The result body's model, if it is a name this package keeps."""
    try:
        return check_model(body.get("model"))
    except (TypeError, ValueError):
        return None


def _fetch_only(state: RequestState) -> bool:
    """Seen terminal, result not fetched: ask the result, not /status.

    Unless the result endpoint has answered without a result too often: then
    the terminal status is checked again first.
    """
    return state.terminal_seen is not None and state.result_waits < RESULT_WAITS_BEFORE_STATUS


def _doubling_s(base_s: float, n: int, cap_s: float) -> float:
    """``base_s`` doubled for each of ``n - 1`` earlier tries, at most ``cap_s``."""
    return min(base_s * 2.0 ** min(max(n - 1, 0), 30), cap_s)


def _describe(status: str | None, queue_position: int | None, progress: int | None) -> str:
    text = status or "unknown"
    if queue_position is not None:
        text += f" #{queue_position} in queue"
    if progress is not None:
        text += f" {progress} %"
    return text


class Poller:
    """Follows requests for one worker process."""

    def __init__(
        self,
        settings: Settings,
        store: RecordStore,
        client_factory: Callable[[], ClipiaClient],
        policy: DelayPolicy,
        deliver: Deliver,
        clock: Callable[[], float] = time.time,
        metrics: NullMetrics | None = None,
        rng: Callable[[], float] = random.random,
        wake: Callable[[str, str, int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self._client_factory = client_factory
        self._client: ClipiaClient | None = None
        self.policy = policy
        self.deliver = deliver
        self.clock = clock
        self.metrics = metrics or NullMetrics()
        #: Floats in [0, 1): where in the window a poller wakes after a shared pause.
        self.rng = rng
        #: Sends a sleeping chain's next message now: (request_id, task_id, message number).
        self.wake = wake
        self._fallback_warned_at = float("-inf")
        self._fallbacks_unreported = 0
        #: The poll lock the running step holds (per thread: the pool may be threads).
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"Poller(base_url={self.settings.base_url!r})"

    # Durations derived from the HTTP timeout: one run makes at most two calls.
    @property
    def _run_s(self) -> float:
        """How long one message may run before its chain counts as overdue."""
        return 2 * self.settings.http_timeout_s + 1

    @property
    def _lock_s(self) -> float:
        """How long the poll lock lives if its holder dies without releasing it."""
        return 2 * self.settings.http_timeout_s + 5

    @property
    def _lease_s(self) -> float:
        """How far past its planned poll an owner may be before another caller takes over."""
        return 3 * self.settings.http_timeout_s + LEASE_GRACE_S

    @property
    def client(self) -> ClipiaClient:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    # -- the step --------------------------------------------------------------

    def step(
        self, request_id: str, task_id: str, retries: int, enqueued_at: float | None,
        *, model: str | None = None,
    ) -> Step:
        """One message's work. On a steady-state poll: two Redis round trips, the claim
        (which also opens the poll gate) before the API call and the schedule (which
        also releases the lock and publishes the change) after it."""
        s = self.settings
        now = self.clock()
        token = lock_token(task_id, retries)
        claim = self.store.claim(
            request_id,
            task_id,
            retries,
            first_enqueued_at=enqueued_at or now,
            timeout_s=s.poll_timeout_s,
            lease_s=self._lease_s,
            run_s=self._run_s,
            now=now,
            gate=GateAsk(
                token=token, key_tag=self.client.key_fingerprint, lock_s=self._lock_s,
                min_gap_s=s.poll_interval_s,
                unanswered_margin_s=min(s.http_timeout_s, UNANSWERED_MARGIN_S),
                webhook_fallback_s=s.webhook_fallback_after_s,
                result_waits_before_status=RESULT_WAITS_BEFORE_STATUS,
            ),
            model=model,
        )
        note_epoch(self.store, claim.epoch)
        state = claim.state
        # The model's learned durations, read by the claim in passing.
        self._local.prior = prior(decode_durations(claim.durations)) if model else None
        if claim.role is Role.DONE:
            if task_id in state.answered:
                # A restored copy of a message whose chain already answered its
                # caller: answering again would fire that caller's links twice.
                return Stale(f"chain {task_id} already answered")
            # Delivers only if a crash interrupted the first delivery.
            return self._conclude(state)
        if claim.role is Role.STALE:
            return Stale(f"message {retries} of chain {task_id} was superseded")
        if claim.role is Role.FETCH and not (
            state.next_poll_at is not None and now < state.next_poll_at - 0.05
        ):
            return self._fetch_as_guest(state, task_id, now)
        if claim.role in (Role.FOLLOWER, Role.FETCH):
            wait = (state.next_poll_at or now) - now + FOLLOWER_SLACK_S
            wait = min(max(wait, s.poll_interval_s / 2), s.max_countdown_s)
            self.store.plan(request_id, task_id, now + wait)
            note = _describe(state.status, state.queue_position, state.progress)
            return Again(wait, f"{note}; following poller {state.owner}, next look in {wait:.1f} s")

        gate = claim.gate
        held = _Held(token) if gate is not None and gate.gate is Gate.OPEN else None
        self._local.held = held
        try:
            return self._owner_step(state, task_id, retries, now, claim)
        finally:
            self._local.held = None
            if held is not None and held.held:
                self.store.unlock(request_id, token)

    def _first_poll_at(self, state: RequestState, now: float) -> float | None:
        """With a prior, before any status call: when the first one is due (else None)."""
        model_prior = getattr(self._local, "prior", None)
        if model_prior is None or state.polls or state.next_poll_at is not None or (
                state.terminal_seen is not None):
            return None
        elapsed = now - (state.first_enqueued_at or now)
        delay = self.policy.first_delay_s(model_prior, elapsed)
        if delay is None or delay < 0.05:
            return None
        return now + min(delay, self.settings.poll_timeout_s)

    def _owner_step(self, state: RequestState, task_id: str, retries: int, now: float,
                    claim: Claim) -> Step:
        """The owner's decisions, in the order ``claim.lua`` opened (or kept shut) the gate."""
        s = self.settings
        request_id = state.request_id
        deadline = state.deadline_at or (now + s.poll_timeout_s)
        if state.next_poll_at is not None and now < state.next_poll_at - 0.05:
            return self._schedule(state, task_id, retries, state.next_poll_at, {}, "waiting")
        if now >= deadline:
            return self._time_out(state, now)
        first_at = self._first_poll_at(state, now)
        # A wait decided here, after claim.lua opened the gate: undo its call stamp.
        unstamped = _UNSTAMPED if claim.gate is not None and claim.gate.gate is Gate.OPEN else {}
        if state.expects_webhook and state.terminal_seen is None:
            fallback_at = (state.first_enqueued_at or now) + s.webhook_fallback_after_s
            if now < fallback_at - 0.05 or (first_at is not None and now < first_at):
                # The webhook should end it; a status call now would only cost quota. (The
                # first safety-net poll: the later of the fallback and the expected end.)
                wake = max(fallback_at, first_at or 0.0)
                return self._schedule(state, task_id, retries, wake, unstamped,
                                      "waiting for the webhook")
        if first_at is not None and now < first_at:
            # The model's requests take about this long: the first status call aims at
            # the expected end instead of asking at once.
            return self._schedule(state, task_id, retries, first_at, unstamped,
                                  "first poll at the model's expected end")
        paused = claim.pause_until
        if paused > now:
            # Another poller of this key was told to slow down: so are we. Each poller
            # wakes at its own moment past the pause end, not all at the same instant.
            spread_s = max(PAUSE_JITTER_MIN_S,
                           min(PAUSE_JITTER_RATIO * (paused - now), s.poll_max_interval_s))
            wake = paused + spread_s * self.rng()
            return self._schedule(state, task_id, retries, wake, {}, "rate limited (shared)")
        gate = claim.gate
        if gate is None or (gate.gate is Gate.LOCKED and holder_is_dead(gate.holder)):
            # A lock left by a dead process on this host: take it over (rare; the claim
            # never takes over a lock itself).
            token = lock_token(task_id, retries)
            gate = self.store.begin_poll(
                request_id, token, lock_s=self._lock_s, now=now,
                min_gap_s=0.0 if _fetch_only(state) else s.poll_interval_s,
                unanswered_margin_s=min(s.http_timeout_s, UNANSWERED_MARGIN_S),
            )
            if gate.gate is Gate.OPEN:
                self._local.held = _Held(token)
        if gate.gate is Gate.EARLY:
            # A copy of this message polled moments ago (then its worker died):
            # keep the promised gap between two calls.
            wake = gate.earliest_at + 0.01
            return self._schedule(state, task_id, retries, wake, {}, "keeping the poll gap")
        if gate.gate is Gate.LOCKED:
            wake = now + self.store.lock_ttl_s(request_id) + 0.1
            return self._schedule(state, task_id, retries, wake, {}, "another copy is polling")
        if gate.gate is not Gate.OPEN:
            # The script saw the record a moment before this process's clock: look again.
            wake = now + s.poll_interval_s
            return self._schedule(state, task_id, retries, wake, {}, f"gate {gate.gate}")
        return self._poll(state, task_id, retries, now, deadline)

    # -- pieces ----------------------------------------------------------------

    def _poll(
        self, state: RequestState, task_id: str, retries: int, now: float, deadline: float
    ) -> Step:
        rid = state.request_id
        s = self.settings
        if _fetch_only(state):
            # Seen terminal before, result not fetched yet (202 race or a crash).
            return self._fetch_result(state, task_id, retries, now, deadline,
                                      str(state.terminal_seen), {})
        try:
            snap = self.client.status(rid)
        except TransientError as exc:
            return self._after_error(state, task_id, retries, now, deadline, exc,
                                     {Field.LAST_POLL_AT: repr(self.clock())})
        except ApiError as exc:
            return self._fatal(state, task_id, exc)
        answered_at = self.clock()
        status = snap.status
        fields: dict[str, Any] = {}
        queue_position, progress = self._in_range(state, task_id, snap, fields)
        first = state.first_enqueued_at or now
        history = [*state.history, Observation(round(now - first, 3), status,
                                               queue_position, progress)]
        polls = state.polls + 1
        trimmed = trim_history(history, HISTORY_LEN)
        model_prior = getattr(self._local, "prior", None)
        remaining = estimate_remaining_s(tuple(trimmed), model_prior)
        fields.update({
            Field.STATUS: status,
            Field.QUEUE_POSITION: queue_position,
            Field.PROGRESS: progress,
            # When the answer came: the next call keeps its gap from here, so
            # the API never sees two calls closer than CLIPIA_POLL_INTERVAL.
            Field.LAST_POLL_AT: repr(answered_at),
            Field.POLLS: polls,
            Field.ERRORS: 0,
            Field.HISTORY: encode_history(trimmed),
            Field.ETA_AT: "" if remaining is None else repr(round(answered_at + remaining, 3)),
        })
        phase = classify(status)
        self.metrics.poll()
        unknown_polls = state.unknown_polls + 1 if phase is Phase.UNKNOWN else 0
        if unknown_polls != state.unknown_polls:
            fields[Field.UNKNOWN_POLLS] = unknown_polls
        if phase is Phase.TERMINAL:
            # Say so before fetching the result, so a copy of this message redelivered
            # after a crash fetches the result instead of asking /status again. The
            # record's status turns terminal only with the outcome (finish).
            fields[Field.TERMINAL_SEEN] = fields.pop(Field.STATUS)
            # A terminal status carries no progress (nor queue position): keep the last
            # ones seen, for watchers now and as the final progress of a request that
            # did not complete (one that did gets 100 with its outcome).
            for name in (Field.PROGRESS, Field.QUEUE_POSITION):
                if fields.get(name) is None:
                    fields.pop(name, None)
            if not self.store.note_seen_terminal(
                rid, task_id, retries, fields,
                lease_until=now + self._lease_s, due_at=now + self._run_s,
            ):
                return Stale(f"chain {task_id} lost ownership of {rid}")
            return self._fetch_result(state, task_id, retries, now, deadline, status, fields)
        if phase is Phase.UNKNOWN and not state.unknown_logged:
            log.warning(
                "request %s has status %r, which the API docs do not list; "
                "treating it as not finished", rid, status,
                extra={"request_id": rid, "task_id": task_id},
            )
            fields[Field.UNKNOWN_LOGGED] = 1
        ctx = PollContext(elapsed_s=now - first, polls=polls, history=tuple(history),
                          prior=model_prior)
        delay = self.policy.next_delay(ctx)
        if state.expects_webhook:
            # Past the fallback delay the webhook may be lost: poll as a safety net, at
            # most every WEBHOOK_SAFETY_NET_RATIO of the request's age.
            delay = max(delay, WEBHOOK_SAFETY_NET_RATIO * (now - first))
        if unknown_polls:
            # An undocumented status says nothing about when it ends: back off,
            # whatever the policy reads into it.
            delay = max(delay, _doubling_s(s.poll_interval_s, unknown_polls,
                                           s.poll_max_interval_s))
        note = _describe(status, queue_position, progress)
        log.debug("polled %s: %s, next poll in %.1f s", rid, note, delay,
                  extra={"request_id": rid, "task_id": task_id, "attempt": retries,
                         "next_delay_s": round(delay, 3)})
        wake = min(max(now + delay, answered_at + s.poll_interval_s), deadline + 0.01)
        if unknown_polls and unknown_polls % UNKNOWN_POLLS_PER_RESULT == 0:
            return self._probe_result(state, task_id, retries, now, deadline, fields,
                                      wake, note)
        return self._schedule(state, task_id, retries, wake, fields, note)

    def _in_range(
        self, state: RequestState, task_id: str, snap: StatusSnapshot, fields: dict[str, Any]
    ) -> tuple[int | None, int | None]:
        """Queue position (>= 0) and progress (0..100), clamped; logged once per request."""
        queue_position = None if snap.queue_position is None else max(snap.queue_position, 0)
        progress = None if snap.progress is None else min(max(snap.progress, 0), 100)
        raw = {"queue_position": snap.queue_position, "progress": snap.progress}
        shown = {"queue_position": queue_position, "progress": progress}
        odd = [f"{name} {raw[name]} (recorded as {shown[name]})"
               for name in raw if raw[name] != shown[name]]
        if odd and not state.range_logged:
            log.warning(
                "request %s: /status answered %s, outside the documented range "
                "(queue_position >= 0, progress 0..100)", state.request_id, " and ".join(odd),
                extra={"request_id": state.request_id, "task_id": task_id},
            )
            fields[Field.RANGE_LOGGED] = 1
        return queue_position, progress

    def _fetch_result(
        self,
        state: RequestState,
        task_id: str,
        retries: int,
        now: float,
        deadline: float,
        status: str,
        fields: dict[str, Any],
    ) -> Step:
        """The result after a terminal status; backs off while the endpoint has none."""
        rid = state.request_id
        s = self.settings
        fields[Field.TERMINAL_SEEN] = status
        answer = self._ask_result(state, task_id, retries, now, deadline, fields)
        if not isinstance(answer, ResultNotReady):
            return answer
        waits = state.result_waits + 1
        fields[Field.RESULT_WAITS] = waits
        base_s = min(s.poll_interval_s, RESULT_RACE_DELAY_S)
        # A 202 is the documented race (the result lags /status by moments): a few
        # quick retries first, then the same doubling as a 200 that is not terminal.
        race = answer.http_status == 202
        backoff_n = max(waits - RESULT_RACE_RETRIES + 1, 1) if race else waits
        delay = _doubling_s(base_s, backoff_n, s.poll_max_interval_s)
        if not (race and waits <= RESULT_RACE_RETRIES) and not state.result_logged:
            log.warning(
                "request %s: /status said %s, but the result endpoint answered HTTP %d "
                "with status %r (%d time(s) in a row); backing off, next try in %.1f s",
                rid, status, answer.http_status, answer.status, waits, delay,
                extra={"request_id": rid, "task_id": task_id, "attempt": retries,
                       "next_delay_s": round(delay, 3)},
            )
            fields[Field.RESULT_LOGGED] = 1
        note = f"{status}, result not ready (HTTP {answer.http_status} {answer.status})"
        if waits >= RESULT_WAITS_BEFORE_STATUS:
            note += "; asking /status again"
        wake = min(now + delay, deadline + 0.01)
        return self._schedule(state, task_id, retries, wake, fields, note)

    def _probe_result(
        self,
        state: RequestState,
        task_id: str,
        retries: int,
        now: float,
        deadline: float,
        fields: dict[str, Any],
        wake: float,
        note: str,
    ) -> Step:
        """An undocumented status for a while: has the request ended under another name?"""
        answer = self._ask_result(state, task_id, retries, now, deadline, fields)
        if not isinstance(answer, ResultNotReady):
            return answer
        note = f"{note}; result not ready (HTTP {answer.http_status} {answer.status})"
        return self._schedule(state, task_id, retries, wake, fields, note)

    def _fetch_as_guest(self, state: RequestState, task_id: str, now: float) -> Step:
        """A terminal status was reported while the owner sleeps: fetch the result now.

        This chain owns nothing: it takes the poll lock for one result call and
        records the outcome through the same first-writer-wins ``finish``; anything
        else (a 202, an error, the lock held) and it looks again shortly, as a
        follower would. The owner's message, when it wakes, finds the outcome.
        """
        rid = state.request_id
        token = lock_token(task_id, -1)
        gate = self.store.begin_poll(rid, token, lock_s=self._lock_s, now=now, min_gap_s=0.0,
                                     unanswered_margin_s=0.0)
        reason = "another copy is fetching the result"
        if gate.gate is Gate.OPEN:
            try:
                answer = self.client.result(rid)
                if not isinstance(answer, ResultNotReady):
                    step = self._record_outcome(state, answer, {}, now)
                    if state.owner and self.wake is not None:
                        # The owner sleeps in its countdown: its caller gets the answer
                        # (result, links, callback) now, not when it wakes.
                        self.wake(rid, state.owner, state.gen)
                    return step
                reason = f"result not ready (HTTP {answer.http_status} {answer.status})"
            except ClipiaTasksError as exc:
                reason = str(exc)
            finally:
                self.store.unlock(rid, token)
        wait = min(max(self.settings.poll_interval_s, RESULT_RACE_DELAY_S),
                   self.settings.max_countdown_s)
        self.store.plan(rid, task_id, now + wait)
        return Again(wait, f"{state.terminal_seen} reported; {reason}, next look in {wait:.1f} s")

    def _ask_result(
        self,
        state: RequestState,
        task_id: str,
        retries: int,
        now: float,
        deadline: float,
        fields: dict[str, Any],
    ) -> Step | ResultNotReady:
        """One result call: the outcome recorded, an error handled, or "not ready"."""
        try:
            answer = self.client.result(state.request_id)
        except TransientError as exc:
            return self._after_error(state, task_id, retries, now, deadline, exc, fields)
        except ApiError as exc:
            return self._fatal(state, task_id, exc)
        if isinstance(answer, ResultNotReady):
            return answer
        return self._record_outcome(state, answer, fields, now)

    def _record_outcome(
        self, state: RequestState, body: dict[str, Any], fields: dict[str, Any], now: float
    ) -> Step:
        rid = state.request_id
        outcome = str(body.get("status"))
        error: ClipiaTasksError | None = None
        if outcome != Outcome.COMPLETED:
            raw_error = body.get("error")
            err: dict[str, Any] = raw_error if isinstance(raw_error, dict) else {}
            cls = RequestCanceledError if outcome == Outcome.CANCELED else RequestFailedError
            error = cls(rid, outcome, str(err.get("code") or ""), str(err.get("message") or ""))
        if outcome == Outcome.COMPLETED:
            fields[Field.PROGRESS] = 100  # whether a poll or a webhook saw the end
        fields.update({
            Field.OUTCOME: outcome,
            Field.STATUS: outcome,  # terminal in the same write as the outcome
            Field.TERMINAL_SEEN: "",
            Field.RESULT: body,
            Field.ERROR: error_to_dict(error) if error else None,
            Field.FINISHED_AT: repr(now),
            Field.NEXT_POLL_AT: "",
            Field.ETA_AT: "",
        })
        model = state.model or _model_of(body)
        if model and not state.model:
            fields[Field.MODEL] = model  # learned from the result body
        if self.store.finish(rid, fields):
            self._count_outcome(state, outcome, now)
            if state.expects_webhook and state.webhook_at is None:
                self._fallback_ended(rid)
            log.info("request %s ended %s", rid, outcome,
                     extra={"request_id": rid, "task_id": state.owner})
            if model and outcome == Outcome.COMPLETED:
                self._learn(state, model, now, api_duration_s(body))
        return self._conclude_fresh(rid)

    def _learn(self, state: RequestState, model: str, now: float,
               api_total_s: float | None) -> None:
        """One more sample of how long this model's requests take (first writer only).

        ``api_total_s``: the result body's ``completed_at - created_at``, which pins the
        end down where it agrees with what the polls saw (see durations.sample).
        """
        first = state.first_enqueued_at
        if first is None:
            return
        try:
            before = decode_durations(self.store.durations(model))
            after = learn_durations(before, state.history, end_s=now - first,
                                    api_total_s=api_total_s)
            if after != before:
                self.store.save_durations(model, encode_durations(after))
        except redis.RedisError as exc:  # the outcome is recorded: learning can wait
            log.warning("could not record the durations of model %r: %s", model, exc,
                        extra={"request_id": state.request_id})

    def _fallback_ended(self, rid: str) -> None:
        """A request that expected a webhook was ended by polling: count it, warn now and then."""
        self.metrics.webhook_fallback()
        self._fallbacks_unreported += 1
        now = self.clock()
        if now - self._fallback_warned_at >= FALLBACK_WARNING_EVERY_S:
            log.warning(
                "%d request(s) that expected a webhook were ended by polling instead (the "
                "last: %s); no verified webhook arrived: check the webhook_url you submit "
                "with, and that CLIPIA_WEBHOOK_SECRET matches Clipia's signing secret",
                self._fallbacks_unreported, rid, extra={"request_id": rid},
            )
            self._fallback_warned_at, self._fallbacks_unreported = now, 0

    def _count_outcome(self, state: RequestState, outcome: str, now: float) -> None:
        first = state.first_enqueued_at
        self.metrics.outcome(outcome, now - first if first is not None else None)

    def _conclude_fresh(self, rid: str) -> Step:
        final = self.store.get(rid)
        assert final is not None and final.outcome is not None
        return self._conclude(final)

    def _conclude(self, state: RequestState) -> Step:
        """Make sure the signals fired, then answer with the recorded outcome."""
        if self.deliver(state) is DeliveryTurn.BUSY:
            wait = max(self.store.delivery_lock_ttl_s(state.request_id), 0.5)
            return Again(wait, f"{state.outcome}; another worker is delivering the outcome")
        return outcome_of(state)

    def _time_out(self, state: RequestState, now: float) -> Step:
        rid = state.request_id
        waited = now - (state.first_enqueued_at or now)
        failing = state.last_error if state.errors else ""
        cause = ""
        if state.terminal_seen is not None and state.result_waits:
            cause = PollTimeoutError.RESULT_NOT_TERMINAL
        elif state.unknown_polls:
            cause = PollTimeoutError.UNKNOWN_STATUS
        error = PollTimeoutError(rid, round(waited, 1), state.status or "", failing, cause)
        won = self.store.finish(
            rid,
            {
                Field.OUTCOME: Outcome.TIMED_OUT,
                Field.ERROR: error_to_dict(error),
                Field.FINISHED_AT: repr(now),
                Field.NEXT_POLL_AT: "",
                Field.ETA_AT: "",
            },
        )
        if won:
            self._count_outcome(state, Outcome.TIMED_OUT, now)
        log.info("request %s timed out after %.1f s", rid, waited,
                 extra={"request_id": rid, "task_id": state.owner})
        return self._conclude_fresh(rid)

    def _after_error(
        self,
        state: RequestState,
        task_id: str,
        retries: int,
        now: float,
        deadline: float,
        exc: TransientError,
        fields: dict[str, Any] | None = None,
    ) -> Step:
        errors = state.errors + 1
        self.metrics.api_error(str(getattr(exc, "code", "error")))
        if isinstance(exc, RetryableApiError) and exc.retry_after_s and exc.http_status == 429:
            # Rate limits are per key: hold every poller of this key off, not just this one.
            self.store.pause(self.client.key_fingerprint, self.clock() + exc.retry_after_s,
                             self.clock())
        delay = self.policy.error_delay(errors, exc.retry_after_s)
        log.warning(
            "%s (error %d in a row, next try in %.1f s)", exc, errors, delay,
            extra={"request_id": state.request_id, "task_id": task_id, "attempt": retries,
                   "next_delay_s": round(delay, 3)},
        )
        # Short: a value over 64 bytes would cost the record its compact encoding.
        fields = {**(fields or {}), Field.ERRORS: errors, Field.LAST_ERROR: exc.reason[:60]}
        # Retry-After counts from when the answer arrived, not from when we asked.
        wake = min(self.clock() + delay, deadline + 0.01)
        return self._schedule(state, task_id, retries, wake, fields, f"{exc.reason}, retrying")

    def _fatal(self, state: RequestState, task_id: str, exc: ApiError) -> Step:
        self.metrics.api_error(exc.code)
        log.error("%s", exc, extra={"request_id": state.request_id, "task_id": task_id})
        self.store.release(state.request_id, task_id, {Field.FATAL: error_to_dict(exc)})
        return Finish(error=exc)

    def _schedule(
        self,
        state: RequestState,
        task_id: str,
        retries: int,
        wake_at: float,
        fields: dict[str, Any],
        note: str,
    ) -> Step:
        now = self.clock()
        countdown, hop = split_countdown(wake_at - now, self.settings.max_countdown_s)
        lease_until = wake_at + self._lease_s
        # The poll lock this step holds goes in the same round trip.
        held: _Held | None = getattr(self._local, "held", None)
        unlock = ""
        if held is not None and held.held:
            unlock, held.held = held.token, False
        ok = self.store.schedule(
            state.request_id,
            task_id,
            gen_next=retries + 1,
            lease_until=lease_until,
            wake_at=wake_at,
            fields=fields,
            unlock=unlock,
        )
        if not ok:
            return Stale(f"chain {task_id} lost ownership of {state.request_id}")
        suffix = f"; hop {countdown:.0f} s of a longer wait" if hop else ""
        return Again(countdown, f"{note}, next poll in {wake_at - now:.1f} s{suffix}")


def _metrics() -> NullMetrics:
    # Only when the worker serves metrics (celeryd_init set PROMETHEUS_MULTIPROC_DIR).
    if get_settings().metrics_port and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return PrometheusMetrics()
    return NullMetrics()


def _build_poller() -> Poller:
    from .delivery import fire_signals
    from .tasks import wake_chain

    settings = get_settings()
    return Poller(
        settings,
        _runtime.get_store(),
        lambda: ClipiaClient.from_settings(get_settings()),
        make_policy(settings.poll_policy, settings.poll_interval_s, settings.poll_max_interval_s),
        fire_signals,
        metrics=_metrics(),
        wake=wake_chain,
    )


def get_poller() -> Poller:
    """This process's poller (built on first use, again after a fork or ``_runtime.reset``)."""
    return _runtime.cached("poller", _build_poller)
