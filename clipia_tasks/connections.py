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
"""

from __future__ import annotations

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
    "SentinelUrl",
    "is_sentinel",
    "parse_sentinel_url",
    "redis_client",
    "sentinel_kwargs",
]

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
) -> redis.Redis:
    """A client for ``url`` (any form the settings accept); a Sentinel URL gives the master's."""
    if not is_sentinel(url):
        return redis.Redis.from_url(
            url, decode_responses=decode_responses, socket_timeout=socket_timeout_s,
            socket_connect_timeout=connect_timeout_s,
        )
    parsed = parse_sentinel_url(url)
    sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        list(parsed.sentinels),
        sentinel_kwargs=sentinel_kwargs(settings),
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=connect_timeout_s,
    )
    master: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        settings.sentinel_master,
        db=parsed.db,
        username=parsed.username,
        password=parsed.password,
        decode_responses=decode_responses,
    )
    return master
