"""Poll throughput of one worker, and 10,000 requests in flight.

    python benchmarks/throughput.py            # throughput 20 s each + 10,000 in flight
    python benchmarks/throughput.py --quick    # 8 s each + 2,000 in flight

1. Polls per second one worker (prefork, 2 processes) sustains: requests kept
   IN_PROGRESS on the simulator, CLIPIA_POLL_INTERVAL=0.001 so every message
   polls at once, against a bare Celery ``self.retry(countdown=0)`` chain
   (``benchmarks/bare_tasks.py``) on the same worker settings in the same run.
2. N requests in flight: how long one worker takes to start polling all of
   them, its RSS (main + pool), Redis memory per request in flight, and how
   late polls run (actual - planned) once they are all in.

Prints tables, writes JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks._procs import children, clean_environment, proc_field, start_backends, write_report  # noqa: E402
from clipia_tasks.processes import WorkerProcess, configure_process  # noqa: E402


def rss_mb(pid: int, pool: bool = True) -> float:
    """RSS of the worker's main process, or of its pool processes together."""
    pids = children(pid) if pool else [pid]
    return sum(proc_field(p, "VmRSS") for p in pids) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--inflight", type=int, default=None)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    clean_environment()
    window_s = 8.0 if args.quick else 20.0
    inflight = args.inflight or (2000 if args.quick else 10_000)
    chains = 50
    console = Console(width=150)
    report: dict[str, Any] = {}
    with ExitStack() as stack:
        server, sim = start_backends(stack)
        r = redis.Redis.from_url(server.url)
        logs = Path(stack.enter_context(__import__("tempfile").TemporaryDirectory()))
        base = {"REDIS_URL": server.url, "CLIPIA_BASE_URL": sim.url,
                "CLIPIA_API_KEY": "clipia_live_benchmark_simulator_only",
                "CLIPIA_POLL_TIMEOUT": "3600", "CLIPIA_HTTP_TIMEOUT": "10",
                "PYTHONPATH": str(ROOT)}
        configure_process({k: v for k, v in base.items() if k != "CLIPIA_API_KEY"})
        from clipia_tasks import poll_request
        from clipia_tasks.celery_app import app

        # -- 1. throughput ---------------------------------------------------
        env = {**base, "CLIPIA_POLL_POLICY": "fixed", "CLIPIA_POLL_INTERVAL": "0.001",
               "CLIPIA_POLL_MAX_INTERVAL": "1", "CLIPIA_QUEUE": "tp"}
        with WorkerProcess(env, logs / "tp.log", queue="tp"):
            rids = [sim.simulator.create({"run_s": 3600, "progress": "none"})
                    for _ in range(chains)]
            for rid in rids:
                poll_request.apply_async((rid,), queue="tp")
            time.sleep(3)  # warm up
            before = len(sim.simulator.calls(endpoint="status"))
            time.sleep(window_s)
            polls_per_s = (len(sim.simulator.calls(endpoint="status")) - before) / window_s
        sim.simulator.reset()
        env_bare = {**env, "CLIPIA_QUEUE": "bare"}
        with WorkerProcess(env_bare, logs / "bare.log", queue="bare",
                           includes=["benchmarks.bare_tasks"]):
            for i in range(chains):
                app.send_task("bench.bare_chain", args=[i], queue="bare")
            time.sleep(3)
            before = int(r.get("bench:bare_runs") or 0)
            time.sleep(window_s)
            bare_per_s = (int(r.get("bench:bare_runs") or 0) - before) / window_s
        report["throughput"] = {"chains": chains, "window_s": window_s,
                                "poll_request_per_s": polls_per_s, "bare_retry_per_s": bare_per_s,
                                "ratio": polls_per_s / bare_per_s if bare_per_s else None}
        r.flushdb()  # our private server: nothing else lives here

        # -- 2. N in flight ----------------------------------------------------
        env = {**base, "CLIPIA_QUEUE": "many", "CLIPIA_POLL_INTERVAL": "1",
               "CLIPIA_POLL_MAX_INTERVAL": "30"}
        mem0 = int(r.info("memory")["used_memory"])
        with WorkerProcess(env, logs / "many.log", queue="many") as proc:
            rss0 = rss_mb(proc.pid, pool=False)
            kids0 = rss_mb(proc.pid)
            rids = [sim.simulator.create({"run_s": 3600, "progress": "linear"})
                    for _ in range(inflight)]
            t0 = time.monotonic()
            for rid in rids:
                poll_request.apply_async((rid,), queue="many")
            enqueue_s = time.monotonic() - t0
            polled: set[str] = set()
            deadline = time.monotonic() + 600
            while len(polled) < inflight and time.monotonic() < deadline:
                pipe = r.pipeline()
                todo = [rid for rid in rids if rid not in polled]
                for rid in todo:
                    pipe.hget(f"clipia:request:{rid}", "polls")
                for rid, polls in zip(todo, pipe.execute(), strict=True):
                    if polls:
                        polled.add(rid)
                time.sleep(1)
            take_in_s = time.monotonic() - t0
            time.sleep(10)  # steady state: every chain waiting out a countdown
            rss1 = rss_mb(proc.pid, pool=False)
            kids1 = rss_mb(proc.pid)
            mem1 = int(r.info("memory")["used_memory"])
            # Lateness: for a sample, how long after its planned time a poll ran
            sample = rids[:: max(1, inflight // 200)]
            planned = {rid: float(r.hget(f"clipia:request:{rid}", "next_poll_at") or 0)
                       for rid in sample}
            time.sleep(35)
            lates = []
            for rid, plan in planned.items():
                calls = [c.at for c in sim.simulator.calls(request_id=rid, endpoint="status")
                         if c.at >= plan - 0.5]
                if plan and calls:
                    lates.append(max(calls[0] - plan, 0.0))
            lates.sort()
        report["inflight"] = {
            "requests": inflight, "enqueue_s": enqueue_s, "all_polled_after_s": take_in_s,
            "polled": len(polled), "main_rss_mb_idle": rss0, "main_rss_mb_loaded": rss1,
            "pool_rss_mb_idle": kids0, "pool_rss_mb_loaded": kids1,
            "redis_bytes_per_request": (mem1 - mem0) / inflight,
            "poll_lateness_p50_s": lates[len(lates) // 2] if lates else None,
            "poll_lateness_p95_s": lates[int(len(lates) * 0.95)] if lates else None,
        }
    tp = report["throughput"]
    t = Table(title="Poll throughput, one worker (prefork, 2 processes)")
    for col in ("", "runs per second"):
        t.add_column(col)
    t.add_row("poll_request (status call + record)", f"{tp['poll_request_per_s']:.0f}")
    t.add_row("bare self.retry(countdown=0) chain", f"{tp['bare_retry_per_s']:.0f}")
    t.add_row("ratio", f"{tp['ratio']:.2f}" if tp["ratio"] else "-")
    console.print(t)
    inf = report["inflight"]
    t = Table(title=f"{inf['requests']} requests in flight, one worker")
    t.add_column("")
    t.add_column("value", justify="right")
    t.add_row("enqueue (web side)", f"{inf['enqueue_s']:.1f} s")
    t.add_row("until every request had its first poll", f"{inf['all_polled_after_s']:.1f} s")
    t.add_row("worker main process RSS, idle -> loaded",
              f"{inf['main_rss_mb_idle']:.0f} -> {inf['main_rss_mb_loaded']:.0f} MB")
    t.add_row("pool processes RSS (2), idle -> loaded",
              f"{inf['pool_rss_mb_idle']:.0f} -> {inf['pool_rss_mb_loaded']:.0f} MB")
    t.add_row("Redis memory per request in flight", f"{inf['redis_bytes_per_request']:.0f} B")
    if inf["poll_lateness_p50_s"] is not None:
        t.add_row("poll lateness p50 / p95", f"{inf['poll_lateness_p50_s']:.2f} / "
                  f"{inf['poll_lateness_p95_s']:.2f} s")
    console.print(t)
    write_report(console, args.out, f"throughput-{'quick' if args.quick else 'full'}", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
