"""The adaptive policy on recorded-style traces: a pure request model polled on a fake clock."""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import replace

import pytest

from clipia_tasks.durations import MAX_SAMPLES, Durations, ModelPrior, learn, observe, prior
from clipia_tasks.policy import (
    AdaptivePolicy,
    BackoffPolicy,
    Observation,
    PollContext,
    estimate_remaining_s,
)
from clipia_tasks.record.history import HISTORY_LEN, trim_history

Status = tuple[str, int | None, int | None]  # status, queue_position, progress


def request_model(queue_s: float, run_s: float, progress: str = "linear",
                  queue_start: int = 5) -> Callable[[float], Status]:
    """What /status says at time t (like the simulator: integer progress, truncated)."""
    def at(t: float) -> Status:
        if t < queue_s:
            left = queue_s - t
            return "IN_QUEUE", math.ceil(left / queue_s * (queue_start + 1)) - 1, None
        if t < queue_s + run_s:
            frac = (t - queue_s) / run_s
            if progress == "none":
                return "IN_PROGRESS", None, None
            if progress == "jumpy":
                steps = [0, 10, 10, 35, 35, 60, 90, 95]
                return "IN_PROGRESS", None, steps[min(int(frac * len(steps)), len(steps) - 1)]
            return "IN_PROGRESS", None, int(100 * frac)
        return "COMPLETED", None, None
    return at


def run(policy: AdaptivePolicy | BackoffPolicy, model: Callable[[float], Status],
        end_s: float, first_poll_s: float = 0.0) -> tuple[int, float, list[float]]:
    """Poll until terminal: (status calls, detection lag in s, delays chosen)."""
    t, history, delays = first_poll_s, [], []
    for polls in range(1, 10_000):
        status, qp, progress = model(t)
        if status == "COMPLETED":
            return polls, t - end_s, delays
        history.append(Observation(round(t, 3), status, qp, progress))
        delay = policy.next_delay(PollContext(elapsed_s=t, polls=polls,
                                              history=tuple(history[-12:])))
        delays.append(delay)
        t += delay
    raise AssertionError("never finished")


ADAPTIVE = AdaptivePolicy(interval_s=1.0, max_interval_s=60.0, rng=lambda: 0.5)


@pytest.mark.parametrize("run_s", [5, 20, 60, 120])
def test_linear_progress_is_caught_within_5_percent_in_a_handful_of_calls(run_s: float) -> None:
    calls, lag, delays = run(ADAPTIVE, request_model(0, run_s), end_s=run_s, first_poll_s=0.2)
    assert calls <= 4, (calls, delays)  # + one result call = the 5
    assert 0 <= lag <= 0.05 * run_s, (lag, delays)
    assert all(1.0 <= d <= 60.0 for d in delays)


def test_a_queue_that_drains_is_followed_then_progress_takes_over() -> None:
    calls, lag, _ = run(ADAPTIVE, request_model(10, 30), end_s=40, first_poll_s=0.2)
    assert calls <= 10 and lag <= 0.05 * 40


@pytest.mark.parametrize("run_s", [10, 60, 120])
def test_without_progress_detection_stays_within_a_fraction_of_the_age(run_s: float) -> None:
    calls, lag, _ = run(ADAPTIVE, request_model(0, run_s, "none"), end_s=run_s, first_poll_s=0.2)
    fixed_calls = math.ceil(run_s)  # the SDK's fixed 1 s polling
    assert calls <= fixed_calls
    assert lag <= 0.25 * run_s


def test_jumpy_progress_never_schedules_outside_the_bounds() -> None:
    calls, lag, delays = run(ADAPTIVE, request_model(0, 60, "jumpy"), end_s=60, first_poll_s=0.2)
    assert all(1.0 <= d <= 60.0 for d in delays)
    assert lag <= 0.25 * 60 and calls <= 30


def test_progress_going_backwards_falls_back_to_age_capped_backoff() -> None:
    history = (Observation(1.0, "IN_PROGRESS", None, 50), Observation(2.0, "IN_PROGRESS", None, 10))
    assert ADAPTIVE.remaining_s(history) is None
    stalled = (Observation(1.0, "IN_PROGRESS", None, 40), Observation(3.0, "IN_PROGRESS", None, 40))
    assert ADAPTIVE.remaining_s(stalled) is None
    delay = ADAPTIVE.next_delay(PollContext(elapsed_s=20.0, polls=9, history=history))
    assert 1.0 <= delay <= 0.15 * 20 * 1.1


def test_the_final_wake_aims_at_the_latest_end_integer_readings_allow() -> None:
    # 10 points per second from 10 % to 80 %: about 1.95 s to go, at most 20 / (69 / 7) s
    history = (Observation(1.0, "IN_PROGRESS", None, 10), Observation(8.0, "IN_PROGRESS", None, 80))
    est = ADAPTIVE.estimate(history)
    assert est is not None and est.precise and est.baseline_s == 7.0
    assert est.mid_s == pytest.approx(1.95)
    assert est.late_s == pytest.approx(20 / (69 / 7))
    delay = ADAPTIVE.next_delay(PollContext(elapsed_s=8.0, polls=2, history=history))
    assert delay == pytest.approx(est.late_s + 0.05)


def test_retry_after_is_a_floor_and_the_result_is_deterministic() -> None:
    assert ADAPTIVE.error_delay(1, retry_after_s=45.0) == 45.0
    again = AdaptivePolicy(interval_s=1.0, max_interval_s=60.0, rng=lambda: 0.5)
    trace = run(ADAPTIVE, request_model(3, 40, "jumpy"), end_s=43, first_poll_s=0.2)
    assert trace == run(again, request_model(3, 40, "jumpy"), end_s=43, first_poll_s=0.2)


def test_adaptive_needs_far_fewer_calls_than_backoff_on_the_same_requests() -> None:
    backoff = BackoffPolicy(interval_s=1.0, max_interval_s=10.0, rng=lambda: 0.5)
    a = sum(run(ADAPTIVE, request_model(1, s), end_s=1 + s, first_poll_s=0.2)[0]
            for s in (5, 20, 60, 120))
    b = sum(run(backoff, request_model(1, s), end_s=1 + s, first_poll_s=0.2)[0]
            for s in (5, 20, 60, 120))
    assert a < b


# -- with a model's learned durations (clipia_tasks.durations) ------------------------------

def warm_prior(queue_s: float, run_s: float, seed: int = 7) -> ModelPrior:
    """A prior from MAX_SAMPLES requests of one model (queue and run ±15 %)."""
    rng = random.Random(seed)
    d = Durations()
    for _ in range(MAX_SAMPLES):
        d = observe(d, queue_s=queue_s * rng.uniform(0.85, 1.15),
                    run_s=run_s * rng.uniform(0.85, 1.15))
    p = prior(d)
    assert p is not None
    return p


def lengths(queue_s: float, run_s: float, n: int = 40, seed: int = 11
            ) -> list[tuple[float, float]]:
    """(queue, run) of n requests of one model, each ±15 %."""
    rng = random.Random(seed)
    return [(queue_s * rng.uniform(0.85, 1.15), run_s * rng.uniform(0.85, 1.15))
            for _ in range(n)]


def run_with_prior(policy: AdaptivePolicy, model: Callable[[float], Status], end_s: float,
                   p: ModelPrior | None) -> tuple[int, float, tuple[Observation, ...], float]:
    """As the poller does it: the first call when first_delay_s says (at once: 0.2 s),
    the record's history trimmed to HISTORY_LEN. (status calls, lag, history, end seen)."""
    first = policy.first_delay_s(p, 0.0)
    t = 0.2 if first is None else first
    kept: tuple[Observation, ...] = ()
    for polls in range(1, 10_000):
        status, qp, progress = model(t)
        seen = (*kept, Observation(round(t, 3), status, qp, progress))
        if status == "COMPLETED":
            return polls, t - end_s, tuple(trim_history(list(seen), HISTORY_LEN)), t
        delay = policy.next_delay(PollContext(elapsed_s=t, polls=polls, history=seen, prior=p))
        assert policy.interval_s <= delay <= policy.max_interval_s
        kept = tuple(trim_history(list(seen), HISTORY_LEN))
        t += delay
    raise AssertionError("never finished")


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def test_without_a_prior_the_first_call_is_at_once_and_nothing_changes() -> None:
    assert ADAPTIVE.first_delay_s(None, 0.0) is None
    assert BackoffPolicy().first_delay_s(warm_prior(2, 20), 0.0) is None
    for model, end_s in ((request_model(0, 60, "none"), 60), (request_model(10, 30), 40),
                         (request_model(3, 40, "jumpy"), 43)):
        # the same trace as before the priors existed, call for call
        assert run_with_prior(ADAPTIVE, model, end_s, None)[:2] == run(ADAPTIVE, model, end_s,
                                                                    0.2)[:2]


@pytest.mark.parametrize(("queue_s", "run_s"), [(3.0, 20.0), (0.5, 30.0)])
def test_with_a_warm_prior_progress_takes_three_calls_and_is_caught_promptly(
        queue_s: float, run_s: float) -> None:
    p = warm_prior(queue_s, run_s)
    calls, lags, shares = [], [], []
    for q, r in lengths(queue_s, run_s):
        n, lag, _, _ = run_with_prior(ADAPTIVE, request_model(q, r), q + r, p)
        calls.append(n + 1)  # + the result call
        lags.append(lag)
        shares.append(lag / (q + r))
    assert pct(calls, 0.5) <= 3, calls
    assert 0 <= min(lags) and pct(lags, 0.5) <= 0.3, lags
    assert pct(shares, 0.95) <= 0.05, shares


def test_a_long_run_is_caught_within_about_a_progress_point() -> None:
    # A point of a 45 s run lasts 0.45 s: no reading tells the end more precisely.
    p = warm_prior(2.0, 45.0)
    calls, lags, today = [], [], []
    for q, r in lengths(2.0, 45.0):
        n, lag, _, _ = run_with_prior(ADAPTIVE, request_model(q, r), q + r, p)
        calls.append(n + 1)
        lags.append(lag)
        today.append(run(ADAPTIVE, request_model(q, r), q + r, 0.2)[1])
    assert pct(calls, 0.5) <= 3 and max(calls) <= 5
    assert pct(lags, 0.5) <= 0.45 and pct(lags, 0.5) <= pct(today, 0.5)


@pytest.mark.parametrize(("queue_s", "run_s"), [(3.0, 20.0), (2.0, 45.0)])
def test_with_a_warm_prior_requests_without_progress_take_four_calls(
        queue_s: float, run_s: float) -> None:
    p = warm_prior(queue_s, run_s)
    calls, shares = [], []
    for q, r in lengths(queue_s, run_s):
        n, lag, _, _ = run_with_prior(ADAPTIVE, request_model(q, r, "none"), q + r, p)
        calls.append(n + 1)
        shares.append(lag / (q + r))
    assert pct(calls, 0.5) <= 4, calls
    assert 0 <= min(shares) and pct(shares, 0.95) <= 0.10, shares


@pytest.mark.parametrize("progress", ["linear", "none"])
def test_requests_three_times_slower_than_their_model_do_no_worse_than_without_a_prior(
        progress: str) -> None:
    p = warm_prior(3.0, 20.0)
    ours, today = [], []
    for q, r in lengths(3.0, 20.0, n=30, seed=5):
        model = request_model(q, 3 * r, progress)
        n, lag, _, _ = run_with_prior(ADAPTIVE, model, q + 3 * r, p)
        n0, lag0, _ = run(ADAPTIVE, model, q + 3 * r, 0.2)
        assert n <= n0 + 1  # never more calls (here: fewer)
        assert 0 <= lag <= ADAPTIVE.age_fraction * (q + 3 * r)  # today's bound
        ours.append(lag / (q + 3 * r))
        today.append(lag0 / (q + 3 * r))
    assert sum(ours) / len(ours) <= sum(today) / len(today) + 0.005


def test_a_request_a_little_faster_than_its_model_is_still_caught_at_once() -> None:
    p = warm_prior(2.0, 45.0)
    assert p.total_lo_s is not None
    # 98 % done just before the model's earliest end: it ends within a second
    t = p.total_lo_s - 0.5
    delay = ADAPTIVE.next_delay(PollContext(elapsed_s=t, polls=1, prior=p,
                                            history=(Observation(t, "IN_PROGRESS", None, 98),)))
    assert delay == ADAPTIVE.interval_s


def test_without_progress_a_request_long_past_its_model_backs_off_by_its_age() -> None:
    p = warm_prior(2.0, 45.0)
    assert p.total_hi_s is not None
    t = 2 * p.total_hi_s
    ctx = PollContext(elapsed_s=t, polls=6, prior=p,
                      history=(Observation(t, "IN_PROGRESS", None, None),))
    assert ADAPTIVE.next_delay(ctx) <= ADAPTIVE.aged_fraction * t  # finer than today's cap
    assert ADAPTIVE.next_delay(ctx) >= 0.9 * ADAPTIVE.aged_fraction * t


def test_the_first_call_comes_a_poll_interval_before_the_earliest_typical_end() -> None:
    p = warm_prior(2.0, 45.0)
    lo = p.total_lo_s
    assert lo is not None
    assert ADAPTIVE.first_delay_s(p, 0.0) == pytest.approx(lo * 1.03 - 1.0)
    assert ADAPTIVE.first_delay_s(p, 10.0) == pytest.approx(lo * 1.03 - 11.0)
    assert p.total_hi_s is not None
    assert ADAPTIVE.first_delay_s(p, p.total_hi_s + 5) is None  # a late enqueue: at once
    late = ADAPTIVE.first_delay_s(p, lo + 5)  # past the earliest end: all but at once
    assert late is not None and late <= 0.05 * (lo + 5)
    long = AdaptivePolicy(interval_s=1.0, max_interval_s=30.0)
    assert long.first_delay_s(p, 0.0) == 30.0  # CLIPIA_POLL_MAX_INTERVAL still bounds it


def test_a_request_still_queued_at_its_first_call_is_called_before_it_can_end() -> None:
    p = warm_prior(2.0, 45.0)
    t = 40.0  # the queue is far longer than usual
    delay = ADAPTIVE.next_delay(PollContext(elapsed_s=t, polls=1, prior=p,
                                            history=(Observation(t, "IN_QUEUE", 4, None),)))
    assert p.run_lo_s is not None and 1.0 <= delay <= p.run_lo_s


def test_jumpy_progress_with_a_prior_stays_within_bounds_and_the_age_cap() -> None:
    p = warm_prior(3.0, 60.0)
    for q, r in lengths(3.0, 60.0, n=15):
        n, lag, _, _ = run_with_prior(ADAPTIVE, request_model(q, r, "jumpy"), q + r, p)
        assert 0 <= lag <= 0.25 * (q + r) and n <= 30


def test_the_prior_gives_an_eta_before_progress_gives_a_rate() -> None:
    p = warm_prior(2.0, 45.0)
    history = (Observation(40.0, "IN_PROGRESS", None, None),)
    assert estimate_remaining_s(history) is None
    eta = estimate_remaining_s(history, p)
    assert eta is not None and 0 < eta < 15


# -- as the real poller sees it ----------------------------------------------------------
#
# The traces above poll one request at a time, with calls exactly when the policy says.
# The poller (clipia_tasks/poller.py) differs in ways the priors feel:
# * it keeps trim_history(..., HISTORY_LEN) and learns from that (without the terminal
#   observation) with end_s = the call that saw the end;
# * a call comes at least CLIPIA_POLL_INTERVAL (1 s) after the previous *answer*, plus
#   worker/queue latency (here 0.05-0.15 s answer, 0.1-0.2 s scheduling);
# * the first call is deferred once (first_delay_s), then made whatever the prior says;
# * the prior is re-read at every step, and the benchmark (benchmarks/run.py --workload
#   models) starts a model's requests all at once: its priors come from a 20-request
#   warm-up polled from cold (the shortest learned first), and change while later
#   requests are in flight;
# * the result body's completed_at - created_at gives each request's true length.

BENCH_MODELS = {"fast-image": (1.0, 6.0), "image": (3.0, 15.0), "video": (4.0, 45.0),
                "audio": (0.5, 25.0)}
Script = tuple[float, float, str]  # queue s, run s, progress kind
Outcome = tuple[int, float, float]  # calls (status + result), lag s, length s


def poll_concurrently(scripts: Sequence[Script], learned: Durations, *, use_model: bool,
                      rng: random.Random, policy: AdaptivePolicy = ADAPTIVE
                      ) -> tuple[Durations, list[Outcome]]:
    """One model's requests, all enqueued at t=0, polled as the poller does."""
    queue: list[tuple[float, int]] = []
    models = [request_model(q, r, kind, queue_start=3) for q, r, kind in scripts]
    kept: list[tuple[Observation, ...]] = [() for _ in scripts]
    polls = [0] * len(scripts)
    deferred = [False] * len(scripts)
    out: list[Outcome | None] = [None] * len(scripts)
    for i in range(len(scripts)):
        heapq.heappush(queue, (rng.uniform(0.05, 0.3), i))
    while queue:
        t, i = heapq.heappop(queue)
        p = prior(learned) if use_model else None
        if not polls[i] and not deferred[i] and p is not None:
            deferred[i] = True
            first = policy.first_delay_s(p, t)
            if first is not None and first >= 0.05:
                heapq.heappush(queue, (t + first + rng.uniform(0.1, 0.2), i))
                continue
        status, qp, progress = models[i](t)
        polls[i] += 1
        seen = (*kept[i], Observation(round(t, 3), status, qp, progress))
        q, r, _ = scripts[i]
        if status == "COMPLETED":
            if use_model:
                # The result body's completed_at - created_at: the request's true
                # length (created, and enqueued, at t=0).
                learned = learn(learned, kept[i], end_s=t, api_total_s=q + r)
            out[i] = (polls[i] + 1, t - (q + r), q + r)
            continue
        delay = policy.next_delay(PollContext(elapsed_s=t, polls=polls[i], history=seen,
                                              prior=p))
        assert policy.interval_s <= delay <= policy.max_interval_s
        kept[i] = tuple(trim_history(list(seen), HISTORY_LEN))
        answered = t + rng.uniform(0.05, 0.15)
        heapq.heappush(queue, (max(t + delay, answered + policy.interval_s)
                               + rng.uniform(0.1, 0.2), i))
    assert all(o is not None for o in out)
    return learned, [o for o in out if o is not None]


Rows = dict[tuple[str, str, bool, bool], list[Outcome]]  # (model, progress, 3x, model=)


def models_workload(seeds: Sequence[int] = range(6), warm: int = 20, n: int = 30) -> Rows:
    """benchmarks/run.py --workload models, per model: a warm-up of ``warm`` requests
    (followed with model=, from cold), then ``n`` requests (one in five 3x slower),
    each polled with and without model= (the same latencies)."""
    rows: Rows = {}
    for seed in seeds:
        rng = random.Random(seed)
        for name, (queue_s, run_s) in BENCH_MODELS.items():
            def one(factor: float, rng: random.Random = rng, queue_s: float = queue_s,
                    run_s: float = run_s) -> Script:
                return (queue_s * rng.uniform(0.85, 1.15),
                        run_s * factor * rng.uniform(0.85, 1.15),
                        rng.choice(["linear", "none"]))
            learned, _ = poll_concurrently([one(1.0) for _ in range(warm)], Durations(),
                                           use_model=True, rng=rng)
            slow = [rng.random() < 0.2 for _ in range(n)]
            scripts = [one(3.0 if s else 1.0) for s in slow]
            timing = rng.random()
            for use_model in (True, False):
                _, outs = poll_concurrently(scripts, learned, use_model=use_model,
                                            rng=random.Random(timing))
                for (_, _, kind), s, o in zip(scripts, slow, outs, strict=True):
                    rows.setdefault((name, kind, s, use_model), []).append(o)
    return rows


@pytest.fixture(scope="module")
def workload() -> Rows:
    return models_workload()


def summary(rows: Sequence[Outcome]) -> tuple[float, float, float]:
    """(calls p50, lag p50 s, lag p95 as a fraction of the length)."""
    return (pct([c for c, _, _ in rows], 0.5), pct([lag for _, lag, _ in rows], 0.5),
            pct([lag / length for _, lag, length in rows], 0.95))


def test_the_faithful_workload_needs_a_fifth_of_fixed_polling(workload: Rows) -> None:
    ours = sum(c for (_, _, _, m), rows in workload.items() if m for c, _, _ in rows)
    today = sum(c for (_, _, _, m), rows in workload.items() if not m for c, _, _ in rows)
    # the SDK's 1 s polling from 0.2 s, + the result call
    fixed = sum(math.floor(length - 0.2) + 3 for (_, _, _, m), rows in workload.items() if m
                for _, _, length in rows)
    assert ours <= 0.20 * fixed, (ours / fixed, today / fixed)
    assert ours < 0.5 * today


@pytest.mark.parametrize("name", sorted(BENCH_MODELS))
def test_with_the_model_its_matching_requests_take_three_or_four_calls(
        workload: Rows, name: str) -> None:
    for progress, most in (("linear", 3), ("none", 4)):
        calls, _, _ = summary(workload[(name, progress, False, True)])
        today, _, _ = summary(workload[(name, progress, False, False)])
        assert calls <= most and calls < today, (progress, calls, today)


@pytest.mark.parametrize("name", ["image", "video", "audio"])
def test_without_progress_the_end_is_seen_within_a_tenth_of_the_length(
        workload: Rows, name: str) -> None:
    # Not fast-image: a 7 s request and a 1 s gap after each answer (plus latency) leave
    # about 1.2 s, 17 %, between the last call before the end and the one after it.
    _, _, share = summary(workload[(name, "none", False, True)])
    assert share <= 0.10


@pytest.mark.parametrize("name", ["image", "video", "audio"])
def test_with_progress_the_end_is_seen_within_5_percent(workload: Rows, name: str) -> None:
    # Before the warm-up filled the ring and the API's durations were learned, video
    # missed this (10-17 %): its band came from totals seen late, its shortest
    # requests ended before their first call.
    assert summary(workload[(name, "linear", False, True)])[2] <= 0.05


def test_video_without_progress_no_longer_regresses(workload: Rows) -> None:
    # Reproduced before the fix (HEAD): the 6-request warm-up rarely gave video a
    # queue sample from 3 requests with progress, so there was no prior (18 calls, as
    # without a model), and the prior that appeared while the 3x slower ones were in
    # flight stepped at 9 % of their age: 28 calls against 25 without a model.
    for slow in (False, True):
        ours, lag, share = summary(workload[("video", "none", slow, True)])
        today, lag0, share0 = summary(workload[("video", "none", slow, False)])
        assert ours < today and lag <= lag0 and share <= share0, (slow, ours, today)
    assert summary(workload[("video", "none", False, True)])[0] <= 4


@pytest.mark.parametrize("name", sorted(BENCH_MODELS))
def test_three_times_slower_requests_take_fewer_calls_than_without_the_model(
        workload: Rows, name: str) -> None:
    for progress in ("linear", "none"):
        ours, _, share = summary(workload[(name, progress, True, True)])
        today, _, share0 = summary(workload[(name, progress, True, False)])
        assert ours < today, (progress, ours, today)
        # Within today's age cap, and never far behind today's tail (fast-image with
        # progress is a little behind: 4.4 % against 2.8 %, about 0.1 s of 21 s).
        assert share <= ADAPTIVE.age_fraction and share <= share0 + 0.02, (progress, share,
                                                                           share0)


def test_where_the_targets_are_out_of_reach_it_stays_within_todays_bounds(
        workload: Rows) -> None:
    """The targets the faithful simulator shows out of reach, and what holds instead.

    * Lag p50 <= 0.3 s with progress (0.30-0.58 s here): the final call aims just past
      the latest end the reading allows (a progress point, or the queue band, wide),
      and this simulator adds 0.1-0.2 s of scheduling to every call.
    * Lag p95 <= 5 % with progress, and <= 10 % without: not fast-image. A 7 s request
      with calls at least 1 s after the previous answer (CLIPIA_POLL_INTERVAL) is seen
      up to about 1.2 s (17 %) after its end without progress; with progress the
      latency and the window alone are 5-8 % of it.
    """
    for name in BENCH_MODELS:
        _, lag, share = summary(workload[(name, "linear", False, True)])
        _, _, share0 = summary(workload[(name, "linear", False, False)])
        assert lag <= 0.75 and share <= max(share0 + 0.05, 0.05), (name, lag, share, share0)
        _, _, share = summary(workload[(name, "none", False, True)])
        _, _, share0 = summary(workload[(name, "none", False, False)])
        assert share <= share0 + 0.015, (name, share, share0)


def test_a_request_polled_from_the_start_keeps_its_policy_when_a_prior_appears() -> None:
    # Given a request polled without a prior for 40 s (its model's first requests were
    # in flight with it), when its model's prior appears
    p = warm_prior(4.0, 45.0)
    history = (Observation(32.0, "IN_PROGRESS", None, None),
               Observation(36.5, "IN_PROGRESS", None, None),
               Observation(41.0, "IN_PROGRESS", None, None))
    ctx = PollContext(elapsed_s=41.0, polls=14, history=history)
    # then it is polled exactly as without the prior
    assert ADAPTIVE.next_delay(replace(ctx, prior=p)) == ADAPTIVE.next_delay(ctx)
    # while one the prior timed (first call near its earliest end) follows the window
    timed = replace(ctx, polls=1, history=history[-1:], prior=p)
    assert ADAPTIVE.next_delay(timed) != ADAPTIVE.next_delay(replace(timed, prior=None))
