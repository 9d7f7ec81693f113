"""What the benchmarks share: their environment, backends, workers, reports, /proc (Linux).

Two environment variables are the benchmarks' own (:func:`clean_environment` keeps them):

* ``CLIPIA_BENCH_SMOKE=1``: every benchmark shrinks its workload to a tiny one (seconds,
  not minutes): the same code paths, argument parsing, tables and JSON, numbers that mean
  nothing. The test suite runs docs/performance.md's commands as written this way.
* ``CLIPIA_BENCH_OUT=DIR``: where the JSON goes unless ``--out`` says (default
  ``benchmarks/results/``).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rich.console import Console

from clipia_tasks.processes import WorkerProcess
from clipia_tasks.redis_server import RedisServer
from clipia_tasks.simulator import SimulatorServer

SMOKE_ENV = "CLIPIA_BENCH_SMOKE"
OUT_ENV = "CLIPIA_BENCH_OUT"
RESULTS = Path(__file__).resolve().parent / "results"


def smoke() -> bool:
    """Whether ``CLIPIA_BENCH_SMOKE`` asks for a tiny workload (set, and not ``0``)."""
    return os.environ.get(SMOKE_ENV, "").strip() not in ("", "0")


def out_dir() -> str:
    """The default of ``--out``: ``CLIPIA_BENCH_OUT`` if set, else benchmarks/results/."""
    return os.environ.get(OUT_ENV) or str(RESULTS)


def clean_environment() -> None:
    """Forget inherited CLIPIA_* / CELERY_* / REDIS_URL: a benchmark sets its own.

    ``CLIPIA_BENCH_*`` stay: they are the benchmarks' own, not the library's.
    """
    for name in list(os.environ):
        if name.startswith("CLIPIA_BENCH_"):
            continue
        if name.startswith(("CLIPIA_", "CELERY_")) or name == "REDIS_URL":
            del os.environ[name]


def start_backends(stack: ExitStack) -> tuple[RedisServer, SimulatorServer]:
    """A private Redis and the simulator, both stopped when ``stack`` closes."""
    server = RedisServer()
    server.start()
    stack.callback(server.stop)
    return server, stack.enter_context(SimulatorServer(port=0))


def enter_workers(stack: ExitStack, workers: Sequence[WorkerProcess],
                  stop_s: float = 20.0) -> list[WorkerProcess]:
    """Start ``workers`` side by side (each until it logs "ready"); ``stack`` stops them.

    Together rather than one after another: a prefork worker's warm shutdown alone takes
    about 2 s, which a benchmark with four workers would otherwise wait out four times.
    Each gets ``stop_s`` for it, then SIGKILL.
    """
    workers = list(workers)

    def stop_all() -> None:
        with ThreadPoolExecutor(len(workers)) as pool:
            list(pool.map(lambda w: w.stop(timeout_s=stop_s), workers))

    stack.callback(stop_all)  # before they start: a start that fails stops the others
    with ThreadPoolExecutor(len(workers)) as pool:
        list(pool.map(lambda w: w.start(), workers))
    return workers


def write_report(console: Console, out_dir: str, name: str, data: dict[str, Any]) -> Path:
    """Print the machine line, write ``data`` (plus the machine) as JSON, say where."""
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    console.print(f"machine: {machine}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps({"machine": machine, **data}, indent=2))
    console.print(f"wrote {path}")
    return path


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def proc_field(pid: int, name: str) -> int:
    """A kB field of /proc/PID/status, e.g. VmRSS (0 if the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0
