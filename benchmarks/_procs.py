"""A worker's process tree, read from /proc (benchmarks only; Linux)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rich.console import Console

from clipia_tasks.redis_server import RedisServer
from clipia_tasks.simulator import SimulatorServer


def clean_environment() -> None:
    """Forget inherited CLIPIA_* / CELERY_* / REDIS_URL: a benchmark sets its own."""
    for name in list(os.environ):
        if name.startswith(("CLIPIA_", "CELERY_")) or name == "REDIS_URL":
            del os.environ[name]


def start_backends(stack: ExitStack) -> tuple[RedisServer, SimulatorServer]:
    """A private Redis and the simulator, both stopped when ``stack`` closes."""
    server = RedisServer()
    server.start()
    stack.callback(server.stop)
    return server, stack.enter_context(SimulatorServer(port=0))


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
