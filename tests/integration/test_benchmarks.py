"""The benchmark script runs from the repository and reports (behaviour, not timing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def test_the_policy_benchmark_prints_the_table_and_writes_json(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--quick", "-n", "3", "--max-run-s", "6",
         "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for policy in ("fixed 1 s (SDK)", "backoff 1-10 s", "adaptive (default)"):
        assert policy in run.stdout
    (report,) = tmp_path.glob("policies-quick-*.json")
    data = json.loads(report.read_text())
    assert set(data["results"]) == {"fixed 1 s (SDK)", "backoff 1-10 s", "adaptive (default)"}
    for result in data["results"].values():
        assert result["requests"] == 3 and result["unfinished"] == 0
        assert result["calls_mean"] >= 2  # at least one status and one result call


def test_the_webhook_benchmark_prints_both_tables_and_writes_json(tmp_path: Path) -> None:
    # Tiny: 3 sleeping owners, 1 request per scenario of 4-5 s, a 6 s fallback delay
    run = subprocess.run(
        [sys.executable, "benchmarks/webhooks.py", "--quick", "--owners", "3", "-n", "1",
         "--max-length", "5", "--fallback", "6", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Webhook during a 60 s countdown" in run.stdout
    (report,) = tmp_path.glob("webhooks-quick-*.json")
    data = json.loads(report.read_text())
    owners = data["sleeping_owners"]
    assert owners["recorded"] == owners["ended_by_webhook"] == 3
    assert owners["signals_per_request"] == [[1, 3]]
    assert owners["callbacks_per_request"] == [[1, 3]]
    assert owners["result_calls_max"] == 1
    assert set(data["scenarios"]) == {"webhook at once", "webhook 5 s late", "webhook lost",
                                      "polling only"}
    for scenario in data["scenarios"].values():
        assert scenario["unfinished"] == 0
    # A prompt webhook needs no status call; polling alone needs at least one
    assert data["scenarios"]["webhook at once"]["status_calls_p50"] == 0
    assert data["scenarios"]["polling only"]["status_calls_p50"] >= 1
    # The lost webhook was caught by the fallback's status calls
    assert data["scenarios"]["webhook lost"]["status_calls_p50"] >= 1


def test_the_live_progress_benchmark_prints_the_table_and_writes_json(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "benchmarks/live.py", "--quick", "--watchers", "20", "--changes", "10",
         "--quiet-s", "1", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "SSE watchers in one uvicorn process" in run.stdout
    (report,) = tmp_path.glob("live-quick-*.json")
    data = json.loads(report.read_text())
    assert data["watchers"] == 20 and data["channel_subscriptions"] == 20
    assert data["events_missing"] == 0 and data["changes"] >= 1
    # one pub/sub connection for all 20 watchers
    assert data["redis_connections_with_watchers"]["pubsub"] == 1
