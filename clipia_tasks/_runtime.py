"""Process-local objects built on first use: the record store (and, on a Sentinel
backend, its failover guard), and a cache for the rest.

Nothing here is built at import time. Each worker child builds its own after
the fork (``worker_process_init`` calls :func:`reset`), so no connection pool
is shared between processes. Web-side modules need only :func:`get_store`;
the worker's poller is cached here by :func:`clipia_tasks.poller.get_poller`
without this module knowing about it (so importing this module loads neither
the poller, the API client nor the poll policy).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast

from .connections import FailoverGuard, is_sentinel
from .record import RecordStore
from .settings import get_settings

__all__ = ["cached", "get_failover_guard", "get_store", "reset"]

T = TypeVar("T")

_lock = threading.RLock()  # the poller is built while the store is fetched
_pid: int | None = None
_objects: dict[str, Any] = {}


def reset() -> None:
    """Forget every process-local object (after a fork, or in tests)."""
    global _pid
    with _lock:
        _pid = None
        _objects.clear()


def cached(name: str, build: Callable[[], T]) -> T:
    """The process's one ``name`` object, built by ``build`` on first use after a fork."""
    global _pid
    with _lock:
        if _pid != os.getpid():
            _objects.clear()
            _pid = os.getpid()
        if name not in _objects:
            _objects[name] = build()
        return cast(T, _objects[name])


def _build_store() -> RecordStore:
    settings = get_settings()
    return RecordStore.from_url(settings.backend, ttl_s=settings.record_ttl_s)


def get_store() -> RecordStore:
    """The record store on the result backend's Redis."""
    return cached("store", _build_store)


def _build_failover_guard() -> FailoverGuard | None:
    settings = get_settings()
    if not is_sentinel(settings.backend):
        return None  # a plain Redis: no failover to guard against
    return FailoverGuard(get_store().redis, settings.sentinel_master)


def get_failover_guard() -> FailoverGuard | None:
    """On a Sentinel-managed result backend, the guard of the store's writes; else None."""
    return cached("failover_guard", _build_failover_guard)
