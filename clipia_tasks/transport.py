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

Also, kombu pops a message and records it as unacknowledged in separate
commands; Redis refusing the second with ``OutOfMemoryError`` (``maxmemory``
reached with ``noeviction``) would end the worker. ``QoS.append`` turns it into a
connection error: the consumer reconnects, and the message it could not
record is re-sent by the sweep (every chain is registered before its first
message is published, see :mod:`clipia_tasks.tasks`).

The reproduction that fails without this module is
``tests/integration/test_redis_restart.py``. The fix uses kombu internals of the
5.7 series; ``check_kombu_version`` warns at worker start outside the tested range.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import kombu
import redis
from kombu.transport import redis as kombu_redis

__all__ = ["TESTED_KOMBU", "SentinelTransport", "Transport", "check_kombu_version"]

log = logging.getLogger("clipia_tasks.transport")

#: kombu versions (major, minor) this module was tested against.
TESTED_KOMBU = ((5, 7),)

#: Delivery tags of messages held when the connection dropped, still in Redis's
#: ``unacked`` hash, to move back to their queues once a channel is open again.
_UNRESTORED: set[str] = set()
_unrestored_lock = threading.Lock()


class QoS(kombu_redis.QoS):
    """Keeps unrestorable tags for later; an out-of-memory refusal is a connection error."""

    def append(self, message: Any, delivery_tag: str) -> None:
        try:
            super().append(message, delivery_tag)  # type: ignore[no-untyped-call]
        except redis.exceptions.OutOfMemoryError as exc:
            raise redis.exceptions.ConnectionError(
                "Redis refused to record a fetched message as unacknowledged: it is out of "
                "memory (maxmemory reached); reconnecting. The sweep re-sends the message."
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
        if self.connection.client is None:
            raise redis.exceptions.ConnectionError(
                "the broker connection is closed; reconnecting")
        return super()._connparams(asynchronous)  # type: ignore[misc]  # mixin: kombu Channel

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


class Channel(_RestoringChannel, kombu_redis.Channel):
    QoS = QoS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._restore_held_messages()


class SentinelChannel(_RestoringChannel, kombu_redis.SentinelChannel):
    QoS = QoS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._restore_held_messages()


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`Channel`."""

    Channel = Channel
    driver_name = "redis"


class SentinelTransport(kombu_redis.SentinelTransport):
    """kombu's Redis Sentinel transport with :class:`SentinelChannel`."""

    Channel = SentinelChannel
    driver_name = "redis"


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
