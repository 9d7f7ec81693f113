"""The ``clipia-tasks`` command: ``demo``, ``watch``, ``status``, ``resume``, ``doctor``,
``simulator``.

Exit codes: 0 success (the watched request COMPLETED; the status call answered;
every doctor check passed; the demo ran as scripted), 1 the watched request
failed / was canceled / timed out, the status call failed, a doctor check
failed, or the demo saw an unexpected outcome, 2 bad usage or configuration,
130 interrupted. ``--json`` prints one JSON document on stdout (progress and
messages go to stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
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


def _cmd_demo(args: argparse.Namespace, console: Console) -> int:
    import clipia

    from .processes import WorkerProcess, configure_process
    from .redis_server import RedisServer
    from .simulator import SimulatorServer

    with ExitStack() as stack:
        # Only a Redis the user named: never one that merely happens to run here.
        redis_url = os.environ.get("REDIS_URL", "")
        if redis_url and not args.private_redis and _redis_answers(redis_url):
            console.print(f"Redis: using REDIS_URL ({redact_url(redis_url)})")
        else:
            server = RedisServer().start()
            stack.callback(server.stop)
            redis_url = server.url
            console.print(f"Redis: started a private {os.path.basename(server.binary)} "
                          f"on port {server.port}")
        sim = stack.enter_context(SimulatorServer(port=0))
        console.print(f"Simulator: {sim.url}")
        # A private queue, so a production worker on the same Redis never sees demo tasks.
        queue = f"clipia-demo-{uuid.uuid4().hex[:8]}"
        env = {
            "REDIS_URL": redis_url,
            "CLIPIA_BASE_URL": sim.url,
            "CLIPIA_API_KEY": "clipia_live_demo_simulator_only",
            "CLIPIA_POLL_INTERVAL": "0.5",
            "CLIPIA_POLL_MAX_INTERVAL": "2",
            "CLIPIA_POLL_TIMEOUT": "120",
            "CLIPIA_QUEUE": queue,
        }
        for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
            os.environ.pop(name, None)
        log_path = os.path.join(stack.enter_context(_tempdir()), "worker.log")
        console.print("Worker: starting celery -A clipia_tasks worker ...")
        stack.enter_context(WorkerProcess(env, log_path, queue=queue))
        configure_process({k: v for k, v in env.items() if k != "CLIPIA_API_KEY"})
        from .state import get_state
        from .tasks import poll_request

        sdk = clipia.Clipia(env["CLIPIA_API_KEY"], base_url=sim.url)
        from .celery_app import app

        # Task ids only: AsyncResult objects would hold pub/sub subscriptions
        # past the private Redis's lifetime.
        started: dict[str, tuple[DemoJob, str, float]] = {}
        for job in DEMO_JOBS:
            sub = sdk.submit(job.model, {"prompt": job.label, "sim": job.script})
            started[sub.request_id] = (job, poll_request.delay(sub.request_id).id, time.time())
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


@contextmanager
def _tempdir() -> Iterator[str]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="clipia-demo-") as path:
        yield path


# -- watch ---------------------------------------------------------------------


def _cmd_watch(args: argparse.Namespace, console: Console) -> int:
    from .nouns import check_request_id
    from .state import get_state
    from .tasks import poll_request

    rid = check_request_id(args.request_id)
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
        bars.update(bar, completed=100, state=res.state)
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


# -- status ------------------------------------------------------------------


def _cmd_status(args: argparse.Namespace, console: Console) -> int:
    from .client import ClipiaClient
    from .nouns import check_request_id
    from .settings import get_settings

    rid = check_request_id(args.request_id)
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

    done = resume(args.request_ids, callback_url=args.callback_url)
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


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _doctor_checks() -> list[Check]:
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
        return [Check("settings", False, str(exc), "fix the variable named above")]
    checks.append(Check("settings", True, "all settings parse"))
    for label, url in (("broker", settings.broker), ("result backend", settings.backend)):
        try:
            client = redis_client(url, settings, socket_timeout_s=2, connect_timeout_s=2)
            client.ping()
            aof = client.info("persistence").get("aof_enabled") == 1
            replicas = int(client.info("replication").get("connected_slaves") or 0)
            client.close()
            checks.append(Check(f"Redis ({label})", True, f"{redact_url(url)} answers"))
            if label == "result backend":
                checks.append(Check(
                    "Redis persistence", aof,
                    "AOF on" if aof else "appendonly is off: a restart loses requests in flight",
                    "" if aof else "appendonly yes, appendfsync everysec (docs/delivery.md)"))
            if is_sentinel(url):
                checks.append(Check(
                    f"Sentinel ({label})", replicas > 0,
                    f"master {settings.sentinel_master!r} has {replicas} replica(s)",
                    "" if replicas else "a failover needs a replica to promote: add one"))
        except (redis.RedisError, OSError, ValueError) as exc:
            checks.append(Check(f"Redis ({label})", False, f"{redact_url(url)}: {exc}",
                                "start Redis or fix REDIS_URL / CELERY_* URLs"))
    try:
        key = settings.require_api_key()
        checks.append(Check("API key", True, f"{key[:12]}… (format ok)"))
    except ConfigurationError as exc:
        checks.append(Check("API key", False, str(exc),
                            "workers need it; a web process that only enqueues does not"))
        key = ""
    if key:
        probe = str(uuid.uuid4())  # unknown id: a 404 proves the key and the API both work
        api = ClipiaClient.from_settings(settings)
        try:
            api.status(probe)
            checks.append(Check("API", True, f"{settings.base_url} answers"))
        except RequestNotFoundError:
            checks.append(Check("API", True, f"{settings.base_url} answers and accepts the key"))
        except AuthenticationError:
            checks.append(Check("API", False, "the API rejected the key (401)",
                                "check CLIPIA_API_KEY (revoked? test vs live?)"))
        except ClipiaTasksError as exc:
            checks.append(Check("API", False, str(exc), "check CLIPIA_BASE_URL and the network"))
        finally:
            api.close()
    try:
        app.conf.update(broker_url=settings.broker, result_backend=settings.backend)
        # A worker busy on two cores can take over a second to answer.
        replies = app.control.ping(timeout=2.0) or []
        names = sorted(name for reply in replies for name in reply)
        checks.append(Check("workers", bool(names),
                            ", ".join(names) if names else "no worker answered a ping",
                            "" if names else "start one: celery -A clipia_tasks worker"))
    except Exception as exc:
        checks.append(Check("workers", False, f"ping failed: {exc}", "check the broker"))
    return checks


def _cmd_doctor(args: argparse.Namespace, console: Console) -> int:
    checks = _doctor_checks()
    if args.json:
        print(json.dumps([vars(c) for c in checks]))
    else:
        table = Table(title="clipia-tasks doctor")
        for col in ("check", "", "detail", "what to do"):
            table.add_column(col)
        for c in checks:
            table.add_row(c.name, "[green]ok[/green]" if c.ok else "[red]FAIL[/red]", c.detail,
                          c.fix)
        console.print(table)
    return EXIT_OK if all(c.ok for c in checks) else EXIT_FAILED


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
    simulator = sub.add_parser("simulator", help="run the offline Clipia API simulator")
    simulator.add_argument("--host", default="127.0.0.1")
    simulator.add_argument("--port", type=int, default=8787)
    simulator.add_argument("--api-key", action="append", default=None)
    simulator.add_argument("--webhook-secret", default=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(stderr=getattr(args, "json", False))
    try:
        if args.command == "simulator":
            from .simulator import main as sim_main

            sim_argv = ["--host", args.host, "--port", str(args.port)]
            for key in args.api_key or []:
                sim_argv += ["--api-key", key]
            if args.webhook_secret:
                sim_argv += ["--webhook-secret", args.webhook_secret]
            return sim_main(sim_argv)
        if args.command == "demo":
            return _cmd_demo(args, console)
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
