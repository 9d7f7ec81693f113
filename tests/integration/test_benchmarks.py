"""The benchmark scripts run from the repository and report (behaviour, not timing).

Each runs as docs/performance.md gives it, from the repository root, with
``CLIPIA_BENCH_SMOKE=1`` (a workload of seconds: the same code paths, tables and JSON)
and ``CLIPIA_BENCH_OUT`` a temporary directory. :func:`run_benchmark` runs a command once
per test run and keeps what it did, for every pytest-xdist process of the run:
tests/integration/test_doc_commands.py runs the same commands (its ``doc-test: smoke``
blocks) through it, so each benchmark runs once in the suite and both sets of tests look
at that run. One benchmark at a time, whichever process asks (a file lock): each loads
both cores.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from benchmarks._procs import OUT_ENV, RESULTS, SMOKE_ENV, out_dir, smoke
from tests.conftest import ROOT

pytestmark = pytest.mark.integration

#: A smoke run takes seconds; this only stops one that hangs.
SMOKE_TIMEOUT_S = 180.0
#: The interpreter the docs name (the README's test command makes it).
PYTHON = ".venv/bin/python" if (ROOT / ".venv" / "bin" / "python").exists() else shlex.quote(
    sys.executable)


@dataclass(frozen=True)
class BenchRun:
    """What one benchmark command did."""

    command: str
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    #: The JSON files it wrote into its CLIPIA_BENCH_OUT directory.
    reports: tuple[Path, ...]

    def dump(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "reports": [str(p) for p in self.reports]})

    @classmethod
    def load(cls, text: str) -> BenchRun:
        data = json.loads(text)
        return cls(**{**data, "reports": tuple(Path(p) for p in data["reports"])})

    def tail(self) -> str:
        return (f"`{self.command}` exited {self.returncode} after {self.seconds:.1f} s\n"
                f"{self.stdout[-3000:]}\n{self.stderr[-3000:]}")

    def report(self) -> dict[str, Any]:
        """The one JSON report (the run exited 0)."""
        assert self.returncode == 0, self.tail()
        assert len(self.reports) == 1, (self.reports, self.tail())
        data: dict[str, Any] = json.loads(self.reports[0].read_text())
        return data


def _shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of this test run that all its processes share.

    A pytest-xdist worker's base temp is ``.../pytest-N/popen-gwX``: ``pytest-N`` is the
    run's. Without xdist the base temp itself is.
    """
    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "benchmarks"
    shared.mkdir(exist_ok=True)
    return shared


def run_benchmark(command: str, tmp_path_factory: pytest.TempPathFactory) -> BenchRun:
    """``command`` run in bash as written, from the repository root, on a smoke workload.

    The environment is a minimal one (no REDIS_URL: a benchmark starts its own Redis)
    plus ``CLIPIA_BENCH_SMOKE=1`` and ``CLIPIA_BENCH_OUT`` (a fresh directory). Once per
    test run for the same argv: later calls, from any process of the run, get that run.
    """
    key = "\0".join(shlex.split(command, comments=True))
    shared = _shared_dir(tmp_path_factory)
    name = hashlib.sha256(key.encode()).hexdigest()[:16]
    record = shared / f"{name}.json"
    with (shared / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not record.exists():
            record.write_text(_run(command, shared / name).dump())
    return BenchRun.load(record.read_text())


def _run(command: str, where: Path) -> BenchRun:
    out, home = where / "out", where / "home"
    out.mkdir(parents=True)
    home.mkdir()
    env = {
        "PATH": os.pathsep.join([str(ROOT / ".venv" / "bin"),
                                 os.environ.get("PATH", "/usr/bin:/bin")]),
        "HOME": str(home),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "PYTHONUNBUFFERED": "1",
        SMOKE_ENV: "1",
        OUT_ENV: str(out),
    }
    if "TMPDIR" in os.environ:
        env["TMPDIR"] = os.environ["TMPDIR"]
    started = time.monotonic()
    proc = subprocess.Popen(
        ["bash", "-c", command], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=SMOKE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # Ctrl-C: the benchmark unwinds and stops its workers, Redis and simulator
        os.killpg(proc.pid, signal.SIGINT)
        try:
            stdout, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
        stderr += f"\nstill running after {SMOKE_TIMEOUT_S:g} s"
    return BenchRun(command, proc.returncode, stdout, stderr, time.monotonic() - started,
                    tuple(sorted(out.glob("*.json"))))


@pytest.fixture
def bench(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``bench("benchmarks/run.py --workload models")``: that script's smoke run."""
    return lambda args: run_benchmark(f"{PYTHON} {args}", tmp_path_factory)


# -- the tests ----------------------------------------------------------------------


def test_the_smoke_and_out_variables_change_nothing_when_unset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given neither variable set, the full-size runs and benchmarks/results/
    monkeypatch.delenv(SMOKE_ENV, raising=False)
    monkeypatch.delenv(OUT_ENV, raising=False)
    assert not smoke()
    assert out_dir() == str(ROOT / "benchmarks" / "results") == str(RESULTS)
    # When they are set (0 is "not set")
    monkeypatch.setenv(SMOKE_ENV, "0")
    assert not smoke()
    monkeypatch.setenv(SMOKE_ENV, "1")
    monkeypatch.setenv(OUT_ENV, "/tmp/somewhere")
    # Then a smoke run, into that directory
    assert smoke()
    assert out_dir() == "/tmp/somewhere"


def test_the_policy_benchmark_prints_the_tables_and_writes_json(bench: Any) -> None:
    run = bench("benchmarks/run.py")
    data = run.report()
    policies = {"fixed 1 s (SDK)", "backoff 1-10 s", "adaptive (default)"}
    for policy in policies:
        assert policy in run.stdout
    assert "By progress kind" in run.stdout
    assert run.reports[0].name.startswith("policies-smoke-")
    assert data["smoke"] is True
    assert set(data["results"]) == policies
    for result in data["results"].values():
        assert result["requests"] == data["n"] and result["unfinished"] == 0
        assert result["calls_mean"] >= 2  # at least one status and one result call
        assert len(result["per_request"]) == data["n"]


def test_the_models_workload_warms_the_priors_and_splits_matching_from_outliers(
    bench: Any,
) -> None:
    run = bench("benchmarks/run.py --workload models")
    data = run.report()
    assert "warming the priors" in run.stdout
    assert run.reports[0].name.startswith("policies-models-smoke-")
    assert set(data["results"]) == {"fixed 1 s (SDK)", "backoff 1-10 s", "adaptive, no model",
                                    "adaptive + model= (priors warm)"}
    for result in data["results"].values():
        assert result["requests"] == data["n"] and result["unfinished"] == 0
        assert result["calls_mean"] >= 2
        # Kinds are "matching, ..." or "3x slower, ...", every request a model's
        assert all(k.startswith(("matching, ", "3x slower, ")) for k in result["by_progress"])
        assert all(row["model"] for row in result["per_request"])


def test_the_throughput_benchmark_reports_the_ratio_and_polls_every_request_in_flight(
    bench: Any,
) -> None:
    run = bench("benchmarks/throughput.py")
    data = run.report()
    assert "Poll throughput, one worker" in run.stdout
    assert "requests in flight, one worker" in run.stdout
    assert run.reports[0].name.startswith("throughput-smoke-")
    tp = data["throughput"]
    assert len(tp["pairs"]) >= 1
    assert tp["poll_request_per_s"] > 0 and tp["bare_retry_per_s"] > 0
    assert tp["ratio"] > 0 and all(p["ratio"] > 0 for p in tp["pairs"])
    inflight = data["inflight"]
    assert inflight["requests"] >= 1
    assert inflight["polled"] == inflight["requests"] and inflight["never_polled"] == 0
    assert inflight["poll_lateness_p50_s"] is not None


def test_the_throughput_benchmark_without_the_in_flight_part(bench: Any) -> None:
    run = bench("benchmarks/throughput.py --skip-inflight")
    data = run.report()
    assert "requests in flight" not in run.stdout
    assert "inflight" not in data
    assert data["throughput"]["ratio"] > 0


def test_the_webhook_benchmark_prints_both_tables_and_writes_json(bench: Any) -> None:
    run = bench("benchmarks/webhooks.py")
    data = run.report()
    assert "Webhook during a 60 s countdown" in run.stdout
    assert "Calls and detection" in run.stdout
    assert run.reports[0].name.startswith("webhooks-smoke-")
    owners = data["sleeping_owners"]
    n = owners["requests"]
    assert owners["recorded"] == owners["ended_by_webhook"] == n
    assert owners["signals_per_request"] == [[1, n]]
    assert owners["callbacks_per_request"] == [[1, n]]
    assert owners["result_calls_max"] == 1
    scenarios = data["scenarios"]
    assert len(scenarios) == 4
    late = [name for name in scenarios if name.startswith("webhook ") and name.endswith(" late")]
    assert set(scenarios) == {"webhook at once", *late, "webhook lost", "polling only"}
    assert len(late) == 1
    for scenario in scenarios.values():
        assert scenario["unfinished"] == 0
    # A prompt webhook needs no status call; polling alone needs at least one
    assert scenarios["webhook at once"]["status_calls_p50"] == 0
    assert scenarios["polling only"]["status_calls_p50"] >= 1
    # The lost webhook was caught by the fallback's status calls
    assert scenarios["webhook lost"]["status_calls_p50"] >= 1


def test_the_live_progress_benchmark_prints_the_table_and_writes_json(bench: Any) -> None:
    run = bench("benchmarks/live.py")
    data = run.report()
    assert "SSE watchers in one uvicorn process" in run.stdout
    assert run.reports[0].name.startswith("live-smoke-")
    watchers = data["watchers"]
    assert watchers >= 2 and data["channel_subscriptions"] == watchers
    assert data["events_missing"] == 0 and data["changes"] >= 1
    # one pub/sub connection for all the watchers
    assert data["redis_connections_with_watchers"]["pubsub"] == 1
