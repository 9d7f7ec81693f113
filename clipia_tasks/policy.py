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

The status vocabulary (``Phase``, ``classify``, ``Observation``) lives in
:mod:`clipia_tasks.nouns` and is re-exported here for older imports.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from .nouns import TERMINAL_STATUSES, Observation, Phase, Status, classify

__all__ = [
    "TERMINAL_STATUSES",
    "AdaptivePolicy",
    "BackoffPolicy",
    "DelayPolicy",
    "Estimate",
    "FixedPolicy",
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


class DelayPolicy(Protocol):
    """Decides the wait before the next status call."""

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

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or self.max_interval_s < self.interval_s:
            raise ValueError("need 0 < interval_s <= max_interval_s")
        if not 0 < self.approach <= 1 or not 0 < self.age_fraction <= 1:
            raise ValueError("need 0 < approach <= 1 and 0 < age_fraction <= 1")

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

    def next_delay(self, ctx: PollContext) -> float:
        est = self.estimate(ctx.history)
        if est is None:
            # No signal: back off, capped by a fraction of the request's age.
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

    def next_delay(self, ctx: PollContext) -> float:
        return self.interval_s

    def error_delay(self, consecutive_errors: int, retry_after_s: float | None) -> float:
        return BackoffPolicy(self.interval_s, max(self.max_interval_s, self.interval_s),
                             rng=lambda: 0.0).error_delay(consecutive_errors, retry_after_s)


_ESTIMATOR = AdaptivePolicy()


def estimate_remaining_s(history: tuple[Observation, ...]) -> float | None:
    """Seconds until the predicted end (what a progress bar's ETA shows), or None.

    The adaptive policy's midpoint estimate, whatever policy schedules the polls.
    """
    return _ESTIMATOR.remaining_s(history)


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
