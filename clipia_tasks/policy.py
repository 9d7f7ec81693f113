"""When to poll next: pure functions and small objects, no I/O, no clock.

A poller observes one status (``IN_QUEUE`` 3rd in line, ``IN_PROGRESS`` 40 %,
...) and asks its :class:`DelayPolicy` how long to wait before the next
``/status`` call. After a transient error it asks the same policy for an error
delay instead, which never undercuts the server's ``Retry-After``. The policy
sees the request's recent history, so a smarter policy (one that predicts the
finish from how fast progress advances) can replace :class:`BackoffPolicy`
behind the same interface.

:func:`split_countdown` turns a delay into the countdown of one Celery message:
a wait longer than is safe for one countdown (half the broker's visibility
timeout) is split into hops that re-check the deadline and poll nothing.

With a :class:`~clipia_tasks.durations.ModelPrior` (what the model's recent
requests took, :mod:`clipia_tasks.durations`) the adaptive policy also times the
first status call near the expected end and predicts the end of requests that
report no progress; without one it behaves exactly as before.

The status vocabulary (``Phase``, ``classify``, ``Observation``) lives in
:mod:`clipia_tasks.nouns` and is re-exported here for older imports.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from .durations import ModelPrior, end_window, run_window
from .nouns import TERMINAL_STATUSES, Observation, Phase, Status, classify

__all__ = [
    "TERMINAL_STATUSES",
    "AdaptivePolicy",
    "BackoffPolicy",
    "DelayPolicy",
    "Estimate",
    "FixedPolicy",
    "ModelPrior",
    "Observation",
    "Phase",
    "PollContext",
    "classify",
    "estimate_remaining_s",
    "make_policy",
    "split_countdown",
]


@dataclass(frozen=True)
class PollContext:
    """What a policy may base its decision on (all of it stored in the request record)."""

    #: Seconds since the request was first enqueued.
    elapsed_s: float
    #: Successful status calls so far, this one included.
    polls: int
    #: Recent observations, oldest first (bounded; the newest is the current one).
    history: tuple[Observation, ...] = field(default_factory=tuple)
    #: What the model's recent requests took, if known (:func:`clipia_tasks.durations.prior`).
    prior: ModelPrior | None = None


class DelayPolicy(Protocol):
    """Decides the wait before the next status call."""

    def first_delay_s(self, prior: ModelPrior | None, elapsed_s: float) -> float | None:
        """Seconds from now until the first status call, or None to call at once."""
        ...

    def next_delay(self, ctx: PollContext) -> float:
        """Seconds until the next poll after a successful, non-terminal status."""
        ...

    def error_delay(self, consecutive_errors: int, retry_after_s: float | None) -> float:
        """Seconds until the next try after the ``consecutive_errors``-th transient error."""
        ...


@dataclass(frozen=True)
class BackoffPolicy:
    """Exponential backoff from ``interval_s`` to ``max_interval_s``, plus jitter.

    Jitter only ever adds delay (up to ``jitter_ratio`` of the base), so a
    poller never calls sooner than the schedule says; the result stays within
    ``max_interval_s`` except where a ``Retry-After`` demands more. ``rng``
    returns floats in [0, 1) and is injectable so tests are deterministic.
    """

    interval_s: float = 1.0
    max_interval_s: float = 10.0
    factor: float = 1.5
    jitter_ratio: float = 0.1
    rng: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or self.max_interval_s < self.interval_s:
            raise ValueError("need 0 < interval_s <= max_interval_s")
        if self.factor < 1 or not 0 <= self.jitter_ratio <= 1:
            raise ValueError("need factor >= 1 and 0 <= jitter_ratio <= 1")

    def _grow(self, step: int) -> float:
        base = self.interval_s * self.factor ** max(step, 0)
        base = min(base, self.max_interval_s)
        return min(base * (1 + self.jitter_ratio * self.rng()), self.max_interval_s)

    def first_delay_s(self, prior: ModelPrior | None, elapsed_s: float) -> float | None:
        return None

    def next_delay(self, ctx: PollContext) -> float:
        return self._grow(ctx.polls - 1)

    def error_delay(self, consecutive_errors: int, retry_after_s: float | None) -> float:
        # Errors back off twice as fast as polls: a struggling API gets room.
        delay = self.interval_s * 2.0 ** max(consecutive_errors - 1, 0)
        delay = min(delay, self.max_interval_s) * (1 + self.jitter_ratio * self.rng())
        delay = min(delay, self.max_interval_s)
        if retry_after_s is not None:
            # The server's word is a floor above every cap.
            delay = max(delay, retry_after_s)
        return delay


@dataclass(frozen=True)
class Estimate:
    """Time left, as the adaptive policy reads it from a request's history."""

    #: Best guess of the seconds left.
    mid_s: float
    #: The latest end the readings allow.
    late_s: float
    #: Seconds of readings the rate rests on.
    baseline_s: float
    #: Whether the rate rests on enough progress to aim the final wake-up at it.
    precise: bool


@dataclass(frozen=True)
class AdaptivePolicy:
    """Predicts when the request ends from what ``/status`` says, and polls just after.

    * ``IN_PROGRESS`` with progress: the rate progress advances (over the widest
      window of readings that only go up) gives the time left; progress is an
      integer, so a reading ``p`` means "between p and p+1 %", and the wake-up
      aims at the late edge so it lands just after the end rather than just
      before it. Far from the end it wakes at ``approach`` of the time left to
      re-measure, so the final wake-up rests on a long baseline.
    * ``IN_QUEUE`` with a queue position that drains: wakes when the queue
      should reach the request.
    * No usable signal (progress null, going backwards or stalled, one reading
      only): backoff whose cap grows with the request's age (``age_fraction``
      of it), so a late finish is noticed within that fraction of its length.

    With the model's prior (``PollContext.prior``) the policy first asks when the
    request can end, given the model's typical queue, run and total durations and
    everything seen (:func:`~clipia_tasks.durations.end_window`):

    * The first call (:meth:`first_delay_s`) comes ``interval_s`` before the
      earliest typical end (plus ``first_margin`` of it): a request with progress
      is nearly done, one reading tells how much is left, and there is time for
      one more call before it ends.
    * ``IN_PROGRESS`` with progress: one reading and the typical queue time pin
      the end down to a few progress points of the run (no reading does better
      than one point: progress is an integer). A window of possible ends no wider
      than ``final_window_s`` or ``final_window_points`` points is polled once,
      just past its latest end; a wider one is read again ``interval_s`` before
      its earliest end.
    * ``IN_PROGRESS`` without progress: polls step through the window, each at
      most ``prior_lag_fraction`` of the request's age after the previous one
      (or after the window's start), the last just past its end.
    * Queued: like the first call, counted from now (and from the queue's drain).
    * A request that fits nothing in the window (faster or much slower than the
      model's history: its progress says so, or without progress its age passes
      ``slow_factor`` times the typical total) falls back to the progress rate or
      the age-capped backoff above (capped at ``aged_fraction`` of its age: it
      has made far fewer calls), so it is caught at least as promptly as without
      a prior. (After one reading, the end that reading and the typical queue time
      suggest may shorten the wait, at ``approach`` of the way to it.)
    * A request that has made more calls than the prior's schedule would have (it was
      polled from the start, and its model's prior appeared meanwhile) keeps the
      policy without a prior, exactly.

    Always within ``interval_s`` … ``max_interval_s``; a ``Retry-After`` is a
    floor above everything. Pure and deterministic given ``rng``.
    """

    interval_s: float = 1.0
    max_interval_s: float = 60.0
    approach: float = 0.85
    age_fraction: float = 0.15
    late_margin_s: float = 0.05
    #: Progress points a rate must rest on before the final wake-up trusts it.
    min_advance: int = 10
    jitter_ratio: float = 0.1
    rng: Callable[[], float] = field(default=random.random, compare=False, repr=False)
    #: With a prior: the first call at this fraction past the earliest typical end,
    #: less ``interval_s``.
    first_margin: float = 0.03
    #: With a prior, no progress: at most this fraction of the age between calls.
    prior_lag_fraction: float = 0.09
    #: With a prior and progress: a window of possible ends this narrow (s) gets
    #: one call just past it ...
    final_window_s: float = 0.3
    #: ... as does one this many progress points wide (a new reading narrows it
    #: to about one point).
    final_window_points: float = 3.0
    #: With a prior, no progress: past this times the typical total, back off by age.
    slow_factor: float = 1.5
    #: ... capped at this fraction of the age: finer than ``age_fraction`` (such a
    #: request has made far fewer calls), so it is never caught later than without.
    aged_fraction: float = 0.10

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or self.max_interval_s < self.interval_s:
            raise ValueError("need 0 < interval_s <= max_interval_s")
        if not 0 < self.approach <= 1 or not 0 < self.age_fraction <= 1:
            raise ValueError("need 0 < approach <= 1 and 0 < age_fraction <= 1")
        if not 0 < self.prior_lag_fraction <= 1 or self.final_window_points < 1:
            raise ValueError("need 0 < prior_lag_fraction <= 1 and final_window_points >= 1")

    def _clamp(self, delay: float) -> float:
        return min(max(delay, self.interval_s), self.max_interval_s)

    def remaining_s(self, history: tuple[Observation, ...]) -> float | None:
        """Seconds until the predicted end (midpoint estimate), or None without a signal."""
        estimate = self.estimate(history)
        return estimate.mid_s if estimate else None

    def estimate(self, history: tuple[Observation, ...]) -> Estimate | None:
        """How long is left, as far as the history tells, or None."""
        if not history:
            return None
        last = history[-1]
        if last.status == Status.IN_PROGRESS:
            return self._progress_estimate(history)
        if last.status == Status.IN_QUEUE:
            return self._queue_estimate(history)
        return None

    def _progress_estimate(self, history: tuple[Observation, ...]) -> Estimate | None:
        run = [o for o in history if o.status == Status.IN_PROGRESS]
        last = run[-1]
        if last.progress is None:
            return None
        # The widest window of readings, ending now, in which progress never went back.
        start = len(run) - 1
        while start > 0:
            prev = run[start - 1]
            if prev.progress is None or prev.progress > run[start].progress:  # type: ignore[operator]
                break
            start -= 1
        first = run[start]
        assert first.progress is not None
        advanced = last.progress - first.progress
        span = last.at_s - first.at_s
        if advanced <= 0 or span <= 0:
            return None  # one reading, or stalled: no rate
        if len(run) - start >= 3:
            # Progress that moves in jumps (or stalls, then leaps) makes any rate a
            # guess: when the latest step disagrees with the window, fall back.
            prev = run[-2]
            recent = (last.progress - prev.progress) / max(last.at_s - prev.at_s, 1e-9)  # type: ignore[operator]
            window = advanced / span
            if not 0.7 <= recent / window <= 1.43:
                return None
        left = 100 - last.progress
        # Integer readings are each true to within 1 point, so the advance is known
        # to within 1: the slowest rate the readings allow gives the latest end.
        return Estimate(
            mid_s=max(left - 0.5, 0.0) / (advanced / span),
            late_s=left / (max(advanced - 1, advanced / 2) / span),
            baseline_s=span,
            precise=advanced >= self.min_advance,
        )

    def _queue_estimate(self, history: tuple[Observation, ...]) -> Estimate | None:
        queued = [o for o in history
                  if o.status == Status.IN_QUEUE and o.queue_position is not None]
        if len(queued) < 2:
            return None
        first, last = queued[0], queued[-1]
        drained = first.queue_position - last.queue_position  # type: ignore[operator]
        span = last.at_s - first.at_s
        if drained <= 0 or span <= 0:
            return None
        left = (last.queue_position + 1) / (drained / span)  # type: ignore[operator]
        return Estimate(mid_s=left, late_s=left, baseline_s=span, precise=False)

    def first_delay_s(self, prior: ModelPrior | None, elapsed_s: float) -> float | None:
        """Seconds from now until the first status call, or None to call at once.

        ``elapsed_s``: the request's age now. Without a prior (or once the model's
        earliest typical end is past) the call is at once, as without priors.
        """
        if prior is None:
            return None
        window = end_window(prior, (), elapsed_s)
        if window is None:
            return None
        delay = self._first_call(window[0]) - elapsed_s
        return min(delay, self.max_interval_s) if delay > 0 else None

    def next_delay(self, ctx: PollContext) -> float:
        if ctx.prior is not None and ctx.history and not self._polled_without(ctx, ctx.prior):
            delay = self._prior_delay(ctx, ctx.prior)
            if delay is not None:
                return delay
            return self._without_prior(ctx, aged=True)
        return self._without_prior(ctx, aged=False)

    def _polled_without(self, ctx: PollContext, prior: ModelPrior) -> bool:
        """Whether the request has made more calls than the prior's schedule would have.

        Then it was polled from the start without the prior (the model's first requests
        finished meanwhile, e.g. when all of them started at once): it keeps the policy
        it started with. Switching would add calls (the prior's steps through the window
        are finer than the age cap) and save none: the calls before it are spent.
        The bound: a first call, one more while queued, one per ``max_interval_s`` of a
        first call held to it, then steps of ``prior_lag_fraction`` of the age from the
        earliest typical end (fewer where the age cap is coarser, or ``interval_s``
        holds them apart), and a call to spare.
        """
        lo = prior.bands()[2][0]
        now = ctx.elapsed_s
        steps = math.log(max(now, lo, 1e-9) / max(lo, 1e-9)) / math.log1p(self.prior_lag_fraction)
        return ctx.polls > 3 + now / self.max_interval_s + steps

    def _prior_delay(self, ctx: PollContext, prior: ModelPrior) -> float | None:
        """The delay the prior suggests, or None if the request does not fit it."""
        now, last = ctx.elapsed_s, ctx.history[-1]
        if last.status == Status.IN_PROGRESS and last.progress is not None:
            return self._progress_delay(ctx, prior)
        windows = run_window(prior, ctx.history, now)
        running = last.status == Status.IN_PROGRESS
        if windows is None:
            total_hi = prior.bands()[2][1]
            if running and now <= self.slow_factor * total_hi:
                # A little off the usual durations: keep the fine steps a while longer.
                return self._clamp(now * self.prior_lag_fraction)
            return None
        (lo, hi), _ = windows
        if running and now >= lo - self.interval_s:
            # Each step at most prior_lag_fraction of the age: an end inside it is
            # noticed within that fraction of the request's length.
            wake = min(max(now, lo) * (1 + self.prior_lag_fraction), hi + self.late_margin_s)
        elif running:
            # Called early (the first call was held to max_interval_s): call again
            # as the first call would have been.
            wake = self._first_call(lo)
        else:
            # Queued (or a status the docs do not list): nothing says yet whether it
            # reports progress, so call before the earliest end, as the first call.
            drain = self._queue_estimate(ctx.history) if last.status == Status.IN_QUEUE else None
            if drain is not None:
                lo = max(lo, now + self.approach * drain.mid_s + prior.bands()[1][0])
            wake = self._first_call(lo)
        return self._clamp(wake - now)

    def _progress_delay(self, ctx: PollContext, prior: ModelPrior) -> float | None:
        now = ctx.elapsed_s
        windows = run_window(prior, ctx.history, now)
        if windows is not None:
            (lo, hi), (_, run_hi) = windows
            return self._clamp(self._aim(now, lo, hi, point_s=run_hi / 100) - now)
        # Outside the model's usual total. Its second reading gives a rate (the policy
        # without a prior follows it); after the first, the reading and the usual
        # queue time say roughly when it ends. Roughly: the queue may be unusual too,
        # and progress may jump, so that only ever shortens the age-capped wait.
        readings = sum(1 for o in ctx.history
                       if o.status == Status.IN_PROGRESS and o.progress is not None)
        windows = run_window(prior, ctx.history, now, total=False) if readings == 1 else None
        if windows is None:
            return None
        lo = windows[0][0]
        return self._clamp(min(self.approach * (lo - now), self.age_fraction * now))

    def _first_call(self, lo: float) -> float:
        """When to call a request that can end at ``lo`` at the earliest.

        A request with progress ending early (within ``first_margin``) is seen at
        most that late; one ending later is read at least ``interval_s`` before its
        end, in time for a final call just after it.
        """
        return lo * (1 + self.first_margin) - self.interval_s

    def _aim(self, now: float, lo: float, hi: float, point_s: float) -> float:
        """When to call, given the end lies in [lo, hi] and a progress point lasts point_s."""
        width = hi - lo
        if width <= max(self.final_window_s, self.final_window_points * point_s):
            return hi + self.late_margin_s
        if lo - self.interval_s < now + self.interval_s and width <= self.interval_s:
            # No room to read again before the earliest end, and reading again would
            # hold the final call back at least as long as the window is wide.
            return hi + self.late_margin_s
        # Wide (a reading early in the run, or a queue time that varies): read again
        # as late as leaves room for the final call, for the longest baseline.
        return lo - self.interval_s

    def _without_prior(self, ctx: PollContext, *, aged: bool) -> float:
        """The policy without a prior; ``aged``: back off as an old request would."""
        est = self.estimate(ctx.history)
        if est is None:
            # No signal: back off, capped by a fraction of the request's age. A request
            # that left its prior behind has made fewer calls than one polled from the
            # start: it waits what the cap allows, as that one would by now.
            if aged:
                # Fewer calls so far than a request polled from the start: a finer cap,
                # jitter inside it, so it is never noticed later than that one would be.
                cap = max(self.interval_s, min(self.aged_fraction, self.age_fraction)
                          * ctx.elapsed_s)
                return self._clamp(cap * (1 + self.jitter_ratio * self.rng())
                                   / (1 + self.jitter_ratio))
            cap = max(self.interval_s, self.age_fraction * ctx.elapsed_s)
            base = min(self.interval_s * 1.5 ** max(ctx.polls - 1, 0), cap)
            return self._clamp(base * (1 + self.jitter_ratio * self.rng()))
        if ctx.history[-1].status == Status.IN_QUEUE:
            return self._clamp(est.mid_s)
        near = est.mid_s * (1 - self.approach) <= self.interval_s
        if est.precise and (est.baseline_s >= est.mid_s or near):
            # A rate measured over as long as is left to go: wake just after the
            # latest end it allows (no jitter: it would only add lag).
            return self._clamp(est.late_s + self.late_margin_s)
        if near:
            return self._clamp(est.mid_s + self.late_margin_s)
        # Far, or imprecise: re-measure on the way.
        return self._clamp(est.mid_s * self.approach)

    def error_delay(self, consecutive_errors: int, retry_after_s: float | None) -> float:
        return BackoffPolicy(self.interval_s, self.max_interval_s, rng=self.rng).error_delay(
            consecutive_errors, retry_after_s
        )


@dataclass(frozen=True)
class FixedPolicy:
    """Poll every ``interval_s``, like the official SDK's ``subscribe()`` (for comparison)."""

    interval_s: float = 1.0
    max_interval_s: float = 10.0

    def first_delay_s(self, prior: ModelPrior | None, elapsed_s: float) -> float | None:
        return None

    def next_delay(self, ctx: PollContext) -> float:
        return self.interval_s

    def error_delay(self, consecutive_errors: int, retry_after_s: float | None) -> float:
        return BackoffPolicy(self.interval_s, max(self.max_interval_s, self.interval_s),
                             rng=lambda: 0.0).error_delay(consecutive_errors, retry_after_s)


_ESTIMATOR = AdaptivePolicy()


def estimate_remaining_s(history: tuple[Observation, ...],
                         prior: ModelPrior | None = None) -> float | None:
    """Seconds until the predicted end (what a progress bar's ETA shows), or None.

    The adaptive policy's midpoint estimate, whatever policy schedules the polls;
    where that has no signal yet, the middle of the end the model's ``prior``
    allows (counted from the newest observation).
    """
    remaining = _ESTIMATOR.remaining_s(history)
    if remaining is None and prior is not None and history:
        now = history[-1].at_s
        window = end_window(prior, history, now)
        if window is not None:
            remaining = max((window[0] + window[1]) / 2 - now, 0.0)
    return remaining


def make_policy(name: str, interval_s: float, max_interval_s: float) -> DelayPolicy:
    """The policy called ``name`` ("adaptive", "backoff" or "fixed")."""
    if name == "adaptive":
        return AdaptivePolicy(interval_s, max_interval_s)
    if name == "backoff":
        return BackoffPolicy(interval_s, max_interval_s)
    if name == "fixed":
        return FixedPolicy(interval_s, max_interval_s)
    raise ValueError(f"unknown poll policy {name!r}: use adaptive, backoff or fixed")


def split_countdown(delay_s: float, max_countdown_s: float) -> tuple[float, bool]:
    """The countdown for the next message, and whether it is only a hop.

    A hop (``True``) wakes up, finds the planned poll time still ahead, and
    schedules the rest of the wait without calling the API.
    """
    if max_countdown_s <= 0:
        raise ValueError("max_countdown_s must be positive")
    delay_s = max(delay_s, 0.0)
    if delay_s <= max_countdown_s:
        return delay_s, False
    return max_countdown_s, True
