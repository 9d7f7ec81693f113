"""live.follow while Redis does not answer: it retries at a pace, then gives up cleanly."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from clipia_tasks import live
from clipia_tasks.errors import RedisUnavailableError


class _Hub:
    def add(self, *args: Any) -> None:
        pass

    def remove(self, *args: Any) -> None:
        pass


def test_a_watcher_retries_an_unreachable_redis_at_a_pace_until_its_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []

    def down(request_id: str) -> None:
        calls.append(request_id)
        raise RedisUnavailableError("redis://127.0.0.1:1/0", "ConnectionError")

    monkeypatch.setattr(live, "get_state", down)
    monkeypatch.setattr(live, "_hub", _Hub)
    with pytest.raises(TimeoutError):
        list(live.watch(str(uuid.uuid4()), timeout_s=1.2))
    # one try at once, then one every _RETRY_S (0.5 s): not a busy loop
    assert 2 <= len(calls) <= 5, len(calls)


def test_a_watcher_gives_up_when_redis_stays_away_past_the_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def down(request_id: str) -> None:
        raise RedisUnavailableError("redis://127.0.0.1:1/0", "ConnectionError")

    monkeypatch.setattr(live, "get_state", down)
    monkeypatch.setattr(live, "_hub", _Hub)
    monkeypatch.setattr(live, "UNAVAILABLE_GRACE_S", 0.6)
    with pytest.raises(RedisUnavailableError):
        list(live.watch(str(uuid.uuid4()), timeout_s=10))
