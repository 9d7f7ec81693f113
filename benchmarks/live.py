"""Live progress: record change -> SSE event latency, and 1,000 watchers in one process.

    python benchmarks/live.py            # 1,000 watchers, 300 changes (~1 min)
    python benchmarks/live.py --quick    # 200 watchers, 100 changes
    CLIPIA_BENCH_SMOKE=1 python benchmarks/live.py   # 10 watchers, 10 changes (seconds)

One private Redis and one uvicorn process serving ``clipia_tasks.contrib.starlette``'s
``ProgressViews`` (the FastAPI example's wiring, nothing else). This process writes the
records through :class:`~clipia_tasks.record.RecordStore` (the same Lua transitions a
worker runs; no worker or API is involved, so only the push path is measured) and holds
the SSE connections as plain asyncio sockets.

1. N requests, one SSE watcher each (all in the one uvicorn process): uvicorn's RSS
   before and with all N connected (per watcher), and the Redis connections that
   process holds (``CLIENT LIST``: normal and pub/sub).
2. CPU of the uvicorn process over a quiet window (no record changes; keep-alive
   comments every 15 s are its only work).
3. Latency: progress changes written to one watched request after another; each is
   timed from just before the write to the matching ``data:`` line at its watcher.

Prints a table, writes JSON to benchmarks/results/ (or ``CLIPIA_BENCH_OUT``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
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
    write_report,
)
from benchmarks.run import cpu_seconds, pct  # noqa: E402
from clipia_tasks.processes import configure_process  # noqa: E402
from clipia_tasks.record import Field, RecordStore  # noqa: E402
from clipia_tasks.redis_server import RedisServer, free_port  # noqa: E402

APP = "benchmarks.live_app:app"


class Watcher:
    """One SSE connection: every data line's progress, with when it arrived."""

    def __init__(self, port: int, request_id: str) -> None:
        self.port = port
        self.request_id = request_id
        self.first = asyncio.Event()
        self.arrivals: dict[int, float] = {}
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, limit=2**20)
        writer.write(f"GET /generations/{self.request_id}/events HTTP/1.1\r\n"
                     f"Host: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode())
        await writer.drain()
        try:
            while line := await reader.readline():
                if line.startswith(b"data: {"):
                    snap = json.loads(line[6:])
                    self.arrivals.setdefault(snap["progress"] or 0, time.time())
                    self.first.set()
        finally:
            writer.close()


def start_app(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "wb")  # closed with the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", APP, "--host", "127.0.0.1", "--port", str(port),
         "--no-access-log", "--log-level", "warning"],
        cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    import socket
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(log.read_text()) from None
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("uvicorn did not start:\n" + log.read_text())


def rss_kb(pid: int) -> int:
    return sum(proc_field(p, "VmRSS") for p in [pid, *children(pid)])


def redis_connections(r: redis.Redis, exclude: set[str]) -> dict[str, int]:
    counts = {"normal": 0, "pubsub": 0}
    for client in r.client_list():
        if client.get("name") in exclude:
            continue
        kind = "pubsub" if int(client.get("sub", 0)) or int(client.get("psub", 0)) else "normal"
        counts[kind] += 1
    return counts


async def measure(args: argparse.Namespace, port: int, pid: int, store: RecordStore,
                  r: redis.Redis, console: Console) -> dict[str, Any]:
    now = time.time()
    ids = [str(uuid.uuid4()) for _ in range(args.watchers)]
    for rid in ids:  # each request running at 1 % progress
        store.claim(rid, "bench", 0, first_enqueued_at=now, timeout_s=3600, lease_s=3600,
                    run_s=3600)
        store.schedule(rid, "bench", gen_next=1, lease_until=now + 3600, wake_at=now + 3600,
                       fields={Field.STATUS: "IN_PROGRESS", Field.PROGRESS: 1})
    rss0 = rss_kb(pid)
    conns0 = redis_connections(r, {"bench"})
    watchers = [Watcher(port, rid) for rid in ids]
    started = time.monotonic()
    for i, w in enumerate(watchers):
        w.task = asyncio.create_task(w.run())
        if i % 50 == 49:
            await asyncio.sleep(0.05)  # open connections in waves, as a page load would
    await asyncio.wait_for(asyncio.gather(*(w.first.wait() for w in watchers)), 120)
    connect_s = time.monotonic() - started
    await asyncio.sleep(args.settle_s)  # let the subscriptions settle
    rss1 = rss_kb(pid)
    conns1 = redis_connections(r, {"bench"})
    subscribed = sum(n for _, n in r.pubsub_numsub(*[f"clipia:changes:{rid}" for rid in ids]))
    console.print(f"{len(watchers)} watchers connected in {connect_s:.1f} s")

    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(args.quiet_s)
    idle_cpu_pct = 100 * (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)

    latencies = []
    sent: list[tuple[Watcher, int, float]] = []
    for i in range(args.changes):
        w = watchers[(i * 7) % len(watchers)]
        progress = 2 + i // len(watchers) + (i % 90)
        progress = min(progress, 99)
        if progress in w.arrivals:
            continue
        at = time.time()
        store.schedule(w.request_id, "bench", gen_next=1, lease_until=now + 3600,
                       wake_at=now + 3600, fields={Field.PROGRESS: progress})
        sent.append((w, progress, at))
        await asyncio.sleep(args.gap_s)
    await asyncio.sleep(args.settle_s / 2)  # the last events' way to their watchers
    lost = 0
    for w, progress, at in sent:
        if progress in w.arrivals:
            latencies.append(1000 * (w.arrivals[progress] - at))
        else:
            lost += 1
    for w in watchers:
        assert w.task is not None
        w.task.cancel()
    await asyncio.gather(*(w.task for w in watchers if w.task), return_exceptions=True)
    return {
        "watchers": len(watchers), "connect_s": connect_s,
        "rss_before_mb": rss0 / 1024, "rss_with_watchers_mb": rss1 / 1024,
        "rss_per_watcher_kb": (rss1 - rss0) / len(watchers),
        "redis_connections_before": conns0, "redis_connections_with_watchers": conns1,
        "channel_subscriptions": subscribed,
        "idle_window_s": args.quiet_s, "idle_cpu_pct": idle_cpu_pct,
        "changes": len(sent), "events_missing": lost,
        "latency_p50_ms": pct(latencies, 0.5), "latency_p95_ms": pct(latencies, 0.95),
        "latency_max_ms": max(latencies, default=float("nan")),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--watchers", type=int, default=None)
    parser.add_argument("--changes", type=int, default=None)
    parser.add_argument("--gap-s", type=float, default=0.02, help="pause between changes")
    parser.add_argument("--quiet-s", type=float, default=None, help="idle CPU window")
    parser.add_argument("--out", default=out_dir(),
                        help="JSON directory (default: $CLIPIA_BENCH_OUT, else benchmarks/results)")
    args = parser.parse_args()
    clean_environment()
    tiny = smoke()
    args.watchers = args.watchers or (10 if tiny else 200 if args.quick else 1000)
    args.changes = args.changes or (10 if tiny else 100 if args.quick else 300)
    args.quiet_s = args.quiet_s or (0.5 if tiny else 5.0 if args.quick else 20.0)
    args.settle_s = 1.0 if tiny else 2.0
    console = Console(width=150)
    with ExitStack() as stack:
        server = RedisServer()
        server.start()
        stack.callback(server.stop)
        logs = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        env = {"REDIS_URL": server.url}
        configure_process(env)
        store = RecordStore.from_url(server.url, ttl_s=3600)
        r = redis.Redis.from_url(server.url, decode_responses=True)
        r.client_setname("bench")
        store.redis.client_setname("bench")
        port = free_port()
        proc = start_app(env, port, logs / "uvicorn.log")
        stack.callback(lambda: (proc.terminate(), proc.wait(10)))
        time.sleep(0.2 if tiny else 1)
        result = asyncio.run(measure(args, port, proc.pid, store, r, console))
        if proc.poll() is not None:
            console.print((logs / "uvicorn.log").read_text()[-3000:])
    table = Table(title=f"Live progress: {result['watchers']} SSE watchers in one uvicorn process")
    for col in ("change -> event p50", "p95", "max", "changes (missing)", "RSS / watcher",
                "Redis conns (normal / pub/sub)", "idle CPU"):
        table.add_column(col, justify="right")
    c = result["redis_connections_with_watchers"]
    table.add_row(f"{result['latency_p50_ms']:.1f} ms", f"{result['latency_p95_ms']:.1f} ms",
                  f"{result['latency_max_ms']:.1f} ms",
                  f"{result['changes']} ({result['events_missing']})",
                  f"{result['rss_per_watcher_kb']:.1f} kB", f"{c['normal']} / {c['pubsub']}",
                  f"{result['idle_cpu_pct']:.2f} % over {result['idle_window_s']:g} s")
    console.print(table)
    console.print(f"uvicorn RSS {result['rss_before_mb']:.0f} -> "
                  f"{result['rss_with_watchers_mb']:.0f} MB; channel subscriptions "
                  f"{result['channel_subscriptions']}; Redis connections before the watchers "
                  f"{result['redis_connections_before']}")
    mode = "smoke" if tiny else "quick" if args.quick else "full"
    write_report(console, args.out, f"live-{mode}", {**result, "smoke": tiny})
    return 0 if result["events_missing"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
