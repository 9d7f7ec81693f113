"""The only place that talks to the Clipia API.

It wraps the official SDK (``clipia.Clipia``) and turns everything that can go
wrong into this package's errors (see :mod:`clipia_tasks.errors`):

* ``ClipiaApiError`` 429 / 5xx -> :class:`RetryableApiError` (with ``Retry-After``);
  401 / 403 / 404 / other 4xx -> the matching final :class:`ApiError`. The SDK's
  error takes keyword-only arguments and does not survive Celery's JSON result
  backend, so it never leaves this module.
* ``httpx.TransportError`` (refused, reset, timeouts) -> :class:`NetworkError`.
* ``GET /v1/requests/{id}`` without a terminal result -> :class:`ResultNotReady`,
  which keeps the documented 202 (still queued or running) apart from a 200
  whose body's status is not terminal (undocumented: the poller backs off).
* A 2xx the SDK cannot parse (it raises ``TypeError`` / ``KeyError`` on a
  missing or non-JSON body) or whose fields have the wrong type ->
  :class:`MalformedResponseError`.

The key lives only inside the SDK client; ``repr`` leaves it out and no error
message is built from anything that contains it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import clipia
import httpx

from .errors import (
    ApiError,
    AuthenticationError,
    MalformedResponseError,
    NetworkError,
    PermissionDeniedError,
    RequestNotFoundError,
    RetryableApiError,
)
from .settings import Settings

__all__ = ["ClipiaClient", "ResultNotReady", "StatusSnapshot", "api_duration_s"]

log = logging.getLogger(__name__)

#: HTTP statuses after which the same call may succeed later.
TRANSIENT_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})

_FINAL_BY_HTTP: dict[int, type[ApiError]] = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: RequestNotFoundError,
}


@dataclass(frozen=True)
class StatusSnapshot:
    """One answer of ``GET /v1/requests/{id}/status``, checked."""

    request_id: str
    status: str
    queue_position: int | None
    progress: int | None


@dataclass(frozen=True)
class ResultNotReady:
    """An answer of ``GET /v1/requests/{id}`` that holds no terminal result."""

    #: 202 (documented: still queued or running) or 200 (a body whose status is not terminal).
    http_status: int
    #: The status the body gave.
    status: str


def _optional_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"field {name!r} is {type(value).__name__}, expected a number or null")
    return int(value)


def api_duration_s(body: dict[str, Any]) -> float | None:
    """Seconds from ``created_at`` to ``completed_at`` of a terminal result body, or None.

    Both are the API's own clock (ISO 8601, e.g. ``2024-05-01T12:00:00.000Z``); None
    when either is missing, unparsable or without a time zone, or the end is before
    the start.
    """
    try:
        start = datetime.fromisoformat(str(body["created_at"]).replace("Z", "+00:00"))
        end = datetime.fromisoformat(str(body["completed_at"]).replace("Z", "+00:00"))
        seconds = (end - start).total_seconds()
    except (KeyError, TypeError, ValueError):
        return None  # absent, null, not a timestamp, or naive beside aware
    return seconds if seconds >= 0 else None


def translate_error(exc: Exception, request_id: str) -> Exception:
    """This package's error for an exception raised by an SDK call."""
    if isinstance(exc, clipia.ClipiaApiError):
        if exc.status in TRANSIENT_HTTP:
            reason = f"Clipia answered HTTP {exc.status} {exc.code or 'error'}".rstrip()
            return RetryableApiError(request_id, reason, exc.retry_after, exc.status)
        cls = _FINAL_BY_HTTP.get(exc.status, ApiError)
        return cls(request_id, exc.status, exc.code or "", exc.message or "")
    if isinstance(exc, httpx.TransportError):
        return NetworkError(request_id, f"{type(exc).__name__}: {exc}".rstrip(": "))
    if isinstance(exc, TypeError | KeyError | ValueError | httpx.DecodingError):
        return MalformedResponseError(request_id, f"unexpected response body ({exc})")
    return exc


class ClipiaClient:
    """Status and result calls for pollers, submit for web apps.

    One instance per process: it holds an httpx connection pool. Build it
    after a fork, never before (see ``clipia_tasks.tasks``).
    """

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = "https://api.clipia.ai",
        timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url
        self._fingerprint = hashlib.sha256(b"clipia-tasks/key/" + api_key.encode()).hexdigest()[:16]
        # The SDK validates the URL (https, or http only for localhost) and keeps
        # the key in a private attribute; its own repr omits it too.
        self._sdk = clipia.Clipia(
            api_key, base_url=base_url, timeout=timeout_s, transport=transport
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> ClipiaClient:
        """A client with the key, base URL and HTTP timeout of ``settings``.

        Raises ConfigurationError (naming CLIPIA_API_KEY) when the key is missing.
        """
        return cls(settings.require_api_key(), base_url=settings.base_url,
                   timeout_s=settings.http_timeout_s)

    def __repr__(self) -> str:
        return f"ClipiaClient(base_url={self.base_url!r})"

    @property
    def key_fingerprint(self) -> str:
        """A short one-way tag of the key: names per-key state in Redis, reveals nothing."""
        return self._fingerprint

    __str__ = __repr__

    def close(self) -> None:
        self._sdk.close()

    def status(self, request_id: str) -> StatusSnapshot:
        """One ``/status`` call. Raises only errors of :mod:`clipia_tasks.errors`."""
        try:
            answer = self._sdk.status(request_id)
            status = answer.status
            if not isinstance(status, str) or not status:
                raise TypeError(f"field 'status' is {status!r}")
            return StatusSnapshot(
                request_id=request_id,
                status=status,
                queue_position=_optional_int(answer.data, "queue_position"),
                progress=_optional_int(answer.data, "progress"),
            )
        except Exception as exc:
            raise translate_error(exc, request_id) from None

    def result(self, request_id: str) -> dict[str, Any] | ResultNotReady:
        """The terminal result body, or :class:`ResultNotReady` saying what came instead."""
        try:
            answer = self._sdk.result(request_id)
            if not isinstance(answer.data, dict) or not isinstance(answer.status, str):
                raise TypeError("result body is not an object with a status")
            if answer.pending:
                return ResultNotReady(202, answer.status)
            if not answer.is_terminal:
                return ResultNotReady(200, answer.status)
            return dict(answer.data)
        except Exception as exc:
            raise translate_error(exc, request_id) from None

    def submit(
        self,
        model: str,
        input: dict[str, Any],
        *,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Queue a generation through the SDK (which retries with one Idempotency-Key)."""
        try:
            answer = self._sdk.submit(
                model, input, webhook_url=webhook_url, idempotency_key=idempotency_key
            )
        except Exception as exc:
            raise translate_error(exc, "(new submission)") from None
        return {
            "request_id": answer.request_id,
            "status": answer.status,
            "queue_position": answer.queue_position,
        }
