"""HTTP callbacks: POST a request's outcome to the app, signed like Clipia's webhooks.

``poll_request.delay(id, callback_url=...)`` makes the caller's chain, once it
has an answer, enqueue :func:`deliver_callback`. The body and headers are
those of Clipia's own webhook (so one receiving handler, and one verifier,
serves both) plus ``task_id``::

    {"request_id", "task_id", "status": "OK" | "ERROR",
     "payload"?: {"model", "output", "cost"}, "error"?: {"code", "message"}}

    X-Clipia-Webhook-Id: <delivery id: stable per request id and task id>
    X-Clipia-Timestamp:  <unix seconds>
    X-Clipia-Signature:  t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "{t}.{body}")>

Connection errors, timeouts, 429 and 5xx are retried with capped exponential
backoff for ``CLIPIA_CALLBACK_GIVE_UP_AFTER`` seconds, then given up with an
ERROR log line; another 4xx is given up at once. A 2xx is recorded, so a
redelivered message does not POST again; a worker killed between the 2xx and
that record makes the one repeat, with the same delivery id.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import httpx

from .errors import ClipiaTasksError, error_from_dict
from .nouns import Outcome
from .record import RequestState

__all__ = ["callback_body", "check_callback_url", "delivery_id", "sign"]

log = logging.getLogger("clipia_tasks.callbacks")

_NAMESPACE = uuid.UUID("8b0f3c2e-5f51-4a6e-9a0e-4f1f5e0c1a77")


def check_callback_url(url: object) -> str:
    """The URL if it is an absolute http(s) URL, else ValueError saying what is wrong."""
    if not isinstance(url, str):
        raise ValueError(f"callback_url must be a string, got {type(url).__name__}")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"callback_url {url!r} is not an absolute http:// or https:// URL "
            "(e.g. https://myapp.example.com/hooks/clipia)"
        )
    return url.strip()


def delivery_id(request_id: str, task_id: str) -> str:
    """Stable across retries and redeliveries: the receiver dedupes on it."""
    return str(uuid.uuid5(_NAMESPACE, f"{request_id}|{task_id}"))


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The ``X-Clipia-Signature`` value for ``body`` (Clipia's webhook scheme)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def _error_fields(error: ClipiaTasksError) -> dict[str, str]:
    code = getattr(error, "code", "") or {
        "PollTimeoutError": "poll_timeout",
    }.get(type(error).__name__, "error")
    return {"code": code, "message": getattr(error, "message", "") or str(error)}


def callback_body(state: RequestState, task_id: str) -> dict[str, Any] | None:
    """What to POST for this state, or None while nothing is known yet."""
    body: dict[str, Any] = {"request_id": state.request_id, "task_id": task_id}
    if state.outcome == Outcome.COMPLETED and state.result is not None:
        result = state.result
        body["status"] = "OK"
        body["payload"] = {k: result.get(k) for k in ("model", "output", "cost")}
        return body
    error_data = state.error if state.outcome else state.fatal
    if not error_data:
        return None
    body["status"] = "ERROR"
    body["error"] = _error_fields(error_from_dict(error_data))
    return body


def post(
    url: str, body: dict[str, Any], *, secret: str, delivery: str, timeout_s: float
) -> httpx.Response:
    raw = json.dumps(body, separators=(",", ":")).encode()
    now = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "clipia-tasks-callback",
        "X-Clipia-Webhook-Id": delivery,
        "X-Clipia-Timestamp": str(now),
        "X-Clipia-Signature": sign(secret, raw, now),
    }
    return httpx.post(url, content=raw, headers=headers, timeout=timeout_s)


def backoff_s(attempt: int, retry_after_s: float | None = None) -> float:
    delay = min(2.0 ** attempt, 300.0)
    return max(delay, retry_after_s or 0.0)
