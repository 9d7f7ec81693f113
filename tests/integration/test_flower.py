"""Flower against a real worker: what an operator sees of ``poll_request``.

Flower builds its view from task events (it never reads the result backend), so
it is started before any task runs. Three requests go through a dedicated
worker: one that completes, one long one watched while it runs, one that the
API finishes as FAILED. Flower's HTTP API must show each with the request id
in its arguments, the long one waiting (RETRY or RECEIVED) with the poller's
note as its exception (``IN_PROGRESS 42 %, next poll in 3.1 s``) and no
traceback, the failed one as FAILURE with the API's error code, and never the
API key. A threads-pool worker polling every 3 s shows what a task waiting out
a countdown looks like; beat's sweep never shows up. An opt-in test renders the
tasks page in headless Chromium and saves a screenshot (``CLIPIA_SCREENSHOTS=1``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from clipia_tasks import poll_request
from clipia_tasks.celery_app import POLL_TASK_NAME, SWEEP_TASK_NAME
from clipia_tasks.redis_server import free_port
from tests.conftest import ROOT, TEST_KEY, Beat, Worker, wait_for

pytestmark = pytest.mark.integration

QUEUE = "flower"
#: Tasks page columns that show the request id (args) and the poller's note or the
#: API's error (exception). Flower's default (name,uuid,state,received,runtime,worker)
#: shows neither; docs/monitoring.md gives the same list.
TASKS_COLUMNS = "name,state,args,exception,retries,received,runtime,worker,uuid"
#: ``IN_PROGRESS 42 %, next poll in 3.1 s``: the exception of a waiting poll, nothing else.
NOTE = re.compile(r"IN_PROGRESS (\d+) %, next poll in \d+(\.\d+)? s")
#: ``IN_QUEUE #3 in queue, next poll in 1.5 s``: the note while queued.
QUEUED_NOTE = re.compile(r"IN_QUEUE #\d+ in queue, next poll in \d+(\.\d+)? s")
#: The states of a task waiting out its countdown (docs/monitoring.md says why both).
WAITING = ("RETRY", "RECEIVED")


@dataclass
class FlowerRun:
    base: str
    worker: Worker
    log_path: Path

    def get(self, path: str, **params: Any) -> httpx.Response:
        return httpx.get(f"{self.base}{path}", params=params, timeout=10)

    def tasks(self, queue: str = QUEUE) -> dict[str, dict[str, Any]]:
        """``poll_request`` tasks sent to ``queue`` (Flower sees the whole broker)."""
        response = self.get("/api/tasks", taskname=POLL_TASK_NAME)
        response.raise_for_status()
        data: dict[str, dict[str, Any]] = response.json()
        return {k: t for k, t in data.items() if t.get("routing_key") == queue}

    def task_for(self, request_id: str, queue: str = QUEUE) -> dict[str, Any] | None:
        """Flower's entry for the chain polling ``request_id`` (its retries keep one task id)."""
        found = [t for t in self.tasks(queue).values() if request_id in (t.get("args") or "")]
        assert len(found) <= 1, f"several tasks for {request_id}: {found}"
        return found[0] if found else None

    def wait_state(self, request_id: str, state: str, timeout_s: float = 30) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            task = self.task_for(request_id)
            return task if task and task["state"] == state else None

        try:
            return wait_for(reached, timeout_s=timeout_s, interval_s=0.1)  # type: ignore[no-any-return]
        except AssertionError:
            raise AssertionError(
                f"Flower never showed {request_id} as {state}; last: {self.task_for(request_id)}"
            ) from None


def _stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _flower_env(celery_env: dict[str, str], **flower_vars: str) -> dict[str, str]:
    # No inherited FLOWER_* setting (e.g. a developer's FLOWER_BASIC_AUTH) changes the run.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    return env | celery_env | flower_vars | {"PYTHONUNBUFFERED": "1"}


def _start_flower(env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "clipia_tasks", "flower", f"--port={port}",
             "--address=127.0.0.1", f"--tasks_columns={TASKS_COLUMNS}"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"flower exited at start:\n{log_path.read_text()[-3000:]}")
        try:
            return httpx.get(f"{base}/healthcheck", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(healthy, timeout_s=30, interval_s=0.2)
    except BaseException:
        _stop(proc)
        raise
    return proc, base


@pytest.fixture(scope="module")
def flower(celery_env: dict[str, str], worker_logs: Path) -> Iterator[FlowerRun]:
    log_path = worker_logs / "flower.log"
    # Flower first: it only knows what it saw happen.
    proc, base = _start_flower(
        _flower_env(celery_env, FLOWER_UNAUTHENTICATED_API="true"), log_path)
    worker = Worker(celery_env, worker_logs, queue=QUEUE, name="flower",
                    extra_env={"CLIPIA_QUEUE": QUEUE})
    try:
        worker.start()
        yield FlowerRun(base, worker, log_path)
    finally:
        worker.stop()
        _stop(proc)


@pytest.fixture(scope="module")
def runs(flower: FlowerRun, simulator: Any) -> dict[str, str]:
    """Three requests sent at once to the Flower-watched worker; their request ids."""
    sim = simulator.simulator
    rids = {
        "done": sim.create({"run_s": 1.0}),
        "long": sim.create({"queue_s": 2.0, "run_s": 8.0, "progress": "linear"}),
        "failed": sim.create({"run_s": 0.5, "final": "FAILED", "error_code": "nsfw_detected",
                              "error_message": "Blocked by the safety filter"}),
    }
    for rid in rids.values():
        poll_request.apply_async((rid,), queue=QUEUE)
    return rids


def test_a_waiting_poll_shows_its_progress_note_and_no_traceback(
    flower: FlowerRun, runs: dict[str, str]
) -> None:
    rid = runs["long"]
    notes: list[str] = []
    queued: list[str] = []

    def progressed() -> bool:
        task = flower.task_for(rid)
        assert task is None or task["state"] != "FAILURE", task
        if task and task["state"] in WAITING and task["exception"]:
            # A planned retry: the note alone, no traceback (nothing failed).
            assert task.get("traceback") is None, task
            if NOTE.fullmatch(task["exception"]):
                notes.append(task["exception"])
            if QUEUED_NOTE.fullmatch(task["exception"]):
                queued.append(task["exception"])
        percents = {int(NOTE.search(n).group(1)) for n in notes}  # type: ignore[union-attr]
        return len(percents) >= 2  # seen it move, early in an 8 s run

    wait_for(progressed, timeout_s=30, interval_s=0.2)
    print("notes Flower showed:", *dict.fromkeys(queued + notes), sep="\n  ")
    assert queued, "never saw the IN_QUEUE note in the 2 s the request was queued"
    percents = [int(NOTE.search(n).group(1)) for n in notes]  # type: ignore[union-attr]
    assert percents == sorted(percents) and percents[-1] < 100, percents
    task = flower.task_for(rid)
    assert task is not None and task["args"] == repr([rid]) and task["retries"] >= 1

    done = flower.wait_state(rid, "SUCCESS", timeout_s=30)
    assert "'status': 'COMPLETED'" in done["result"]


#: The countdown worker's queue: ``-P threads``, one poll every 3 s (``fixed`` policy).
COUNTDOWN_QUEUE = "flower-countdown"


def test_a_task_waiting_out_a_countdown(
    flower: FlowerRun, celery_env: dict[str, str], worker_logs: Path, simulator: Any
) -> None:
    """What a request between two polls 3 s apart looks like, in a threads-pool worker.

    In that pool Celery's own event read ``Retry(Retry(...), PollPending('...'), 2.99)``
    with a traceback: the reported issue.
    """
    worker = Worker(celery_env, worker_logs, queue=COUNTDOWN_QUEUE, name="flower-countdown",
                    extra_env={"CLIPIA_QUEUE": COUNTDOWN_QUEUE, "CLIPIA_POLL_POLICY": "fixed",
                               "CLIPIA_POLL_INTERVAL": "3", "CLIPIA_POLL_MAX_INTERVAL": "3"})
    worker.start_args = ["-P", "threads"]
    worker.start()
    rid = simulator.simulator.create({"run_s": 30.0, "progress": "linear"})
    try:
        poll_request.apply_async((rid,), queue=COUNTDOWN_QUEUE)

        # Given the first poll found the request running
        def polled() -> dict[str, Any] | None:
            task = flower.task_for(rid, COUNTDOWN_QUEUE)
            return task if task and NOTE.fullmatch(task.get("exception") or "") else None

        wait_for(polled, timeout_s=10, interval_s=0.05)
        # When Flower is read during most of the 3 s countdown
        seen = []
        for _ in range(8):
            time.sleep(0.25)
            seen.append(flower.task_for(rid, COUNTDOWN_QUEUE) or {})
    finally:
        simulator.simulator.set_final(rid, "COMPLETED")
        worker.stop()
    # Then it is RETRY or RECEIVED all along, with the note and no traceback
    print("states while waiting:", [t.get("state") for t in seen])
    for task in seen:
        assert task["state"] in WAITING, task
        assert NOTE.fullmatch(task["exception"]), task
        assert task.get("traceback") is None, task
        assert task["retries"] >= 1 and task["args"] == repr([rid])


def test_the_sweep_sends_no_task_events(
    flower: FlowerRun, celery_env: dict[str, str], worker_logs: Path
) -> None:
    # Given beat sending the sweep every second to the Flower-watched worker
    beat = Beat({**celery_env, "CLIPIA_QUEUE": QUEUE}, worker_logs)
    beat.start()
    try:
        def swept_twice() -> bool:
            runs = re.findall(rf"Task {re.escape(SWEEP_TASK_NAME)}\[[\w-]+\] succeeded",
                              flower.worker.log())
            return len(runs) >= 2

        wait_for(swept_twice, timeout_s=15, interval_s=0.2)
    finally:
        beat.stop()
    # Then Flower never saw it: no row, no event counted
    assert flower.get("/api/tasks", taskname=SWEEP_TASK_NAME).json() == {}
    assert f'task="{SWEEP_TASK_NAME}"' not in flower.get("/metrics").text
    assert POLL_TASK_NAME in flower.get("/metrics").text  # while events do flow


def test_completed_and_failed_requests(flower: FlowerRun, runs: dict[str, str]) -> None:
    done = flower.wait_state(runs["done"], "SUCCESS")
    assert done["args"] == repr([runs["done"]])
    assert f"'request_id': '{runs['done']}'" in done["result"]
    assert "'status': 'COMPLETED'" in done["result"]

    failed = flower.wait_state(runs["failed"], "FAILURE")
    print("FAILURE exception:", failed["exception"])
    assert failed["args"] == repr([runs["failed"]])
    assert failed["exception"].startswith("RequestFailedError(")
    assert "'FAILED', 'nsfw_detected'" in failed["exception"]
    assert "ended FAILED nsfw_detected" in failed["traceback"]
    # The tasks page's search box (same engine) finds a request by its id.
    found = flower.get("/api/tasks", search=runs["failed"]).json()
    assert [t["uuid"] for t in found.values()] == [failed["uuid"]]

    for task in flower.tasks().values():
        assert task["name"] == POLL_TASK_NAME and task["worker"].startswith("flower@")
        # The args carry the request id only; the rest goes by name.
        assert re.fullmatch(r"\['[0-9a-f-]{36}'\]", task["args"]), task["args"]
        assert "enqueued_at" in task["kwargs"]


def test_no_secret_in_flower(flower: FlowerRun, runs: dict[str, str]) -> None:
    flower.wait_state(runs["failed"], "FAILURE")
    tasks = flower.get("/api/tasks").text
    assert all(rid in tasks for rid in runs.values())
    for text in (tasks, flower.get("/api/workers").text, flower.get("/metrics").text,
                 flower.log_path.read_text(errors="replace")):
        assert TEST_KEY not in text
        assert "clipia_live_" not in text


def test_workers_api_lists_the_worker(flower: FlowerRun) -> None:
    def listed() -> dict[str, Any] | None:
        response = flower.get("/api/workers", refresh="1")
        if response.status_code != 200:
            return None
        # Flower fills a worker in from several inspect replies: wait for all we read.
        mine = {k: v for k, v in response.json().items() if k.startswith("flower@")
                and all(v.get(key) for key in ("registered", "active_queues", "stats"))}
        return mine or None

    workers = wait_for(listed, timeout_s=20, interval_s=0.5)
    (info,) = workers.values()
    assert POLL_TASK_NAME in info["registered"]
    assert [q["name"] for q in info["active_queues"]] == [QUEUE]
    assert info["stats"]["pool"]["max-concurrency"] == flower.worker.concurrency
    assert "CLIPIA_API_KEY" not in json.dumps(info)


def test_prometheus_metrics(flower: FlowerRun, runs: dict[str, str]) -> None:
    flower.wait_state(runs["failed"], "FAILURE")
    flower.wait_state(runs["done"], "SUCCESS")
    response = flower.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text

    def count(metric: str, **labels: str) -> float:
        total = 0.0
        for line in text.splitlines():
            name, _, rest = line.partition("{")
            if name != metric:
                continue
            label_text, _, value = rest.rpartition("} ")
            if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
                total += float(value)
        return total

    task = {"task": POLL_TASK_NAME}
    for event in ("task-sent", "task-received", "task-started", "task-retried",
                  "task-succeeded", "task-failed"):
        assert count("flower_events_total", type=event, **task) >= 1, (event, text)
    assert count("flower_task_runtime_seconds_count", **task) >= 1
    assert "# TYPE flower_worker_online gauge" in text


def test_basic_auth_guards_the_api_and_pages_but_not_metrics(
    celery_env: dict[str, str], worker_logs: Path
) -> None:
    """As docs/monitoring.md says: FLOWER_BASIC_AUTH covers the UI and API, not /metrics."""
    env = _flower_env(celery_env, FLOWER_BASIC_AUTH="ops:s3cret")
    proc, base = _start_flower(env, worker_logs / "flower-auth.log")
    try:
        for path in ("/api/tasks", "/api/workers", "/tasks", "/"):
            assert httpx.get(base + path, timeout=10).status_code == 401, path
            assert httpx.get(base + path, auth=("ops", "wrong"), timeout=10).status_code == 401
        assert httpx.get(f"{base}/api/tasks", auth=("ops", "s3cret"), timeout=10).status_code == 200
        metrics = httpx.get(f"{base}/metrics", timeout=10)
        assert metrics.status_code == 200 and "flower_events_total" in metrics.text
    finally:
        _stop(proc)


@pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="headless Chromium not installed: apt-get install chromium chromium-driver",
)
@pytest.mark.skipif(
    os.environ.get("CLIPIA_SCREENSHOTS") != "1",
    reason="opt-in: set CLIPIA_SCREENSHOTS=1 to render Flower in headless Chromium",
)
def test_tasks_page_screenshot(
    flower: FlowerRun, runs: dict[str, str], simulator: Any, tmp_path: Path
) -> None:
    failed = runs["failed"]
    flower.wait_state(failed, "FAILURE")
    rid = simulator.simulator.create({"run_s": 40.0, "progress": "linear"})
    result = poll_request.apply_async((rid,), queue=QUEUE)

    def waiting() -> bool:
        task = flower.task_for(rid)
        return bool(task and task["state"] in WAITING and NOTE.fullmatch(task["exception"] or ""))

    try:
        wait_for(waiting, timeout_s=20, interval_s=0.1)
        url = f"{flower.base}/tasks"
        chromium = [
            shutil.which("chromium") or "chromium", "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1600,900",
            "--virtual-time-budget=5000",
        ]
        dom = subprocess.run([*chromium, "--dump-dom", url], capture_output=True, text=True,
                             timeout=90, check=True).stdout
        rows = re.findall(r"<tr[^>]*>.*?</tr>", dom, flags=re.S)
        waiting_row = next((r for r in rows if rid in r), "")
        failed_row = next((r for r in rows if failed in r), "")
        assert waiting_row, f"the waiting request is not on the tasks page:\n{dom[-4000:]}"
        assert NOTE.search(waiting_row) and "PollPending" not in waiting_row, waiting_row
        # RETRY or RECEIVED between polls; for a few ms per poll STARTED.
        badge = re.search(r'class="badge [\w-]+">(\w+)<', waiting_row)
        assert badge and badge.group(1) in (*WAITING, "STARTED"), waiting_row
        assert failed_row and "nsfw_detected" in failed_row, failed_row
        assert 'class="badge text-bg-danger">FAILURE<' in failed_row, failed_row
        assert TEST_KEY not in dom

        shot = tmp_path / "flower-tasks.png"
        subprocess.run([*chromium, f"--screenshot={shot}", url], capture_output=True,
                       timeout=90, check=True)
        assert shot.stat().st_size > 10_000
        print(f"\nFlower tasks page screenshot: {shot}")
    finally:
        simulator.simulator.set_final(rid, "COMPLETED")
    assert result.get(timeout=30)["status"] == "COMPLETED"
