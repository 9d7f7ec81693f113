"""Process-local objects built on first use: the record store, the API client, the poller.

Nothing here is built at import time. Each worker child builds its own after
the fork (``worker_process_init`` calls :func:`reset`), so no connection pool
is shared between processes.
"""

from __future__ import annotations

import os
import threading

from .client import ClipiaClient
from .errors import error_from_dict
from .metrics import NullMetrics, PrometheusMetrics
from .policy import make_policy
from .poller import Poller
from .record import RecordStore, RequestState, lock_token
from .settings import get_settings
from .signals import request_completed, request_failed

_lock = threading.Lock()
_pid: int | None = None
_store: RecordStore | None = None
_poller: Poller | None = None


def reset() -> None:
    """Forget every process-local object (after a fork, or in tests)."""
    global _pid, _store, _poller
    with _lock:
        _pid, _store, _poller = None, None, None


def _check_pid() -> None:
    global _pid
    if _pid != os.getpid():
        reset()
        _pid = os.getpid()


def get_store() -> RecordStore:
    """The record store on the result backend's Redis."""
    global _store
    _check_pid()
    if _store is None:
        settings = get_settings()
        _store = RecordStore.from_url(settings.backend, ttl_s=settings.record_ttl_s)
    return _store


def deliver(state: RequestState) -> str:
    """Fire the completion signal for a recorded outcome, unless it already fired.

    Returns ``"go"`` (fired now), ``"skip"`` (fired before) or ``"busy"`` (another
    live process is firing it). Between the receivers returning and the
    ``delivered`` flag being written, a crash means they run again: the one
    at-least-once window, with ``delivery_id`` (the request id) to dedupe on.
    """
    store = get_store()
    rid = state.request_id
    token = lock_token(f"deliver-{threading.get_ident()}", 0)
    verdict = store.begin_delivery(rid, token)
    if verdict != "go":
        return verdict
    if state.outcome == "COMPLETED":
        request_completed.send(sender=None, request_id=rid, result=state.result, delivery_id=rid)
    else:
        error = error_from_dict(state.error or {})
        request_failed.send(
            sender=None, request_id=rid, result=state.result, error=error, delivery_id=rid
        )
    store.end_delivery(rid, token)
    return verdict


def _new_client() -> ClipiaClient:
    return ClipiaClient.from_settings(get_settings())


def _metrics() -> NullMetrics:
    # Only when the worker serves metrics (celeryd_init set PROMETHEUS_MULTIPROC_DIR).
    if get_settings().metrics_port and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return PrometheusMetrics()
    return NullMetrics()


def get_poller() -> Poller:
    global _poller
    _check_pid()
    if _poller is None:
        settings = get_settings()
        _poller = Poller(
            settings,
            get_store(),
            _new_client,
            make_policy(settings.poll_policy, settings.poll_interval_s,
                        settings.poll_max_interval_s),
            deliver,
            metrics=_metrics(),
        )
    return _poller
