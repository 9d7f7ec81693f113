"""Every redis-py client this package makes, built from one URL by one function.

:func:`redis_client` accepts the URL forms the settings accept:

- ``redis://``, ``rediss://`` and ``unix://``: ``redis.Redis.from_url``;
- ``sentinel://[:password@]host:port/db;sentinel://host:port/db;...`` (Celery's
  form): a ``redis.sentinel.Sentinel`` over every listed sentinel, and the client
  of ``master_for(CLIPIA_SENTINEL_MASTER)``. Its pool asks the sentinels for the
  master before each new connection and drops connections to a master that was
  demoted, so the same client follows a failover. The password in the URL is the
  master's; the sentinels' own is ``CLIPIA_SENTINEL_PASSWORD``.

The database, user and password come from the first ``sentinel://`` part, as in
kombu and Celery; a later part that names another one is rejected by the settings.

:class:`FailoverGuard` checks, on a Sentinel-managed Redis only, that the writes the
completion signals depend on went to the current master and reached a replica
(``WAIT``) before the signals fire (see :mod:`clipia_tasks.delivery`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import redis
import redis.sentinel

if TYPE_CHECKING:
    from .settings import Settings

__all__ = [
    "SENTINEL_PORT",
    "SENTINEL_SOCKET_TIMEOUT_S",
    "FailoverGuard",
    "SentinelUrl",
    "UnconfirmedWriteError",
    "is_sentinel",
    "parse_sentinel_url",
    "redis_client",
    "sentinel_kwargs",
]

log = logging.getLogger("clipia_tasks.connections")

#: The port of a ``sentinel://`` part that names none (Redis Sentinel's default).
SENTINEL_PORT = 26379
#: Socket timeouts towards the sentinels themselves: they answer small queries, and a
#: sentinel host that is down must not hold a master lookup for the OS's connect timeout.
SENTINEL_SOCKET_TIMEOUT_S = 2.0


def is_sentinel(url: str) -> bool:
    """True for Celery's ``sentinel://...;sentinel://...`` form."""
    return url.strip().lower().startswith("sentinel://")


@dataclass(frozen=True)
class SentinelUrl:
    """A parsed ``sentinel://`` URL: where the sentinels are, and the master's database."""

    sentinels: tuple[tuple[str, int], ...]
    db: int = 0
    username: str | None = None
    password: str | None = None

    def __repr__(self) -> str:
        hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
        return f"SentinelUrl(sentinels=[{hosts}], db={self.db})"


def parse_sentinel_url(url: str) -> SentinelUrl:
    """Parse ``sentinel://host:port/db;...``; ValueError saying what is wrong (no secret)."""
    parts = [p.strip() for p in url.split(";") if p.strip()]
    if not parts:
        raise ValueError("names no sentinel, e.g. sentinel://10.0.0.1:26379/0")
    sentinels: list[tuple[str, int]] = []
    first: tuple[int, str | None, str | None] | None = None
    for part in parts:
        split = urlsplit(part)
        if split.scheme.lower() != "sentinel":
            raise ValueError(
                "mixes sentinel:// with another scheme: every ;-separated part must be "
                "sentinel://host:port/db"
            )
        try:
            host, port = split.hostname, split.port
        except ValueError:
            raise ValueError("has a sentinel:// part with a bad port") from None
        if not host:
            raise ValueError("has a sentinel:// part with no host, e.g. sentinel://10.0.0.1:26379/0")
        if split.query or split.fragment:
            raise ValueError(
                "takes no ?options on sentinel:// parts: TLS and timeouts for Sentinel are "
                "Celery transport options (docs/deployment.md)"
            )
        path = split.path.strip("/")
        if path and not path.isdigit():
            raise ValueError("has a sentinel:// part whose database is not a number")
        db = int(path or 0)
        username = unquote(split.username) if split.username else None
        password = unquote(split.password) if split.password is not None else None
        if first is None:
            first = (db, username, password)
        elif db != first[0] or (password is not None and (username, password) != first[1:]):
            # kombu and Celery take both from the first part: a different one would be ignored.
            raise ValueError(
                "names different databases or passwords in its sentinel:// parts: "
                "give them once, in the first part"
            )
        sentinels.append((host, port or SENTINEL_PORT))
    assert first is not None
    return SentinelUrl(tuple(sentinels), db=first[0], username=first[1], password=first[2])


def sentinel_kwargs(settings: Settings) -> dict[str, Any]:
    """Connection options towards the sentinels (timeouts; their password when set)."""
    kwargs: dict[str, Any] = {
        "socket_timeout": SENTINEL_SOCKET_TIMEOUT_S,
        "socket_connect_timeout": SENTINEL_SOCKET_TIMEOUT_S,
    }
    password = settings.sentinel_password
    if password is not None and password.get_secret_value():
        kwargs["password"] = password.get_secret_value()
    return kwargs


def redis_client(
    url: str,
    settings: Settings,
    *,
    decode_responses: bool = False,
    socket_timeout_s: float | None = None,
    connect_timeout_s: float | None = None,
    client_name: str | None = None,
) -> redis.Redis:
    """A client for ``url`` (any form the settings accept); a Sentinel URL gives the master's.

    ``client_name``: each connection names itself (``CLIENT SETNAME``), so ``CLIENT
    LIST`` tells which of this package's clients a connection belongs to.
    """
    if not is_sentinel(url):
        return redis.Redis.from_url(
            url, decode_responses=decode_responses, socket_timeout=socket_timeout_s,
            socket_connect_timeout=connect_timeout_s, client_name=client_name,
        )
    parsed = parse_sentinel_url(url)
    sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
        list(parsed.sentinels),
        sentinel_kwargs=sentinel_kwargs(settings),
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=connect_timeout_s,
    )
    master: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call,unused-ignore]
        settings.sentinel_master,
        db=parsed.db,
        username=parsed.username,
        password=parsed.password,
        decode_responses=decode_responses,
        client_name=client_name,
    )
    return master


class UnconfirmedWriteError(redis.ConnectionError):
    """A write may not survive a failover: the master changed or is changing, or no
    replica acknowledged it in time. A Redis ``ConnectionError``: retry later."""


class FailoverGuard:
    """Before anyone hears of a write: is it on the current master, and on a replica?

    Redis replicates asynchronously, and Sentinel fails over without asking the
    clients: a write acknowledged by a master that dies, or by a master the sentinels
    are replacing, is lost. After ``SENTINEL FAILOVER`` the old master even keeps
    accepting writes from the connections it has for up to ~20 s, until the
    sentinels turn it into a replica, which drops them; redis-py asks the sentinels
    for the master only when it opens a connection. :meth:`confirm` closes that
    window for the writes others act on (the completion signals, once per request):

    1. it asks every sentinel about the master. If one of them is failing it over,
       or the newest configuration (highest ``config-epoch``) names another master
       than the one this client's connections go to, it raises
       :class:`UnconfirmedWriteError`, and the pool drops its idle connections, so
       the retry opens new ones to the master the sentinels name then;
    2. with a replica online (``INFO replication``, looked at again at most every
       ``recheck_s`` and after any doubt), it runs ``WAIT 1 <timeout_ms>`` and raises
       if no replica acknowledged. With no replica online (none configured, the
       last one died, or it is in a full resync) there is nothing to wait for, and
       it does not.

    Cost per call: one query per sentinel (a sentinel that failed is skipped for
    ``recheck_s``) and one ``WAIT``: a round trip plus a replica's acknowledgement.
    ``WAIT`` covers the writes of the connection it runs on: a worker child of the
    prefork pool runs one task at a time, so that is the connection of its last
    write; with the threads pool another thread may have taken that connection in
    between, and the wait then covers less. It narrows the window to the instant
    between the check and a failover; it is not a consensus protocol.
    """

    def __init__(self, client: redis.Redis, master_name: str, *, timeout_ms: int = 200,
                 recheck_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.master_name = master_name
        self.timeout_ms = timeout_ms
        self.recheck_s = recheck_s
        self._clock = clock
        self._lock = threading.Lock()
        self._replicas = 0
        self._checked_at: float | None = None
        self._sentinel_failed_at: dict[int, float] = {}

    def __repr__(self) -> str:
        return f"FailoverGuard(master_name={self.master_name!r}, timeout_ms={self.timeout_ms})"

    def _forget_replicas(self) -> None:
        with self._lock:
            self._checked_at = None

    def _sentinel_states(self, pool: Any) -> list[dict[str, Any]]:
        states = []
        now = self._clock()
        for i, sentinel in enumerate(pool.sentinel_manager.sentinels):
            failed_at = self._sentinel_failed_at.get(i)
            if failed_at is not None and now - failed_at < self.recheck_s:
                continue
            try:
                states.append(sentinel.sentinel_master(self.master_name))
            except (redis.RedisError, OSError):
                self._sentinel_failed_at[i] = now
        return states

    def _start_over(self, pool: Any) -> None:
        """Forget what was known: the retry asks the sentinels on fresh connections."""
        self._forget_replicas()
        pool.disconnect(inuse_connections=False)

    def _check_master(self) -> None:
        pool: Any = self.client.connection_pool
        if not isinstance(pool, redis.sentinel.SentinelConnectionPool):
            return
        connected_to = pool.master_address
        if connected_to is None:
            return  # no connection opened since the last change: nothing written
        states = self._sentinel_states(pool)
        if not states:
            raise UnconfirmedWriteError("no sentinel answered: cannot tell the master")
        if any("failover_in_progress" in str(s.get("flags", "")) for s in states):
            self._start_over(pool)
            raise UnconfirmedWriteError(f"a failover of {self.master_name!r} is under way")
        newest = max(states, key=lambda s: int(s.get("config-epoch") or 0))
        named = (str(newest["ip"]), int(newest["port"]))
        if named != (str(connected_to[0]), int(connected_to[1])):
            self._start_over(pool)
            raise UnconfirmedWriteError(
                f"the sentinels moved {self.master_name!r} from "
                f"{connected_to[0]}:{connected_to[1]} to {named[0]}:{named[1]}: "
                "what was just written there may be lost"
            )

    def _replicas_connected(self) -> int:
        now = self._clock()
        with self._lock:
            if self._checked_at is not None and now - self._checked_at < self.recheck_s:
                return self._replicas
        info = self.client.info("replication")
        # Only replicas streaming; one in a full resync could not acknowledge for a while.
        count = sum(1 for name, value in info.items() if name.startswith("slave")
                    and isinstance(value, dict) and value.get("state") == "online")
        with self._lock:
            self._replicas, self._checked_at = count, now
        return count

    def confirm(self, *, strict: bool = True) -> int | None:
        """Replicas that acknowledged the last write; ``None`` when none is connected.

        ``strict`` raises :class:`UnconfirmedWriteError` (or the Redis error) when the
        write may be lost: use it before acting on the write. Otherwise a doubt is
        logged: use that after the fact, when nothing can be taken back.
        """
        try:
            self._check_master()
            if not self._replicas_connected():
                return None
            acked = int(self.client.wait(1, self.timeout_ms))
            if acked < 1:
                self._forget_replicas()  # the replica may be gone: look again next time
                raise UnconfirmedWriteError(
                    f"no replica acknowledged the write within {self.timeout_ms} ms")
        except redis.RedisError as exc:
            if strict:
                raise
            log.warning("a write may not survive a failover: %s", exc)
            return None
        return acked
