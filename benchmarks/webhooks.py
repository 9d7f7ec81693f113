"""Webhooks: webhook -> outcome latency, and calls per request with webhooks at once, late, lost.

    python benchmarks/webhooks.py            # 100 sleeping owners + 4 x 40 requests (~3 min)
    python benchmarks/webhooks.py --quick    # 30 sleeping owners + 4 x 12 requests (~1.5 min)
    CLIPIA_BENCH_SMOKE=1 python benchmarks/webhooks.py   # 3 + 4 x 3 short requests (seconds)

One private Redis, the simulator (signing webhooks) over loopback, two real workers
(the Procfile's pool: threads, 32) on one queue, and a webhook receiver in this process
that calls ``clipia_tasks.webhooks.handle_webhook`` as a web app's view would.

1. **Sleeping owners.** Requests (queue 0-1 s, run 2-8 s) polled by a fixed 60 s
   policy: each owner polls once, then sleeps in a 60 s countdown. Each request's signed
   webhook arrives when it ends. Measured: webhook received -> outcome recorded
   (``webhook_at`` -> ``finished_at`` of the record; both are stamped with this machine's
   clock), result and status calls per request, signals and callbacks per request, and
   task runs per request (a follower busy-loop would show there).
2. **Scenarios** (the default adaptive policy, ``CLIPIA_WEBHOOK_FALLBACK_AFTER`` default):
   requests of 4-60 s (log-uniform; --quick 4-30 s), the same lengths in each scenario:
   - *webhook at once*: submitted with a ``webhook_url``, ``expect_webhook=True``;
   - *webhook 5 s late*: the receiver handles it 5 s after it arrives;
   - *webhook lost*: the receiver answers 200 and drops it;
   - *polling only*: no webhook, not expected.
   Measured: status calls per request (p50, p95, and p50 by length), all calls, and
   detection latency (the request's end on the simulator -> outcome recorded); for lost
   webhooks also how many were caught within 30 s + 25 % of their length.

``CLIPIA_BENCH_SMOKE=1``: 3 owners of 1.5-3 s requests; 3 requests per scenario of 1-2.5 s,
a webhook 1 s late, a 3 s fallback (``--fallback`` still wins).

Prints tables, writes JSON to benchmarks/results/ (or ``CLIPIA_BENCH_OUT``).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks._procs import (  # noqa: E402
    clean_environment,
    enter_workers,
    out_dir,
    smoke,
    write_report,
)
from benchmarks.run import pct  # noqa: E402
from clipia_tasks.processes import WorkerProcess, configure_process  # noqa: E402
from clipia_tasks.redis_server import RedisServer  # noqa: E402
from clipia_tasks.simulator import Simulator, SimulatorServer  # noqa: E402

SECRET = "whsec_benchmark_only"
QUEUE = "bench-webhooks"
LATE_S = 5.0
SIGNALS = "clipia-test:signals"  # written by tests/integration/signal_recorder.py


@dataclass(frozen=True)
class Sizes:
    """How big a run is: the sleeping owners' requests and the scenarios' ones."""

    owner_queue_s: tuple[float, float] = (0.0, 1.0)
    owner_run_s: tuple[float, float] = (2.0, 8.0)
    #: After the owners' outcomes: room for a duplicate signal or callback to show up.
    settle_s: float = 3.0
    min_length_s: float = 4.0
    late_s: float = LATE_S
    #: How long a worker's warm shutdown may take before SIGKILL.
    stop_s: float = 20.0


#: CLIPIA_BENCH_SMOKE: seconds. Owners' requests still outlast their first poll (so the
#: webhook ends them), scenario requests end before the 3 s fallback (so a prompt webhook
#: still saves every status call).
SMOKE = Sizes(owner_queue_s=(0.0, 0.3), owner_run_s=(1.5, 3.0), settle_s=1.0,
              min_length_s=1.0, late_s=1.0, stop_s=5.0)
SMOKE_FALLBACK_S = 3.0


def scenario_routes(late_s: float) -> dict[str, str | None]:
    """Scenario name -> the receiver's route for its webhooks (None: no webhook)."""
    return {"webhook at once": "now", f"webhook {late_s:g} s late": "late",
            "webhook lost": "lost", "polling only": None}


class Receiver:
    """The web app's side: webhooks under /hooks/{now,late,lost}, callbacks under /callbacks."""

    def __init__(self, late_s: float = LATE_S) -> None:
        from clipia_tasks.webhooks import handle_webhook

        self.handled: dict[str, float] = {}  # request id -> when handle_webhook answered 200
        self.callbacks: Counter[str] = Counter()
        self.lock = threading.Lock()
        receiver = self

        def handle(headers: dict[str, str], raw: bytes) -> None:
            code, body = handle_webhook(headers, raw)
            if code == 200:
                with receiver.lock:
                    receiver.handled.setdefault(body["request_id"], time.time())

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                headers = dict(self.headers)
                route = self.path.rsplit("/", 1)[-1]
                if route == "callbacks":
                    with receiver.lock:
                        receiver.callbacks[json.loads(raw)["request_id"]] += 1
                elif route == "now":
                    handle(headers, raw)
                elif route == "late":
                    threading.Timer(late_s, handle, (headers, raw)).start()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def start_workers(stack: ExitStack, env: dict[str, str], logs: Path, tag: str,
                  stop_s: float = 20.0) -> list[Any]:
    return enter_workers(stack, [
        WorkerProcess(env, logs / f"{tag}-{i}.log", queue=QUEUE, name=f"{tag}{i}",
                      includes=["tests.integration.signal_recorder"], cwd=ROOT,
                      extra_args=["-P", "threads", "-c", "32"])
        for i in (1, 2)
    ], stop_s)


def wait_outcomes(ids: list[str], timeout_s: float) -> dict[str, Any]:
    from clipia_tasks import get_state

    states: dict[str, Any] = {}
    deadline = time.monotonic() + timeout_s
    while len(states) < len(ids) and time.monotonic() < deadline:
        for rid in ids:
            if rid not in states and (st := get_state(rid)) is not None and st.outcome:
                states[rid] = st
        time.sleep(0.2)
    return states


def task_runs(workers: list[Any]) -> int:
    """Messages the workers received (one per task run), from their INFO logs."""
    return sum(w.log().count(" received") for w in workers)


def sleeping_owners(sim: Simulator, rec: Receiver, base: dict[str, str], logs: Path,
                    r: redis.Redis, n: int, rng: random.Random,
                    sizes: Sizes) -> dict[str, Any]:
    from clipia_tasks import poll_request

    env = {**base, "CLIPIA_POLL_POLICY": "fixed", "CLIPIA_POLL_INTERVAL": "60",
           "CLIPIA_POLL_MAX_INTERVAL": "60"}
    with ExitStack() as stack:
        workers = start_workers(stack, env, logs, "sleepy", sizes.stop_s)
        runs0 = task_runs(workers)
        ids = []
        for _ in range(n):
            script = {"queue_s": round(rng.uniform(*sizes.owner_queue_s), 2),
                      "run_s": round(rng.uniform(*sizes.owner_run_s), 2), "progress": "linear"}
            rid = sim.create(script, webhook_url=f"{rec.url}/hooks/now")
            poll_request.apply_async((rid,), {"callback_url": f"{rec.url}/callbacks"},
                                     queue=QUEUE)
            ids.append(rid)
        states = wait_outcomes(ids, timeout_s=50)  # well before any owner's 60 s countdown
        time.sleep(sizes.settle_s)  # room for a duplicate signal or callback to show up
        runs = task_runs(workers) - runs0
    signals = Counter(json.loads(e)["request_id"] for e in r.lrange(SIGNALS, 0, -1))
    latency = [st.finished_at - st.webhook_at for st in states.values()
               if st.finished_at and st.webhook_at]
    result_calls = [len(sim.calls(request_id=rid, endpoint="result")) for rid in ids]
    status_calls = [len(sim.calls(request_id=rid, endpoint="status")) for rid in ids]
    return {
        "requests": n, "recorded": len(states),
        "ended_by_webhook": sum(1 for st in states.values() if st.webhook_at),
        "webhook_to_outcome_p50_s": pct(latency, 0.5),
        "webhook_to_outcome_p95_s": pct(latency, 0.95),
        "webhook_to_outcome_p99_s": pct(latency, 0.99),
        "webhook_to_outcome_max_s": max(latency, default=float("nan")),
        "result_calls_max": max(result_calls), "result_calls_total": sum(result_calls),
        "status_calls_p50": pct(status_calls, 0.5), "status_calls_max": max(status_calls),
        "signals_per_request": sorted(Counter(signals[rid] for rid in ids).items()),
        "callbacks_per_request": sorted(Counter(rec.callbacks[rid] for rid in ids).items()),
        "task_runs_per_request": runs / n,
    }


def lengths(n: int, max_s: float, rng: random.Random,
            min_s: float = 4.0) -> list[dict[str, Any]]:
    out = []
    for _ in range(n):
        length = math.exp(rng.uniform(math.log(min_s), math.log(max_s)))
        queue_s = rng.uniform(0, min(3.0, length / 4))
        out.append({"queue_s": round(queue_s, 2), "run_s": round(length - queue_s, 2),
                    "progress": rng.choice(["linear", "none"])})
    return out


def scenarios(sim: Simulator, rec: Receiver, base: dict[str, str], logs: Path, n: int,
              max_s: float, rng: random.Random, sizes: Sizes) -> dict[str, Any]:
    from clipia_tasks import poll_request

    scripts = lengths(n, max_s, rng, sizes.min_length_s)
    routes = scenario_routes(sizes.late_s)
    buckets = (f"{sizes.min_length_s:g}-15 s", "15-30 s", "30-60 s")
    started: dict[str, list[tuple[str, float, float]]] = {s: [] for s in routes}
    with ExitStack() as stack:
        start_workers(stack, base, logs, "default", sizes.stop_s)
        for script in scripts:
            for name, route in routes.items():
                url = f"{rec.url}/hooks/{route}" if route else None
                rid = sim.create(script, webhook_url=url)
                t0 = time.time()
                poll_request.apply_async((rid,), {"expect_webhook": url is not None}, queue=QUEUE)
                started[name].append((rid, t0 + script["queue_s"] + script["run_s"],
                                      script["queue_s"] + script["run_s"]))
        ids = [rid for rows in started.values() for rid, _, _ in rows]
        states = wait_outcomes(ids, timeout_s=max_s + 3 + 30 + 0.25 * max_s + 60)
    out: dict[str, Any] = {}
    for name, rows in started.items():
        status, calls, lag, by_len, caught = [], [], [], {}, []
        for rid, end_at, length in rows:
            st = states.get(rid)
            n_status = len(sim.calls(request_id=rid, endpoint="status"))
            status.append(n_status)
            calls.append(n_status + len(sim.calls(request_id=rid, endpoint="result")))
            bucket = buckets[0] if length < 15 else buckets[1] if length < 30 else buckets[2]
            by_len.setdefault(bucket, []).append(n_status)
            if st is not None and st.finished_at:
                lag.append(max(st.finished_at - end_at, 0.0))
                caught.append(st.finished_at - end_at <= 30 + 0.25 * length)
        out[name] = {
            "requests": len(rows), "unfinished": len(rows) - len(lag),
            "status_calls_p50": pct(status, 0.5), "status_calls_p95": pct(status, 0.95),
            "status_calls_mean": statistics.fmean(status), "calls_p50": pct(calls, 0.5),
            "status_calls_p50_by_length": {k: pct(by_len[k], 0.5) for k in buckets if k in by_len},
            "requests_by_length": {k: len(by_len[k]) for k in buckets if k in by_len},
            "detection_p50_s": pct(lag, 0.5), "detection_p95_s": pct(lag, 0.95),
            "detection_max_s": max(lag, default=float("nan")),
            "within_30s_plus_25pct": sum(caught),
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a CI-sized run (~1.5 min)")
    parser.add_argument("--owners", type=int, default=None, help="sleeping-owner requests")
    parser.add_argument("-n", type=int, default=None, help="requests per scenario")
    parser.add_argument("--max-length", type=float, default=None,
                        help="longest request in the scenarios, s (default 60; --quick 30)")
    parser.add_argument("--fallback", type=float, default=None,
                        help="CLIPIA_WEBHOOK_FALLBACK_AFTER in the scenarios (default: its own)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", default=out_dir(),
                        help="JSON directory (default: $CLIPIA_BENCH_OUT, else benchmarks/results)")
    args = parser.parse_args()
    clean_environment()
    tiny = smoke()
    sizes = SMOKE if tiny else Sizes()
    fallback = args.fallback or (SMOKE_FALLBACK_S if tiny else None)
    owners = args.owners or (3 if tiny else 30 if args.quick else 100)
    n = args.n or (3 if tiny else 12 if args.quick else 40)
    max_s = args.max_length or (2.5 if tiny else 30.0 if args.quick else 60.0)
    min_s = min(sizes.min_length_s, max_s)
    rng = random.Random(args.seed)
    console = Console(width=170)
    with ExitStack() as stack:
        server = RedisServer()
        server.start()
        stack.callback(server.stop)
        sim = Simulator(webhook_secret=SECRET)
        stack.enter_context(SimulatorServer(sim, port=0))
        logs = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        base = {"REDIS_URL": server.url, "CLIPIA_BASE_URL": sim.base_url,
                "CLIPIA_API_KEY": "clipia_live_benchmark_simulator_only",
                "CLIPIA_WEBHOOK_SECRET": SECRET, "CLIPIA_CALLBACK_SECRET": "cbsec_benchmark_only",
                "CLIPIA_QUEUE": QUEUE,
                "CLIPIA_POLL_TIMEOUT": "900"}
        configure_process({k: v for k, v in base.items() if k != "CLIPIA_API_KEY"})
        rec = Receiver(sizes.late_s)
        stack.callback(rec.server.shutdown)
        r = redis.Redis.from_url(server.url)
        console.print(f"1. {owners} requests whose owners sleep in 60 s countdowns, 2 workers ...")
        owners_out = sleeping_owners(sim, rec, base, logs, r, owners, rng, sizes)
        console.print(f"2. {n} requests x 4 scenarios, {min_s:g}-{max_s:g} s ...")
        scen_env = {**base, **({"CLIPIA_WEBHOOK_FALLBACK_AFTER": f"{fallback:g}"}
                               if fallback else {})}
        scen_out = scenarios(sim, rec, scen_env, logs, n, max_s, rng,
                             replace(sizes, min_length_s=min_s))

    a = owners_out
    t1 = Table(title=f"Webhook during a 60 s countdown: {a['requests']} requests, 2 workers")
    for col in ("webhook -> outcome p50", "p95", "p99", "max", "result calls (max/req)",
                "status calls (max/req)", "signals/req", "callbacks/req", "task runs/req"):
        t1.add_column(col, justify="right")
    t1.add_row(*(f"{a[k] * 1000:.0f} ms" for k in ("webhook_to_outcome_p50_s",
                                                    "webhook_to_outcome_p95_s",
                                                    "webhook_to_outcome_p99_s",
                                                    "webhook_to_outcome_max_s")),
               str(a["result_calls_max"]), str(a["status_calls_max"]),
               " ".join(f"{k}x{v}" for k, v in a["signals_per_request"]),
               " ".join(f"{k}x{v}" for k, v in a["callbacks_per_request"]),
               f"{a['task_runs_per_request']:.1f}")
    console.print(t1)
    t2 = Table(title=f"Calls and detection, {n} requests per scenario, {min_s:g}-{max_s:g} s")
    for col in ("scenario", "status calls p50", "p95", "p50 by length", "all calls p50",
                "detection p50", "p95", "max", "within 30 s + 25 %"):
        t2.add_column(col, justify="left" if col == "scenario" else "right")
    for name, s in scen_out.items():
        t2.add_row(name, f"{s['status_calls_p50']:.0f}", f"{s['status_calls_p95']:.0f}",
                   ", ".join(f"{k}: {v:.0f}" for k, v in s["status_calls_p50_by_length"].items()),
                   f"{s['calls_p50']:.0f}", f"{s['detection_p50_s']:.2f} s",
                   f"{s['detection_p95_s']:.2f} s", f"{s['detection_max_s']:.2f} s",
                   f"{s['within_30s_plus_25pct']}/{s['requests']}")
    console.print(t2)
    mode = "smoke" if tiny else "quick" if args.quick else "full"
    write_report(console, args.out, f"webhooks-{mode}",
                 {"quick": args.quick, "smoke": tiny, "seed": args.seed,
                  "sleeping_owners": owners_out,
                  "scenarios": scen_out})
    complete = a["recorded"] == a["requests"] and all(
        s["unfinished"] == 0 for s in scen_out.values())
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
