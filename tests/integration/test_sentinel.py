"""Redis Sentinel: a master, a replica and three sentinels on loopback.

The deployment: a master and a replica (both password-protected, AOF on), three
sentinels (quorum 2, their own password), and a client through the sentinels.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import pytest
import redis

from clipia_tasks.connections import FailoverGuard, UnconfirmedWriteError, redis_client
from clipia_tasks.processes import configure_process
from clipia_tasks.redis_server import RedisServer, SentinelServer
from clipia_tasks.settings import load_settings

pytestmark = pytest.mark.integration

MASTER_NAME = "mymaster"
MASTER_PASSWORD = "master pw/with:odd@chars"
SENTINEL_PASSWORD = "sentinel-pw"


def _wait(what: str, predicate: Callable[[], Any], timeout_s: float) -> float:
    """Seconds until ``predicate`` held; AssertionError naming ``what`` past the timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout_s} s")


class Deployment:
    """A master, a replica and three sentinels on loopback, torn down together."""

    def __init__(self) -> None:
        self.master = RedisServer(persistent=True, password=MASTER_PASSWORD).start()
        self.replica = RedisServer(persistent=True, password=MASTER_PASSWORD,
                                   replica_of=self.master.port).start()
        self.sentinels = [
            SentinelServer(self.master.port, master_name=MASTER_NAME, quorum=2,
                           down_after_ms=1000, failover_timeout_ms=3000,
                           password=SENTINEL_PASSWORD, master_password=MASTER_PASSWORD).start()
            for _ in range(3)
        ]

    @property
    def url(self) -> str:
        auth = f":{quote(MASTER_PASSWORD, safe='')}@"
        return ";".join(f"sentinel://{auth if i == 0 else ''}127.0.0.1:{s.port}/0"
                        for i, s in enumerate(self.sentinels))

    def all_name(self, server: RedisServer) -> bool:
        """Every sentinel names ``server`` as the master."""
        return all(s.master_address() == ("127.0.0.1", server.port) for s in self.sentinels)

    def ready(self) -> bool:
        """The replica is in sync, and the sentinels know it and each other."""
        if not self.follows(self.replica, self.master):
            return False
        for sentinel in self.sentinels:
            try:
                state = sentinel.client(decode_responses=True).sentinel_master(MASTER_NAME)
            except (redis.RedisError, OSError):
                return False
            if int(state["num-slaves"]) < 1 or int(state["num-other-sentinels"]) < 2:
                return False
        return True

    @staticmethod
    def follows(replica: RedisServer, master: RedisServer) -> bool:
        """``replica`` replicates ``master``, link up."""
        try:
            info = replica.client(socket_timeout=1).info("replication")
        except (redis.RedisError, OSError):
            return False
        return (info.get("role") == "slave" and info.get("master_port") == master.port
                and info.get("master_link_status") == "up")

    def stop(self) -> None:
        for server in [*self.sentinels, self.master, self.replica]:
            server.stop()


@pytest.fixture
def deployment(celery_env: dict[str, str]) -> Iterator[Deployment]:
    dep = Deployment()
    yield dep
    dep.stop()
    for name in ("CLIPIA_SENTINEL_PASSWORD", "CLIPIA_SENTINEL_MASTER",
                 "CLIPIA_TEST_SIGNALS_URL"):
        os.environ.pop(name, None)
    configure_process({k: v for k, v in celery_env.items() if k != "CLIPIA_API_KEY"})


def test_the_guard_holds_back_what_was_written_to_a_master_being_replaced(
    deployment: Deployment,
) -> None:
    # Given a client through the sentinels, its write on the master and on the replica
    _wait("the sentinels see each other and the replica", deployment.ready, 30)
    settings = load_settings(redis_url=deployment.url, sentinel_password=SENTINEL_PASSWORD,
                             sentinel_master=MASTER_NAME)
    client = redis_client(deployment.url, settings, decode_responses=True,
                          socket_timeout_s=2, connect_timeout_s=2)
    guard = FailoverGuard(client, MASTER_NAME, timeout_ms=500, recheck_s=60)
    client.set("before", "1")
    assert guard.confirm() == 1
    old, new = deployment.master, deployment.replica
    # When the sentinels promote the replica, the client's connection still writes
    # to the old master (it accepts writes until the sentinels demote it)
    deployment.sentinels[0].failover()
    _wait("the replica elected master", lambda: deployment.all_name(new), 30)
    client.set("during", "1")
    assert old.client().get("during") == b"1" and new.client().get("during") is None
    # Then the guard says so (the leader may still be finishing the failover), and the
    # next write goes to the new master
    with pytest.raises(UnconfirmedWriteError, match=r"moved .* to|failover .* under way"):
        guard.confirm()
    client.set("after", "1")
    assert new.client().get("after") == b"1"
    # And once the old master follows the new one, writes are confirmed again
    _wait("the old master following", lambda: deployment.follows(old, new), 60)
    client.set("linked", "1")
    assert guard.confirm() == 1
    # and when that replica dies, one confirm fails, then there is nothing to wait for
    old.kill()
    _wait("the replica gone", lambda: not new.client().info("replication").get(
        "connected_slaves"), 10)
    client.set("alone", "1")
    with pytest.raises(UnconfirmedWriteError, match="no replica acknowledged"):
        guard.confirm()  # its view of the replicas was from before
    assert guard.confirm() is None
    assert guard.confirm(strict=False) is None
    client.close()
