"""Prometheus metrics from the worker, safe under the prefork pool.

Set ``CLIPIA_METRICS_PORT`` and the worker's main process serves ``/metrics`` on
that port, aggregating its pool children through prometheus-client's
multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``; a private temporary directory is
made when it is not set). prometheus-client is imported only then, so a worker
without the setting (or without the ``monitoring`` extra) pays nothing.

========================================  ======================================
``clipia_tasks_polls_total``              successful status calls
``clipia_tasks_api_errors_total{code}``   failed API calls, by API error code
                                          (or ``network`` / ``malformed``)
``clipia_tasks_completions_total``        requests recorded COMPLETED
``clipia_tasks_failures_total{status}``   requests recorded FAILED / CANCELED
``clipia_tasks_timeouts_total``           requests past CLIPIA_POLL_TIMEOUT
``clipia_tasks_webhook_fallbacks_total``  requests that expected a webhook, ended
                                          by polling (no verified webhook came)
``clipia_tasks_time_to_completion_seconds``  first enqueue -> outcome recorded
========================================  ======================================

Each outcome is counted once per request id: only by the process whose
first-writer-wins transition recorded it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

from .nouns import Outcome

__all__ = ["Metrics", "NullMetrics", "PrometheusMetrics", "serve_metrics"]

log = logging.getLogger("clipia_tasks.metrics")

_BUCKETS_S = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)


class NullMetrics:
    """Counts nothing (metrics not enabled)."""

    def poll(self) -> None:
        pass

    def api_error(self, code: str) -> None:
        pass

    def outcome(self, outcome: str, duration_s: float | None) -> None:
        pass

    def webhook_fallback(self) -> None:
        pass


Metrics = NullMetrics


class PrometheusMetrics(NullMetrics):
    """The counters and histogram above, created in the calling process."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        self._polls = Counter("clipia_tasks_polls", "Successful status calls")
        self._errors = Counter("clipia_tasks_api_errors", "Failed API calls", ["code"])
        self._done = Counter("clipia_tasks_completions", "Requests recorded COMPLETED")
        self._failed = Counter("clipia_tasks_failures", "Requests FAILED or CANCELED",
                               ["status"])
        self._timeouts = Counter("clipia_tasks_timeouts", "Requests past the poll deadline")
        self._fallbacks = Counter("clipia_tasks_webhook_fallbacks",
                                  "Requests that expected a webhook but were ended by polling")
        self._latency = Histogram("clipia_tasks_time_to_completion_seconds",
                                  "From first enqueue to recorded outcome", buckets=_BUCKETS_S)

    def poll(self) -> None:
        self._polls.inc()

    def api_error(self, code: str) -> None:
        self._errors.labels(code=code or "unknown").inc()

    def webhook_fallback(self) -> None:
        self._fallbacks.inc()

    def outcome(self, outcome: str, duration_s: float | None) -> None:
        if outcome == Outcome.COMPLETED:
            self._done.inc()
        elif outcome == Outcome.TIMED_OUT:
            self._timeouts.inc()
        else:
            self._failed.labels(status=outcome).inc()
        if duration_s is not None and duration_s >= 0:
            self._latency.observe(duration_s)


def prepare_multiprocess_dir() -> str:
    """Make sure PROMETHEUS_MULTIPROC_DIR names an empty, private directory."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        path = tempfile.mkdtemp(prefix="clipia-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):  # stale files of an earlier run would be summed in
        if name.endswith(".db"):
            os.remove(os.path.join(path, name))
    # Celery's worker imports prometheus-client before this runs, which fixed its
    # value class to single-process mode; pick it again now the directory is set.
    from prometheus_client import values

    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return path


def serve_metrics(port: int) -> Any:
    """Serve the aggregated metrics of this worker's processes on ``port``."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    server = start_http_server(port, registry=registry)
    log.info("serving Prometheus metrics on :%d/metrics", port)
    return server
