"""The simulator's state and API semantics, independent of any socket.

:class:`Simulator` holds the requests, the call log, the idempotency keys and the
webhook bookkeeping behind one lock, and turns ``(method, path, headers, body)`` into a
:class:`Reply` (:meth:`Simulator.handle`). :mod:`._server` only moves bytes between a
socket and :meth:`Simulator.handle`; tests can also call the methods directly.

The lock is only ever held for dictionary work: scripted latency is slept and webhooks
are sent outside it, so one slow request never delays another.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qs, unquote

from ._model import (
    COMPLETED,
    COST_CREDITS,
    ENDPOINTS,
    FILE_PATH,
    TERMINAL_STATUSES,
    Call,
    Fault,
    Script,
    Snapshot,
    build_output,
    canonical_request_id,
    error_envelope,
    lifecycle,
    media_file,
    media_for_model,
    pending_body,
    raced_pending_body,
    result_body,
    status_body,
    webhook_body,
)
from ._webhooks import WebhookAttempt, WebhookSender

logger = logging.getLogger("clipia_tasks.simulator")

_KEY_RE = re.compile(r"clipia_(?:live|test)_\S+")
_SUBMIT_RE = re.compile(r"^/v1/models/(.+)$")
_STATUS_RE = re.compile(r"^/v1/requests/([^/]+)/status$")
_RESULT_RE = re.compile(r"^/v1/requests/([^/]+)$")
_FINAL_RE = re.compile(r"^/_sim/requests/([^/]+)/final$")

_JSON = ("Content-Type", "application/json")
_HTML_BODY = (
    b"<html><head><title>502 Bad Gateway</title></head>"
    b"<body><h1>502 Bad Gateway</h1><hr><center>nginx</center></body></html>"
)

_UNAUTHORIZED_MESSAGE = (
    "Missing or invalid API key. Send 'Authorization: Key <key>' "
    "with a clipia_live_ or clipia_test_ key."
)


@dataclass(frozen=True)
class Reply:
    """An HTTP answer: status, extra headers and the exact body bytes."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, status: int, data: Any, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
        raw = json.dumps(data, separators=(",", ":")).encode("utf-8")
        return cls(status, raw, (_JSON, *headers))

    @classmethod
    def error(cls, status: int, code: str | None = None, message: str | None = None) -> Reply:
        return cls.json(status, error_envelope(status, code, message))

    def json_body(self) -> Any:
        """The body parsed as JSON (for tests and in-process use)."""
        return json.loads(self.body)


@dataclass
class _Request:
    request_id: str
    script: Script
    model: str
    created_at: float
    sandbox: bool
    webhook_url: str | None
    #: (status, at) after set_final.
    forced: tuple[str, float] | None = None
    #: Matching calls seen so far, one counter per fault.
    fault_hits: list[int] = field(default_factory=list)
    #: result_pending_calls not used up yet.
    pending_left: int = 0


_Delivery = tuple[str, str, dict[str, Any]]  # request_id, url, body


class Simulator:
    """In-memory Clipia queue API. Thread-safe; usable with or without HTTP.

    ``api_keys``: the accepted keys; None accepts any ``clipia_live_…`` or
    ``clipia_test_…`` key. ``webhook_secret``: signing secret; without it no webhook is
    sent. ``clock``: the time source for request lifecycles (inject a fake one in tests).
    """

    #: Retries after a failed webhook attempt.
    webhook_max_retries = 3
    #: Pause between webhook attempts.
    webhook_retry_delay_s = 1.0
    #: How long an Idempotency-Key keeps resolving to its request.
    idempotency_window_s = 24 * 3600.0

    def __init__(
        self,
        *,
        api_keys: set[str] | None = None,
        webhook_secret: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._api_keys = (
            tuple(k.encode("utf-8") for k in api_keys) if api_keys is not None else None
        )
        self._webhook_secret = webhook_secret
        self._clock = clock
        self._lock = threading.Lock()
        #: Base of status_url, response_url and output URLs; the server sets its own URL.
        self.base_url = "http://127.0.0.1"
        self._requests: dict[str, _Request] = {}
        self._calls: list[Call] = []
        self._idempotency: dict[str, tuple[str, str, float]] = {}
        self._webhooks_due: set[str] = set()
        self._webhook_attempts: list[WebhookAttempt] = []
        self._sender: WebhookSender | None = None

    def __repr__(self) -> str:
        # Never the keys or the webhook secret.
        return f"Simulator(base_url={self.base_url!r}, requests={len(self._requests)})"

    # -- the Python API ---------------------------------------------------

    def create(
        self,
        script: Script | Mapping[str, Any] | None = None,
        *,
        request_id: str | None = None,
        webhook_url: str | None = None,
        sandbox: bool = False,
    ) -> str:
        """Create a request following ``script``; returns its id (a new uuid4 unless given).

        Raises ``ValueError`` for an invalid script, a ``request_id`` that is not a UUID or
        already exists, or a non-string ``webhook_url``.
        """
        parsed = Script.coerce(script)
        if request_id is None:
            rid = str(uuid.uuid4())
        else:
            canonical = canonical_request_id(request_id)
            if canonical is None:
                raise ValueError(f"request_id must be a UUID, got {request_id!r}")
            rid = canonical
        if webhook_url is not None and not isinstance(webhook_url, str):
            raise ValueError("webhook_url must be a string")
        with self._lock:
            if rid in self._requests:
                raise ValueError(f"request {rid} already exists")
            self._add(rid, parsed, parsed.model, webhook_url, sandbox)
        return rid

    def calls(self, request_id: str | None = None, endpoint: str | None = None) -> list[Call]:
        """The ``/v1`` calls answered so far, oldest first, optionally filtered."""
        if endpoint is not None and endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {', '.join(sorted(ENDPOINTS))}")
        with self._lock:
            return [
                c
                for c in self._calls
                if (request_id is None or c.request_id == request_id)
                and (endpoint is None or c.endpoint == endpoint)
            ]

    def reset(self) -> None:
        """Forget every request, call, idempotency key and pending webhook."""
        with self._lock:
            self._requests.clear()
            self._calls.clear()
            self._idempotency.clear()
            self._webhooks_due.clear()
            self._webhook_attempts.clear()

    def status_of(self, request_id: str) -> dict[str, Any]:
        """What ``/status`` would answer now, without faults or logging. KeyError if unknown."""
        with self._lock:
            req = self._get(request_id)
            snap = self._snapshot(req)
            due = self._take_due_webhook(req, snap)
        self._send(due)
        return status_body(req.request_id, snap)

    def result_of(self, request_id: str) -> dict[str, Any]:
        """What ``GET /v1/requests/{id}`` would answer now, without faults, logging or using
        up ``result_pending_calls``. KeyError if unknown."""
        with self._lock:
            req = self._get(request_id)
            snap = self._snapshot(req)
            due = self._take_due_webhook(req, snap)
        self._send(due)
        if snap.is_terminal:
            return self._result_body(req, snap)
        return pending_body(req.request_id, snap)

    def set_final(self, request_id: str, status: str) -> None:
        """End a request now with ``status`` (e.g. CANCELED from the web UI).

        KeyError if unknown; ValueError if ``status`` is not terminal or the request
        already is.
        """
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"status must be one of {', '.join(sorted(TERMINAL_STATUSES))}")
        with self._lock:
            req = self._get(request_id)
            snap = self._snapshot(req)
            if snap.is_terminal:
                raise ValueError(f"request {req.request_id} is already {snap.status}")
            req.forced = (status, self._clock())
            due = self._take_due_webhook(req, self._snapshot(req))
        self._send(due)

    def tick(self) -> None:
        """Send the webhooks of requests that became terminal (the server calls this
        every 0.2 s; calls about a request also check it)."""
        due: list[_Delivery] = []
        with self._lock:
            for rid in list(self._webhooks_due):
                req = self._requests[rid]
                due.extend(self._take_due_webhook(req, self._snapshot(req)))
        self._send(due)

    def webhook_attempts(self, request_id: str | None = None) -> list[WebhookAttempt]:
        """Webhook delivery attempts so far (including refused URLs), oldest first."""
        with self._lock:
            return [
                a
                for a in self._webhook_attempts
                if request_id is None or a.request_id == request_id
            ]

    # -- HTTP semantics -----------------------------------------------------

    def handle(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes = b""
    ) -> Reply:
        """Answer one HTTP request. Sleeps for scripted latency before answering."""
        path, _, query = target.partition("?")
        lowered = {k.lower(): v for k, v in headers.items()}
        if path.startswith("/_sim/"):
            return self._control(method.upper(), path, query, body)
        if path == "/v1" or path.startswith("/v1/"):
            return self._api(method.upper(), path, lowered, body)
        if path.startswith("/files/"):
            return self._file(method.upper(), path)
        return Reply.error(404, "not_found", "No such endpoint.")

    def _file(self, method: str, path: str) -> Reply:
        """The media behind a result's URL (no key needed, as on a CDN)."""
        match = FILE_PATH.match(path)
        found = media_file(match["file_id"], match["ext"]) if match else None
        if method != "GET" or found is None:
            return Reply.error(404, "not_found", "No such file (the simulator serves "
                               "images and audio, not video).")
        content_type, data = found
        return Reply(200, data, (("Content-Type", content_type),
                                 ("Cache-Control", "public, max-age=3600")))

    def _api(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        endpoint, path_id, model = _classify(method, path)
        scheme, key = _parse_authorization(headers.get("authorization"))
        if key is None or not self._key_ok(key):
            reply = Reply.error(401, "invalid_api_key", _UNAUTHORIZED_MESSAGE)
            return self._log(method, path, endpoint, path_id, scheme, reply)
        if endpoint == "submit" and model is not None:
            sandbox = key.startswith("clipia_test_")
            return self._submit(method, path, model, headers, body, scheme, sandbox)
        if endpoint == "other":
            reply = Reply.error(404, "not_found", "No such endpoint.")
            return self._log(method, path, endpoint, None, scheme, reply)
        return self._poll(method, path, endpoint, path_id, scheme)

    def _poll(
        self, method: str, path: str, endpoint: str, path_id: str | None, scheme: str | None
    ) -> Reply:
        rid = canonical_request_id(path_id)
        with self._lock:
            req = self._requests.get(rid) if rid else None
            latency_s = req.script.latency_s if req else 0.0
        if req is None or rid is None:
            return self._log(method, path, endpoint, path_id, scheme, _not_found())

        def normal(req: _Request, snap: Snapshot) -> Reply:
            if endpoint == "status":
                return Reply.json(200, status_body(rid, snap))
            if not snap.is_terminal:
                return Reply.json(202, pending_body(rid, snap))
            if req.pending_left > 0:
                req.pending_left -= 1
                return Reply.json(202, raced_pending_body(rid, req.script))
            return Reply.json(200, self._result_body(req, snap))

        return self._answer(method, path, endpoint, rid, scheme, latency_s, normal)

    def _answer(
        self,
        method: str,
        path: str,
        endpoint: str,
        rid: str,
        scheme: str | None,
        latency_s: float,
        normal: Callable[[_Request, Snapshot], Reply],
    ) -> Reply:
        """After the request's latency: its fault if one is due, else ``normal``; log it."""
        if latency_s:
            time.sleep(latency_s)
        due: list[_Delivery] = []
        with self._lock:
            req = self._requests.get(rid)
            if req is None:  # reset while we slept
                reply = _not_found()
            else:
                fault = self._take_fault(req, endpoint)
                snap = self._snapshot(req)
                due = self._take_due_webhook(req, snap)
                if fault is not None:
                    reply = _fault_reply(fault, status_body(rid, snap))
                else:
                    reply = normal(req, snap)
            logged_rid = rid if req is not None or endpoint != "submit" else None
            self._record(method, path, endpoint, logged_rid, scheme, reply)
        self._send(due)
        return reply

    def _submit(
        self,
        method: str,
        path: str,
        model: str,
        headers: dict[str, str],
        body: bytes,
        scheme: str | None,
        sandbox: bool,
    ) -> Reply:
        def invalid(message: str) -> Reply:
            reply = Reply.error(400, "invalid_request", message)
            return self._log(method, path, "submit", None, scheme, reply)

        try:
            payload = json.loads(body) if body.strip() else None
        except ValueError:
            return invalid("The request body must be JSON.")
        if not isinstance(payload, dict):
            return invalid("The request body must be a JSON object with an 'input' object.")
        inputs = payload.get("input")
        if not isinstance(inputs, dict):
            return invalid("'input' must be an object.")
        webhook_url = payload.get("webhook_url")
        if webhook_url is not None and not isinstance(webhook_url, str):
            return invalid("'webhook_url' must be a string.")
        sim = inputs.get("sim")
        if sim is not None and not isinstance(sim, dict):
            return invalid("'input.sim' must be an object.")
        try:
            script = replace(Script.from_dict(sim or {}), model=model)
        except (TypeError, ValueError) as exc:
            return invalid(f"input.sim: {exc}")

        idempotency_key = headers.get("idempotency-key")
        fingerprint = hashlib.sha256(
            json.dumps(
                {"model": model, "body": payload, "sandbox": sandbox},
                sort_keys=True,
                separators=(",", ":"),
            ).encode("utf-8")
        ).hexdigest()
        with self._lock:
            now = self._clock()
            known = self._idempotency.get(idempotency_key) if idempotency_key else None
            if known and now - known[2] < self.idempotency_window_s and known[1] in self._requests:
                if known[0] != fingerprint:
                    reply = Reply.error(409, "idempotency_key_reuse")
                    self._record(method, path, "submit", None, scheme, reply)
                    return reply
                rid = known[1]
            else:
                rid = str(uuid.uuid4())
                self._add(rid, script, model, webhook_url, sandbox)
                if idempotency_key:
                    self._idempotency[idempotency_key] = (fingerprint, rid, now)
            latency_s = self._requests[rid].script.latency_s
        return self._answer(
            method, path, "submit", rid, scheme, latency_s,
            lambda req, snap: Reply.json(200, self._submit_body(req, snap)),
        )

    def _control(self, method: str, path: str, query: str, body: bytes) -> Reply:
        try:
            payload = json.loads(body) if body.strip() else {}
        except ValueError:
            return Reply.error(400, "invalid_request", "The request body must be JSON.")
        if not isinstance(payload, dict):
            return Reply.error(400, "invalid_request", "The request body must be a JSON object.")

        if method == "GET" and path == "/_sim/health":
            return Reply.json(200, {"ok": True})
        if method == "POST" and path == "/_sim/reset":
            self.reset()
            return Reply.json(200, {"ok": True})
        if method == "GET" and path == "/_sim/calls":
            params = {k: v[-1] for k, v in parse_qs(query).items()}
            try:
                calls = self.calls(params.get("request_id"), params.get("endpoint") or None)
            except ValueError as exc:
                return Reply.error(400, "invalid_request", str(exc))
            return Reply.json(200, {"calls": [c.to_dict() for c in calls]})
        if method == "POST" and path == "/_sim/requests":
            known = {"script", "request_id", "webhook_url", "sandbox"}
            unknown = sorted(k for k in payload if k not in known)
            if unknown:
                return Reply.error(
                    400, "invalid_request", f"unknown field(s): {', '.join(unknown)}"
                )
            try:
                rid = self.create(
                    payload.get("script"),
                    request_id=payload.get("request_id"),
                    webhook_url=payload.get("webhook_url"),
                    sandbox=bool(payload.get("sandbox", False)),
                )
            except (TypeError, ValueError) as exc:
                return Reply.error(400, "invalid_request", str(exc))
            return Reply.json(200, {"request_id": rid})
        match = _FINAL_RE.match(path)
        if method == "POST" and match:
            status = payload.get("status")
            if status not in TERMINAL_STATUSES:
                allowed = ", ".join(sorted(TERMINAL_STATUSES))
                return Reply.error(400, "invalid_request", f"status must be one of {allowed}")
            rid = unquote(match.group(1))
            try:
                self.set_final(rid, str(status))
            except KeyError:
                return _not_found()
            except ValueError as exc:
                return Reply.error(409, "conflict", str(exc))
            return Reply.json(200, self.status_of(rid))
        return Reply.error(404, "not_found", "No such simulator endpoint.")

    # -- internals (the lock is held where noted) ----------------------------

    def _key_ok(self, key: str) -> bool:
        if self._api_keys is None:
            return _KEY_RE.fullmatch(key) is not None
        given = key.encode("utf-8")
        # Compare with every key, so the time taken does not depend on which one matched.
        matches = [hmac.compare_digest(given, k) for k in self._api_keys]
        return any(matches)

    def _get(self, request_id: str) -> _Request:
        """Lock held. KeyError for an unknown id."""
        rid = canonical_request_id(request_id)
        req = self._requests.get(rid) if rid else None
        if req is None:
            raise KeyError(request_id)
        return req

    def _add(
        self, rid: str, script: Script, model: str, webhook_url: str | None, sandbox: bool
    ) -> None:
        """Lock held."""
        if sandbox:
            # The sandbox answers at once with a fixed result: no timing, faults or races.
            script = replace(
                script,
                queue_s=0.0,
                run_s=0.0,
                final=COMPLETED,
                faults=[],
                result_pending_calls=0,
                latency_s=0.0,
            )
        self._requests[rid] = _Request(
            request_id=rid,
            script=script,
            model=model,
            created_at=self._clock(),
            sandbox=sandbox,
            webhook_url=webhook_url,
            fault_hits=[0] * len(script.faults),
            pending_left=script.result_pending_calls,
        )
        if webhook_url is not None:
            if self._webhook_secret:
                self._webhooks_due.add(rid)
            else:
                logger.info("simulator: no webhook_secret, so no webhook for request %s", rid)

    def _snapshot(self, req: _Request) -> Snapshot:
        return lifecycle(req.script, req.created_at, self._clock(), req.forced)

    def _take_fault(self, req: _Request, endpoint: str) -> Fault | None:
        """Lock held. Counts this call for every matching fault; returns the one that answers."""
        chosen: Fault | None = None
        for index, fault in enumerate(req.script.faults):
            if not fault.matches(endpoint):
                continue
            req.fault_hits[index] += 1
            seen = req.fault_hits[index]
            if chosen is None and fault.after_calls < seen <= fault.after_calls + fault.count:
                chosen = fault
        return chosen

    def _result_body(self, req: _Request, snap: Snapshot) -> dict[str, Any]:
        file_id = "sandbox" if req.sandbox else req.request_id
        media = req.script.media or media_for_model(req.model)
        output = build_output(media, self.base_url, file_id)
        return result_body(req.request_id, req.script, req.model, snap, req.created_at, output)

    def _submit_body(self, req: _Request, snap: Snapshot) -> dict[str, Any]:
        base = self.base_url.rstrip("/")
        return {
            "request_id": req.request_id,
            "status": snap.status,
            "queue_position": snap.queue_position,
            "status_url": f"{base}/v1/requests/{req.request_id}/status",
            "response_url": f"{base}/v1/requests/{req.request_id}",
            "cost": COST_CREDITS,
        }

    def _take_due_webhook(self, req: _Request, snap: Snapshot) -> list[_Delivery]:
        """Lock held. The delivery to send if the request just turned out terminal."""
        if not snap.is_terminal or req.request_id not in self._webhooks_due:
            return []
        self._webhooks_due.discard(req.request_id)
        assert req.webhook_url is not None
        return [(req.request_id, req.webhook_url, webhook_body(self._result_body(req, snap)))]

    def _send(self, due: list[_Delivery]) -> None:
        """Lock NOT held."""
        if not due or not self._webhook_secret:
            return
        with self._lock:
            if self._sender is None:
                self._sender = WebhookSender(
                    self._webhook_secret,
                    self._on_webhook_attempt,
                    max_retries=self.webhook_max_retries,
                    retry_delay_s=self.webhook_retry_delay_s,
                )
            sender = self._sender
        for request_id, url, body in due:
            sender.send(request_id, url, body)

    def _on_webhook_attempt(self, attempt: WebhookAttempt) -> None:
        with self._lock:
            self._webhook_attempts.append(attempt)

    def _record(
        self,
        method: str,
        path: str,
        endpoint: str,
        request_id: str | None,
        scheme: str | None,
        reply: Reply,
    ) -> None:
        """Lock held."""
        self._calls.append(
            Call(method, path, endpoint, request_id, reply.status, time.time(), scheme)
        )

    def _log(
        self,
        method: str,
        path: str,
        endpoint: str,
        request_id: str | None,
        scheme: str | None,
        reply: Reply,
    ) -> Reply:
        with self._lock:
            self._record(method, path, endpoint, request_id, scheme, reply)
        return reply


def _classify(method: str, path: str) -> tuple[str, str | None, str | None]:
    """(endpoint, request id from the path, model slug) of a ``/v1`` call."""
    if method == "POST":
        match = _SUBMIT_RE.match(path)
        if match and not path.endswith("/estimate"):
            return "submit", None, unquote(match.group(1))
    elif method == "GET":
        match = _STATUS_RE.match(path)
        if match:
            return "status", unquote(match.group(1)), None
        match = _RESULT_RE.match(path)
        if match:
            return "result", unquote(match.group(1)), None
    return "other", None, None


def _parse_authorization(value: str | None) -> tuple[str | None, str | None]:
    """(scheme, key) from an Authorization header; the scheme only if Key or Bearer."""
    if not value:
        return None, None
    scheme, _, credential = value.strip().partition(" ")
    canonical = {"key": "Key", "bearer": "Bearer"}.get(scheme.lower())
    if canonical is None:
        return None, None
    return canonical, credential.strip() or None


def _not_found() -> Reply:
    return Reply.error(404, "not_found", "Request not found.")


def _fault_reply(fault: Fault, normal_body: dict[str, Any]) -> Reply:
    extra: tuple[tuple[str, str], ...] = ()
    if fault.retry_after is not None:
        extra = (("Retry-After", fault.retry_after),)
    if fault.body == "empty":
        return Reply(fault.http, b"", extra)
    if fault.body == "html":
        return Reply(fault.http, _HTML_BODY, (("Content-Type", "text/html"), *extra))
    if fault.body == "malformed":
        return Reply.json(fault.http, {"foo": 1}, extra)
    if fault.body == "truncated":
        raw = json.dumps(normal_body, separators=(",", ":")).encode("utf-8")
        return Reply(fault.http, raw[: len(raw) // 2], (_JSON, *extra))
    return Reply.json(fault.http, error_envelope(fault.http, fault.code), extra)
