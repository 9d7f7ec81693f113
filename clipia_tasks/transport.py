"""kombu's Redis transports, fixed so a worker rides through a Redis restart or failover.

Selected by ``celery_config`` through Celery's ``broker_transport`` setting
(``clipia_tasks.transport:Transport`` for ``redis://`` / ``rediss://``,
``clipia_tasks.transport:SentinelTransport`` for ``sentinel://``).

The defect (kombu 5.7.0 with Celery 5.7.0): when the broker connection drops,
Celery's consumer closes the connection right after ``collect()`` has set the
transport's ``client`` to ``None``. Closing the default channel runs
``restore_unacked_once``, which builds a new connection pool from
``self.connection.client.hostname`` and dies with an ``AttributeError`` — not a
connection error, so it escapes and the worker exits with "Unrecoverable
error". Every worker that holds countdown messages (this package's always do)
dies on any Redis restart.

The fix, in three parts:

a. ``Channel._connparams`` raises a Redis ``ConnectionError`` when the
   transport's client is gone, so nothing builds a pool from ``None``;
b. ``QoS.restore_unacked`` that cannot reach Redis keeps the delivery tags it
   could not restore (process-wide, in :data:`_UNRESTORED`) instead of raising:
   the messages themselves stay in Redis's ``unacked`` hash, where kombu put
   them when they were fetched;
c. every new channel (the consumer's reconnect makes one) first moves those
   tags back to their queues (``restore_by_tag``), so the worker fetches the
   messages again and runs each at its original ETA, once.

Also, a Redis that reached ``maxmemory`` (``noeviction``) refuses writes with
``OutOfMemoryError``, which would end the worker wherever the consumer writes:

* kombu pops a message and records it as unacknowledged in separate commands:
  ``QoS.append`` turns a refusal into a connection error, the consumer
  reconnects, and the message it could not record is re-sent by the sweep
  (every chain is registered before its first message is published, see
  :mod:`clipia_tasks.tasks`);
* ``QoS.restore_visible`` (a lock and a move, at every reconnect and now and
  then) skips the round; ``QoS.reject`` with requeue keeps the tag for the
  next reconnect;
* anywhere else (declaring queues at a reconnect, say), ``OutOfMemoryError`` —
  and ``ReadOnlyError``, a replica still answering as the old master after a
  failover — count as connection errors: the consumer reconnects with backoff.

The reproduction that fails without this module is
``tests/integration/test_redis_restart.py``. The fix uses kombu internals of the
5.7 series; ``check_kombu_version`` warns at worker start outside the tested range.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import kombu
import redis
from kombu.transport import redis as kombu_redis

from .redis_health import MEMORY, is_out_of_memory

__all__ = ["TESTED_KOMBU", "SentinelTransport", "Transport", "after_reconnect",
           "check_kombu_version"]

log = logging.getLogger("clipia_tasks.transport")

#: kombu versions (major, minor) this module was tested against.
TESTED_KOMBU = ((5, 7),)

#: Delivery tags of messages held when the connection dropped, still in Redis's
#: ``unacked`` hash, to move back to their queues once a channel is open again.
_UNRESTORED: set[str] = set()
_unrestored_lock = threading.Lock()

#: Called (without arguments) each time a channel is open, after held messages are
#: restored; the worker checks there whether Redis lost its data. Exceptions are logged.
after_reconnect: list[Callable[[], None]] = []


class QoS(kombu_redis.QoS):
    """Keeps unrestorable tags for later; an out-of-memory refusal is a connection error."""

    def append(self, message: Any, delivery_tag: str) -> None:
        try:
            super().append(message, delivery_tag)  # type: ignore[no-untyped-call]
        except redis.exceptions.OutOfMemoryError as exc:
            MEMORY.refused("recording a fetched message as unacknowledged")
            raise redis.exceptions.ConnectionError(
                "Redis refused to record a fetched message as unacknowledged: it is out of "
                "memory (maxmemory reached); reconnecting. The sweep re-sends the message."
            ) from exc
        MEMORY.cleared()

    def _remove_from_indices(self, delivery_tag: str, pipe: Any = None) -> Any:
        # An ack is two deletes. kombu sends them in MULTI/EXEC, which a full Redis
        # refuses whole (queuing a command costs memory); acks that fail leave the
        # prefetch window full and the consumer stalls. Sent without MULTI, deletes
        # go through. (restore_by_tag still passes its own transaction.)
        if pipe is None:
            with self.channel.conn_or_acquire() as client:
                pipe = client.pipeline(transaction=False)
        return super()._remove_from_indices(delivery_tag, pipe)  # type: ignore[no-untyped-call]

    def restore_visible(self, *args: Any, **kwargs: Any) -> None:
        # Takes a lock (SET) and moves messages (LPUSH): both refused when Redis is
        # full. Skip this round; the messages stay in the unacked hash for the next.
        try:
            super().restore_visible(*args, **kwargs)  # type: ignore[no-untyped-call]
        except redis.RedisError as exc:
            if not is_out_of_memory(exc):
                raise
            MEMORY.refused("restoring messages past the visibility timeout")

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        try:
            super().reject(delivery_tag, requeue)  # type: ignore[no-untyped-call]
        except redis.RedisError as exc:
            if not is_out_of_memory(exc):
                raise
            # Still in the unacked hash: put it back on its queue after a reconnect.
            with _unrestored_lock:
                _UNRESTORED.add(delivery_tag)
            MEMORY.refused("requeueing a rejected message")
            raise redis.exceptions.ConnectionError(
                "Redis refused to requeue a message: it is out of memory; reconnecting"
            ) from exc

    def restore_unacked(self, client: Any = None) -> None:
        tags = list(self._delivered)
        try:
            super().restore_unacked(client)  # type: ignore[no-untyped-call]
        except (redis.RedisError, OSError) as exc:
            # Redis is away: the messages are safe in its unacked hash. Move them back
            # to their queues once a channel is open again (Channel.__init__).
            with _unrestored_lock:
                _UNRESTORED.update(tags)
            self._delivered.clear()
            log.warning("broker connection lost with %d message(s) held (%s); they go back "
                        "to their queues when Redis answers again", len(tags), exc)


class _RestoringChannel:
    """Mixed into kombu's Redis channels: part (a) and (c) of the fix."""

    connection: Any
    qos: Any

    def _connparams(self, asynchronous: bool = False) -> Any:
        # A channel closed by a lost connection has no connection at all: a task that
        # was running then acks through it afterwards (seen: a worker stopped with
        # "Unrecoverable error: AttributeError" after a Redis restart). A connection
        # error instead is logged by kombu, and the message stays unacked in Redis, to
        # be restored and redelivered (a redelivered poll is harmless).
        if self.connection is None or self.connection.client is None:
            raise redis.exceptions.ConnectionError(
                "the broker connection is closed; reconnecting")
        return super()._connparams(asynchronous)  # type: ignore[misc]  # mixin: kombu Channel

    # A reconnect declares the queues again. On a full Redis, kombu's declaration (a
    # binding written with SADD, a queue size read inside MULTI) is refused, the
    # consumer restarts at once, and again: a tight loop that Celery cuts short with
    # "Frequent restarts detected", after which the worker was once seen to stop
    # consuming. A binding that is already there, and a size read without MULTI,
    # need no memory: declare from them instead.

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        try:
            super()._queue_bind(exchange, routing_key, pattern, queue)  # type: ignore[misc]
        except redis.RedisError as exc:
            if not is_out_of_memory(exc):
                raise
            key = self.keyprefix_queue % (exchange,)  # type: ignore[attr-defined]
            member = self.sep.join([routing_key or "", pattern or "", queue or ""])  # type: ignore[attr-defined]
            with self.conn_or_acquire() as client:  # type: ignore[attr-defined]
                if not client.sismember(key, member):
                    raise
            MEMORY.refused("declaring a queue (its binding is in place)")

    def _size(self, queue: str) -> int:
        try:
            return int(super()._size(queue))  # type: ignore[misc]
        except redis.RedisError as exc:
            if not is_out_of_memory(exc):
                raise
            with self.conn_or_acquire() as client:  # type: ignore[attr-defined]
                pipe = client.pipeline(transaction=False)
                for pri in self.priority_steps:  # type: ignore[attr-defined]
                    pipe.llen(self._q_for_pri(queue, pri))  # type: ignore[attr-defined]
                return sum(n for n in pipe.execute() if isinstance(n, int))

    def _restore_held_messages(self) -> None:
        with _unrestored_lock:
            tags = sorted(_UNRESTORED)
        if not tags:
            return
        restored = 0
        for tag in tags:
            try:
                self.qos.restore_by_tag(tag)
            except (redis.RedisError, OSError) as exc:
                log.warning("could not restore held messages yet (%s); will try again", exc)
                break
            with _unrestored_lock:
                _UNRESTORED.discard(tag)
            restored += 1
        log.info("reconnected to the broker: %d held message(s) back in their queues",
                 restored)

    def _after_reconnect(self) -> None:
        for hook in list(after_reconnect):
            try:
                hook()
            except Exception:
                log.exception("after-reconnect check failed")


class Channel(_RestoringChannel, kombu_redis.Channel):
    QoS = QoS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._restore_held_messages()
        self._after_reconnect()


class SentinelChannel(_RestoringChannel, kombu_redis.SentinelChannel):
    QoS = QoS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._restore_held_messages()
        self._after_reconnect()


#: Redis refusing writes (full) or a replica answering as the old master after a
#: failover: the consumer reconnects instead of exiting ("Unrecoverable error").
_RECONNECT_ON = (redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError)


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`Channel`."""

    Channel = Channel
    driver_name = "redis"
    connection_errors = kombu_redis.Transport.connection_errors + _RECONNECT_ON


class SentinelTransport(kombu_redis.SentinelTransport):
    """kombu's Redis Sentinel transport with :class:`SentinelChannel`."""

    Channel = SentinelChannel
    driver_name = "redis"
    connection_errors = kombu_redis.SentinelTransport.connection_errors + _RECONNECT_ON


def check_kombu_version() -> bool:
    """Warn (once, at worker start) when kombu is outside the tested range; True inside it."""
    parts = tuple(int(p) for p in kombu.__version__.split(".")[:2] if p.isdigit())
    if parts in TESTED_KOMBU:
        return True
    tested = ", ".join(f"{a}.{b}.x" for a, b in TESTED_KOMBU)
    log.warning(
        "kombu %s is outside the range clipia-tasks tested its broker transport with "
        "(%s): workers may not ride through a Redis restart. Pin kombu to a tested "
        "version, or run tests/integration/test_redis_restart.py against yours.",
        kombu.__version__, tested,
    )
    return False
