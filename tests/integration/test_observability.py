"""Worker metrics (Prometheus, prefork-safe) and JSON logs, read as an operator would."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from clipia_tasks import poll_request
from clipia_tasks.redis_server import free_port
from tests.conftest import TEST_KEY, Worker, wait_for

pytestmark = pytest.mark.integration


def metric(text: str, name: str, labels: str = "") -> float:
    for line in text.splitlines():
        if line.startswith(f"{name}{labels} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_and_json_logs_from_a_prefork_worker(
    simulator: Any, celery_env: dict[str, str], worker_logs: Path
) -> None:
    sim = simulator.simulator
    port = free_port()
    worker = Worker(celery_env, worker_logs, queue="metrics", name="metrics", concurrency=2,
                    extra_env={"CLIPIA_QUEUE": "metrics", "CLIPIA_METRICS_PORT": str(port),
                               "CLIPIA_LOG_FORMAT": "json"}).start()
    try:
        ok = [sim.create({"run_s": 0.6}) for _ in range(3)]
        failed = sim.create({"run_s": 0.3, "final": "FAILED", "error_code": "nsfw_detected"})
        limited = sim.create({"run_s": 0.3, "faults": [
            {"endpoint": "status", "http": 429, "retry_after": "1",
             "code": "rate_limit_exceeded"}]})
        results = [poll_request.apply_async((r,), queue="metrics")
                   for r in [*ok, failed, limited]]
        for r in results:
            r.get(timeout=30, propagate=False)
        url = f"http://127.0.0.1:{port}/metrics"
        text = wait_for(lambda: (t := httpx.get(url).text) and
                        metric(t, "clipia_tasks_completions_total") >= 4 and t, timeout_s=10)
    finally:
        worker.stop()
    # Counted across both pool processes, each outcome once
    assert metric(text, "clipia_tasks_completions_total") == 4
    assert metric(text, "clipia_tasks_failures_total", '{status="FAILED"}') == 1
    assert metric(text, "clipia_tasks_api_errors_total", '{code="rate_limit_exceeded"}') == 1
    assert metric(text, "clipia_tasks_polls_total") >= 5
    assert metric(text, "clipia_tasks_time_to_completion_seconds_count") == 5
    # JSON logs: one object per line, the outcome lines carry the request id
    lines = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    assert lines, "no JSON log lines"
    ended = [e for e in lines if e["message"].startswith("request ") and " ended " in e["message"]]
    assert {e["request_id"] for e in ended} >= set(ok)
    polled = [e for e in lines if e["message"].startswith("polled ")]
    assert polled and all({"request_id", "task_id", "attempt", "next_delay_s"} <= set(e)
                          for e in polled)
    assert TEST_KEY not in worker.log()
    # At DEBUG httpx's loggers are left alone: every API call is logged
    assert any(e["logger"] == "httpx" and e["message"].startswith("HTTP Request: GET ")
               for e in lines)



def test_an_info_worker_logs_celerys_lines_per_poll_and_no_http_requests(
    simulator: Any, celery_env: dict[str, str], worker_logs: Path
) -> None:
    """docs/monitoring.md, "Logs": what one request costs in log lines at -l INFO."""
    # Given a worker at INFO (the default of `celery worker`)
    worker = Worker(celery_env, worker_logs, queue="info-logs", name="info-logs",
                    extra_env={"CLIPIA_QUEUE": "info-logs"})
    worker.loglevel = "INFO"
    worker.start()
    try:
        # When it follows a request through a few polls
        rid = simulator.simulator.create({"run_s": 1.0})
        result = poll_request.apply_async((rid,), queue="info-logs")
        result.get(timeout=30)
    finally:
        worker.stop()
    text = worker.log()
    polls = len(simulator.simulator.calls(rid, endpoint="status"))
    task = f"Task clipia_tasks.poll_request[{result.id}]"
    # Then httpx's line per request is not there (its logger is at WARNING)...
    assert "HTTP Request:" not in text
    # ...nor our DEBUG line per poll; Celery logs each message received and each retry
    assert "polled " not in text
    assert polls >= 3
    assert text.count(f"{task} received") == polls
    retries = re.findall(rf"{re.escape(task)} retry: Retry in [\d.]+s: PollPending\('([^']+)'\)",
                         text)
    assert len(retries) == polls - 1 and all(" next poll in " in r for r in retries), retries
    # ...and one line per outcome, ours and Celery's
    assert text.count(f"request {rid} ended COMPLETED") == 1
    assert text.count(f"{task} succeeded in ") == 1
