"""The Celery tasks: thin shells around :class:`~clipia_tasks.poller.Poller`.

``poll_request`` does one step per message and turns the step into Celery
terms: return (SUCCESS, ``link`` fires), raise (FAILURE, ``link_error``
fires), ``self.retry(countdown=...)`` (no worker slot is held while it
waits), or ``Ignore`` (a superseded duplicate leaves no trace in the result
backend). ``deliver_callback`` POSTs an outcome to the app; ``sweep`` (run by
beat) re-sends chains whose messages were lost.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from typing import Any

import redis
from celery import Celery, Task
from celery.exceptions import Ignore, Retry
from celery.worker.request import Request
from kombu.exceptions import OperationalError

from . import _runtime
from .callbacks import check_callback_url, delivery_id
from .celery_app import CALLBACK_TASK_NAME, POLL_TASK_NAME, SWEEP_TASK_NAME, app
from .delivery import CallbackDone, attempt_callback, chain_answered
from .errors import PollPending, RedisFullError, RedisUnavailableError
from .nouns import check_model, check_request_id
from .poller import Again, Finish, get_poller
from .record import ChainToResume
from .redis_health import MEMORY, is_out_of_memory
from .settings import get_settings, redact_url

__all__ = ["PollRequestTask", "deliver_callback", "install", "poll_request", "sweep"]

log = logging.getLogger("clipia_tasks.tasks")

#: The keyword arguments ``poll_request`` takes (besides ``request_id``).
POLL_KWARGS = frozenset({"request_id", "enqueued_at", "callback_url", "expect_webhook", "model"})


class _NoRetryStateBackend:
    """A task's result backend, minus the RETRY state ``Task.retry`` writes on every poll.

    That write (a JSON blob with a formatted traceback, per poll, kept while the
    request is in flight) is read by nobody: progress lives in the request
    record, and Flower reads events, not the backend. Everything else — SUCCESS,
    FAILURE, ``AsyncResult.get()`` — goes to the real backend, looked up on each
    use (the app's backend may be per thread), so one proxy serves the task for
    the life of the process. ``tests/integration/test_poll_request.py`` pins that
    no RETRY meta is stored between polls.
    """

    def __init__(self, task: Task) -> None:
        self._task = task

    def _real(self) -> Any:
        return self._task._explicit_backend or self._task.app.backend

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real(), name)

    def __repr__(self) -> str:
        return f"<no-RETRY proxy for {self._real()!r}>"

    def mark_as_retry(self, *args: Any, **kwargs: Any) -> None:
        return None


class PlannedRetryRequest(Request):  # type: ignore[misc]
    """The worker's handling of our tasks' messages: a planned retry reads as its note.

    Celery's ``task-retried`` event carries ``safe_repr`` of the retry's reason and
    the formatted traceback of the ``Retry`` raise. For a poll that found the
    request unfinished, Flower would show ``PollPending('…')`` and a traceback (or,
    in the threads/solo/gevent pools, where the reason is not unwrapped,
    ``Retry(Retry(...), PollPending(...), 2.48)``). This sends the note alone
    (``IN_PROGRESS 42 %, next poll in 3.1 s``) and no traceback: nothing failed.
    Any other retry is reported as Celery reports it.
    """

    def on_retry(self, exc_info: Any) -> None:
        raised = exc_info.exception
        # The Retry itself after prefork's pickling; billiard's wrapper around it otherwise.
        retry = raised if isinstance(raised, Retry) else getattr(raised, "exc", None)
        pending = retry.exc if isinstance(retry, Retry) else None
        if not isinstance(pending, PollPending):
            super().on_retry(exc_info)
            return
        if self.task.acks_late:
            self.acknowledge()
        self.send_event("task-retried", exception=str(pending))


class PollRequestTask(Task):  # type: ignore[misc]
    """Checks arguments at the call site, so a bad id never reaches the broker."""

    Request = PlannedRetryRequest
    #: A backend given explicitly (``task.backend = ...``); the app's when ``None``.
    _explicit_backend: Any = None
    _proxy: _NoRetryStateBackend | None = None

    @property
    def backend(self) -> Any:
        """The result backend without RETRY writes, built once per task instance."""
        if self._proxy is None:
            self._proxy = _NoRetryStateBackend(self)
        return self._proxy

    @backend.setter
    def backend(self, value: Any) -> None:
        # Whatever is assigned is wrapped, not replaced: RETRY writes stay off.
        self._explicit_backend = value

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
        unknown = set(kwargs) - POLL_KWARGS
        if unknown:
            raise TypeError(
                f"poll_request got unexpected arguments {sorted(unknown)}; "
                "it takes request_id and optionally callback_url, expect_webhook and model"
            )
        if "expect_webhook" in kwargs:
            if not isinstance(kwargs["expect_webhook"], bool):
                raise TypeError("poll_request: expect_webhook must be True or False, got "
                                f"{kwargs['expect_webhook']!r}")
            if not kwargs["expect_webhook"]:
                del kwargs["expect_webhook"]
        if "model" in kwargs:
            if kwargs["model"] is None:
                del kwargs["model"]
            else:
                kwargs["model"] = check_model(kwargs["model"])
        if kwargs.get("callback_url") is not None:
            kwargs["callback_url"] = check_callback_url(kwargs["callback_url"])
            get_settings().require_callback_secret()
        # The deadline counts from the first enqueue; retries keep this value.
        kwargs.setdefault("enqueued_at", time.time())
        first_message = not options.get("retries")
        request_id = args[0] if args else kwargs["request_id"]
        if first_message:
            # Known to the sweep before it is published: a message lost anywhere
            # between here and its first run (a full Redis, a crash) is re-sent.
            options["task_id"] = options.get("task_id") or str(uuid.uuid4())
            created = self._register(request_id, options["task_id"], kwargs["enqueued_at"],
                                     options)
        try:
            return super().apply_async(args, kwargs, *more, **options)
        except (OperationalError, redis.RedisError, RuntimeError) as exc:
            if first_message:
                with contextlib.suppress(redis.RedisError):  # deletes: allowed when full
                    _runtime.get_store().unregister(request_id, options["task_id"],
                                                    created=created)
            if is_out_of_memory(exc):
                raise RedisFullError(redact_url(self.app.conf.broker_url),
                                     "maxmemory reached") from exc
            # Celery says "Retry limit exceeded ... result store backend" or a bare
            # connection error; say which Redis, and that nothing was enqueued
            # (the backend is set up before the message is published).
            url = _unreachable_redis(self.app)
            if url is None:
                raise
            raise RedisUnavailableError(redact_url(url), type(exc).__name__) from exc

    def _register(
        self, request_id: str, task_id: str, enqueued_at: float, options: dict[str, Any]
    ) -> bool:
        """Make the chain known to the sweep; True if this created the request's record."""
        settings = get_settings()
        now = time.time()
        eta = options.get("eta")
        due_at = eta.timestamp() if eta is not None else now + float(options.get("countdown") or 0)
        try:
            return _runtime.get_store().register(
                request_id, task_id, first_enqueued_at=enqueued_at, due_at=due_at)
        except redis.RedisError as exc:
            url = redact_url(settings.backend)
            if is_out_of_memory(exc):
                raise RedisFullError(url, "maxmemory reached") from exc
            raise RedisUnavailableError(url, type(exc).__name__) from exc

    def after_return(
        self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        # Called for SUCCESS and FAILURE only, after the result is stored.
        request_id = (args or [kwargs.get("request_id")])[0]
        url = (kwargs or {}).get("callback_url")
        if url:
            self.app.send_task(
                CALLBACK_TASK_NAME,
                args=[request_id, task_id, url],
                kwargs={"first_attempt_at": time.time()},
                task_id=delivery_id(request_id, task_id),
            )
        chain_answered(request_id, task_id)


def _unreachable_redis(celery_app: Celery) -> str | None:
    """The broker or backend URL that does not answer a ping, or None if both do."""
    from .connections import redis_client

    for url in (celery_app.conf.broker_url, celery_app.conf.result_backend):
        if not url or not str(url).startswith(("redis", "unix", "sentinel")):
            continue
        try:
            client = redis_client(str(url), get_settings(), socket_timeout_s=2,
                                  connect_timeout_s=2)
            try:
                client.ping()
            finally:
                client.close()
        except (redis.RedisError, OSError):
            return str(url)
    return None


def _remember_chain(
    request_id: str, task: Task, callback_url: str | None, expect_webhook: bool,
    model: str | None,
) -> None:
    """What the sweep needs to re-send this chain faithfully: callback, links, webhook,
    model (first message only)."""
    req = task.request
    if (req.retries or 0) > 0 or not (callback_url or req.callbacks or req.errbacks
                                      or expect_webhook or model):
        return
    links = {"link": req.callbacks or None, "link_error": req.errbacks or None}
    _runtime.get_store().remember_chain(
        request_id, req.id, callback_url=callback_url,
        links=links if (req.callbacks or req.errbacks) else None,
        expect_webhook=expect_webhook, model=model,
    )


def _poll_request(
    self: Task,
    request_id: str,
    enqueued_at: float | None = None,
    callback_url: str | None = None,
    expect_webhook: bool = False,
    model: str | None = None,
) -> Any:
    """Follow one Clipia request to its end; returns the result body when COMPLETED."""
    request_id = check_request_id(request_id)
    try:
        _remember_chain(request_id, self, callback_url, expect_webhook, model)
        step = get_poller().step(
            request_id, self.request.id, self.request.retries or 0, enqueued_at, model=model
        )
    except redis.RedisError as exc:
        # Redis (records and broker) is away or full. Try again shortly; if even
        # that cannot be published, drop this message: the chain is in the sweep's
        # index (registered before its first message), which re-sends it later.
        if is_out_of_memory(exc):
            MEMORY.refused(f"following request {request_id}")
        else:
            log.warning("request %s: Redis unavailable (%s); retrying", request_id, exc)
        try:
            raise self.retry(countdown=2.0, max_retries=None,
                             exc=PollPending("Redis unavailable, retrying")) from None
        except Retry:
            raise
        except Exception:
            raise Ignore("Redis unavailable; the sweep resumes this chain") from None
    MEMORY.cleared()
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
    first = first_attempt_at or time.time()
    attempt = attempt_callback(request_id, task_id, url, attempt=self.request.retries or 0,
                               first_attempt_at=first)
    if isinstance(attempt, CallbackDone):
        return attempt.answer
    countdown = attempt.countdown_s
    raise self.retry(
        countdown=countdown, max_retries=None, kwargs={"first_attempt_at": first},
        exc=PollPending(f"callback failed ({attempt.reason}), retrying in {countdown:.0f} s"),
    )


def _send_chain(celery_app: Celery, chain: ChainToResume, retries: int) -> None:
    """Send message ``retries`` of a chain again, under its own task id, links and callback."""
    kwargs: dict[str, Any] = {"enqueued_at": chain.first_enqueued_at or time.time()}
    if chain.callback_url:
        kwargs["callback_url"] = chain.callback_url
    if chain.expect_webhook:
        kwargs["expect_webhook"] = True
    if chain.model:
        kwargs["model"] = chain.model
    celery_app.send_task(
        POLL_TASK_NAME, args=[chain.request_id], kwargs=kwargs, task_id=chain.task_id,
        retries=retries, link=chain.links.get("link"), link_error=chain.links.get("link_error"),
    )


def wake_chain(request_id: str, task_id: str, retries: int) -> None:
    """Run a sleeping chain's next message now (its outcome is recorded: it answers at once).

    The message still waiting out its countdown finds the chain answered and exits.
    """
    chain = _runtime.get_store().chain_to_resume(request_id, task_id)
    if chain is not None:
        _send_chain(app, chain, retries)


def _sweep(self: Task) -> dict[str, int]:
    """Re-send every chain far past its planned next message (lost in a crash or outage)."""
    settings = get_settings()
    store = _runtime.get_store()
    now = time.time()
    resent = forgotten = 0
    for rid, task_id, _due in store.overdue_chains(now - settings.sweep_stale_after_s):
        chain = store.chain_to_resume(rid, task_id)
        if chain is None:
            store.forget_chain(rid, task_id)  # the record expired: nothing to resume
            forgotten += 1
            continue
        _send_chain(self.app, chain, chain.retries)
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


class _NoSentEvent:
    """An event dispatcher that publishes nothing: Celery's ``task-sent`` for a sweep."""

    def publish(self, *args: Any, **kwargs: Any) -> None:
        return None


class SweepTask(Task):  # type: ignore[misc]
    """The sweep sends no task events, so Flower lists no row per run (every 30 s).

    ``send_events = False`` stops the worker's ``task-received/started/succeeded``
    for it (Celery's per-task switch). ``task-sent`` comes from the sender (beat)
    and has no per-task switch: ``task_send_sent_event`` is app-wide. Celery hands
    an ``event_dispatcher`` option to the publisher, so one that publishes nothing
    drops it for this task alone. What the sweep did is in beat's and the
    worker's logs (a WARNING when it re-sent anything).
    """

    send_events = False

    def apply_async(self, args: Any = None, kwargs: Any = None, *more: Any,
                    **options: Any) -> Any:
        options.setdefault("event_dispatcher", _NoSentEvent())
        return super().apply_async(args, kwargs, *more, **options)


def _install_all(celery_app: Celery) -> tuple[Any, Any, Any]:
    poll = celery_app.task(**TASK_OPTIONS)(_poll_request)
    callback = celery_app.task(name=CALLBACK_TASK_NAME, bind=True, acks_late=True,
                               reject_on_worker_lost=True, max_retries=None,
                               Request=PlannedRetryRequest)(_deliver_callback)
    sweeper = celery_app.task(name=SWEEP_TASK_NAME, base=SweepTask, bind=True,
                              ignore_result=True)(_sweep)
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
