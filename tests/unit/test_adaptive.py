"""The adaptive policy on recorded-style traces: a pure request model polled on a fake clock."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from clipia_tasks.policy import AdaptivePolicy, BackoffPolicy, Observation, PollContext

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
