"""Loaded into crash-test workers (``-I``): SIGKILL the worker at one chosen point.

``CLIPIA_TEST_CRASH=<point>:<target>``, target ``child`` (the pool process) or
``main`` (the worker's main process, then the child). Each request crashes at
most once per point (a marker in Redis). Points:

- ``before_result``: the terminal status was seen, the result not fetched yet.
- ``after_finish``: the outcome is recorded, the signal not fired yet.
- ``in_delivery``: the receivers ran, the ``delivered`` flag not written yet
  (the documented at-least-once window).
"""

from __future__ import annotations

import os
import signal
from typing import Any

import redis

from clipia_tasks.client import ClipiaClient
from clipia_tasks.record import RecordStore
from clipia_tasks.signals import request_completed, request_failed

POINT, _, TARGET = os.environ.get("CLIPIA_TEST_CRASH", "").partition(":")
_redis = redis.Redis.from_url(os.environ["REDIS_URL"])


def _crash(point: str, request_id: str) -> None:
    if point != POINT or not _redis.set(f"clipia-test:crashed:{point}:{request_id}", 1, nx=True):
        return
    _redis.rpush("clipia-test:crashes", f"{point}:{TARGET}:{request_id}")
    if TARGET == "main":
        os.kill(os.getppid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


_result = ClipiaClient.result


def _result_then_maybe_crash(self: ClipiaClient, request_id: str) -> Any:
    _crash("before_result", request_id)
    return _result(self, request_id)


_finish = RecordStore.finish


def _finish_then_maybe_crash(self: RecordStore, request_id: str, fields: Any) -> bool:
    won = _finish(self, request_id, fields)
    if won:
        _crash("after_finish", request_id)
    return won


ClipiaClient.result = _result_then_maybe_crash  # type: ignore[method-assign]
RecordStore.finish = _finish_then_maybe_crash  # type: ignore[method-assign]


# Connected after the signal recorder's receivers (-I order), so it runs after them.
@request_completed.connect
@request_failed.connect
def _after_receivers(sender: Any, request_id: str, **_: Any) -> None:
    _crash("in_delivery", request_id)
