"""Learned durations per model: storage, the ring, robust bands, and what a poller saw."""

from __future__ import annotations

import math
import random

import pytest

import clipia_tasks.durations as durations
from clipia_tasks.durations import (
    MAX_ENCODED_BYTES,
    MAX_SAMPLE_S,
    MAX_SAMPLES,
    MIN_SAMPLES,
    Durations,
    ModelPrior,
    Sample,
    decode,
    encode,
    end_window,
    learn,
    observe,
    prior,
    sample,
    sample_from,
    sample_from_times,
)
from clipia_tasks.nouns import Observation


def P(at_s: float, progress: int | None = None) -> Observation:
    return Observation(at_s, "IN_PROGRESS", None, progress)


def Q(at_s: float, position: int = 3) -> Observation:
    return Observation(at_s, "IN_QUEUE", position, None)


def C(at_s: float) -> Observation:
    return Observation(at_s, "COMPLETED")


def history_of(queue_s: float, run_s: float, n: int = MAX_SAMPLES, seed: int = 1,
               spread: float = 0.15) -> Durations:
    """A model whose requests queue ~queue_s and run ~run_s (uniform ±spread)."""
    rng = random.Random(seed)
    d = Durations()
    for _ in range(n):
        d = observe(d, queue_s=queue_s * rng.uniform(1 - spread, 1 + spread),
                    run_s=run_s * rng.uniform(1 - spread, 1 + spread))
    return d


def test_the_interface_the_poller_uses_is_exported() -> None:
    assert {"MAX_SAMPLES", "MIN_SAMPLES", "Durations", "ModelPrior", "encode", "decode",
            "observe", "sample_from", "sample_from_times", "prior", "learn",
            "end_window"} <= set(durations.__all__)
    assert all(hasattr(durations, name) for name in durations.__all__)


# -- storage -------------------------------------------------------------------------


def test_encode_and_decode_round_trip_exactly() -> None:
    d = history_of(2.0, 45.0)
    d = observe(d, queue_s=None, run_s=None, total_s=51.234)
    text = encode(d)
    assert decode(text) == d
    assert decode(text.encode()) == d  # as redis-py hands it back without decode_responses
    assert text.startswith("d1;")


def test_the_encoding_stays_bounded_even_with_the_longest_durations() -> None:
    longest = Durations(*(tuple(MAX_SAMPLE_S - i for i in range(MAX_SAMPLES)),) * 3)
    assert len(encode(longest)) < MAX_ENCODED_BYTES
    assert decode(encode(longest)) == longest
    typical = history_of(3.0, 20.0)
    assert len(encode(typical)) < 300


@pytest.mark.parametrize("garbage", [
    None, "", "nonsense", b"\xff\xfe", "d1;1,2", "d2;1;2;3", "d1;a,b;1;2", "d1;;;",
    "d1;1;2;3;4", "{json: true}",
])
def test_garbage_decodes_to_empty(garbage: str | bytes | None) -> None:
    assert decode(garbage) == Durations()


def test_stored_values_out_of_range_are_dropped_on_decode() -> None:
    assert decode("d1;1.5,-3,nan,inf;20,90000;") == Durations((1.5,), (20.0,), ())


# -- the ring ------------------------------------------------------------------------


def test_observe_keeps_the_newest_samples_only() -> None:
    d = Durations()
    for i in range(MAX_SAMPLES + 5):
        d = observe(d, queue_s=float(i), run_s=10.0 + i)
    assert len(d.queue_s) == len(d.run_s) == len(d.total_s) == MAX_SAMPLES
    assert d.queue_s[0] == 5.0 and d.queue_s[-1] == MAX_SAMPLES + 4.0
    assert d.total_s[-1] == d.queue_s[-1] + d.run_s[-1]


@pytest.mark.parametrize("silly", [-1.0, MAX_SAMPLE_S + 1, math.nan, math.inf])
def test_silly_durations_are_ignored(silly: float) -> None:
    d = observe(Durations(), queue_s=silly, run_s=silly, total_s=silly)
    assert d == Durations()


def test_unknown_parts_are_left_out_and_a_total_alone_is_kept() -> None:
    d = observe(Durations(), queue_s=None, run_s=12.0)
    assert d == Durations((), (12.0,), ())
    d = observe(d, queue_s=None, run_s=None, total_s=30.0)
    assert d == Durations((), (12.0,), (30.0,))


# -- quantiles and bands ---------------------------------------------------------------


def test_no_prior_below_min_samples() -> None:
    assert prior(Durations()) is None
    assert prior(history_of(2.0, 20.0, n=MIN_SAMPLES - 1)) is None
    assert prior(history_of(2.0, 20.0, n=MIN_SAMPLES)) is not None


def test_one_queue_sample_is_enough_when_the_totals_are_known() -> None:
    # Given a model whose requests mostly report no progress: one told its queue time,
    # the others only their total (enqueue to end)
    d = observe(Durations(), queue_s=4.0, run_s=45.0)
    for total in (48.0, 50.0, 52.0, 49.0, 51.0):
        d = observe(d, queue_s=None, run_s=None, total_s=total)
    # Then it has a prior, its queue band +-30 % around the one sample
    p = prior(d)
    assert p is not None and p.samples == 6
    (q_lo, q_hi), _, (t_lo, t_hi) = p.bands()
    assert q_lo == pytest.approx(2.8) and q_hi == pytest.approx(5.2)
    assert t_lo <= 48.0 and t_hi >= 52.0
    # but totals alone (no queue sample) are not enough
    totals_only = observe(Durations(), queue_s=None, run_s=None, total_s=50.0)
    for total in (48.0, 52.0):
        totals_only = observe(totals_only, queue_s=None, run_s=None, total_s=total)
    assert prior(totals_only) is None


def test_a_few_much_slower_requests_do_not_widen_the_typical_band() -> None:
    # Given 16 ordinary requests (run 20 s ± 15 %) and 4 that ran three times longer
    rng = random.Random(5)
    d = Durations()
    for i in range(MAX_SAMPLES):
        slow = i % 5 == 2
        d = observe(d, queue_s=2.0 * rng.uniform(0.85, 1.15),
                    run_s=20.0 * rng.uniform(0.85, 1.15) * (3 if slow else 1))
    p = prior(d)
    assert p is not None
    # Then the median and the band describe the ordinary ones
    assert 18 <= p.run_p50_s <= 23
    assert p.total_lo_s is not None and p.total_hi_s is not None
    assert 17.5 <= p.total_lo_s <= 20.5 and 24.5 <= p.total_hi_s <= 28
    # ... while the plain p90 owns up to the slow ones
    assert p.run_p90_s > 40


def test_the_band_covers_a_steady_model_and_not_much_more() -> None:
    for seed in range(10):
        d = history_of(2.0, 45.0, seed=seed)
        p = prior(d)
        assert p is not None and p.total_lo_s is not None and p.total_hi_s is not None
        # every sample inside; true totals 40.0 .. 54.1 s, and not much beyond
        assert p.total_lo_s <= min(d.total_s) and p.total_hi_s >= max(d.total_s)
        assert p.total_lo_s >= 36.5 and p.total_hi_s <= 57.5


def test_newer_samples_weigh_more_so_the_prior_follows_a_change() -> None:
    d = history_of(2.0, 20.0)
    for _ in range(8):
        d = observe(d, queue_s=2.0, run_s=40.0)
    p = prior(d)
    assert p is not None
    assert p.run_p50_s > 30  # 8 of 20 samples, but the newest


def test_requests_started_together_and_learned_shortest_first_all_fall_in_the_band() -> None:
    # Twenty requests of one model (7 s +- 15 %) started at once end, and are learned,
    # in the order of their lengths. Weighing the newest more made the shortest look
    # unusual: the band began at 6.9 s and the shortest ended before their first call.
    rng = random.Random(3)
    totals = sorted(7.0 * rng.uniform(0.85, 1.15) for _ in range(20))
    d = Durations(queue_s=(1.0,), total_s=tuple(totals))
    p = prior(d)
    assert p is not None and p.total_lo_s is not None and p.total_hi_s is not None
    assert p.total_lo_s <= totals[0] and p.total_hi_s >= totals[-1]
    assert p.total_hi_s - p.total_lo_s <= 1.5 * (totals[-1] - totals[0])


def test_few_samples_give_a_wider_band() -> None:
    p3 = prior(Durations((2.0, 2.01, 2.02), (20.0, 20.1, 20.2), (22.0, 22.1, 22.2)))
    assert p3 is not None and p3.queue_lo_s is not None and p3.queue_hi_s is not None
    assert p3.queue_hi_s - p3.queue_lo_s >= 0.35  # not the 0.02 the samples span


def test_a_prior_built_by_hand_gets_bands_from_its_quantiles() -> None:
    p = ModelPrior(queue_p50_s=2.0, queue_p90_s=2.5, run_p50_s=20.0, run_p90_s=23.0,
                   samples=10)
    assert p.bands() == ((1.5, 2.5), (17.0, 23.0), (18.5, 25.5))


# -- what a finished request tells --------------------------------------------------------


def test_polled_from_the_start_with_progress_gives_queue_and_run() -> None:
    # Queued at 0.2 s, running at 1.25 s (2 %), 2.3 s (19 %), done by 7.67 s:
    # the readings put the run's start near 1.1 s and its length near 6.2 s.
    h = (Q(0.2), P(1.25, 2), P(2.3, 19), C(7.666))
    queue_s, run_s = sample_from(h, end_s=7.666)
    assert queue_s is not None and run_s is not None
    assert queue_s == pytest.approx(1.1, abs=0.2)
    assert run_s == pytest.approx(6.2, abs=0.5)


def test_a_tight_queue_bracket_without_progress_gives_the_queue() -> None:
    h = (Q(0.2), P(1.2), P(2.7), P(4.95), P(8.3), C(12.0))
    s = sample(h, end_s=12.0)
    assert s.queue_s == pytest.approx(0.7)  # between 0.2 and 1.2
    assert s.total_s == pytest.approx((8.3 + 12.0) / 2)
    assert s.run_s is None  # 11.2 +- 2.35 s: too uncertain to keep


def test_one_late_reading_says_nothing_about_the_split() -> None:
    # The prior's first call at 40 s saw 82 %, the next found it done.
    s = sample((P(40.1, 82), C(48.39)), end_s=48.39)
    assert (s.queue_s, s.run_s) == (None, None)
    assert s.total_s == 48.39  # the poller aimed there: the end is just before


def test_with_the_prior_the_end_of_a_one_reading_request_is_its_window() -> None:
    p = prior(history_of(2.0, 45.0))
    assert p is not None
    # a request queued 2.0 s and running 45 s is 84 % done at 39.8 s, ends at 47.0 s
    h = (P(39.8, 84), C(47.3))
    window = end_window(p, h[:1], 39.8)
    assert window is not None and window[0] <= 47.0 <= window[1]
    s = sample(h, end_s=47.3, prior=p)
    assert s.total_s is not None and 46.7 <= s.total_s <= 47.3


def test_without_progress_the_end_is_the_middle_of_the_last_gap() -> None:
    s = sample((P(37.5), P(43.4), P(50.2), C(58.1)), end_s=58.1)
    assert (s.queue_s, s.run_s) == (None, None)
    assert s.total_s == pytest.approx(54.15)


def test_an_end_seen_only_at_the_first_call_counts_as_a_little_earlier() -> None:
    assert sample((C(47.4),), end_s=47.4).total_s == pytest.approx(0.95 * 47.4)
    assert sample((), end_s=20.0) == Sample(total_s=19.0)


def test_progress_that_jumps_gives_no_split_but_still_a_total() -> None:
    # 10 % at 5 s, 60 % at 6 s and 61 % at 30 s: no steady run does that
    s = sample((P(5.0, 10), P(6.0, 60), P(30.0, 61), C(40.0)), end_s=40.0)
    assert (s.queue_s, s.run_s) == (None, None)
    assert s.total_s == 40.0


def test_a_gap_wider_than_half_the_request_gives_no_end() -> None:
    # Running at 0.2 s (so queued at most that long), then done at 50 s: when?
    s = sample((P(0.2), C(50.0)), end_s=50.0)
    assert s.total_s is None and s.run_s is None and s.queue_s == pytest.approx(0.1)


def test_the_end_is_no_later_than_the_first_terminal_observation() -> None:
    s = sample((P(10.0), P(11.0), C(12.0)), end_s=15.0)
    assert s.total_s == pytest.approx(11.5)


def test_the_apis_own_duration_pins_the_end_and_with_it_the_split() -> None:
    # One late reading (82 % at 40.1 s) and the end seen at 48.39 s say little; the
    # result body's completed_at - created_at (47.9 s) pins the end, and the reading
    # then gives the run (18 % of it in the last 7.8 s) to within 11 %; the queue it
    # leaves (3.6-8.1 s) is still too loose to keep.
    s = sample((P(40.1, 82), C(48.39)), end_s=48.39, api_total_s=47.9)
    assert s.total_s == pytest.approx(47.8, abs=0.15)
    assert s.run_s == pytest.approx((47.9 - 40.1) / 0.185, rel=0.06)
    assert s.queue_s is None
    assert sample((P(40.1, 82), C(48.39)), end_s=48.39).run_s is None  # without it
    # Ended before the first call: the API's duration, not 0.95 of the call's time
    assert sample((C(47.4),), end_s=47.4, api_total_s=44.0).total_s == pytest.approx(43.9,
                                                                                    abs=0.15)


@pytest.mark.parametrize("api_total_s", [30.0, 49.0, -1.0, math.nan])
def test_an_api_duration_that_disagrees_with_the_polls_is_ignored(api_total_s: float) -> None:
    # Pending at 43.4 s and done by 50.2 s: an API duration of 49 s fits and pins the
    # end; 30 s (a request enqueued long after it was created, or clocks apart) and
    # nonsense are ignored.
    h = (P(37.5), P(43.4), C(50.2))
    s = sample(h, end_s=50.2, api_total_s=api_total_s)
    if api_total_s == 49.0:
        assert s.total_s == pytest.approx(48.9, abs=0.15)
    else:
        assert s == sample(h, end_s=50.2)


def test_sample_from_times_uses_the_queue_end_the_caller_kept() -> None:
    assert sample_from_times(queue_end_s=2.5, end_s=30.0) == (2.5, 27.5)
    assert sample_from_times(queue_end_s=None, end_s=30.0) == (None, None)
    assert sample_from_times(queue_end_s=31.0, end_s=30.0) == (31.0, None)
    assert sample_from_times(queue_end_s=-1.0, end_s=30.0) == (None, None)


def test_learn_folds_in_what_the_request_tells() -> None:
    d = learn(Durations(), (Q(0.2), P(1.25, 2), P(2.3, 19), C(7.666)), end_s=7.666)
    assert len(d.queue_s) == len(d.run_s) == len(d.total_s) == 1
    d = learn(d, (P(40.1, 82), C(48.39)), end_s=48.39)
    assert len(d.queue_s) == len(d.run_s) == 1 and d.total_s[-1] == 48.4


# -- the window a prior allows ------------------------------------------------------------


def test_a_reading_near_the_end_pins_the_end_to_about_a_progress_point() -> None:
    p = prior(history_of(2.0, 45.0))
    assert p is not None
    window = end_window(p, (P(39.8, 84),), 39.8)
    assert window is not None
    lo, hi = window
    assert lo <= 47.0 <= hi and hi - lo < 1.0  # a point of this run is 0.45 s


def test_a_request_much_slower_than_its_model_fits_no_window() -> None:
    p = prior(history_of(2.0, 45.0))
    assert p is not None
    # 3x slower: 30 % done where ordinary ones are nearly finished
    assert end_window(p, (P(40.0, 30),), 40.0) is None
    # without progress: still running long after every ordinary request ended
    assert end_window(p, (P(60.0),), 60.0) is None
    assert end_window(p, (P(45.0),), 45.0) is not None
