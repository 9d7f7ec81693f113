"""The compact history kept in the request record."""

from __future__ import annotations

from clipia_tasks.policy import AdaptivePolicy, Observation
from clipia_tasks.record import decode_history, encode_history, trim_history


def test_history_round_trips_and_fits_a_compact_redis_value() -> None:
    history = (Observation(0.2, "IN_QUEUE", 3, None),
               Observation(1.25, "IN_PROGRESS", None, 4),
               Observation(61.25, "IN_PROGRESS", None, 50),
               Observation(112.3, "IN_PROGRESS", None, 93))
    text = encode_history(history)
    assert decode_history(text) == history
    assert len(text) < 64  # Redis keeps the whole record hash as a listpack


def test_unknown_statuses_survive_the_round_trip() -> None:
    history = (Observation(3.0, "PAUSED", None, None),)
    assert decode_history(encode_history(history)) == history


def test_trimming_keeps_the_anchor_of_the_current_run() -> None:
    run = [Observation(float(t), "IN_PROGRESS", None, 10 * t) for t in range(1, 9)]
    history = [Observation(0.1, "IN_QUEUE", 2, None), *run]
    kept = trim_history(history, 4)
    assert kept == [run[0], *run[-3:]]
    # The adaptive policy reads the same rate from the trimmed history as from the full one
    policy = AdaptivePolicy()
    assert policy.estimate(tuple(kept)) == policy.estimate(tuple(history))


def test_a_reset_in_progress_moves_the_anchor() -> None:
    history = [Observation(1.0, "IN_PROGRESS", None, 50),
               Observation(2.0, "IN_PROGRESS", None, 60),
               Observation(3.0, "IN_PROGRESS", None, 5),
               Observation(4.0, "IN_PROGRESS", None, 10),
               Observation(5.0, "IN_PROGRESS", None, 15)]
    # The run since the reset (5, 10, 15 %) is all the policy may measure over
    assert trim_history(history, 4) == history[-3:]
