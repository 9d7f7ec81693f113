"""The clipia-tasks command as a user runs it: demo, watch, simulator + a plain worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import clipia
import httpx
import pytest

from clipia_tasks import poll_request
from clipia_tasks.redis_server import free_port
from tests.conftest import ROOT, TEST_KEY, Worker, wait_for

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-m", "clipia_tasks.cli"]


def _processes() -> set[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return {line.strip() for line in out.splitlines()
            if "clipia-demo-" in line or ("redis-server" in line and "clipia" in line)}


def test_demo_runs_everything_itself_and_cleans_up(tmp_path: Path) -> None:
    # Given a machine with no REDIS_URL set (this one runs a Redis on 6379: not ours)
    env = dict(os.environ)
    for name in ("REDIS_URL", "CLIPIA_API_KEY", "CLIPIA_KEY", "CLIPIA_BASE_URL",
                 "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "CLIPIA_QUEUE"):
        env.pop(name, None)
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
    time.sleep(0.5)
    assert _processes() - before == set()


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
    assert run.returncode == 2 and "not a Clipia request id" in run.stdout + run.stderr


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
