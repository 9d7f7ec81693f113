"""The webhook bridge: Clipia's signed webhooks complete requests through the same record.

:func:`handle_webhook` is framework-neutral (headers and raw body in, HTTP
status and JSON body out); ``clipia_tasks.contrib`` wraps it for Django,
Flask and Starlette / FastAPI (through :func:`webhook_response`, which also
turns a missing secret into a logged 500 with a JSON body). A delivery is
verified by :func:`verify_signature` (HMAC-SHA256 over ``"{t}.{raw body}"``,
``t`` taken only from the signed header, 300 s tolerance, constant-time) against
``CLIPIA_WEBHOOK_SECRET``; a bad or stale signature gets 401 and changes
nothing, a malformed body 400. During a secret rotation a header carries several
``v1=`` values and the delivery is valid if any of them matches (the SDK's
``clipia.webhooks.verify_signature`` reads only the last one; each value is
checked with it here).

A verified delivery marks the request's terminal status in its record and
enqueues one ``poll_request`` for it. That message (or the chain already
polling, on its next tick) fetches the result with one
``GET /v1/requests/{id}`` instead of polling ``/status`` again, and records
the outcome through the same first-writer-wins transition, so a request with
both a webhook and a poller completes once and the signals fire once, in a
worker. Repeated deliveries are answered 200 and change nothing.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

from clipia.webhooks import DEFAULT_TOLERANCE_SECONDS, SIGNATURE_HEADER
from clipia.webhooks import verify_signature as _sdk_verify

from . import _runtime
from .celery_app import POLL_TASK_NAME, app
from .errors import ConfigurationError
from .nouns import Status, check_request_id
from .record import WebhookNote
from .settings import get_settings

__all__ = ["handle_webhook", "verify_signature", "webhook_response"]

log = logging.getLogger("clipia_tasks.webhooks")

_STATUS_FOR = {"OK": Status.COMPLETED, "ERROR": Status.FAILED}


def verify_signature(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """True if any ``v1=`` value of ``X-Clipia-Signature`` signs ``body`` within the tolerance.

    Header names are matched in any case; ``t`` comes only from the signature
    header (``X-Clipia-Timestamp`` is not signed). Never raises on bad input.
    """
    lowered = {str(k).lower(): str(v) for k, v in headers.items()}
    timestamp, candidates = "", []
    for chunk in lowered.get(SIGNATURE_HEADER, "").split(","):
        key, _, value = chunk.strip().partition("=")
        if key.strip() == "t" and not timestamp:
            timestamp = value.strip()
        elif key.strip() == "v1" and value.strip():
            candidates.append(value.strip())
    if not timestamp or not candidates:
        return False
    return any(
        _sdk_verify(secret, {SIGNATURE_HEADER: f"t={timestamp},v1={v1}"}, body,
                    tolerance_seconds=int(tolerance_s), now=now)
        for v1 in candidates
    )


def webhook_response(headers: Mapping[str, str], body: bytes | str) -> tuple[int, dict[str, Any]]:
    """:func:`handle_webhook` for a web view: a missing secret is a logged 500, not a crash."""
    try:
        return handle_webhook(headers, body)
    except ConfigurationError as exc:
        log.error("webhook receiver not configured: %s", exc)
        return 500, {"error": "webhook receiver not configured", "detail": str(exc)}


def handle_webhook(
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    secret: str | None = None,
    now: float | None = None,
) -> tuple[int, dict[str, Any]]:
    """Verify and record one webhook delivery. Returns ``(http_status, json_body)``."""
    settings = get_settings()
    secret = secret or settings.require_webhook_secret()
    raw = body.encode() if isinstance(body, str) else body
    if not verify_signature(secret, headers, raw, now=now):
        log.warning("webhook rejected: bad or expired signature")
        return 401, {"error": "invalid or expired signature"}
    try:
        data = json.loads(raw)
        request_id = check_request_id(data.get("request_id"))
        status = _STATUS_FOR[data.get("status")]
    except (ValueError, KeyError, TypeError, AttributeError):
        log.warning("webhook rejected: malformed body")
        return 400, {"error": "body must be JSON with a UUID request_id and status OK or ERROR"}
    lowered = {str(k).lower(): v for k, v in headers.items()}
    webhook_id = str(lowered.get("x-clipia-webhook-id") or uuid.uuid4())
    store = _runtime.get_store()
    now = time.time() if now is None else now
    verdict = store.note_terminal(request_id, status, webhook_id=webhook_id,
                                  timeout_s=settings.poll_timeout_s, now=now)
    if verdict is WebhookNote.NEW:
        task_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"clipia-webhook:{request_id}"))
        # Known to the sweep before it is sent, so a lost message is re-sent.
        store.plan(request_id, task_id, now)
        # By name, as any web process can: the id is validated above, and the
        # deadline counts from now (what poll_request.delay would pass).
        app.send_task(POLL_TASK_NAME, args=[request_id], kwargs={"enqueued_at": now},
                      task_id=task_id, queue=settings.queue)
    log.info("webhook for request %s (%s): %s", request_id, data.get("status"), verdict,
             extra={"request_id": request_id})
    return 200, {"ok": True, "request_id": request_id, "recorded": verdict}
