"""The delay policy: pure, deterministic with an injected rng."""

from __future__ import annotations

import pytest

from clipia_tasks.policy import (
    BackoffPolicy,
    FixedPolicy,
    Phase,
    PollContext,
    classify,
    split_countdown,
)


def ctx(polls: int) -> PollContext:
    return PollContext(elapsed_s=float(polls), polls=polls)


def test_delays_grow_from_interval_to_max_without_jitter() -> None:
    policy = BackoffPolicy(interval_s=1.0, max_interval_s=5.0, factor=2.0, rng=lambda: 0.0)
    assert [policy.next_delay(ctx(n)) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_jitter_only_adds_delay_and_never_passes_max() -> None:
    low = BackoffPolicy(interval_s=1.0, max_interval_s=10.0, rng=lambda: 0.0)
    high = BackoffPolicy(interval_s=1.0, max_interval_s=10.0, rng=lambda: 0.999)
    for n in range(1, 20):
        assert low.next_delay(ctx(n)) <= high.next_delay(ctx(n)) <= 10.0
        assert high.next_delay(ctx(n)) >= 1.0
    assert high.next_delay(ctx(1)) > low.next_delay(ctx(1))


def test_retry_after_is_a_floor_even_above_max_interval() -> None:
    policy = BackoffPolicy(interval_s=1.0, max_interval_s=5.0, rng=lambda: 0.5)
    assert policy.error_delay(1, retry_after_s=120.0) == 120.0
    assert policy.error_delay(1, retry_after_s=0.1) >= 1.0


def test_error_delays_back_off_and_stay_capped_without_retry_after() -> None:
    policy = BackoffPolicy(interval_s=1.0, max_interval_s=8.0, rng=lambda: 0.0)
    assert [policy.error_delay(n, None) for n in range(1, 7)] == [1, 2, 4, 8, 8, 8]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"interval_s": 0}, "interval_s"),
        ({"interval_s": 5, "max_interval_s": 1}, "interval_s"),
        ({"factor": 0.5}, "factor"),
    ],
)
def test_bad_policy_parameters_are_rejected(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BackoffPolicy(**kwargs)


def test_status_classification_treats_unknown_values_as_not_terminal() -> None:
    assert classify("IN_QUEUE") is Phase.PENDING
    assert classify("IN_PROGRESS") is Phase.PENDING
    for status in ("COMPLETED", "FAILED", "CANCELED"):
        assert classify(status) is Phase.TERMINAL
    assert classify("PAUSED") is Phase.UNKNOWN


def test_long_waits_are_split_into_hops_no_longer_than_the_safe_countdown() -> None:
    assert split_countdown(3.0, 1800.0) == (3.0, False)
    assert split_countdown(5000.0, 1800.0) == (1800.0, True)
    assert split_countdown(-1.0, 1800.0) == (0.0, False)


def test_backoff_and_fixed_call_at_once_whatever_the_model_took() -> None:
    from clipia_tasks.durations import ModelPrior

    p = ModelPrior(queue_p50_s=2.0, queue_p90_s=3.0, run_p50_s=40.0, run_p90_s=50.0, samples=5)
    assert BackoffPolicy().first_delay_s(p, 0.0) is None
    assert FixedPolicy().first_delay_s(p, 0.0) is None
    assert PollContext(elapsed_s=1.0, polls=1).prior is None
    policy = BackoffPolicy(interval_s=1.0, max_interval_s=5.0, factor=2.0, rng=lambda: 0.0)
    assert policy.next_delay(PollContext(elapsed_s=3.0, polls=3, prior=p)) == 4.0
