"""Follow a request's record as it changes, pushed from Redis: no API call, no key.

::

    from clipia_tasks import watch, awatch

    for snapshot in watch(request_id, timeout_s=600):      # a sync view, a script
        print(snapshot["status"], snapshot["progress"])   # get_state(id).as_dict()

    async for snapshot in awatch(request_id, timeout_s=600):   # an ASGI view
        ...

Both start with the current snapshot, yield each change, and end after the one whose
``outcome`` is set (at once for a request that has already ended). An id Redis does not
know yet is waited for (``poll_request.delay`` may come a moment later) until
``timeout_s``, which raises :class:`TimeoutError`; ``None`` waits as long as it takes.

How it works. The Lua scripts that change what :meth:`RequestState.as_dict` shows
PUBLISH a short hint on the request's change channel in the same atomic step (the channel is
named in :mod:`clipia_tasks.record.keys`). Each process has one subscriber thread with
one Redis connection (:class:`_Hub`), subscribed to the channels of the ids its
watchers follow; a hint wakes those watchers, and each re-reads the record (one
``HGETALL``). Pub/sub rather than Streams: the record is the state, a message is only
"look again", so nothing has to be stored, trimmed or acknowledged per request, and a
watcher that misses a message loses nothing — it re-reads on every (re)subscription,
and at least every :data:`RESYNC_S` anyway. After a Redis restart or a Sentinel
failover the subscriber reconnects (a Sentinel URL finds the new master), subscribes
again, and every watcher re-reads. A watcher that cannot reach Redis for
:data:`UNAVAILABLE_GRACE_S` in a row raises
:class:`~clipia_tasks.errors.RedisUnavailableError`.

:func:`follow` / :func:`afollow` are the same streams with a ``None`` whenever nothing
changed for ``heartbeat_s``: what an SSE view needs to send keep-alive comments.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import redis

from . import _runtime
from .errors import RedisUnavailableError
from .nouns import check_request_id
from .record import CHANGES_PREFIX, changes_channel
from .state import get_state

__all__ = ["RESYNC_S", "UNAVAILABLE_GRACE_S", "afollow", "awatch", "follow", "watch"]

log = logging.getLogger("clipia_tasks.live")

#: A watcher re-reads the record at least this often even when no hint arrives.
RESYNC_S = 60.0
#: A watcher gives up (RedisUnavailableError) after Redis failed this long in a row.
UNAVAILABLE_GRACE_S = 60.0
#: How soon a new subscription is sent; also the subscriber's idle wake-up period.
_TICK_S = 0.25
#: The subscriber thread ends (and closes its connection) after this long without watchers.
_IDLE_EXIT_S = 30.0
#: While Redis fails: a watcher tries again this often.
_RETRY_S = 0.5

Snapshot = dict[str, Any]


class _Hub:
    """One process's pub/sub subscriber: one connection, fanned out to local watchers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wakers: dict[str, set[Callable[[], None]]] = {}
        self._ops: queue.SimpleQueue[tuple[bool, str]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def add(self, request_id: str, wake: Callable[[], None]) -> None:
        with self._lock:
            wakers = self._wakers.setdefault(request_id, set())
            if not wakers:
                self._ops.put((True, request_id))
            wakers.add(wake)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="clipia-live",
                                                daemon=True)
                self._thread.start()

    def remove(self, request_id: str, wake: Callable[[], None]) -> None:
        with self._lock:
            wakers = self._wakers.get(request_id)
            if wakers is None:
                return
            wakers.discard(wake)
            if not wakers:
                del self._wakers[request_id]
                self._ops.put((False, request_id))

    def watched(self) -> int:
        """How many request ids this process's watchers follow (for tests and metrics)."""
        with self._lock:
            return len(self._wakers)

    def _wake(self, request_id: str | None) -> None:
        with self._lock:
            if request_id is None:
                wakers = [w for ws in self._wakers.values() for w in ws]
            else:
                wakers = list(self._wakers.get(request_id, ()))
        for wake in wakers:
            wake()

    def _run(self) -> None:
        idle_since: float | None = None
        failing = False
        backoff = _TICK_S
        while True:
            try:
                pubsub = _runtime.get_store().redis.pubsub()  # type: ignore[no-untyped-call,unused-ignore]
            except redis.RedisError:  # pragma: no cover - building a pubsub does no I/O
                time.sleep(backoff)
                continue
            try:
                # A new connection: every channel again (the confirmations wake the
                # watchers, who re-read what changed while no one listened).
                with self._lock:
                    channels = [changes_channel(rid) for rid in self._wakers]
                    while not self._ops.empty():
                        self._ops.get_nowait()
                if channels:
                    pubsub.subscribe(*channels)
                while True:
                    self._apply_ops(pubsub)
                    message = pubsub.get_message(timeout=_TICK_S)
                    if failing:
                        log.info("live progress: subscribed to Redis again")
                        failing, backoff = False, _TICK_S
                    if message is not None:
                        channel = message["channel"]
                        if isinstance(channel, bytes):
                            channel = channel.decode()
                        if message["type"] in ("message", "subscribe"):
                            self._wake(str(channel)[len(CHANGES_PREFIX):])
                    with self._lock:
                        if self._wakers:
                            idle_since = None
                        elif idle_since is None:
                            idle_since = time.monotonic()
                        elif time.monotonic() - idle_since > _IDLE_EXIT_S:
                            self._thread = None
                            return
            except (redis.RedisError, OSError) as exc:
                if not failing:
                    log.warning("live progress: lost the Redis subscription (%s); "
                                "reconnecting", type(exc).__name__)
                failing = True
                self._wake(None)  # watchers find out for themselves, and retry
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                try:
                    pubsub.close()
                except Exception:
                    pass
            with self._lock:
                if not self._wakers and idle_since is not None and (
                        time.monotonic() - idle_since > _IDLE_EXIT_S):
                    self._thread = None
                    return

    def _apply_ops(self, pubsub: Any) -> None:
        subscribe: list[str] = []
        unsubscribe: list[str] = []
        while not self._ops.empty():
            on, rid = self._ops.get_nowait()
            (subscribe if on else unsubscribe).append(changes_channel(rid))
        with self._lock:  # an id re-added since its removal stays subscribed
            unsubscribe = [c for c in unsubscribe
                           if c[len(CHANGES_PREFIX):] not in self._wakers]
        if subscribe:
            pubsub.subscribe(*subscribe)
        if unsubscribe:
            pubsub.unsubscribe(*unsubscribe)


def _hub() -> _Hub:
    return _runtime.cached("live_hub", _Hub)


class _Reader:
    """What a sync and an async watcher share: dedupe, deadline, Redis failures."""

    def __init__(self, request_id: str, timeout_s: float | None) -> None:
        try:
            self.request_id = check_request_id(request_id)
        except ValueError:
            # The shared check speaks for poll_request; say who asked.
            raise ValueError(f"watch: {request_id!r} is not a Clipia request id; pass the "
                             "UUID that submit returned") from None
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self.timeout_s = timeout_s
        self.last: Snapshot | None = None
        self.failing_since: float | None = None
        self.read_at = 0.0

    def read(self) -> Snapshot | bool | None:
        """The snapshot if it changed; False when it did not (or Redis failed)."""
        try:
            state = get_state(self.request_id)
        except RedisUnavailableError:
            now = time.monotonic()
            self.read_at = now  # the next try comes _RETRY_S later, not at once
            if self.failing_since is None:
                self.failing_since = now
            elif now - self.failing_since > UNAVAILABLE_GRACE_S:
                raise
            return False
        self.failing_since = None
        self.read_at = time.monotonic()
        if state is None:
            return False
        snap = state.as_dict()
        if snap == self.last:
            return False
        self.last = snap
        return snap

    def wait_s(self, heartbeat_at: float | None) -> float:
        """How long to sleep before the next look (a hint may wake it earlier)."""
        now = time.monotonic()
        if self.deadline is not None and now >= self.deadline:
            ended = self.last is not None
            raise TimeoutError(
                f"request {self.request_id}: no outcome within {self.timeout_s:g} s"
                if ended else
                f"request {self.request_id} is not known to Redis after {self.timeout_s:g} s"
                " (was poll_request.delay called for it?)")
        limit = self.read_at + (RESYNC_S if self.failing_since is None else _RETRY_S)
        ends = [limit]
        if self.deadline is not None:
            ends.append(self.deadline)
        if heartbeat_at is not None:
            ends.append(heartbeat_at)
        return max(min(ends) - now, 0.0)


def follow(request_id: str, *, timeout_s: float | None = None,
           heartbeat_s: float | None = 15.0) -> Iterator[Snapshot | None]:
    """:func:`watch`, plus ``None`` whenever nothing changed for ``heartbeat_s``."""
    reader = _Reader(request_id, timeout_s)
    event = threading.Event()
    hub = _hub()
    hub.add(reader.request_id, event.set)
    try:
        beat_at = None if heartbeat_s is None else time.monotonic() + heartbeat_s
        while True:
            event.clear()  # before reading: a hint during the read is not lost
            snap = reader.read()
            if snap:
                yield snap  # type: ignore[misc]
                if snap["outcome"]:  # type: ignore[index]
                    return
                beat_at = None if heartbeat_s is None else time.monotonic() + heartbeat_s
            while True:
                woke = event.wait(reader.wait_s(beat_at))
                if beat_at is not None and time.monotonic() >= beat_at:
                    yield None
                    beat_at = time.monotonic() + heartbeat_s  # type: ignore[operator]
                if woke or time.monotonic() >= reader.read_at + (
                        RESYNC_S if reader.failing_since is None else _RETRY_S):
                    break
    finally:
        hub.remove(reader.request_id, event.set)


def watch(request_id: str, *, timeout_s: float | None = None) -> Iterator[Snapshot]:
    """Snapshots of a request (``get_state(id).as_dict()``) as they change.

    Starts with the current one and ends after the one whose ``outcome`` is set.
    Raises ``ValueError`` for an id that is not a UUID, :class:`TimeoutError` after
    ``timeout_s`` (an id Redis does not know yet is waited for until then), and
    :class:`~clipia_tasks.errors.RedisUnavailableError` when Redis stays unreachable
    for :data:`UNAVAILABLE_GRACE_S`.
    """
    for snap in follow(request_id, timeout_s=timeout_s, heartbeat_s=None):
        if snap is not None:
            yield snap


async def afollow(request_id: str, *, timeout_s: float | None = None,
                  heartbeat_s: float | None = 15.0) -> AsyncIterator[Snapshot | None]:
    """:func:`awatch`, plus ``None`` whenever nothing changed for ``heartbeat_s``."""
    reader = _Reader(request_id, timeout_s)
    loop = asyncio.get_running_loop()
    event = asyncio.Event()

    def wake() -> None:  # from the subscriber thread
        loop.call_soon_threadsafe(event.set)

    hub = _hub()
    hub.add(reader.request_id, wake)
    try:
        beat_at = None if heartbeat_s is None else time.monotonic() + heartbeat_s
        while True:
            event.clear()
            # The read blocks on Redis: off the event loop.
            snap = await asyncio.to_thread(reader.read)
            if snap:
                yield snap  # type: ignore[misc]
                if snap["outcome"]:  # type: ignore[index]
                    return
                beat_at = None if heartbeat_s is None else time.monotonic() + heartbeat_s
            while True:
                wait_s = reader.wait_s(beat_at)  # raises TimeoutError past the deadline
                try:
                    await asyncio.wait_for(event.wait(), wait_s)
                    woke = True
                except TimeoutError:
                    woke = False
                if beat_at is not None and time.monotonic() >= beat_at:
                    yield None
                    beat_at = time.monotonic() + heartbeat_s  # type: ignore[operator]
                if woke or time.monotonic() >= reader.read_at + (
                        RESYNC_S if reader.failing_since is None else _RETRY_S):
                    break
    finally:
        hub.remove(reader.request_id, wake)


async def awatch(request_id: str, *, timeout_s: float | None = None
                 ) -> AsyncIterator[Snapshot]:
    """The async twin of :func:`watch`, for ASGI apps: the same snapshots and errors."""
    async for snap in afollow(request_id, timeout_s=timeout_s, heartbeat_s=None):
        if snap is not None:
            yield snap
