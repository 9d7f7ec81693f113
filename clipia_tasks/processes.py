"""Real worker and beat processes, started and stopped from Python.

The demo, the benchmarks and the test suite run ``celery -A clipia_tasks
worker`` / ``beat`` exactly as a Procfile would, as subprocesses, through these
helpers; your own integration tests can too::

    from clipia_tasks.processes import WorkerProcess, configure_process

    env = {"REDIS_URL": url, "CLIPIA_API_KEY": key, "CLIPIA_BASE_URL": sim_url}
    with WorkerProcess(env, "/tmp/worker.log", queue="celery") as worker:
        configure_process({k: v for k, v in env.items() if k != "CLIPIA_API_KEY"})
        ...                                  # poll_request.delay(...) from this process

Each process gets its own session (process group), so :meth:`WorkerProcess.kill`
reaches the pool children too. The simulator runs in-process
(:class:`clipia_tasks.simulator.SimulatorServer`) and a private Redis with
:class:`clipia_tasks.redis_server.RedisServer`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["BeatProcess", "WorkerProcess", "configure_process"]


def configure_process(env: Mapping[str, str]) -> None:
    """Point this process's settings and the bundled Celery app at ``env``.

    Updates ``os.environ``, forgets cached settings and connections, and sets the
    app's broker and result backend, so ``poll_request.delay`` and ``get_state``
    here use the same Redis as the workers started with ``env``.
    """
    from . import _runtime
    from .celery_app import app, celery_config
    from .settings import get_settings, reset_settings

    os.environ.update(env)
    reset_settings()
    _runtime.reset()
    settings = get_settings()
    config = celery_config(settings)
    # The transport options too: with sentinel:// URLs they name the master.
    connection = {name: config[name] for name in (
        "broker_url", "broker_transport", "broker_transport_options", "result_backend",
        "result_backend_transport_options")}
    changed = any(app.conf.get(name) != value for name, value in connection.items())
    app.conf.update(connection)
    if changed:
        # Connections already made point at the old Redis: drop them (what Celery
        # itself does after a fork), so the next call connects to the new one.
        app._after_fork()
        app._backend_cache = None
        app._local.__dict__.pop("backend", None)


class _Process:
    """A ``celery -A clipia_tasks ...`` subprocess that logs to a file."""

    def __init__(self, env: Mapping[str, str], log_path: str | Path, *,
                 cwd: str | Path | None = None) -> None:
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.log_path = Path(log_path)
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _spawn(self) -> int:
        """Start the process; returns the log offset its output starts at."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "clipia_tasks", *self._command()],
                cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: kill() reaches orphans too
            )
        return offset

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("the process is not running")
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        """Everything the process (and earlier runs into the same file) logged."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM (a warm shutdown), then SIGKILL after ``timeout_s``."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the main process and its children (orphaned ones included)."""
        if self.proc:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self.proc = None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class WorkerProcess(_Process):
    """``celery -A clipia_tasks worker`` on one queue; :meth:`start` waits for "ready"."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_path: str | Path,
        *,
        queue: str = "celery",
        name: str | None = None,
        concurrency: int = 2,
        pool: str = "prefork",
        loglevel: str = "INFO",
        includes: Sequence[str] = (),
        extra_args: Sequence[str] = (),
        cwd: str | Path | None = None,
    ) -> None:
        super().__init__(env, log_path, cwd=cwd)
        self.queue = queue
        self.name = name or queue
        self.concurrency = concurrency
        self.pool = pool
        self.loglevel = loglevel
        self.includes = tuple(includes)
        #: More worker arguments, e.g. ``["-P", "threads"]`` (they win over ``pool``).
        self.extra_args = list(extra_args)

    def _command(self) -> list[str]:
        includes = ["-I", ",".join(self.includes)] if self.includes else []
        return ["worker", "-l", self.loglevel, "-P", self.pool, "-c", str(self.concurrency),
                "-Q", self.queue, "-n", f"{self.name}@%h", "--without-gossip",
                "--without-mingle", "--without-heartbeat", *includes, *self.extra_args]

    def start(self, timeout_s: float = 60.0) -> WorkerProcess:
        """Start the worker and wait until it logs "ready"; RuntimeError with its log if not."""
        offset = self._spawn()
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[offset:].decode(errors="replace")
            if " ready." in text:
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"the worker exited at start:\n{text[-3000:]}")
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"the worker was not ready within {timeout_s:g} s:\n"
                           f"{self.log()[-3000:]}")

    def __enter__(self) -> WorkerProcess:
        return self if self.running else self.start()


class BeatProcess(_Process):
    """``celery -A clipia_tasks beat``: runs the sweep on its schedule."""

    def __init__(self, env: Mapping[str, str], log_path: str | Path, *,
                 schedule_path: str | Path | None = None, loglevel: str = "INFO",
                 cwd: str | Path | None = None) -> None:
        super().__init__(env, log_path, cwd=cwd)
        self.schedule_path = Path(schedule_path or Path(log_path).with_suffix(".schedule"))
        self.loglevel = loglevel

    def _command(self) -> list[str]:
        return ["beat", "-l", self.loglevel, "-s", str(self.schedule_path)]

    def start(self) -> BeatProcess:
        self._spawn()
        return self

    def __enter__(self) -> BeatProcess:
        return self if self.running else self.start()
