"""200 requests while workers are SIGKILLed at random and Redis restarts once.

The issue's bar: every request reaches its terminal outcome, request_completed /
request_failed fire exactly once per request id, and the simulator's call log
shows no request polled by two chains at once — no two status calls for one
request closer together than CLIPIA_POLL_INTERVAL, except the retry after an
error. Redis runs with the production persistence settings (AOF, fsync every
second); beat runs the sweep. Workers the test kills are started again, as a
supervisor would; a worker that exits on its own (e.g. on the Redis restart)
fails the test.

One exception is allowed, because docs/delivery.md documents it: a kill (or the
Redis restart) that lands between a receiver running and the record noting it
repeats that signal once, with the same delivery id. The test excuses a repeat
only when the process that fired first was killed within WINDOW_S of firing.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

from clipia_tasks import get_state, poll_request
from tests.conftest import ROOT, WORKER_ENV, Beat, Worker, assert_all_alive

pytestmark = [pytest.mark.integration, pytest.mark.chaos]
QUEUE = "chaos"
N = 200
GAP = float(WORKER_ENV["CLIPIA_POLL_INTERVAL"])
#: A kill this soon after a receiver ran in the killed process counts as landing in the
#: documented window between the receiver and the record's ``delivered`` flag.
WINDOW_S = 0.5


def _script(rng: random.Random) -> dict[str, Any]:
    roll = rng.random()
    final = "COMPLETED" if roll < 0.85 else "FAILED" if roll < 0.95 else "CANCELED"
    script: dict[str, Any] = {
        "queue_s": round(rng.uniform(0, 2), 2),
        "run_s": round(rng.uniform(1, 8), 2),
        "progress": rng.choice(["linear", "jumpy", "none"]),
        "final": final,
    }
    if rng.random() < 0.1:
        script["faults"] = [{"endpoint": "status", "http": 503, "count": 2, "after_calls": 1}]
    return script


def _safe(fn: Any, default: Any = None) -> Any:
    try:
        return fn()
    except (redis.RedisError, OSError):
        return default


def test_200_requests_through_worker_kills_and_a_redis_restart(
    simulator: Any, redis_server: Any, redis_client: redis.Redis, celery_env: dict[str, str],
    worker_logs: Path,
) -> None:
    rng = random.Random(20261124)
    sim = simulator.simulator
    scripts = {sim.create(s): s for s in (_script(rng) for _ in range(N))}
    rids = list(scripts)
    env = {**celery_env, "CLIPIA_QUEUE": QUEUE}
    workers = [Worker(env, worker_logs, queue=QUEUE, name=f"chaos{i}") for i in range(2)]
    for w in workers:
        w.start()
    beat = Beat(env, worker_logs).start()
    killed: list[tuple[float, set[int]]] = []  # (when, pids killed)
    redis_restarted_at = 0.0
    try:
        # Given 200 requests enqueued, 20 of them also from three other processes at once
        for rid in rids:
            poll_request.apply_async((rid,), queue=QUEUE)
        dup_code = (
            "import sys; from clipia_tasks import poll_request\n"
            "for rid in sys.argv[1:]: poll_request.apply_async((rid,), queue='chaos')\n"
        )
        dups = [subprocess.Popen([sys.executable, "-c", dup_code, *rids[:20]], cwd=ROOT,
                                 env={**os.environ, **env}) for _ in range(3)]
        for p in dups:
            assert p.wait(timeout=60) == 0

        # When workers are killed at random for 28 s and Redis restarts once
        started = time.monotonic()
        kills = restarted_redis = 0
        while time.monotonic() - started < 28:
            time.sleep(rng.uniform(1.5, 3.5))
            assert_all_alive(workers)
            victim = rng.choice(workers)
            assert victim.proc is not None
            children = [int(p) for p in subprocess.run(
                ["pgrep", "-P", str(victim.proc.pid)], capture_output=True, text=True,
            ).stdout.split()]
            if rng.random() < 0.5:
                killed.append((time.time(), {victim.proc.pid, *children}))
                victim.kill()  # main process and pool children
                victim.start()
            elif children:
                child = rng.choice(children)
                killed.append((time.time(), {child}))
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            kills += 1
            if not restarted_redis and time.monotonic() - started > 10:
                redis_restarted_at = time.time()
                redis_server.restart()  # SIGTERM (AOF flushed), start again, same port
                restarted_redis = 1

        # Then every request reaches its outcome and its signal fires, once
        deadline = time.monotonic() + 150
        pending = set(rids)
        while pending and time.monotonic() < deadline:
            for rid in list(pending):
                state = _safe(lambda rid=rid: get_state(rid))
                if state is not None and state.outcome and state.delivered:
                    pending.discard(rid)
            assert_all_alive(workers)
            time.sleep(0.5)
        assert not pending, f"{len(pending)} unfinished, e.g. {get_state(next(iter(pending)))}"
        assert_all_alive(workers)
    finally:
        beat.stop()
        for w in workers:
            w.stop()

    entries = [json.loads(e) for e in redis_client.lrange("clipia-test:signals", 0, -1)]
    fired = Counter((e["request_id"], e["signal"]) for e in entries if e["request_id"] in scripts)
    first_firing = {}
    for e in entries:
        first_firing.setdefault(e["request_id"], e)

    def in_the_window(rid: str) -> bool:
        """The documented at-least-once window: the receiver ran, then its process was
        killed (or Redis went down) before the record could say so."""
        first = first_firing[rid]
        return any(first["pid"] in pids and 0 <= at - first["at"] < WINDOW_S
                   for at, pids in killed) or 0 <= redis_restarted_at - first["at"] < WINDOW_S

    wrong_outcome, not_once, too_close, repeated = [], [], [], []
    for rid, script in scripts.items():
        state = get_state(rid)
        assert state is not None
        if state.outcome != script["final"]:
            wrong_outcome.append((rid, state.outcome, script["final"]))
        kind = "completed" if script["final"] == "COMPLETED" else "failed"
        other = "failed" if kind == "completed" else "completed"
        delivery_ids = {e["delivery_id"] for e in entries if e["request_id"] == rid}
        if fired[(rid, kind)] == 2 and fired[(rid, other)] == 0 and delivery_ids == {rid} \
                and in_the_window(rid):
            repeated.append(rid)
        elif fired[(rid, kind)] != 1 or fired[(rid, other)] != 0:
            not_once.append((rid, fired[(rid, "completed")], fired[(rid, "failed")]))
        calls = sim.calls(request_id=rid, endpoint="status")
        for a, b in itertools.pairwise(calls):
            if a.status_code == 200 and b.at - a.at < GAP - 0.01:
                too_close.append((rid, round(b.at - a.at, 3)))
    print(f"\nchaos: {N} requests, {kills} kills, Redis restarted {restarted_redis}x, "
          f"{len(sim.calls(endpoint='status'))} status calls, "
          f"{len(repeated)} signal(s) repeated in the at-least-once window")
    assert restarted_redis == 1 and kills >= 10
    assert wrong_outcome == []
    assert not_once == []
    assert too_close == []
