"""The Celery tasks: thin shells around :class:`~clipia_tasks.poller.Poller`.

``poll_request`` does one step per message and turns the step into Celery
terms: return (SUCCESS, ``link`` fires), raise (FAILURE, ``link_error``
fires), ``self.retry(countdown=...)`` (no worker slot is held while it
waits), or ``Ignore`` (a superseded duplicate leaves no trace in the result
backend). ``deliver_callback`` POSTs an outcome to the app; ``sweep`` (run by
beat) re-sends chains whose messages were lost.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import httpx
import redis
from celery import Celery, Task
from celery.exceptions import Ignore, Retry
from kombu.exceptions import OperationalError

from . import _runtime
from .callbacks import backoff_s, callback_body, check_callback_url, delivery_id, post
from .celery_app import CALLBACK_TASK_NAME, POLL_TASK_NAME, SWEEP_TASK_NAME, app
from .errors import PollPending, RedisUnavailableError
from .poller import Again, Finish, check_request_id
from .record import RequestState
from .settings import get_settings, redact_url

__all__ = ["PollRequestTask", "deliver_callback", "install", "poll_request", "sweep"]

log = logging.getLogger("clipia_tasks.tasks")

_POLL_KWARGS = {"request_id", "enqueued_at", "callback_url"}


class _NoRetryStateBackend:
    """The app's result backend, minus the RETRY state ``Task.retry`` writes on every poll.

    That write (a JSON blob with a formatted traceback, per poll, kept while the
    request is in flight) is read by nobody: progress lives in the request
    record, and Flower reads events, not the backend. Everything else — SUCCESS,
    FAILURE, ``AsyncResult.get()`` — goes to the real backend.
    """

    def __init__(self, app: Celery) -> None:
        self._app = app

    def __getattr__(self, name: str) -> Any:
        return getattr(self._app.backend, name)

    def mark_as_retry(self, *args: Any, **kwargs: Any) -> None:
        return None


class PollRequestTask(Task):  # type: ignore[misc]
    """Checks arguments at the call site, so a bad id never reaches the broker."""

    @property
    def backend(self) -> Any:
        return _NoRetryStateBackend(self.app)

    @backend.setter
    def backend(self, value: Any) -> None:  # Celery assigns it when binding; keep ours
        pass

    def apply_async(
        self,
        args: Any = None,
        kwargs: dict[str, Any] | None = None,
        *more: Any,
        **options: Any,
    ) -> Any:
        args = list(args or ())
        kwargs = dict(kwargs or {})
        if args:
            args[0] = check_request_id(args[0])
        elif "request_id" in kwargs:
            kwargs["request_id"] = check_request_id(kwargs["request_id"])
        else:
            raise TypeError("poll_request needs a request_id")
        if len(args) > 1:
            raise TypeError("poll_request takes request_id positionally; pass the rest by name")
        unknown = set(kwargs) - _POLL_KWARGS
        if unknown:
            raise TypeError(
                f"poll_request got unexpected arguments {sorted(unknown)}; "
                "it takes request_id and optionally callback_url"
            )
        if kwargs.get("callback_url") is not None:
            kwargs["callback_url"] = check_callback_url(kwargs["callback_url"])
            get_settings().require_callback_secret()
        # The deadline counts from the first enqueue; retries keep this value.
        kwargs.setdefault("enqueued_at", time.time())
        try:
            return super().apply_async(args, kwargs, *more, **options)
        except (OperationalError, redis.RedisError, RuntimeError) as exc:
            # Celery says "Retry limit exceeded ... result store backend" or a bare
            # connection error; say which Redis, and that nothing was enqueued
            # (the backend is set up before the message is published).
            url = _unreachable_redis(self.app)
            if url is None:
                raise
            raise RedisUnavailableError(redact_url(url), type(exc).__name__) from exc

    def after_return(
        self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        # Called for SUCCESS and FAILURE only, after the result is stored.
        request_id = (args or [kwargs.get("request_id")])[0]
        store = _runtime.get_store()
        url = (kwargs or {}).get("callback_url")
        if url:
            self.app.send_task(
                CALLBACK_TASK_NAME,
                args=[request_id, task_id, url],
                kwargs={"first_attempt_at": time.time()},
                task_id=delivery_id(request_id, task_id),
            )
        store.chain_done(request_id, task_id)


def _unreachable_redis(celery_app: Celery) -> str | None:
    """The broker or backend URL that does not answer a ping, or None if both do."""
    for url in (celery_app.conf.broker_url, celery_app.conf.result_backend):
        if not url or not str(url).startswith(("redis", "unix")):
            continue
        try:
            client = redis.Redis.from_url(str(url), socket_connect_timeout=2, socket_timeout=2)
            try:
                client.ping()
            finally:
                client.close()
        except (redis.RedisError, OSError):
            return str(url)
    return None


def _remember_chain(request_id: str, task: Task, callback_url: str | None) -> None:
    """What the sweep needs to re-send this chain faithfully: its callback and links."""
    req = task.request
    fields: dict[str, Any] = {}
    if callback_url:
        fields[f"cbu:{req.id}"] = callback_url
    if req.callbacks or req.errbacks:
        fields[f"lnk:{req.id}"] = json.dumps(
            {"link": req.callbacks or None, "link_error": req.errbacks or None}
        )
    if fields and (req.retries or 0) == 0:
        _runtime.get_store().mark_fields(request_id, fields)


def _poll_request(
    self: Task,
    request_id: str,
    enqueued_at: float | None = None,
    callback_url: str | None = None,
) -> Any:
    """Follow one Clipia request to its end; returns the result body when COMPLETED."""
    request_id = check_request_id(request_id)
    try:
        _remember_chain(request_id, self, callback_url)
        step = _runtime.get_poller().step(
            request_id, self.request.id, self.request.retries or 0, enqueued_at
        )
    except redis.RedisError as exc:
        # Redis (records and broker) is away. Try again shortly; if even that
        # cannot be published, drop this message: the record is intact and the
        # sweep re-sends the chain once Redis is back.
        log.warning("request %s: Redis unavailable (%s); retrying", request_id, exc)
        try:
            raise self.retry(countdown=2.0, max_retries=None,
                             exc=PollPending("Redis unavailable, retrying")) from None
        except Retry:
            raise
        except Exception:
            raise Ignore("Redis unavailable; the sweep resumes this chain") from None
    if isinstance(step, Finish):
        if step.error is not None:
            raise step.error
        return step.result
    if isinstance(step, Again):
        raise self.retry(
            countdown=step.countdown_s, max_retries=None, exc=PollPending(step.note)
        )
    raise Ignore(step.reason)


def _deliver_callback(
    self: Task, request_id: str, task_id: str, url: str, first_attempt_at: float | None = None
) -> Any:
    """POST the outcome of ``request_id`` as seen by chain ``task_id`` to ``url``."""
    settings = get_settings()
    store = _runtime.get_store()
    done_field = f"cb:{task_id}"
    raw = store.fields(request_id)
    if raw.get(done_field) == "done":
        return {"delivered": False, "reason": "already delivered"}
    body = callback_body(RequestState.from_hash(request_id, raw), task_id) if raw else None
    if body is None:
        log.error("callback for request %s: no outcome recorded; nothing to send", request_id)
        return {"delivered": False, "reason": "no outcome"}
    first = first_attempt_at or time.time()
    did = delivery_id(request_id, task_id)
    retry_after: float | None = None
    try:
        response = post(url, body, secret=settings.require_callback_secret(), delivery=did,
                        timeout_s=settings.http_timeout_s)
        code = response.status_code
        if 200 <= code < 300:
            store.mark_fields(request_id, {done_field: "done"})
            log.info("callback for request %s delivered (HTTP %d)", request_id, code)
            return {"delivered": True, "status_code": code, "delivery_id": did}
        if code not in (408, 425, 429) and code < 500:
            log.error("callback for request %s rejected with HTTP %d by %s; not retrying",
                      request_id, code, url)
            return {"delivered": False, "status_code": code}
        reason = f"HTTP {code}"
        header = response.headers.get("retry-after", "")
        retry_after = float(header) if header.replace(".", "", 1).isdigit() else None
    except httpx.TransportError as exc:
        reason = type(exc).__name__
    if time.time() - first > settings.callback_give_up_after_s:
        log.error("callback for request %s to %s given up after %.0f s (last: %s)",
                  request_id, url, time.time() - first, reason)
        return {"delivered": False, "reason": f"gave up ({reason})"}
    countdown = backoff_s(self.request.retries or 0, retry_after)
    raise self.retry(
        countdown=countdown, max_retries=None, kwargs={"first_attempt_at": first},
        exc=PollPending(f"callback failed ({reason}), retrying in {countdown:.0f} s"),
    )


def _sweep(self: Task) -> dict[str, int]:
    """Re-send every chain far past its planned next message (lost in a crash or outage)."""
    settings = get_settings()
    store = _runtime.get_store()
    now = time.time()
    resent = forgotten = 0
    for rid, task_id, _due in store.overdue_chains(now - settings.sweep_stale_after_s):
        raw = store.fields(rid)
        if not raw:
            store.chain_done(rid, task_id)  # the record expired: nothing to resume
            forgotten += 1
            continue
        if raw.get("owner") == task_id:
            retries = int(raw.get("gen") or 0)
        else:
            retries = int(raw.get(f"w:{task_id}") or 0)
        kwargs: dict[str, Any] = {"enqueued_at": float(raw.get("first_enqueued_at") or now)}
        if raw.get(f"cbu:{task_id}"):
            kwargs["callback_url"] = raw[f"cbu:{task_id}"]
        links = json.loads(raw.get(f"lnk:{task_id}") or "{}")
        self.app.send_task(
            POLL_TASK_NAME, args=[rid], kwargs=kwargs, task_id=task_id, retries=retries,
            link=links.get("link"), link_error=links.get("link_error"),
        )
        store.plan(rid, task_id, now + settings.sweep_stale_after_s)
        resent += 1
    if resent or forgotten:
        log.warning("sweep re-sent %d lost polling chain(s), forgot %d expired", resent,
                    forgotten)
    return {"resent": resent, "forgotten": forgotten}


#: Options every app gets for ``poll_request``.
TASK_OPTIONS: dict[str, Any] = {
    "name": POLL_TASK_NAME,
    "base": PollRequestTask,
    "bind": True,
    "acks_late": True,
    "reject_on_worker_lost": True,
    "max_retries": None,
}


def _install_all(celery_app: Celery) -> tuple[Any, Any, Any]:
    poll = celery_app.task(**TASK_OPTIONS)(_poll_request)
    callback = celery_app.task(name=CALLBACK_TASK_NAME, bind=True, acks_late=True,
                               reject_on_worker_lost=True, max_retries=None)(_deliver_callback)
    sweeper = celery_app.task(name=SWEEP_TASK_NAME, bind=True, ignore_result=True)(_sweep)
    return poll, callback, sweeper


def install(celery_app: Celery) -> Any:
    """Register ``clipia_tasks.poll_request`` (and its helpers) on your Celery app.

    Returns the ``poll_request`` task of that app. The helpers are
    ``clipia_tasks.deliver_callback`` and ``clipia_tasks.sweep`` (schedule the
    latter with beat; see ``clipia_tasks.celery_config``).
    """
    return _install_all(celery_app)[0]


# Not app.tasks[...]: that would finalize the app and read settings at import.
poll_request, deliver_callback, sweep = _install_all(app)
