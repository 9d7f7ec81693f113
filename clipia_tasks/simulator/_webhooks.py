"""Signed webhook deliveries, the way Clipia sends them, to loopback URLs only.

A delivery is a JSON POST with three headers::

    X-Clipia-Webhook-Id: <delivery uuid>       (the same on every retry of one delivery)
    X-Clipia-Timestamp:  <unix seconds>        (informational, not signed)
    X-Clipia-Signature:  t=<unix seconds>,v1=<hex HMAC-SHA256(secret, f"{t}.{raw body}")>

Each delivery runs in its own daemon thread, so no HTTP handler ever waits for a
receiver. A failed attempt (connection error or non-2xx answer) is retried up to
``max_retries`` times, ``retry_delay_s`` apart. The simulator refuses to send anywhere but
``127.0.0.1``, ``localhost`` and ``[::1]``: it is an offline tool and must not become a
way to make requests to other hosts.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

logger = logging.getLogger("clipia_tasks.simulator")

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

#: Seconds an attempt may take before it counts as failed.
ATTEMPT_TIMEOUT_S = 5.0


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect could point off the loopback interface; treat it as a failed attempt."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


# Loopback only, so environment proxies (http_proxy) must never be consulted.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())


@dataclass(frozen=True)
class WebhookAttempt:
    """One attempt to deliver a webhook (or the refusal to try)."""

    request_id: str
    url: str
    #: ``X-Clipia-Webhook-Id`` of the delivery; the same for all its attempts.
    delivery_id: str
    #: 1 for the first try, 2.. for retries; 0 when the URL was refused.
    attempt: int
    #: HTTP status the receiver answered, None when there was no answer.
    status_code: int | None
    #: What went wrong, None on success.
    error: str | None
    #: ``time.time()`` when the attempt ended.
    at: float

    @property
    def ok(self) -> bool:
        return self.error is None


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``f"{timestamp}.{body}"`` with ``secret``."""
    signed = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def signed_headers(secret: str, body: bytes, delivery_id: str, timestamp: int) -> dict[str, str]:
    """The headers of one delivery attempt."""
    return {
        "Content-Type": "application/json",
        "X-Clipia-Webhook-Id": delivery_id,
        "X-Clipia-Timestamp": str(timestamp),
        "X-Clipia-Signature": f"t={timestamp},v1={sign(secret, timestamp, body)}",
    }


def is_loopback_url(url: str) -> bool:
    """Whether ``url`` is ``http(s)://`` to 127.0.0.1, localhost or [::1]."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and host in LOOPBACK_HOSTS


def encode_body(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


class WebhookSender:
    """Sends deliveries in background threads and reports every attempt."""

    def __init__(
        self,
        secret: str,
        on_attempt: Callable[[WebhookAttempt], None],
        *,
        max_retries: int = 3,
        retry_delay_s: float = 1.0,
    ) -> None:
        self._secret = secret
        self._on_attempt = on_attempt
        self.max_retries = max_retries
        self.retry_delay_s = retry_delay_s

    def send(self, request_id: str, url: str, body: Mapping[str, Any]) -> None:
        """Start delivering ``body`` to ``url``; returns at once."""
        delivery_id = str(uuid.uuid4())
        if not is_loopback_url(url):
            logger.warning(
                "simulator: refusing webhook for request %s: only loopback URLs are allowed",
                request_id,
            )
            self._on_attempt(
                WebhookAttempt(
                    request_id,
                    url,
                    delivery_id,
                    0,
                    None,
                    "refused: not a loopback URL",
                    time.time(),
                )
            )
            return
        thread = threading.Thread(
            target=self._deliver,
            args=(request_id, url, encode_body(body), delivery_id),
            name=f"clipia-sim-webhook-{request_id[:8]}",
            daemon=True,
        )
        thread.start()

    def _deliver(self, request_id: str, url: str, raw: bytes, delivery_id: str) -> None:
        for attempt in range(1, self.max_retries + 2):
            status, error = self._attempt(url, raw, delivery_id)
            self._on_attempt(
                WebhookAttempt(request_id, url, delivery_id, attempt, status, error, time.time())
            )
            if error is None:
                return
            logger.info(
                "simulator: webhook for request %s failed (attempt %d): %s",
                request_id,
                attempt,
                error,
            )
            if attempt <= self.max_retries:
                time.sleep(self.retry_delay_s)

    def _attempt(self, url: str, raw: bytes, delivery_id: str) -> tuple[int | None, str | None]:
        headers = signed_headers(self._secret, raw, delivery_id, int(time.time()))
        request = urllib.request.Request(url, data=raw, headers=headers, method="POST")
        try:
            with _opener.open(request, timeout=ATTEMPT_TIMEOUT_S) as response:
                response.read()
                code = int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code, f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:
            return None, f"{type(exc).__name__}: {exc}"
        if not 200 <= code < 300:
            return code, f"HTTP {code}"
        return code, None
