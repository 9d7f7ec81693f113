"""Loaded into test workers (``celery worker -I``): records every signal in Redis.

Tests read the list ``clipia-test:signals`` to count how often each signal
fired per request id, across worker processes and restarts. It lives in
``CLIPIA_TEST_SIGNALS_URL`` when set (the Sentinel test keeps its observations out
of the Redis it fails over), else in ``REDIS_URL``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis

from clipia_tasks.signals import request_completed, request_failed

LIST = "clipia-test:signals"
_redis = redis.Redis.from_url(os.environ.get("CLIPIA_TEST_SIGNALS_URL") or os.environ["REDIS_URL"])


def _record(kind: str, request_id: str, delivery_id: str, **extra: Any) -> None:
    entry = {"signal": kind, "request_id": request_id, "delivery_id": delivery_id,
             "pid": os.getpid(), "at": time.time(), **extra}
    _redis.rpush(LIST, json.dumps(entry))


@request_completed.connect
def _completed(sender: Any, request_id: str, result: dict[str, Any], delivery_id: str,
               **_: Any) -> None:
    _record("completed", request_id, delivery_id, status=result.get("status"))


@request_failed.connect
def _failed(sender: Any, request_id: str, result: Any, error: Exception, delivery_id: str,
            **_: Any) -> None:
    _record("failed", request_id, delivery_id, error=type(error).__name__,
            message=str(error))


# Link callbacks used by tests: registered on the bundled app, run by the worker.
from clipia_tasks import app  # noqa: E402

LINKS = "clipia-test:links"


@app.task(name="tests.record_link")
def record_link(result: Any, tag: str) -> None:
    _redis.rpush(LINKS, json.dumps({"tag": tag, "request_id": result.get("request_id")}))


@app.task(name="tests.record_link_error")
def record_link_error(request: Any, exc: Exception, traceback: str, tag: str) -> None:
    _redis.rpush(LINKS, json.dumps({"tag": tag, "error": type(exc).__name__,
                                    "code": getattr(exc, "code", None)}))
