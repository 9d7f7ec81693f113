"""Exactly-once delivery: the completion signals, answered chains and HTTP callbacks.

Everything that happens after an outcome is recorded (``finish``, first writer
wins) goes through here, and keys off flags in the request record:

==========================  =========================================  ===========================
what                        recorded as                                effect of a redelivery
==========================  =========================================  ===========================
``request_completed`` /     ``delivered`` = 1 after the receivers      none: ``begin_delivery``
``request_failed`` fired    returned (guarded by a delivery lock)      answers ``skip``
a chain answered its        ``ans:<task_id>`` (SUCCESS / FAILURE        the restored message exits
caller                      stored by Celery)                          without answering again
a chain's HTTP callback     ``cb:<task_id>`` = ``done`` after a 2xx    no second POST
got a 2xx
==========================  =========================================  ===========================

The guarantee: each signal fires once per request id, in a worker, and each
callback is POSTed until one 2xx, however workers crash or messages repeat.

The one at-least-once window: a receiver (or the callback's receiver) has run,
and the process dies before the flag above is written (or, with Redis Sentinel,
a failover loses the write: see :class:`~clipia_tasks.connections.FailoverGuard`,
which checks the outcome is on the current master and a replica before the
signals fire, and ``delivered`` after). Then it runs again, once
the delivery lock is free (at once when the dead process was on the same host,
else after 60 s), with the same ``delivery_id`` (the request id for signals; a
stable uuid per request and chain for callbacks) to dedupe on.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

from . import _runtime
from .callbacks import backoff_s, callback_body, delivery_id, post
from .errors import error_from_dict
from .nouns import Outcome
from .record import DeliveryTurn, RequestState, lock_token
from .settings import get_settings
from .signals import request_completed, request_failed

__all__ = ["CallbackDone", "CallbackRetry", "attempt_callback", "chain_answered",
           "fire_signals"]

log = logging.getLogger("clipia_tasks.delivery")


def fire_signals(state: RequestState) -> DeliveryTurn:
    """Fire the completion signal for a recorded outcome, unless it already fired.

    :attr:`~DeliveryTurn.GO`: fired now; :attr:`~DeliveryTurn.SKIP`: fired
    before; :attr:`~DeliveryTurn.BUSY`: another live process is firing it
    (answer later).
    """
    store = _runtime.get_store()
    guard = _runtime.get_failover_guard()
    rid = state.request_id
    if guard is not None and not state.delivered:
        # Sentinel: the outcome must be on the current master, and on a replica, before
        # anyone hears of it (raises a Redis ConnectionError: the step is retried).
        guard.confirm()
    token = lock_token(f"deliver-{threading.get_ident()}", 0)
    turn = store.begin_delivery(rid, token)
    if turn is not DeliveryTurn.GO:
        return turn
    if state.outcome == Outcome.COMPLETED:
        request_completed.send(sender=None, request_id=rid, result=state.result, delivery_id=rid)
    else:
        error = error_from_dict(state.error or {})
        request_failed.send(
            sender=None, request_id=rid, result=state.result, error=error, delivery_id=rid
        )
    store.end_delivery(rid, token)
    if guard is not None:
        # And so must ``delivered``, or a failover now fires them again.
        guard.confirm(strict=False)
    return turn


def chain_answered(request_id: str, task_id: str) -> None:
    """Chain ``task_id`` has stored its SUCCESS or FAILURE: never answer it again."""
    _runtime.get_store().answer_chain(request_id, task_id)


@dataclass(frozen=True)
class CallbackDone:
    """No more attempts: ``answer`` is what the callback task returns."""

    answer: dict[str, Any]


@dataclass(frozen=True)
class CallbackRetry:
    """Try again after ``countdown_s``; ``reason`` says what failed."""

    countdown_s: float
    reason: str


def attempt_callback(
    request_id: str, task_id: str, url: str, *, attempt: int, first_attempt_at: float
) -> CallbackDone | CallbackRetry:
    """POST the outcome of ``request_id`` as seen by chain ``task_id`` to ``url``, once."""
    settings = get_settings()
    store = _runtime.get_store()
    state = store.get(request_id)
    if state is not None and task_id in state.callbacks_done:
        return CallbackDone({"delivered": False, "reason": "already delivered"})
    body = callback_body(state, task_id) if state is not None else None
    if body is None:
        log.error("callback for request %s: no outcome recorded; nothing to send", request_id)
        return CallbackDone({"delivered": False, "reason": "no outcome"})
    did = delivery_id(request_id, task_id)
    retry_after: float | None = None
    try:
        response = post(url, body, secret=settings.require_callback_secret(), delivery=did,
                        timeout_s=settings.http_timeout_s)
        code = response.status_code
        if 200 <= code < 300:
            store.mark_callback_done(request_id, task_id)
            log.info("callback for request %s delivered (HTTP %d)", request_id, code)
            return CallbackDone({"delivered": True, "status_code": code, "delivery_id": did})
        if code not in (408, 425, 429) and code < 500:
            log.error("callback for request %s rejected with HTTP %d by %s; not retrying",
                      request_id, code, url)
            return CallbackDone({"delivered": False, "status_code": code})
        reason = f"HTTP {code}"
        header = response.headers.get("retry-after", "")
        retry_after = float(header) if header.replace(".", "", 1).isdigit() else None
    except httpx.TransportError as exc:
        reason = type(exc).__name__
    if time.time() - first_attempt_at > settings.callback_give_up_after_s:
        log.error("callback for request %s to %s given up after %.0f s (last: %s)",
                  request_id, url, time.time() - first_attempt_at, reason)
        return CallbackDone({"delivered": False, "reason": f"gave up ({reason})"})
    return CallbackRetry(backoff_s(attempt, retry_after), reason)
