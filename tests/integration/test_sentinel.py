"""Redis Sentinel: the failover guard, and 100 requests through two failovers.

The deployment: a master and a replica (both password-protected, AOF on), three
sentinels (quorum 2, their own password), ``REDIS_URL`` naming the three sentinels.

The chaos test: two workers (prefork, 2 children each) and beat (the sweep) run
against it; the signal recorder writes to the session's plain Redis, so what the
test observes is not itself subject to the failovers.

While the requests run: ``SENTINEL FAILOVER`` promotes the replica; once the old
master follows the new one as its replica, the new master is SIGKILLed and the
sentinels promote the old master again.

The bar: every request reaches its scripted outcome (0 lost), no worker exits on its
own, and ``request_completed`` / ``request_failed`` fire exactly once per request —
except where asynchronous replication lost an acknowledged write (Redis Sentinel
does not promise otherwise): then the signal may repeat, with the same delivery id.
Those are counted and printed, not excused silently.

The failover is forced once every request is running (has its record). After
``SENTINEL FAILOVER`` the old master keeps taking writes from connections opened
before it (8-18 s, until the sentinels demote it; they are then dropped), so a
request whose *first* message ran in that window would have neither record nor
chain on the new master: only the broker's visibility timeout brings its message
back (docs/deployment.md, "Redis Sentinel"). That is not what this test measures.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis

from clipia_tasks.connections import FailoverGuard, UnconfirmedWriteError, redis_client
from clipia_tasks.processes import configure_process
from clipia_tasks.redis_server import RedisServer, SentinelServer
from clipia_tasks.settings import load_settings
from tests.conftest import TEST_KEY, WORKER_ENV, Beat, Worker, assert_all_alive

pytestmark = pytest.mark.integration

QUEUE = "sentinel"
N = 100
MASTER_NAME = "mymaster"
MASTER_PASSWORD = "master pw/with:odd@chars"
SENTINEL_PASSWORD = "sentinel-pw"
SIGNALS = "clipia-test:signals"


def _script(rng: random.Random) -> dict[str, Any]:
    # Spread over ~20 s, so requests end before, between and after the two failovers.
    roll = rng.random()
    return {
        "queue_s": round(rng.uniform(0, 14), 2),
        "run_s": round(rng.uniform(1, 5), 2),
        "progress": rng.choice(["linear", "jumpy", "none"]),
        "final": "COMPLETED" if roll < 0.85 else "FAILED" if roll < 0.95 else "CANCELED",
    }


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
        if not (info.get("role") == "slave" and info.get("master_port") == master.port
                and info.get("master_link_status") == "up"):
            return False
        # ... and the master streams to it: the replica reports its link up a moment
        # before the master counts it online (after the first acknowledgement), and
        # only an online replica can acknowledge a WAIT.
        try:
            seen = master.client(socket_timeout=1).info("replication")
        except (redis.RedisError, OSError):
            return False
        return any(isinstance(v, dict) and v.get("port") == replica.port
                   and v.get("state") == "online" for k, v in seen.items()
                   if k.startswith("slave"))

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


@pytest.mark.chaos
def test_100_requests_through_a_forced_failover_and_a_killed_master(
    deployment: Deployment, simulator: Any, redis_server: Any, redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    dep = deployment
    _wait("the sentinels see each other and the replica", dep.ready, 30)
    rng = random.Random(20261201)
    sim = simulator.simulator
    scripts = {sim.create(s): s for s in (_script(rng) for _ in range(N))}
    env = {
        **WORKER_ENV,
        "REDIS_URL": dep.url,
        "CLIPIA_SENTINEL_MASTER": MASTER_NAME,
        "CLIPIA_SENTINEL_PASSWORD": SENTINEL_PASSWORD,
        "CLIPIA_BASE_URL": simulator.url,
        "CLIPIA_API_KEY": TEST_KEY,
        "CLIPIA_QUEUE": QUEUE,
        "CLIPIA_TEST_SIGNALS_URL": redis_server.url,
    }
    workers = [Worker(env, tmp_path, queue=QUEUE, name=f"sentinel{i}") for i in range(2)]
    for w in workers:
        w.start()
    beat = Beat(env, tmp_path).start()
    timings: dict[str, float] = {}
    try:
        # Given 100 requests enqueued through the sentinels
        configure_process({k: v for k, v in env.items() if k != "CLIPIA_API_KEY"})
        from clipia_tasks import get_state, poll_request

        started = time.monotonic()
        for rid in scripts:
            poll_request.apply_async((rid,), queue=QUEUE)
        # (running: each has its record, so the new master knows of it; see the docstring)
        timings["claimed_s"] = _wait("every request claimed",
                                     lambda: all(get_state(r) for r in scripts), 60)
        # and three web-side watchers following the longest of them (live progress)
        from clipia_tasks import watch

        longest = sorted(scripts, key=lambda r: -(scripts[r]["queue_s"] + scripts[r]["run_s"]))
        watched: dict[str, list[Any]] = {rid: [] for rid in longest[:3]}

        def follow(rid: str) -> None:
            try:
                watched[rid].extend(watch(rid, timeout_s=180))
            except Exception as exc:  # handed to the assertion below
                watched[rid].append(exc)

        watchers = [threading.Thread(target=follow, args=(rid,), daemon=True)
                    for rid in watched]
        for t in watchers:
            t.start()

        # When one sentinel is told to fail over while they run
        first_master, second_master = dep.master, dep.replica
        dep.sentinels[0].failover()
        timings["failover_1_s"] = _wait("the replica elected master",
                                        lambda: dep.all_name(second_master), 30)
        # and, once the old master follows the new one, the new master is SIGKILLed
        timings["relink_s"] = _wait("the old master following the new one",
                                    lambda: dep.follows(first_master, second_master), 60)
        assert_all_alive(workers)
        second_master.kill()
        timings["failover_2_s"] = _wait("the old master elected again",
                                        lambda: dep.all_name(first_master), 60)

        # Then every request reaches its outcome and its signal fires
        def unfinished() -> list[str]:
            left = []
            for rid in scripts:
                try:
                    state = get_state(rid)
                except (redis.RedisError, OSError):
                    state = None
                if state is None or not state.outcome or not state.delivered:
                    left.append(rid)
            return left

        deadline = time.monotonic() + 120
        pending = unfinished()
        while pending and time.monotonic() < deadline:
            assert_all_alive(workers)
            time.sleep(1)
            pending = unfinished()
        timings["all_done_s"] = time.monotonic() - started
        time.sleep(2)  # a repeat still on its way would show up in the counts below
        assert_all_alive(workers)
    finally:
        beat.stop()
        for w in workers:
            w.stop()

    entries = [json.loads(e) for e in redis_client.lrange(SIGNALS, 0, -1)]
    fired = Counter((e["request_id"], e["signal"]) for e in entries if e["request_id"] in scripts)
    wrong_outcome, wrong_signal, doubled, foreign_ids = [], [], [], []
    for rid, script in scripts.items():
        state = get_state(rid)
        if state is None or state.outcome != script["final"]:
            wrong_outcome.append((rid, state.outcome if state else None, script["final"]))
        kind = "completed" if script["final"] == "COMPLETED" else "failed"
        other = "failed" if kind == "completed" else "completed"
        if fired[(rid, kind)] < 1 or fired[(rid, other)] != 0:
            wrong_signal.append((rid, fired[(rid, "completed")], fired[(rid, "failed")]))
        elif fired[(rid, kind)] > 1:
            doubled.append(rid)
            ids = {e["delivery_id"] for e in entries if e["request_id"] == rid}
            if ids != {rid}:
                foreign_ids.append((rid, ids))
    print(f"\nsentinel: {N} requests, {len(pending)} lost, {len(doubled)} signal(s) doubled "
          f"(same delivery id), all claimed after {timings['claimed_s']:.1f} s, "
          f"failover 1 elected in {timings['failover_1_s']:.1f} s, "
          f"old master following after {timings['relink_s']:.1f} s, failover 2 (killed "
          f"master) elected in {timings['failover_2_s']:.1f} s, all done after "
          f"{timings['all_done_s']:.1f} s, {len(sim.calls(endpoint='status'))} status calls")
    assert pending == [], f"{len(pending)} unfinished, e.g. {get_state(pending[0])}"
    # The watchers followed Redis through both failovers and ended with the outcome
    for t in watchers:
        t.join(timeout=30)
    for rid, seen in watched.items():
        assert seen and isinstance(seen[-1], dict), (rid, seen[-3:])
        assert seen[-1]["outcome"] == scripts[rid]["final"], (rid, seen[-1])
    assert wrong_outcome == []
    assert wrong_signal == []
    assert foreign_ids == []
