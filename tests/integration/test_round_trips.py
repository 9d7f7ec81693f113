"""A steady-state status poll costs two Redis round trips on the record store's connection.

Counted with MONITOR around one poller step, keeping only the top-level commands of the
store's own connections (named with CLIENT SETNAME); commands a Lua script runs inside
Redis show up in MONITOR as ``lua`` and are not round trips.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
import redis

from clipia_tasks.poller import Again
from clipia_tasks.record import CLIENT_NAME, RecordStore
from tests.integration.test_poller import Clock, ScriptedClient, make

pytestmark = pytest.mark.integration

NAME = CLIENT_NAME
END = "clipia-test-round-trips-end"


def commands_during(monitor_client: redis.Redis, store: RecordStore, action: Any) -> list[str]:
    """Top-level commands the store's connections sent while ``action`` ran."""
    ours = {c["addr"] for c in monitor_client.client_list() if c.get("name") == NAME}
    assert ours, "the record store's connection is not named"
    seen: list[dict[str, Any]] = []
    ready = threading.Event()

    def listen() -> None:
        with monitor_client.monitor() as m:
            ready.set()
            for cmd in m.listen():
                if END in cmd["command"]:
                    return
                seen.append(cmd)

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    assert ready.wait(5)
    action()
    monitor_client.echo(END)
    t.join(10)
    assert not t.is_alive()
    return [c["command"] for c in seen
            if c.get("client_type") != "lua"
            and f"{c['client_address']}:{c['client_port']}" in ours]


def test_a_steady_state_status_poll_makes_two_round_trips(redis_server: Any) -> None:
    store = RecordStore(redis.Redis.from_url(redis_server.url, decode_responses=True,
                                             client_name=NAME), ttl_s=600)
    rid, clock = str(uuid.uuid4()), Clock()
    client = ScriptedClient([("IN_PROGRESS", None, 10), ("IN_PROGRESS", None, 20)])
    poller = make(store, client, clock)
    # Given a request polled once (its first step creates the record, loads the scripts)
    first = poller.step(rid, "t1", 0, clock.now)
    assert isinstance(first, Again)
    clock.now += first.countdown_s
    monitor = redis.Redis.from_url(redis_server.url, decode_responses=True)
    steps: list[Any] = []
    # When its next message polls /status (not terminal)
    commands = commands_during(monitor, store,
                               lambda: steps.append(poller.step(rid, "t1", 1, None)))
    # Then it made one status call and two round trips: the claim, the schedule
    assert isinstance(steps[0], Again) and client.status_calls == 2
    assert len(commands) <= 2, commands
    assert [c.split()[0].upper() for c in commands] == ["EVALSHA", "EVALSHA"], commands
    state = store.get(rid)
    assert state is not None and state.progress == 20 and state.polls == 2
