"""Poll throughput of one worker, and 10,000 requests in flight.

    python benchmarks/throughput.py            # throughput 20 s each + 10,000 in flight
    python benchmarks/throughput.py --quick    # 8 s each + 2,000 in flight
    CLIPIA_BENCH_SMOKE=1 python benchmarks/throughput.py   # 1 pair of 1 s windows + 20 in flight

1. Polls per second one worker (prefork, 2 processes) sustains: requests kept
   IN_PROGRESS on the simulator, CLIPIA_POLL_INTERVAL=0.001 so every message
   polls at once, against a bare Celery ``self.retry(countdown=0)`` chain that
   makes one keep-alive GET of a status from the same simulator per run
   (``benchmarks/bare_tasks.py``), on the same worker settings. The two alternate,
   window after window (--pairs, default 5), each with its own worker started for
   its window (the other's messages wait in Redis); the ratio reported is the
   median of the pairs' ratios.
2. N requests in flight: how long one worker takes to start polling all of
   them, its RSS (main + pool), Redis memory per request in flight, and how
   late polls run (actual - planned) once they are all in.

Prints tables, writes JSON to benchmarks/results/ (or ``CLIPIA_BENCH_OUT``); exits 1 if a
side made no runs or a request in flight was never polled.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks._procs import (  # noqa: E402
    children,
    clean_environment,
    out_dir,
    proc_field,
    smoke,
    start_backends,
    write_report,
)
from clipia_tasks.processes import WorkerProcess, configure_process  # noqa: E402


def rss_mb(pid: int, pool: bool = True) -> float:
    """RSS of the worker's main process, or of its pool processes together."""
    pids = children(pid) if pool else [pid]
    return sum(proc_field(p, "VmRSS") for p in pids) / 1024


@contextmanager
def running(worker: WorkerProcess, stop_s: float) -> Iterator[WorkerProcess]:
    """``worker`` started; at the end a warm shutdown of at most ``stop_s``, then SIGKILL.

    Under this load a prefork worker's warm shutdown now and then hangs until the
    timeout; what the benchmark measures is in by then.
    """
    worker.start()
    try:
        yield worker
    finally:
        worker.stop(timeout_s=stop_s)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--inflight", type=int, default=None)
    parser.add_argument("--pairs", type=int, default=None,
                        help="alternating throughput windows (default 5)")
    parser.add_argument("--skip-inflight", action="store_true", help="throughput only")
    parser.add_argument("--out", default=out_dir(),
                        help="JSON directory (default: $CLIPIA_BENCH_OUT, else benchmarks/results)")
    args = parser.parse_args()
    clean_environment()
    tiny = smoke()
    if tiny:
        # Seconds: one pair of short windows, a few chains, 20 requests in flight polled at
        # most 2 s apart, and the in-flight waits to match.
        pairs_n, window_s, warm_s, chains = args.pairs or 1, 1.0, 0.5, 10
        inflight = args.inflight or 20
        max_interval_s, steady_s, lateness_s = 2, 1.0, 3.0
        stop_s = 3.0  # a warm shutdown takes ~2 s; one that hangs is not waited out
    else:
        pairs_n, window_s, warm_s, chains = args.pairs or 5, 5.0 if args.quick else 10.0, 2.0, 50
        inflight = args.inflight or (2000 if args.quick else 10_000)
        max_interval_s, steady_s, lateness_s = 30, 10.0, 35.0
        stop_s = 20.0
    mode = "smoke" if tiny else "quick" if args.quick else "full"
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

        # -- 1. throughput: alternating windows --------------------------------
        env = {**base, "CLIPIA_POLL_POLICY": "fixed", "CLIPIA_POLL_INTERVAL": "0.001",
               "CLIPIA_POLL_MAX_INTERVAL": "1", "CLIPIA_QUEUE": "tp"}
        env_bare = {**env, "CLIPIA_QUEUE": "bare"}
        poll_ids = [sim.simulator.create({"run_s": 36000, "progress": "none"})
                    for _ in range(chains)]
        bare_ids = [sim.simulator.create({"run_s": 36000, "progress": "none"})
                    for _ in range(chains)]
        for rid in poll_ids:
            poll_request.apply_async((rid,), queue="tp")
        for rid in bare_ids:
            app.send_task("bench.bare_chain", args=[rid], queue="bare")

        def window(kind: str, n: int) -> float:
            """Runs per second of one side over one window, with its own worker."""
            ids = set(poll_ids if kind == "poll" else bare_ids)
            w_env, queue = (env, "tp") if kind == "poll" else (env_bare, "bare")
            includes = ["benchmarks.bare_tasks"] if kind == "bare" else []
            with running(WorkerProcess(w_env, logs / f"{kind}-{n}.log", queue=queue,
                                       includes=includes), stop_s):
                time.sleep(warm_s)  # warm up
                before = sum(1 for c in sim.simulator.calls(endpoint="status")
                             if c.request_id in ids)
                time.sleep(window_s)
                after = sum(1 for c in sim.simulator.calls(endpoint="status")
                            if c.request_id in ids)
            return (after - before) / window_s

        pairs = []
        for n in range(pairs_n):
            order = ("poll", "bare") if n % 2 == 0 else ("bare", "poll")
            got = {kind: window(kind, n) for kind in order}
            pairs.append({"poll_request_per_s": got["poll"], "bare_retry_per_s": got["bare"],
                          "ratio": got["poll"] / got["bare"] if got["bare"] else None})
            ratio = pairs[-1]["ratio"]
            console.print(f"pair {n + 1}: poll_request {got['poll']:.0f}/s, bare chain "
                          f"{got['bare']:.0f}/s, ratio " + (f"{ratio:.2f}" if ratio else "-"))
        ratios = sorted(p["ratio"] for p in pairs if p["ratio"])
        report["throughput"] = {
            "chains": chains, "window_s": window_s, "pairs": pairs,
            "poll_request_per_s": statistics.median(p["poll_request_per_s"] for p in pairs),
            "bare_retry_per_s": statistics.median(p["bare_retry_per_s"] for p in pairs),
            "ratio": statistics.median(ratios) if ratios else None,
        }
        r.flushdb()  # our private server: nothing else lives here
        sim.simulator.reset()

        if not args.skip_inflight:
            # -- 2. N in flight ----------------------------------------------------
            env = {**base, "CLIPIA_QUEUE": "many", "CLIPIA_POLL_INTERVAL": "1",
                   "CLIPIA_POLL_MAX_INTERVAL": str(max_interval_s)}
            mem0 = int(r.info("memory")["used_memory"])
            with running(WorkerProcess(env, logs / "many.log", queue="many"), stop_s) as proc:
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
                    time.sleep(0.2 if tiny else 1)
                take_in_s = time.monotonic() - t0
                time.sleep(steady_s)  # steady state: every chain waiting out a countdown
                rss1 = rss_mb(proc.pid, pool=False)
                kids1 = rss_mb(proc.pid)
                mem1 = int(r.info("memory")["used_memory"])
                # Lateness: for a sample, how long after its planned time a poll ran
                sample = rids[:: max(1, inflight // 200)]
                planned = {rid: float(r.hget(f"clipia:request:{rid}", "next_poll_at") or 0)
                           for rid in sample}
                time.sleep(lateness_s)  # past the longest countdown (max interval)
                lates = []
                for rid, plan in planned.items():
                    calls = [c.at for c in sim.simulator.calls(request_id=rid, endpoint="status")
                             if c.at >= plan - 0.5]
                    if plan and calls:
                        lates.append(max(calls[0] - plan, 0.0))
                lates.sort()
            report["inflight"] = {
                "requests": inflight, "enqueue_s": enqueue_s, "all_polled_after_s": take_in_s,
                "polled": len(polled), "never_polled": inflight - len(polled),
                "main_rss_mb_idle": rss0, "main_rss_mb_loaded": rss1,
                "pool_rss_mb_idle": kids0, "pool_rss_mb_loaded": kids1,
                "redis_bytes_per_request": (mem1 - mem0) / inflight,
                "poll_lateness_p50_s": lates[len(lates) // 2] if lates else None,
                "poll_lateness_p95_s": lates[int(len(lates) * 0.95)] if lates else None,
            }
    tp = report["throughput"]
    t = Table(title="Poll throughput, one worker (prefork, 2 processes)")
    for col in ("", "runs per second"):
        t.add_column(col)
    t.add_row("poll_request (status call + record), median",
              f"{tp['poll_request_per_s']:.0f}")
    t.add_row("bare chain (one keep-alive status GET + self.retry(countdown=0)), median",
              f"{tp['bare_retry_per_s']:.0f}")
    t.add_row(f"ratio, median of {len(tp['pairs'])} alternating pairs",
              f"{tp['ratio']:.2f}" if tp["ratio"] else "-")
    t.add_row("ratios of the pairs", " ".join(f"{p['ratio']:.2f}" for p in tp["pairs"]
                                                if p["ratio"]))
    console.print(t)
    report["smoke"] = tiny
    ran = all(p["ratio"] for p in tp["pairs"])  # both sides made runs in every window
    inf = report.get("inflight")
    if inf is None:
        write_report(console, args.out, f"throughput-{mode}", report)
        return 0 if ran else 1
    t = Table(title=f"{inf['requests']} requests in flight, one worker")
    t.add_column("")
    t.add_column("value", justify="right")
    t.add_row("enqueue (web side)", f"{inf['enqueue_s']:.1f} s")
    t.add_row("until every request had its first poll", f"{inf['all_polled_after_s']:.1f} s"
              + (f" ({inf['never_polled']} never polled)" if inf["never_polled"] else ""))
    t.add_row("worker main process RSS, idle -> loaded",
              f"{inf['main_rss_mb_idle']:.0f} -> {inf['main_rss_mb_loaded']:.0f} MB")
    t.add_row("pool processes RSS (2), idle -> loaded",
              f"{inf['pool_rss_mb_idle']:.0f} -> {inf['pool_rss_mb_loaded']:.0f} MB")
    t.add_row("Redis memory per request in flight", f"{inf['redis_bytes_per_request']:.0f} B")
    if inf["poll_lateness_p50_s"] is not None:
        t.add_row("poll lateness p50 / p95", f"{inf['poll_lateness_p50_s']:.2f} / "
                  f"{inf['poll_lateness_p95_s']:.2f} s")
    console.print(t)
    write_report(console, args.out, f"throughput-{mode}", report)
    return 0 if ran and inf["never_polled"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
