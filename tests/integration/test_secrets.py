"""The API key appears in no log line, task argument, result, or Redis key or value."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from clipia_tasks import get_settings, poll_request
from tests.conftest import TEST_KEY, Worker

pytestmark = pytest.mark.integration


def every_redis_byte(client: redis.Redis) -> str:
    raw = redis.Redis(port=client.connection_pool.connection_kwargs["port"])
    chunks: list[str] = []
    for key in raw.scan_iter(count=1000):
        chunks.append(repr(key))
        kind = raw.type(key).decode()
        if kind == "string":
            chunks.append(repr(raw.get(key)))
        elif kind == "hash":
            chunks.append(repr(raw.hgetall(key)))
        elif kind == "list":
            chunks.append(repr(raw.lrange(key, 0, -1)))
        elif kind == "zset":
            chunks.append(repr(raw.zrange(key, 0, -1, withscores=True)))
        elif kind == "set":
            chunks.append(repr(raw.smembers(key)))
    return "\n".join(chunks)


def test_the_key_never_leaks(
    simulator: Any, worker: Worker, celery_env: dict[str, str], redis_client: redis.Redis
) -> None:
    sim = simulator.simulator
    # Given requests that complete, fail, and hit a 401
    ok = sim.create({"run_s": 0.2})
    failed = sim.create({"run_s": 0.2, "final": "FAILED"})
    denied = sim.create({"faults": [{"endpoint": "status", "http": 401}]})
    results = [poll_request.delay(r) for r in (ok, failed, denied)]
    for r in results:
        r.get(timeout=30, propagate=False)
    # Then the key is nowhere: task args and results, Redis, the worker's logs
    for r in results:
        assert TEST_KEY not in repr(r.args) + repr(r.kwargs) + repr(r.result) + repr(r.traceback)
    dump = every_redis_byte(redis_client)
    assert "clipia:request:" in dump and "celery-task-meta-" in dump  # we did scan real data
    assert TEST_KEY not in dump
    assert TEST_KEY not in worker.log()
    assert "clipia_live_" not in worker.log()
    # And the simulator saw the key used (so the test key was really in play)
    assert {c.auth_scheme for c in sim.calls(request_id=ok)} == {"Bearer"}


def test_settings_repr_hides_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from clipia_tasks.settings import load_settings

    monkeypatch.setenv("CLIPIA_API_KEY", TEST_KEY)
    settings = load_settings()
    assert TEST_KEY not in repr(settings) and TEST_KEY not in str(settings.model_dump())
    assert TEST_KEY not in repr(get_settings())
