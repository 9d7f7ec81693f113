"""The Procfile, run as written with honcho: a worker that completes requests, and Flower."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from clipia_tasks import poll_request
from clipia_tasks.redis_server import free_port
from tests.conftest import ROOT, TEST_KEY, wait_for

pytestmark = pytest.mark.integration


def test_honcho_start_runs_the_worker_and_flower(
    simulator: Any, celery_env: dict[str, str], tmp_path: Path
) -> None:
    honcho = shutil.which("honcho", path=str(Path(sys.executable).parent))
    assert honcho, "honcho is in the dev extra"
    port = free_port()
    env = {**os.environ, **celery_env, "CLIPIA_QUEUE": "procfile", "FLOWER_PORT": str(port),
           "CLIPIA_WORKER_CONCURRENCY": "2", "FLOWER_BASIC_AUTH": "ops:s3cret",
           "CLIPIA_BEAT_SCHEDULE": str(tmp_path / "beat-schedule"),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    log = open(tmp_path / "honcho.log", "wb")
    proc = subprocess.Popen([honcho, "-f", str(ROOT / "Procfile"), "start"], cwd=tmp_path,
                            env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        rid = simulator.simulator.create({"run_s": 0.5})
        result = poll_request.apply_async((rid,), queue="procfile").get(timeout=60)
        assert result["status"] == "COMPLETED"
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthcheck").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        assert httpx.get(f"{base}/api/workers").status_code == 401
        workers = httpx.get(f"{base}/api/workers", auth=("ops", "s3cret"), timeout=10)
        assert workers.status_code == 200
        # beat sends the sweep (every CLIPIA_SWEEP_INTERVAL = 1 s here)
        wait_for(lambda: b"Sending due task clipia-tasks-sweep" in
                 (tmp_path / "honcho.log").read_bytes(), timeout_s=20)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    text = (tmp_path / "honcho.log").read_text(errors="replace")
    assert "worker.1" in text and "flower.1" in text and "beat.1" in text
    assert "Sending due task clipia-tasks-sweep" in text
    assert TEST_KEY not in text
