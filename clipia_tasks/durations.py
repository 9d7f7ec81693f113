"""Learned durations per model: how long its requests queue and run, from finished ones.

Pure values and functions, no I/O and no clock. A worker keeps one
:class:`Durations` per model (one short string in Redis, :func:`encode` /
:func:`decode`); when a request ends it derives what the poller saw into a
:class:`Sample` (:func:`sample`) and folds it in (:func:`observe`, or both at
once with :func:`learn`). :func:`prior` turns the history into a
:class:`ModelPrior`, which the adaptive policy uses to time the first status
call and to predict the end of requests that report no progress.

Memory and decay: each of the three rings (queue, run, total) keeps the newest
:data:`MAX_SAMPLES` values; older ones drop off, and the medians and p90s weigh
the newer ones more (half weight every :data:`HALF_LIFE` samples). The bands below
weigh every kept sample alike: requests started together end, and are learned,
shortest first, and weighing the newest more would call the shortest unusual. The encoded
history is at most :data:`MAX_ENCODED_BYTES` bytes.

The *typical band* of a ring (``*_lo_s`` … ``*_hi_s``) is where the model's
ordinary requests fall. Ordinary: within four median absolute deviations of the
median, so a minority of much slower requests (under half) does not widen it.
Its edges: the ordinary samples' p10 and p90, each pushed out by a quarter of its
distance to the median (where the edges of a uniform spread lie), never inside
the outermost ordinary sample, and with few samples at least 30 % / n of the
median away from it.

Why three rings: the queue/run split of a request is known only when the
poller saw it queued shortly before it ran (or read its progress early on).
Once a model has a prior, its first status call comes near the expected end,
so the split is rarely seen again, but the total (enqueue to end) always is.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .nouns import TERMINAL_STATUSES, Observation, Status

__all__ = [
    "HALF_LIFE",
    "MAX_ENCODED_BYTES",
    "MAX_SAMPLES",
    "MAX_SAMPLE_S",
    "MIN_SAMPLES",
    "Durations",
    "ModelPrior",
    "Sample",
    "decode",
    "encode",
    "end_window",
    "learn",
    "observe",
    "prior",
    "run_window",
    "sample",
    "sample_from",
    "sample_from_times",
]

#: Samples kept per ring (queue, run, total); the oldest drop off first.
MAX_SAMPLES = 20
#: Samples the total ring needs before :func:`prior` trusts it (the queue ring: one,
#: see :func:`prior`).
MIN_SAMPLES = 3
#: Quantiles weigh a sample half as much as one this many samples newer.
HALF_LIFE = 10.0
#: Longest duration recorded; longer (or negative) values are ignored as nonsense.
MAX_SAMPLE_S = 86_400.0
#: Upper bound of :func:`encode`'s output (three full rings of the longest values).
MAX_ENCODED_BYTES = 400

#: A derived duration is kept when the interval it is known within is at most this
#: wide, absolutely (s) or relative to its midpoint. Absolutely: one default poll
#: interval (1 s, counted from an answer, so a little more between two calls).
_ABS_TOL_S = 1.25
_REL_TOL = 0.25
#: The end (total) is kept from a wider interval: whether it is wide depends on the
#: poll schedule, and dropping the wide ones would drop the shortest requests.
_END_REL_TOL = 0.5
#: A request already ended at its first status call counts as having ended this
#: fraction of the way to that call (see :func:`sample`).
_ENDED_UNSEEN = 0.95
#: The API's own duration of a request (``completed_at - created_at`` of its result)
#: pins its end (counted from the first enqueue) to within this much earlier ...
_API_EARLY_S = 0.25
#: ... or later: the enqueue follows the creation (``submit`` enqueues as the POST
#: returns), so the API's duration is a little longer than the enqueue-to-end one.
_API_LATE_S = 0.05
_VERSION = "d1"


@dataclass(frozen=True)
class Durations:
    """Recent durations of one model's finished requests, newest last (seconds)."""

    #: Enqueue → running (the end of the queue).
    queue_s: tuple[float, ...] = ()
    #: Running → end.
    run_s: tuple[float, ...] = ()
    #: Enqueue → end (known more often than the split; see the module docstring).
    total_s: tuple[float, ...] = ()


@dataclass(frozen=True)
class Sample:
    """What one finished request tells about its model; None where it is not known."""

    queue_s: float | None = None
    run_s: float | None = None
    total_s: float | None = None


# -- storage --------------------------------------------------------------------


def _fmt(value: float) -> str:
    # Three significant digits (plenty against a ±15 % spread), at most 5 characters.
    if value < 10:
        text = f"{value:.2f}"
    elif value < 100:
        text = f"{value:.1f}"
    else:
        return str(round(value))
    return text.rstrip("0").rstrip(".") or "0"


def encode(d: Durations) -> str:
    """``d`` as one short string, e.g. ``d1;0.4,0.5;20.1,19.7;20.6,20.2``."""
    rings = (d.queue_s, d.run_s, d.total_s)
    return ";".join([_VERSION, *(",".join(_fmt(v) for v in ring[-MAX_SAMPLES:]) for ring in rings)])


def _valid(value: float) -> bool:
    return math.isfinite(value) and 0.0 <= value <= MAX_SAMPLE_S


def decode(text: str | bytes | None) -> Durations:
    """The durations :func:`encode` wrote; anything else (garbage, another version) is empty."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not text:
        return Durations()
    parts = text.split(";")
    if len(parts) != 4 or parts[0] != _VERSION:
        return Durations()
    try:
        rings = [tuple(float(v) for v in part.split(",") if v) for part in parts[1:]]
    except ValueError:
        return Durations()
    queue, run, total = (tuple(v for v in ring if _valid(v))[-MAX_SAMPLES:] for ring in rings)
    return Durations(queue, run, total)


def _push(ring: tuple[float, ...], value: float | None) -> tuple[float, ...]:
    if value is None or not _valid(value):
        return ring
    # Kept at the precision :func:`encode` writes, so a round trip changes nothing.
    return (*ring, float(_fmt(value)))[-MAX_SAMPLES:]


def observe(d: Durations, *, queue_s: float | None, run_s: float | None,
            total_s: float | None = None) -> Durations:
    """``d`` with one finished request's durations added (None: not known, left out).

    ``total_s`` defaults to ``queue_s + run_s`` when both are given. Negative,
    non-finite or longer-than-a-day values are ignored.
    """
    if total_s is None and queue_s is not None and run_s is not None:
        total_s = queue_s + run_s
    return Durations(_push(d.queue_s, queue_s), _push(d.run_s, run_s),
                     _push(d.total_s, total_s))


# -- what a finished request tells --------------------------------------------------

#: ``a*q + b*r <= c`` over the queue end ``q`` and the run length ``r`` (seconds).
_Constraint = tuple[float, float, float]


def _corners(cons: Sequence[_Constraint]) -> list[tuple[float, float]]:
    """The corners of the polygon ``cons`` bounds (empty if nothing satisfies all).

    Two unknowns and a handful of constraints: every pair of boundary lines is
    intersected and the points that satisfy all constraints kept, a few hundred
    tiny solves at most. The polygon is always bounded (:func:`_box`).
    """
    corners: list[tuple[float, float]] = []
    n = len(cons)
    for i in range(n):
        a1, b1, c1 = cons[i]
        for j in range(i + 1, n):
            a2, b2, c2 = cons[j]
            det = a1 * b2 - a2 * b1
            if abs(det) < 1e-12:
                continue
            q = (c1 * b2 - c2 * b1) / det
            r = (a1 * c2 - a2 * c1) / det
            if all(a * q + b * r <= c + 1e-7 * (1.0 + abs(c)) for a, b, c in cons):
                corners.append((q, r))
    return corners


def _span(corners: Sequence[tuple[float, float]], wq: float, wr: float) -> tuple[float, float]:
    """Min and max of ``wq * q + wr * r`` over a polygon given by its corners."""
    values = [wq * q + wr * r for q, r in corners]
    return min(values), max(values)


def _box() -> list[_Constraint]:
    return [(-1.0, 0.0, 0.0), (1.0, 0.0, MAX_SAMPLE_S), (0.0, -1.0, 0.0), (0.0, 1.0, MAX_SAMPLE_S)]


def _seen(history: Iterable[Observation]) -> list[_Constraint]:
    """What the observations say about (q, r): queued means q > t; running means
    q <= t < q + r; a progress p means the run is between p and p + 1 % done."""
    cons: list[_Constraint] = []
    queued = [o.at_s for o in history if o.status == Status.IN_QUEUE]
    running = [o for o in history if o.status == Status.IN_PROGRESS]
    if queued:
        cons.append((-1.0, 0.0, -max(queued)))
    if running:
        cons.append((1.0, 0.0, min(o.at_s for o in running)))
        cons.append((-1.0, -1.0, -max(o.at_s for o in running)))
    for o in running:
        if o.progress is not None:
            cons.append((1.0, o.progress / 100, o.at_s))
            cons.append((-1.0, -(o.progress + 1) / 100, -o.at_s))
    return cons


def _known(lo: float, hi: float, rel_tol: float = _REL_TOL) -> float | None:
    """The midpoint of [lo, hi] if the interval is narrow enough to be a sample."""
    mid = (lo + hi) / 2
    return mid if hi - lo <= max(_ABS_TOL_S, rel_tol * mid) else None


def sample(history: Sequence[Observation], *, end_s: float,
           prior: ModelPrior | None = None, api_total_s: float | None = None) -> Sample:
    """What one finished request's poller saw, as durations (None where not derivable).

    ``history``: the record's recent observations (oldest first, ``at_s`` counted
    from the first enqueue; terminal ones may be included); ``end_s``: when the end
    was detected, on the same clock; ``prior``: the model's prior the poller used,
    if any (it only sharpens the end of a request with one progress reading).

    * The queue ended after the last ``IN_QUEUE`` observation (or the enqueue) and
      by the first ``IN_PROGRESS`` one; the request ended after the last pending
      observation and by ``end_s``; each progress reading ``p`` says the run was
      between p and p + 1 % done (a steady run). The queue and run durations are
      what these bounds allow, kept only if known within 1 s or 25 % (midpoint).
    * The end (total) is kept where the bounds pin it down. Otherwise: after a
      single progress reading the poller aimed its call just past the end it
      predicted, so the end is taken where the prior put it (or as ``end_s``);
      without progress it is the midpoint of the last gap between calls (unknown
      only if that gap is over half of it: leaving out merely wide gaps would
      leave out the shortest requests).
    * A request that had already ended at its first call (nothing pending seen)
      counts as ending at 0.95 of that call's time. Leaving it out would keep only
      the requests that outlast the first call, so the learned durations, and with
      them the first call, would creep later and later; counting it a little early
      moves the next first calls earlier until such requests are rare again.
    * ``api_total_s``: the API's own duration (``completed_at - created_at`` of the
      result body), when known. Where it agrees with what the poller saw (the request
      was enqueued as it was created, and the clocks agree), it pins the end down to
      a fraction of a second, however sparse the calls were; the queue/run split
      then follows from the readings. A duration that disagrees is ignored.
    """
    obs = sorted(history, key=lambda o: o.at_s)
    terminal = [o.at_s for o in obs if o.status in TERMINAL_STATUSES]
    pending = [o for o in obs if o.status not in TERMINAL_STATUSES]
    end_hi = min([end_s, *terminal])
    if not _valid(end_hi):
        return Sample()
    end_lo = pending[-1].at_s if pending else 0.0
    if end_hi < end_lo:
        return Sample()
    if api_total_s is not None and _valid(api_total_s):
        lo, hi = max(end_lo, api_total_s - _API_EARLY_S), min(end_hi, api_total_s + _API_LATE_S)
        if lo <= hi:
            end_lo, end_hi = lo, hi
            if not pending:
                return Sample(total_s=(lo + hi) / 2)
    if not pending:
        return Sample(total_s=_ENDED_UNSEEN * end_hi)
    cons = [*_box(), *_seen(pending), (1.0, 1.0, end_hi), (-1.0, -1.0, -end_lo)]
    if not any(o.status == Status.IN_PROGRESS for o in pending):
        cons.append((1.0, 0.0, end_hi))  # never seen running: the queue ended by the end
    corners = _corners(cons)
    if not corners:
        # The readings contradict a steady run (progress that jumps): no split.
        return Sample(total_s=_end_estimate(pending, (end_lo, end_hi), None))
    return Sample(_known(*_span(corners, 1.0, 0.0)), _known(*_span(corners, 0.0, 1.0)),
                  _end_estimate(pending, _span(corners, 1.0, 1.0), prior))


def _end_estimate(pending: Sequence[Observation], end: tuple[float, float],
                  p: ModelPrior | None) -> float | None:
    lo, hi = end
    if hi - lo <= max(_ABS_TOL_S / 2, 0.03 * hi):
        return (lo + hi) / 2
    last = pending[-1]
    if last.status == Status.IN_PROGRESS and last.progress is not None:
        window = end_window(p, pending, last.at_s) if p is not None else None
        if window is not None and max(lo, window[0]) <= min(hi, window[1]):
            return (max(lo, window[0]) + min(hi, window[1])) / 2
        return hi
    return _known(lo, hi, _END_REL_TOL)


def sample_from(history: tuple[Observation, ...], *, end_s: float
                ) -> tuple[float | None, float | None]:
    """(queue_s, run_s) of one finished request, None where not derivable (see :func:`sample`)."""
    s = sample(history, end_s=end_s)
    return s.queue_s, s.run_s


def sample_from_times(*, queue_end_s: float | None, end_s: float
                      ) -> tuple[float | None, float | None]:
    """(queue_s, run_s) from a queue end the caller kept (e.g. the first ``IN_PROGRESS``)."""
    if queue_end_s is None or not _valid(queue_end_s) or not _valid(end_s):
        return None, None
    if end_s < queue_end_s:
        return queue_end_s, None
    return queue_end_s, end_s - queue_end_s


def learn(d: Durations, history: Sequence[Observation], *, end_s: float,
          api_total_s: float | None = None) -> Durations:
    """``d`` with what one finished request's history tells (:func:`sample` with the
    prior ``d`` gives, then :func:`observe`)."""
    s = sample(history, end_s=end_s, prior=prior(d), api_total_s=api_total_s)
    return observe(d, queue_s=s.queue_s, run_s=s.run_s, total_s=s.total_s)


# -- what the history predicts ------------------------------------------------------


@dataclass(frozen=True)
class ModelPrior:
    """What a model's recent requests say about the next one (seconds).

    The quantiles are of all recent samples, newer ones weighing more; the bands
    (``*_lo_s`` … ``*_hi_s``) hold the model's ordinary requests only (see the
    module docstring). A prior built by hand with only the first five fields gets
    bands from them (:meth:`bands`).
    """

    queue_p50_s: float
    queue_p90_s: float
    run_p50_s: float
    run_p90_s: float
    #: Finished requests the prior rests on (samples of the total).
    samples: int
    queue_lo_s: float | None = None
    queue_hi_s: float | None = None
    run_lo_s: float | None = None
    run_hi_s: float | None = None
    total_p50_s: float | None = None
    total_p90_s: float | None = None
    total_lo_s: float | None = None
    total_hi_s: float | None = None

    def bands(self) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float]]:
        """The typical (queue, run, total) bands, each (lo, hi)."""
        def band(lo: float | None, hi: float | None, p50: float, p90: float
                 ) -> tuple[float, float]:
            return (max(2 * p50 - p90, 0.0) if lo is None else lo, p90 if hi is None else hi)

        queue = band(self.queue_lo_s, self.queue_hi_s, self.queue_p50_s, self.queue_p90_s)
        run = band(self.run_lo_s, self.run_hi_s, self.run_p50_s, self.run_p90_s)
        total = (queue[0] + run[0] if self.total_lo_s is None else self.total_lo_s,
                 queue[1] + run[1] if self.total_hi_s is None else self.total_hi_s)
        return queue, run, total


def _quantile(ring: Sequence[float], q: float, *, recent: bool = True) -> float:
    """Quantile, interpolated between samples; ``recent``: newer samples weigh more."""
    n = len(ring)
    weighted: list[tuple[float, float]] = sorted(
        (v, math.pow(0.5, (n - 1 - i) / HALF_LIFE) if recent else 1.0)
        for i, v in enumerate(ring))
    total = sum(w for _, w in weighted)
    # Each sample sits at the middle of its weight on the cumulative axis.
    marks, acc = [], 0.0
    for _, w in weighted:
        marks.append((acc + w / 2) / total)
        acc += w
    if q <= marks[0]:
        return weighted[0][0]
    for k in range(1, n):
        if q <= marks[k]:
            lo_m, hi_m = marks[k - 1], marks[k]
            frac = (q - lo_m) / (hi_m - lo_m)
            return weighted[k - 1][0] + frac * (weighted[k][0] - weighted[k - 1][0])
    return weighted[-1][0]


def _band(ring: Sequence[float]) -> tuple[float, float]:
    """Where the model's ordinary requests fall (see the module docstring)."""
    # Every kept sample weighs the same here: requests started together end in the
    # order of their lengths, so weighing the newest more would call the shortest ones
    # unusual. (The ring's bound is the decay.)
    mid = _quantile(ring, 0.5, recent=False)
    mad = _quantile([abs(v - mid) for v in ring], 0.5, recent=False)
    reach = max(4 * mad, 0.1 * mid, 0.1)
    usual = [v for v in ring if abs(v - mid) <= reach]
    p10, p50, p90 = (_quantile(usual, q, recent=False) for q in (0.1, 0.5, 0.9))
    # A tenth of a uniform spread lies beyond p10 and p90, a quarter of their
    # distance to the median; fewer samples leave more room for chance; and every
    # ordinary sample is inside.
    floor = max(0.3 * p50 / len(usual), 0.05)
    lo = min(p10 - 0.25 * (p50 - p10), p50 - floor, min(usual))
    hi = max(p90 + 0.25 * (p90 - p50), p50 + floor, max(usual))
    return max(lo, 0.0), hi


def prior(d: Durations) -> ModelPrior | None:
    """What ``d`` predicts, or None while the total ring has < :data:`MIN_SAMPLES` samples
    or the queue ring none.

    The run ring is informational (``run_*``): with a prior the poller rarely sees a
    run whole, so its samples lean towards the slow requests that fell back (it is
    taken as total minus queue while it has too few samples).

    The queue ring fills more slowly, and may stop filling: only a request that
    reports progress (or was seen queued just before it ran) tells its queue time,
    and once the prior exists requests are first seen near their end. So one queue
    sample is enough (the band of one sample is +-30 %, see :func:`_band`): without
    it a model whose requests mostly report no progress would rarely get a prior.
    """
    if len(d.total_s) < MIN_SAMPLES or not d.queue_s:
        return None
    queue, total = _band(d.queue_s), _band(d.total_s)
    total_p50, queue_p50 = _quantile(d.total_s, 0.5), _quantile(d.queue_s, 0.5)
    queue_p90 = _quantile(d.queue_s, 0.9)
    if len(d.run_s) >= MIN_SAMPLES:
        run = _band(d.run_s)
        run_p50, run_p90 = _quantile(d.run_s, 0.5), _quantile(d.run_s, 0.9)
    else:
        run = (max(total[0] - queue[1], 0.0), max(total[1] - queue[0], 0.0))
        run_p50 = max(total_p50 - queue_p50, 0.0)
        run_p90 = max(_quantile(d.total_s, 0.9) - queue_p50, 0.0)
    return ModelPrior(
        queue_p50_s=queue_p50, queue_p90_s=queue_p90,
        run_p50_s=run_p50, run_p90_s=run_p90,
        samples=len(d.total_s),
        queue_lo_s=queue[0], queue_hi_s=queue[1], run_lo_s=run[0], run_hi_s=run[1],
        total_p50_s=total_p50, total_p90_s=_quantile(d.total_s, 0.9),
        total_lo_s=total[0], total_hi_s=total[1],
    )


def end_window(p: ModelPrior, history: Sequence[Observation], now_s: float
               ) -> tuple[float, float] | None:
    """When a pending request ends (earliest, latest), or None: see :func:`run_window`."""
    windows = run_window(p, history, now_s)
    return None if windows is None else windows[0]


def run_window(p: ModelPrior, history: Sequence[Observation], now_s: float, *,
               total: bool = True) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """When a pending request ends and how long it runs: ((earliest, latest end),
    (shortest, longest run)), the end in seconds since its first enqueue.

    What the prior's typical queue and total bands allow given what was seen: still
    pending at ``now_s``, queued or running at each observation, and each progress
    reading (progress assumed to advance steadily). None when nothing fits: the
    request does not behave like the model's ordinary ones. ``total=False`` leaves
    the total band out: what the readings say for a request that queued as usual
    but runs faster or slower.
    """
    (q_lo, q_hi), _, (t_lo, t_hi) = p.bands()
    # The run band is left out: its samples lean towards slow requests (see prior()).
    cons: list[_Constraint] = [
        *_box(), *_seen(history),
        (-1.0, 0.0, -q_lo), (1.0, 0.0, q_hi),
        (-1.0, -1.0, -now_s),
    ]
    if total:
        cons += [(-1.0, -1.0, -t_lo), (1.0, 1.0, t_hi)]
    corners = _corners(cons)
    return (_span(corners, 1.0, 1.0), _span(corners, 0.0, 1.0)) if corners else None
