"""The full-Redis alarm says it once, reminds once a minute, and says when it clears."""

from __future__ import annotations

import logging

import pytest
import redis

from clipia_tasks.redis_health import MemoryAlarm, is_out_of_memory


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _messages(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage().split(",")[0]) for r in caplog.records]


def test_one_error_at_onset_a_reminder_a_minute_and_one_info_when_clear(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="clipia_tasks.redis")
    clock = Clock()
    alarm = MemoryAlarm(clock=clock)
    # Given Redis refusing writes 100 times over 90 s
    for _ in range(100):
        alarm.refused("following request x")
        clock.now += 0.9
    # Then one ERROR at the onset and one reminder after a minute
    levels = [r.levelname for r in caplog.records]
    assert levels == ["ERROR", "ERROR"]
    assert "out of memory" in caplog.records[0].getMessage()
    assert "still refuses writes" in caplog.records[1].getMessage()
    # When writes go through again: one INFO, and further successes say nothing
    alarm.cleared()
    alarm.cleared()
    assert [r.levelname for r in caplog.records] == ["ERROR", "ERROR", "INFO"]
    assert not alarm.active


def test_flapping_near_the_limit_is_one_episode(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="clipia_tasks.redis")
    clock = Clock()
    alarm = MemoryAlarm(clock=clock)
    alarm.refused("a")
    alarm.cleared()
    for _ in range(5):  # refused, let through, refused ... within the minute
        clock.now += 5
        alarm.refused("b")
        alarm.cleared()
    assert [r.levelname for r in caplog.records] == ["ERROR", "INFO"]
    # A refusal long after the last episode is a new onset
    clock.now += 120
    alarm.refused("c")
    assert [r.levelname for r in caplog.records] == ["ERROR", "INFO", "ERROR"]


def test_out_of_memory_is_recognised_through_wrapping_errors() -> None:
    oom = redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'")
    try:
        try:
            raise oom
        except redis.RedisError as exc:
            raise RuntimeError("publish failed") from exc
    except RuntimeError as wrapped:
        assert is_out_of_memory(wrapped)
    script = redis.exceptions.ResponseError(
        "Error running script: OOM command not allowed when used memory > 'maxmemory'")
    assert is_out_of_memory(script)
    assert not is_out_of_memory(redis.exceptions.ConnectionError("refused"))


def test_the_transport_fix_warns_outside_the_tested_kombu_range(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kombu

    from clipia_tasks import transport

    caplog.set_level(logging.WARNING, logger="clipia_tasks.transport")
    # The installed kombu is one the fix was tested with (CI would say otherwise)
    assert transport.check_kombu_version()
    assert caplog.records == []
    monkeypatch.setattr(kombu, "__version__", "6.0.0")
    assert not transport.check_kombu_version()
    assert "kombu 6.0.0 is outside the range" in caplog.records[0].getMessage()
