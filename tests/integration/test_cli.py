"""The clipia-tasks command as a user runs it: demo, watch, simulator + a plain worker."""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import clipia
import httpx
import pytest
import redis

from clipia_tasks import poll_request
from clipia_tasks.redis_server import RedisServer, free_port
from tests.conftest import ROOT, TEST_KEY, Worker, wait_for

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-m", "clipia_tasks.cli"]


def _processes() -> set[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return {line.strip() for line in out.splitlines()
            if "clipia-demo-" in line or ("redis-server" in line and "clipia" in line)}


def _demo_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("REDIS_URL", "CLIPIA_API_KEY", "CLIPIA_KEY", "CLIPIA_BASE_URL",
                 "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "CLIPIA_QUEUE"):
        env.pop(name, None)
    return env


def _record_connects(directory: Path, log: Path, env: dict[str, str]) -> None:
    """A sitecustomize on PYTHONPATH: every Python process of the run (the demo, its
    worker and the worker's children inherit PYTHONPATH) appends each socket.connect."""
    (directory / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import os, socket, sys

        def _record(event, args):
            if event == "socket.connect":
                sock, address = args
                with open({str(log)!r}, "a") as out:
                    out.write(repr((os.getpid(), int(sock.family), int(sock.type),
                                    address)) + "\\n")

        sys.addaudithook(_record)
    """))
    env["PYTHONPATH"] = os.pathsep.join(
        [str(directory), *filter(None, [env.get("PYTHONPATH", "")])])


def _port(pattern: str, text: str) -> int:
    found = re.search(pattern, text)
    assert found, text
    return int(found[1])


def test_demo_runs_everything_itself_touches_no_other_redis_and_cleans_up(
    tmp_path: Path,
) -> None:
    # Given a machine with no REDIS_URL set (this one runs a Redis on 6379: not ours),
    # and every Python process of the demo recording where it connects
    env = _demo_env()
    hooks, log = tmp_path / "hooks", tmp_path / "connects.log"
    hooks.mkdir()
    _record_connects(hooks, log, env)
    before = _processes()
    # When the demo runs
    run = subprocess.run([*CLI, "demo"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    # Then it started its own Redis, every scripted outcome happened, and nothing is left over
    assert run.returncode == 0, run.stdout + run.stderr
    assert "started a private" in run.stdout
    assert "All requests ended as scripted." in run.stdout
    for outcome in ("COMPLETED", "FAILED", "CANCELED"):
        assert outcome in run.stdout
    assert "Traceback" not in run.stdout + run.stderr
    assert "Error in sitecustomize" not in run.stdout + run.stderr
    time.sleep(0.5)
    assert _processes() - before == set()
    # And its processes made TCP connections to its own Redis and simulator only
    redis_port = _port(r"started a private \S+ on port (\d+)", run.stdout)
    sim_port = _port(r"Simulator: http://127\.0\.0\.1:(\d+)", run.stdout)
    connects = [ast.literal_eval(line) for line in log.read_text().splitlines()]
    tcp = [(pid, address) for pid, family, kind, address in connects
           if family in (socket.AF_INET, socket.AF_INET6) and kind == socket.SOCK_STREAM]
    assert {address[:2] for _, address in tcp} == {("127.0.0.1", redis_port),
                                                   ("127.0.0.1", sim_port)}, tcp
    assert len({pid for pid, _ in tcp}) >= 2  # the worker's connections were recorded too


def test_demo_on_redis_url_removes_what_it_wrote_and_nothing_else(tmp_path: Path) -> None:
    # Given REDIS_URL naming a Redis that holds someone else's data
    server = RedisServer().start()
    try:
        theirs = server.client(decode_responses=True)
        rid, tid = "0b0e3b5e-4a0c-4f49-9d63-4b1a8e1c9f00", "1f4e5a9d-3c2b-4e1f-8a7d-2b9c6e0f1a11"
        theirs.set("clipia:epoch", "their-epoch")
        theirs.hset(f"clipia:request:{rid}", mapping={"status": "IN_PROGRESS"})
        theirs.zadd("clipia:index:chains", {f"{rid} {tid}": 1.0})
        theirs.set(f"celery-task-meta-{tid}", "{}")
        theirs.sadd("_kombu.binding.celery.pidbox", "\x06\x16\x06\x16prod@host.celery.pidbox")
        theirs.lpush("celery", "a message of theirs")
        keys_before = set(theirs.scan_iter())
        env = {**_demo_env(), "REDIS_URL": server.url}
        # When the demo runs there (its generations shortened but for the one it cancels)
        quick = textwrap.dedent("""
            import dataclasses, sys
            from clipia_tasks import cli
            cli.DEMO_JOBS[:] = [j if j.expect == "CANCELED" else dataclasses.replace(
                j, script={**j.script, "run_s": 1, "queue_s": 0}) for j in cli.DEMO_JOBS]
            sys.exit(cli.main(["demo"]))
        """)
        run = subprocess.run([sys.executable, "-c", quick], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
        # Then it used that Redis, everything ended as scripted, and only their keys are left,
        # as they were
        assert run.returncode == 0, run.stdout + run.stderr
        assert "using REDIS_URL" in run.stdout and "Removed the demo's keys" in run.stdout
        assert set(theirs.scan_iter()) == keys_before
        assert theirs.get("clipia:epoch") == "their-epoch"
        assert theirs.zrange("clipia:index:chains", 0, -1) == [f"{rid} {tid}"]
        assert theirs.smembers("_kombu.binding.celery.pidbox") == {
            "\x06\x16\x06\x16prod@host.celery.pidbox"}
        assert theirs.lrange("celery", 0, -1) == ["a message of theirs"]
        theirs.close()
    finally:
        server.stop()


def test_redis_runs_a_persistent_private_server_until_ctrl_c(tmp_path: Path) -> None:
    def start() -> tuple[subprocess.Popen[str], str]:
        # Its own process group, so a failure can stop the redis-server it started too.
        proc = subprocess.Popen([*CLI, "redis", "--dir", str(tmp_path / "data")], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("export REDIS_URL=redis://127.0.0.1:"), (
            line + (proc.stderr.read() if proc.stderr else ""))
        return proc, line.removeprefix("export REDIS_URL=")

    # Given `clipia-tasks redis` running
    proc, url = start()
    try:
        # When a key is written to the URL it printed
        client = redis.Redis.from_url(url, decode_responses=True)
        client.set("hand-run", "kept")
        # Then it answers, with AOF on
        assert client.get("hand-run") == "kept"
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        client.close()
        # And Ctrl-C stops it cleanly
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        with pytest.raises(redis.ConnectionError):
            redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
    finally:
        kill_group(proc)
    # And a second run on the same directory still has the key
    proc, url = start()
    try:
        client = redis.Redis.from_url(url, decode_responses=True)
        assert client.get("hand-run") == "kept"
        client.close()
        proc.terminate()  # `kill` stops it as cleanly as Ctrl-C
        assert proc.wait(timeout=15) == 0
    finally:
        kill_group(proc)


def kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGKILL a process started with ``start_new_session`` and whatever it started."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_a_plain_worker_against_the_cli_simulator_completes_a_5_s_generation(
    celery_env: dict[str, str], worker_logs: Path
) -> None:
    port = free_port()
    sim = subprocess.Popen([*CLI, "simulator", "--port", str(port)], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    worker = None
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{url}/_sim/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        worker = Worker({**celery_env, "CLIPIA_BASE_URL": url}, worker_logs, queue="cli",
                        name="cli", extra_env={"CLIPIA_QUEUE": "cli"}).start()
        sdk = clipia.Clipia(TEST_KEY, base_url=url)
        job = sdk.submit("sim/video", {"prompt": "a cat", "sim": {"run_s": 5, "media": "video"}})
        started = time.monotonic()
        result = poll_request.apply_async((job.request_id,), queue="cli").get(timeout=60)
        assert result["status"] == "COMPLETED" and result["request_id"] == job.request_id
        assert result["output"]["video"]["url"]
        assert time.monotonic() - started >= 4.5
    finally:
        if worker:
            worker.stop()
        sim.terminate()
        sim.wait(timeout=10)


def test_watch_follows_a_request_and_prints_json(simulator: Any, worker: Worker,
                                                 celery_env: dict[str, str]) -> None:
    ok = simulator.simulator.create({"run_s": 1})
    failed = simulator.simulator.create({"run_s": 0.5, "final": "FAILED"})
    env = {**os.environ, **{k: v for k, v in celery_env.items() if k != "CLIPIA_API_KEY"}}
    run = subprocess.run([*CLI, "watch", ok, "--json"], env=env, capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["status"] == "COMPLETED"
    run = subprocess.run([*CLI, "watch", failed, "--json"], env=env, capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert run.returncode == 1
    assert json.loads(run.stdout)["error"] == "RequestFailedError"
    run = subprocess.run([*CLI, "watch", "nope"], env=env, capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert run.returncode == 2 and "watch: 'nope' is not a Clipia request id" in run.stdout
    # Without --json the bar ends on Clipia's word for the outcome, not Celery's
    again = simulator.simulator.create({"run_s": 0.5})
    run = subprocess.run([*CLI, "watch", again], env=env, capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert any(again in line and "COMPLETED" in line for line in run.stdout.splitlines())
    assert "SUCCESS" not in run.stdout


def test_resume_follows_unknown_ids_and_leaves_ended_ones(
    simulator: Any, worker: Worker, celery_env: dict[str, str]
) -> None:
    from clipia_tasks import get_state, poll_request

    ended = simulator.simulator.create({"run_s": 0.2})
    poll_request.delay(ended).get(timeout=30)
    unknown = simulator.simulator.create({"run_s": 0.5})  # never enqueued: Redis has no record
    env = {**os.environ, **{k: v for k, v in celery_env.items() if k != "CLIPIA_API_KEY"}}
    run = subprocess.run([*CLI, "resume", unknown, ended, "--json"], env=env,
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    rows = {r["request_id"]: r for r in json.loads(run.stdout)}
    assert rows[unknown]["action"] == "resumed" and rows[unknown]["task_id"]
    assert rows[ended] == {"request_id": ended, "action": "already_ended", "task_id": None}
    wait_for(lambda: (s := get_state(unknown)) is not None and s.outcome == "COMPLETED", 30)
    bad = subprocess.run([*CLI, "resume", "nope"], env=env, capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert bad.returncode == 2 and "not a Clipia request id" in bad.stdout + bad.stderr
    down = {**env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    run = subprocess.run([*CLI, "resume", unknown], env=down, capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert run.returncode == 1 and "cannot reach Redis" in run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr


def test_status_and_doctor_report_in_json(simulator: Any, worker: Worker,
                                          celery_env: dict[str, str]) -> None:
    rid = simulator.simulator.create({"queue_s": 30, "run_s": 1})
    env = {**os.environ, **celery_env}
    run = subprocess.run([*CLI, "status", rid, "--json"], env=env, capture_output=True,
                         text=True, timeout=30, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert data["status"] == "IN_QUEUE" and isinstance(data["queue_position"], int)
    unknown = subprocess.run([*CLI, "status", "764cabcf-b745-4b3e-ae38-1200304cf45b", "--json"],
                             env=env, capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert unknown.returncode == 1
    assert json.loads(unknown.stdout)["error"] == "RequestNotFoundError"
    # A malformed id is the command's usage error, not the task's
    bad_id = subprocess.run([*CLI, "status", "nope"], env=env, capture_output=True, text=True,
                            timeout=30, cwd=ROOT)
    assert bad_id.returncode == 2
    assert "status: 'nope' is not a Clipia request id" in bad_id.stdout
    assert "poll_request" not in bad_id.stdout + bad_id.stderr
    # doctor: everything is up (the session worker answers the ping)
    run = subprocess.run([*CLI, "doctor", "--json"], env=env, capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    checks = {c["name"]: c for c in json.loads(run.stdout)}
    assert run.returncode == 0, checks
    assert checks["API"]["ok"] and checks["workers"]["ok"] and checks["Redis persistence"]["ok"]
    assert TEST_KEY not in run.stdout
    # doctor with a bad key and Redis down says what to fix, exit 1
    bad = {**env, "CLIPIA_API_KEY": "sk-wrong", "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    run = subprocess.run([*CLI, "doctor", "--json"], env=bad, capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    checks = {c["name"]: c for c in json.loads(run.stdout)}
    assert run.returncode == 1
    assert not checks["API key"]["ok"] and not checks["Redis (broker)"]["ok"]
    assert checks["Redis (broker)"]["fix"]


def test_doctor_without_redis_url_says_so_and_connects_to_no_redis(
    simulator: Any, tmp_path: Path
) -> None:
    # Given no REDIS_URL (this machine runs a Redis on 6379: not ours), a key and the API
    env = {**_demo_env(), "CLIPIA_API_KEY": "clipia_live_doctor_test",
           "CLIPIA_BASE_URL": simulator.url}
    hooks, log = tmp_path / "hooks", tmp_path / "connects.log"
    hooks.mkdir()
    _record_connects(hooks, log, env)
    # When doctor runs
    run = subprocess.run([*CLI, "doctor", "--json"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    # Then it names the default it would use, warns, and checks the API only
    checks = {c["name"]: c for c in json.loads(run.stdout)}
    assert run.returncode == 0, checks
    for name in ("Redis (broker)", "Redis (result backend)", "workers"):
        assert checks[name]["level"] == "warn" and "not checked" in checks[name]["detail"]
    assert "redis://localhost:6379/0" in checks["Redis (broker)"]["detail"]
    assert checks["API"]["level"] == "ok"
    # and its only TCP connection was to the simulator
    connects = [ast.literal_eval(line) for line in log.read_text().splitlines()]
    tcp = {address[:2] for _, family, kind, address in connects
           if family in (socket.AF_INET, socket.AF_INET6) and kind == socket.SOCK_STREAM}
    assert tcp == {("127.0.0.1", int(simulator.url.rsplit(":", 1)[1]))}, tcp


def test_doctor_warns_on_redis_without_persistence_and_fails_with_production(
    simulator: Any, worker: Worker, celery_env: dict[str, str], own_redis_factory: Any
) -> None:
    # Given a result backend without AOF (the broker, with the session's worker, is fine)
    volatile = own_redis_factory(persistent=False)
    env = {**os.environ, **celery_env, "CELERY_RESULT_BACKEND": volatile.url}
    # When doctor runs
    run = subprocess.run([*CLI, "doctor", "--json"], env=env, capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    # Then persistence is a warning, and a warning alone exits 0
    checks = {c["name"]: c for c in json.loads(run.stdout)}
    assert run.returncode == 0, checks
    assert checks["Redis persistence"]["level"] == "warn"
    assert not checks["Redis persistence"]["ok"]
    assert "clipia-tasks redis" in checks["Redis persistence"]["fix"]
    assert {c["level"] for n, c in checks.items() if n != "Redis persistence"} == {"ok"}
    # When doctor runs with --production, then the same is a failure, exit 1
    run = subprocess.run([*CLI, "doctor", "--json", "--production"], env=env,
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    checks = {c["name"]: c for c in json.loads(run.stdout)}
    assert run.returncode == 1
    assert checks["Redis persistence"]["level"] == "fail"
    # And the table shows each Redis URL in full, password redacted, in a narrow terminal too
    secret = {**env, "CELERY_RESULT_BACKEND": volatile.url.replace(
        "redis://", "redis://:a-long-password-for-doctor@")}
    run = subprocess.run([*CLI, "doctor"], env={**secret, "COLUMNS": "80"},
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert f"redis://:***@127.0.0.1:{volatile.port}/0" in run.stdout, run.stdout
    assert celery_env["REDIS_URL"] in run.stdout, run.stdout
    assert "a-long-password-for-doctor" not in run.stdout
    # And bad usage exits 2
    bad = subprocess.run([*CLI, "doctor", "--nope"], env=env, capture_output=True, text=True,
                         timeout=30, cwd=ROOT)
    assert bad.returncode == 2
