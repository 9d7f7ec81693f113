"""The ``clipia-tasks`` command: ``demo``, ``watch``, ``status``, ``resume``, ``doctor``,
``simulator``, ``redis``.

Exit codes: 0 success (the watched request COMPLETED; the status call answered;
no doctor check failed, warnings allowed; the demo ran as scripted; ``redis``
stopped by Ctrl-C), 1 the watched request failed / was canceled / timed out, the
status call failed, a doctor check failed, the demo saw an unexpected outcome,
or ``redis`` could not start or exited on its own, 2 bad usage or configuration,
130 interrupted. ``--json`` prints one JSON document on stdout (progress and
messages go to stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .errors import ClipiaTasksError, ConfigurationError
from .nouns import Outcome
from .settings import redact_url

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


# -- helpers -------------------------------------------------------------------


def _redis_answers(url: str) -> bool:
    import redis

    from .connections import redis_client
    from .settings import get_settings

    try:
        client = redis_client(url, get_settings(), socket_timeout_s=0.5, connect_timeout_s=0.5)
        ok = bool(client.ping())
        client.close()
        return ok
    except (redis.RedisError, OSError, ValueError):
        return False


def _request_id(verb: str, value: str) -> str:
    """``value`` as a request id, or ValueError naming the verb (not the task)."""
    from .nouns import check_request_id

    try:
        return check_request_id(value)
    except ValueError:
        raise ValueError(
            f"{verb}: {value!r} is not a Clipia request id; pass the UUID that submit "
            "returned, e.g. '764cabcf-b745-4b3e-ae38-1200304cf45b'") from None


# -- demo ----------------------------------------------------------------------


@dataclass(frozen=True)
class DemoJob:
    label: str
    model: str
    script: dict[str, Any]
    expect: Outcome


DEMO_JOBS = [
    DemoJob("image, 2 s", "sim/image", {"queue_s": 0.5, "run_s": 2, "media": "image"},
            Outcome.COMPLETED),
    DemoJob("video, 7 s, progress", "sim/video",
            {"queue_s": 1.5, "run_s": 7, "media": "video", "progress": "linear"},
            Outcome.COMPLETED),
    DemoJob("audio, 4 s, no progress", "sim/audio",
            {"run_s": 4, "media": "audio", "progress": "none"}, Outcome.COMPLETED),
    DemoJob("image, rate limited", "sim/image",
            {"run_s": 3, "faults": [{"endpoint": "status", "http": 429, "retry_after": "1"},
                                    {"endpoint": "status", "http": 503, "count": 2,
                                     "after_calls": 2}]}, Outcome.COMPLETED),
    DemoJob("video, fails", "sim/video",
            {"run_s": 3, "final": "FAILED", "error_code": "nsfw_detected",
             "error_message": "Blocked by the safety filter"}, Outcome.FAILED),
    # Canceled out of band after 2 s, as if from the Clipia web UI.
    DemoJob("image, canceled", "sim/image", {"queue_s": 1, "run_s": 30}, Outcome.CANCELED),
]


@dataclass
class DemoTrail:
    """What the demo writes to a Redis it did not start, so that it can take it all back.

    Its own keys (per request id, per task id, its queue's) go at the end; keys
    any worker shares (the epoch, a model's durations) only if the demo created
    them; shared kombu tables lose only the demo worker's members, and the table
    of binding deadlines the entries the demo added.
    """

    url: str
    queue: str
    api_key: str
    request_ids: list[str] = field(default_factory=list)
    task_ids: set[str] = field(default_factory=set)
    created: list[str] = field(default_factory=list)
    deadlines_before: set[str] = field(default_factory=set)

    def _client(self) -> Any:
        from .connections import redis_client
        from .settings import get_settings

        return redis_client(self.url, get_settings(), decode_responses=True,
                            socket_timeout_s=5, connect_timeout_s=5)

    def _shared_keys(self) -> list[str]:
        from .record.keys import DURATIONS_PREFIX, EPOCH_KEY

        return [EPOCH_KEY, *sorted({DURATIONS_PREFIX + job.model for job in DEMO_JOBS})]

    def note_before(self) -> None:
        """Remember which shared keys do not exist yet (call before the worker starts)."""
        prefix, _sep, _steps, channel = self._kombu_names()
        deadlines = getattr(channel, "keyprefix_binding_deadlines", None)  # kombu >= 5.7
        client = self._client()
        try:
            self.created = [key for key in self._shared_keys() if not client.exists(key)]
            if deadlines:
                self.deadlines_before = {e for e in self._exchanges()
                                         if client.zscore(prefix + deadlines, e) is not None}
        finally:
            client.close()

    @staticmethod
    def _exchanges() -> list[str]:
        """The shared exchanges a worker binds to: remote control and its replies, events."""
        from .celery_app import app

        return [app.control.mailbox.exchange.name, app.control.mailbox.reply_exchange.name,
                str(app.conf.event_exchange)]

    def erase(self) -> int:
        """Delete what the demo wrote; returns how many keys went or shrank."""
        from .celery_app import app
        from .client import ClipiaClient
        from .record.keys import (
            CHAINS_KEY,
            DELIVERY_LOCK_PREFIX,
            PAUSE_PREFIX,
            POLL_LOCK_PREFIX,
            ChainField,
            Field,
            record_key,
        )

        client = self._client()
        try:
            ours = set(self.request_ids)
            task_ids = set(self.task_ids)
            for rid in ours:
                for name, value in client.hgetall(record_key(rid)).items():
                    if name == Field.OWNER and value:
                        task_ids.add(value)
                    task_ids.update(name[len(f):] for f in ChainField if name.startswith(f))
            chains = [m for m, _ in client.zscan_iter(CHAINS_KEY) if m.split(" ")[0] in ours]
            task_ids.update(m.split(" ", 1)[1] for m in chains if " " in m)
            api = ClipiaClient(self.api_key)  # names the per-key pause after a 429
            fingerprint = api.key_fingerprint
            api.close()
            keys = [k for rid in ours for k in (
                record_key(rid), POLL_LOCK_PREFIX + rid, DELIVERY_LOCK_PREFIX + rid)]
            keys += [app.backend.get_key_for_task(tid).decode() for tid in task_ids]
            keys += [PAUSE_PREFIX + fingerprint, *self.created, *self._kombu_keys()]
            gone = int(client.delete(*keys)) if keys else 0
            if chains:
                gone += int(client.zrem(CHAINS_KEY, *chains))
            return gone + self._erase_kombu_members(client)
        finally:
            client.close()

    def _kombu_names(self) -> tuple[str, str, list[int], Any]:
        from kombu.transport import redis as kombu_redis

        from .celery_app import app

        options = app.conf.broker_transport_options or {}
        channel = kombu_redis.Channel
        return (str(options.get("global_keyprefix", "")), str(options.get("sep", channel.sep)),
                list(options.get("priority_steps", channel.priority_steps)), channel)

    def _kombu_keys(self) -> list[str]:
        """The demo queue's own keys: its lists (one per priority) and binding tables."""
        prefix, sep, steps, channel = self._kombu_names()
        keys = [self.queue, *(f"{self.queue}{sep}{step}" for step in steps if step)]
        keys.append(channel.keyprefix_queue % self.queue)
        permanent = getattr(channel, "keyprefix_binding_permanent", None)  # kombu >= 5.7
        if permanent:
            keys.append(permanent % self.queue)
        return [prefix + key for key in keys]

    def _erase_kombu_members(self, client: Any) -> int:
        """The demo worker's bindings in the shared tables (remote control, events)."""
        prefix, sep, _steps, channel = self._kombu_names()
        exchanges = self._exchanges()
        tables = [channel.keyprefix_queue]
        permanent = getattr(channel, "keyprefix_binding_permanent", None)
        if permanent:
            tables.append(permanent)
        gone = 0
        for exchange in exchanges:
            for table in tables:
                key = prefix + table % exchange
                # A member is "routing key<sep>pattern<sep>queue"; the worker's queues
                # there are named after it (<queue>@<host>.celery.pidbox).
                mine = [m for m in client.smembers(key) if m.split(sep)[-1].startswith(self.queue)]
                if mine:
                    gone += int(client.srem(key, *mine))
        deadlines = getattr(channel, "keyprefix_binding_deadlines", None)
        if deadlines:
            # The demo's own, those it added (left, kombu's sweep would delete a table of
            # someone else's that never expired), and moot ones (their table is gone).
            added = [self.queue, *(
                e for e in exchanges if e not in self.deadlines_before
                or not client.exists(prefix + channel.keyprefix_queue % e))]
            gone += int(client.zrem(prefix + deadlines, *added))
        return gone


def _cmd_demo(args: argparse.Namespace, console: Console) -> int:
    import clipia

    from .processes import WorkerProcess, configure_process
    from .redis_server import RedisServer
    from .simulator import SimulatorServer

    # A private queue, so a production worker on the same Redis never sees demo tasks.
    queue = f"clipia-demo-{uuid.uuid4().hex[:8]}"
    api_key = "clipia_live_demo_simulator_only"
    trail: DemoTrail | None = None
    with ExitStack() as stack:
        # Only a Redis the user named: never one that merely happens to run here.
        redis_url = os.environ.get("REDIS_URL", "")
        if redis_url and not args.private_redis and _redis_answers(redis_url):
            console.print(f"Redis: using REDIS_URL ({redact_url(redis_url)}); the demo "
                          "removes what it writes there when it ends")
            trail = DemoTrail(redis_url, queue, api_key)
        else:
            server = RedisServer().start()
            stack.callback(server.stop)
            redis_url = server.url
            console.print(f"Redis: started a private {os.path.basename(server.binary)} "
                          f"on port {server.port}")
        sim = stack.enter_context(SimulatorServer(port=0))
        console.print(f"Simulator: {sim.url}")
        env = {
            "REDIS_URL": redis_url,
            "CLIPIA_BASE_URL": sim.url,
            "CLIPIA_API_KEY": api_key,
            "CLIPIA_POLL_INTERVAL": "0.5",
            "CLIPIA_POLL_MAX_INTERVAL": "2",
            "CLIPIA_POLL_TIMEOUT": "120",
            "CLIPIA_QUEUE": queue,
        }
        for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
            os.environ.pop(name, None)
        # Before anything touches the Celery app: it must route to the demo's queue.
        configure_process({k: v for k, v in env.items() if k != "CLIPIA_API_KEY"})
        if trail is not None:
            trail.note_before()
            # Registered before the worker starts, so it runs after the worker stopped.
            stack.callback(_erase_trail, trail, console)
        log_path = os.path.join(stack.enter_context(_tempdir()), "worker.log")
        console.print(f"Worker: starting celery -A clipia_tasks worker -Q {queue} ...")
        stack.enter_context(WorkerProcess(env, log_path, queue=queue))
        from .state import get_state
        from .tasks import poll_request

        sdk = clipia.Clipia(env["CLIPIA_API_KEY"], base_url=sim.url)
        from .celery_app import app

        # Task ids only: AsyncResult objects would hold pub/sub subscriptions
        # past the private Redis's lifetime.
        started: dict[str, tuple[DemoJob, str, float]] = {}
        for job in DEMO_JOBS:
            sub = sdk.submit(job.model, {"prompt": job.label, "sim": job.script})
            if trail is not None:
                trail.request_ids.append(sub.request_id)
            task_id = poll_request.delay(sub.request_id).id
            if trail is not None:
                trail.task_ids.add(task_id)
            started[sub.request_id] = (job, task_id, time.time())
        sdk.close()
        canceled = next(rid for rid, (j, _, _) in started.items() if j.expect is Outcome.CANCELED)

        outcomes: dict[str, str] = {}
        cancel_sent = False
        with Progress(
            TextColumn("{task.description:<26}"), BarColumn(), TextColumn("{task.fields[state]}"),
            TimeElapsedColumn(), console=console, transient=False,
        ) as bars:
            ids = {rid: bars.add_task(job.label, total=100, state="queued")
                   for rid, (job, _, _) in started.items()}
            deadline = time.monotonic() + 90
            while len(outcomes) < len(started) and time.monotonic() < deadline:
                if not cancel_sent and time.time() - started[canceled][2] > 2:
                    sim.simulator.set_final(canceled, "CANCELED")  # as if from the web UI
                    cancel_sent = True
                for rid, (_job, task_id, _) in started.items():
                    st = get_state(rid)
                    if st is None:
                        continue
                    task_done = app.backend.get_task_meta(task_id)["status"] in {
                        "SUCCESS", "FAILURE"}
                    if st.outcome and rid not in outcomes and task_done:
                        outcomes[rid] = st.outcome
                        bars.update(ids[rid], completed=100, state=st.outcome)
                    elif rid not in outcomes:
                        text = st.status or "queued"
                        if st.queue_position is not None:
                            text += f" (#{st.queue_position})"
                        bars.update(ids[rid], completed=st.progress or 0, state=text)
                time.sleep(0.2)

        table = Table(title="clipia-tasks demo")
        for col in ("request", "expected", "outcome", "API calls", "polls", "ended after"):
            table.add_column(col)
        ok = True
        for rid, (job, _task_id, t0) in started.items():
            outcome = outcomes.get(rid, "unfinished")
            calls = sim.simulator.calls(request_id=rid)
            st = get_state(rid)
            lag = "-"
            if st and st.finished_at:
                lag = f"{st.finished_at - t0:.1f} s"
            ok &= outcome == job.expect
            table.add_row(job.label, job.expect, outcome, str(len(calls)),
                          str(st.polls if st else 0), lag)
        console.print(table)
        console.print("All requests ended as scripted." if ok
                      else "[red]Some requests did not end as scripted.[/red]")
        console.print("Cleaning up the worker, the simulator and any private Redis ...")
    console.print("Done.")
    return EXIT_OK if ok else EXIT_FAILED


def _erase_trail(trail: DemoTrail, console: Console) -> None:
    import redis

    from .record.keys import REQUEST_PREFIX

    try:
        gone = trail.erase()
    except (redis.RedisError, OSError) as exc:
        console.print(f"[red]Could not remove the demo's keys from REDIS_URL[/red]: {exc} "
                      f"(its request ids are {', '.join(trail.request_ids) or 'none'}: keys "
                      f"{REQUEST_PREFIX}<id>; its queue is {trail.queue})")
        return
    console.print(f"Removed the demo's keys from REDIS_URL ({gone} removed or shrunk).")


@contextmanager
def _tempdir() -> Iterator[str]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="clipia-demo-") as path:
        yield path


# -- watch ---------------------------------------------------------------------


def _cmd_watch(args: argparse.Namespace, console: Console) -> int:
    from .state import get_state
    from .tasks import poll_request

    rid = _request_id("watch", args.request_id)
    res = poll_request.delay(rid)
    last = None
    with Progress(TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.fields[state]}"), TimeElapsedColumn(),
                  console=console, disable=args.json) as bars:
        bar = bars.add_task(rid, total=100, state="enqueued")
        while not res.ready():
            st = get_state(rid)
            if st is not None and (st.status, st.progress, st.queue_position) != last:
                last = (st.status, st.progress, st.queue_position)
                text = st.status or "enqueued"
                if st.queue_position is not None:
                    text += f" #{st.queue_position} in queue"
                bars.update(bar, completed=st.progress or 0, state=text)
            time.sleep(0.25)
        bars.update(bar, completed=100, state=_final_word(rid, res))
    if res.successful():
        out = res.result
        console.print_json(json.dumps(out)) if not args.json else print(json.dumps(out))
        return EXIT_OK
    error = res.result
    if args.json:
        print(json.dumps({"request_id": rid, "error": type(error).__name__, "message": str(error)}))
    else:
        console.print(f"[red]{type(error).__name__}[/red]: {error}")
    return EXIT_FAILED


def _final_word(request_id: str, res: Any) -> str:
    """How the watched request ended, in Clipia's words (COMPLETED, FAILED, ...), not Celery's."""
    from .state import get_state

    st = get_state(request_id)
    if st is not None and st.outcome:
        return str(st.outcome)
    if res.successful() and isinstance(res.result, dict) and res.result.get("status"):
        return str(res.result["status"])
    # No outcome recorded: the poll itself failed (a bad key, say); name the error.
    return f"{st.status} ({type(res.result).__name__})" if st and st.status else (
        type(res.result).__name__)


# -- status ------------------------------------------------------------------


def _cmd_status(args: argparse.Namespace, console: Console) -> int:
    from .client import ClipiaClient
    from .settings import get_settings

    rid = _request_id("status", args.request_id)
    settings = get_settings()
    client = ClipiaClient.from_settings(settings)
    try:
        snap = client.status(rid)
    finally:
        client.close()
    data = {"request_id": rid, "status": snap.status, "queue_position": snap.queue_position,
            "progress": snap.progress}
    if args.json:
        print(json.dumps(data))
    else:
        table = Table(show_header=False)
        for name, value in data.items():
            table.add_row(name, "-" if value is None else str(value))
        console.print(table)
    return EXIT_OK


# -- resume ------------------------------------------------------------------


def _cmd_resume(args: argparse.Namespace, console: Console) -> int:
    from .resume import resume

    ids = [_request_id("resume", rid) for rid in args.request_ids]
    done = resume(ids, callback_url=args.callback_url)
    if args.json:
        print(json.dumps([{"request_id": r.request_id, "action": r.action,
                           "task_id": r.result.id if r.result is not None else None}
                          for r in done]))
        return EXIT_OK
    table = Table(title="clipia-tasks resume")
    for col in ("request", "action", "task"):
        table.add_column(col)
    for r in done:
        table.add_row(r.request_id, r.action, r.result.id if r.result is not None else "-")
    console.print(table)
    return EXIT_OK


# -- doctor ------------------------------------------------------------------


class Level(StrEnum):
    """How a doctor check came out."""

    #: Nothing to do.
    OK = "ok"
    #: Works, but not as production should run (exit 0 unless ``--production``).
    WARN = "warn"
    #: Broken: the command exits 1.
    FAIL = "fail"


def _passed(ok: bool) -> Level:
    return Level.OK if ok else Level.FAIL


@dataclass
class Check:
    name: str
    level: Level
    detail: str
    fix: str = ""

    @property
    def ok(self) -> bool:
        return self.level is Level.OK

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "level": str(self.level),
                "detail": self.detail, "fix": self.fix}


def _doctor_checks(*, production: bool = False) -> list[Check]:
    """Every check, in order. ``production``: persistence off is a FAIL, not a WARN."""
    import redis

    from .celery_app import app
    from .client import ClipiaClient
    from .connections import is_sentinel, redis_client
    from .errors import AuthenticationError, RequestNotFoundError
    from .settings import get_settings

    checks: list[Check] = []
    try:
        settings = get_settings()
    except ConfigurationError as exc:
        return [Check("settings", Level.FAIL, str(exc), "fix the variable named above")]
    checks.append(Check("settings", Level.OK, "all settings parse"))
    # A Redis nobody named (REDIS_URL / CELERY_* unset: Celery's default on 6379) may be
    # someone else's: say what would be used, and leave it alone.
    named = settings.model_fields_set
    for label, url, own in (("broker", settings.broker, "broker_url"),
                            ("result backend", settings.backend, "result_backend")):
        if not named & {"redis_url", own}:
            checks.append(Check(
                f"Redis ({label})", Level.WARN,
                f"REDIS_URL is not set: workers and web processes would use the default "
                f"{redact_url(url)}; not checked (doctor connects only to a Redis you name)",
                "set REDIS_URL (for hand runs: clipia-tasks redis prints one)"))
            continue
        try:
            client = redis_client(url, settings, socket_timeout_s=2, connect_timeout_s=2)
            client.ping()
            aof = client.info("persistence").get("aof_enabled") == 1
            replicas = int(client.info("replication").get("connected_slaves") or 0)
            client.close()
            checks.append(Check(f"Redis ({label})", Level.OK, f"{redact_url(url)} answers"))
            if label == "result backend":
                off = Level.FAIL if production else Level.WARN
                checks.append(Check(
                    "Redis persistence", Level.OK if aof else off,
                    "AOF on" if aof else "appendonly is off: a restart loses requests in flight",
                    "" if aof else "appendonly yes, appendfsync everysec (docs/delivery.md); "
                    "for hand runs: clipia-tasks redis"))
            if is_sentinel(url):
                checks.append(Check(
                    f"Sentinel ({label})", _passed(replicas > 0),
                    f"master {settings.sentinel_master!r} has {replicas} replica(s)",
                    "" if replicas else "a failover needs a replica to promote: add one"))
        except (redis.RedisError, OSError, ValueError) as exc:
            checks.append(Check(f"Redis ({label})", Level.FAIL, f"{redact_url(url)}: {exc}",
                                "start Redis or fix REDIS_URL / CELERY_* URLs"))
    try:
        key = settings.require_api_key()
        checks.append(Check("API key", Level.OK, f"{key[:12]}… (format ok)"))
    except ConfigurationError as exc:
        checks.append(Check("API key", Level.FAIL, str(exc),
                            "workers need it; a web process that only enqueues does not"))
        key = ""
    if key:
        probe = str(uuid.uuid4())  # unknown id: a 404 proves the key and the API both work
        api = ClipiaClient.from_settings(settings)
        try:
            api.status(probe)
            checks.append(Check("API", Level.OK, f"{settings.base_url} answers"))
        except RequestNotFoundError:
            checks.append(Check("API", Level.OK,
                                f"{settings.base_url} answers and accepts the key"))
        except AuthenticationError:
            checks.append(Check("API", Level.FAIL, "the API rejected the key (401)",
                                "check CLIPIA_API_KEY (revoked? test vs live?)"))
        except ClipiaTasksError as exc:
            checks.append(Check("API", Level.FAIL, str(exc),
                                "check CLIPIA_BASE_URL and the network"))
        finally:
            api.close()
    if not named & {"redis_url", "broker_url"}:
        checks.append(Check("workers", Level.WARN,
                            "not checked: asking workers writes to the broker, and none "
                            "was named", "set REDIS_URL"))
        return checks
    try:
        app.conf.update(broker_url=settings.broker, result_backend=settings.backend)
        # A worker busy on two cores can take over a second to answer.
        replies = app.control.ping(timeout=2.0) or []
        names = sorted(name for reply in replies for name in reply)
        checks.append(Check("workers", _passed(bool(names)),
                            ", ".join(names) if names else "no worker answered a ping",
                            "" if names else "start one: celery -A clipia_tasks worker"))
    except Exception as exc:
        checks.append(Check("workers", Level.FAIL, f"ping failed: {exc}", "check the broker"))
    return checks


_LEVEL_MARKUP = {Level.OK: "[green]ok[/green]", Level.WARN: "[yellow]WARN[/yellow]",
                 Level.FAIL: "[red]FAIL[/red]"}


def _cmd_doctor(args: argparse.Namespace, console: Console) -> int:
    checks = _doctor_checks(production=args.production)
    if args.json:
        print(json.dumps([c.as_dict() for c in checks]))
    else:
        # Never cut: the detail (a Redis URL, say) gets half the width and folds rather
        # than ending in "…".
        table = Table(title="clipia-tasks doctor", expand=True)
        table.add_column("check", ratio=2)
        table.add_column("", no_wrap=True)
        table.add_column("detail", overflow="fold", ratio=5)
        table.add_column("what to do", overflow="fold", ratio=3)
        for c in checks:
            table.add_row(c.name, _LEVEL_MARKUP[c.level], c.detail, c.fix)
        console.print(table)
    return EXIT_FAILED if any(c.level is Level.FAIL for c in checks) else EXIT_OK


# -- redis -------------------------------------------------------------------


def _default_redis_dir() -> Path:
    """``$XDG_DATA_HOME/clipia-tasks/redis``, by default ``~/.local/share/clipia-tasks/redis``."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "clipia-tasks" / "redis"


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _cmd_redis(args: argparse.Namespace) -> int:
    """A private Redis with AOF on, in a data directory kept between runs, until Ctrl-C."""
    import fcntl

    from .redis_server import RedisServer

    console = Console(stderr=True)  # stdout carries only the export line
    directory = Path(args.dir).expanduser() if args.dir else _default_redis_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "clipia-tasks-redis.lock", "w") as lock:
        try:
            # Two servers appending to one AOF would corrupt it.
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigurationError(f"another clipia-tasks redis uses {directory}; stop it, "
                                     "or pass --dir for a second one") from None
        try:
            server = RedisServer(port=args.port or None, persistent=True, directory=directory)
            server.start()
        except RuntimeError as exc:
            console.print(f"clipia-tasks redis: {exc}")
            return EXIT_FAILED
        signal.signal(signal.SIGTERM, _raise_interrupt)  # `kill` stops it as cleanly as Ctrl-C
        try:
            console.print(f"Redis: {os.path.basename(server.binary)} on 127.0.0.1:{server.port}, "
                          f"AOF on, data in {directory}. Ctrl-C stops it.")
            print(f"export REDIS_URL={server.url}", flush=True)
            while server.running:
                time.sleep(0.2)
            console.print(f"[red]the server exited on its own[/red]; its log: "
                          f"{directory / 'server.log'}")
            return EXIT_FAILED
        except KeyboardInterrupt:
            console.print("Stopping Redis (its data stays) ...")
            return EXIT_OK
        finally:
            server.stop()


# -- entry point ---------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipia-tasks", description="Follow Clipia generations with Celery."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="run the whole thing locally: Redis, simulator, worker")
    demo.add_argument("--private-redis", action="store_true",
                      help="start a private server even if REDIS_URL answers")
    watch = sub.add_parser("watch", help="enqueue poll_request for an id and follow it live")
    watch.add_argument("request_id")
    watch.add_argument("--json", action="store_true", help="print only JSON (for scripts)")
    status = sub.add_parser("status", help="one status call for a request id, printed")
    status.add_argument("request_id")
    status.add_argument("--json", action="store_true", help="print only JSON (for scripts)")
    resume = sub.add_parser("resume", help="follow ids again after Redis lost its data "
                            "(ids that ended are left alone)")
    resume.add_argument("request_ids", nargs="+", metavar="ID")
    resume.add_argument("--callback-url", default=None)
    resume.add_argument("--json", action="store_true", help="print only JSON (for scripts)")
    doctor = sub.add_parser("doctor", help="check settings, Redis, the key, the API, workers")
    doctor.add_argument("--json", action="store_true", help="print only JSON (for scripts)")
    doctor.add_argument("--production", action="store_true",
                        help="Redis persistence off fails (exit 1) instead of warning")
    simulator = sub.add_parser("simulator", help="run the offline Clipia API simulator")
    from .simulator._server import add_arguments as add_simulator_arguments

    add_simulator_arguments(simulator)  # the options of python -m clipia_tasks.simulator
    redis_cmd = sub.add_parser("redis", help="run a private Redis with AOF on, for hand runs, "
                               "until Ctrl-C; prints export REDIS_URL=...")
    redis_cmd.add_argument("--port", type=int, default=0, help="default: a free port")
    redis_cmd.add_argument("--dir", default=None,
                           help="data directory (default ~/.local/share/clipia-tasks/redis)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(stderr=getattr(args, "json", False))
    try:
        if args.command == "simulator":
            from .simulator._server import serve

            return serve(args)
        if args.command == "demo":
            return _cmd_demo(args, console)
        if args.command == "redis":
            return _cmd_redis(args)
        if args.command == "status":
            return _cmd_status(args, console)
        if args.command == "doctor":
            return _cmd_doctor(args, console)
        if args.command == "resume":
            return _cmd_resume(args, console)
        return _cmd_watch(args, console)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except (ConfigurationError, ValueError) as exc:
        console.print(f"clipia-tasks: {exc}")
        return EXIT_USAGE
    except ClipiaTasksError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
        else:
            console.print(f"clipia-tasks: {exc}")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
