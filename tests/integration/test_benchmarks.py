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
        [sys.executable, "benchmarks/run.py", "--quick", "-n", "3", "--out", str(tmp_path)],
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
