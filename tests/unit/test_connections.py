"""One helper builds every Redis client: plain URLs as redis-py does, Sentinel URLs
through the sentinels (no server needed: redis-py connects lazily)."""

from __future__ import annotations

import pytest
import redis
import redis.sentinel

from clipia_tasks.connections import (
    SENTINEL_PORT,
    SentinelUrl,
    is_sentinel,
    parse_sentinel_url,
    redis_client,
)
from clipia_tasks.settings import load_settings


def test_a_sentinel_url_names_every_sentinel_and_the_masters_db_and_password() -> None:
    url = "sentinel://:p%40ss%20word@10.0.0.1:26380/3; sentinel://10.0.0.2/3 ;"
    parsed = parse_sentinel_url(url)
    assert parsed == SentinelUrl(
        sentinels=(("10.0.0.1", 26380), ("10.0.0.2", SENTINEL_PORT)), db=3,
        password="p@ss word",
    )
    assert "p@ss" not in repr(parsed)
    assert is_sentinel(" SENTINEL://h:1/0") and not is_sentinel("redis://h:6379/0")


def test_a_sentinel_url_gives_a_client_of_the_master_the_sentinels_name() -> None:
    # Given three sentinels, the master's password in the URL and the sentinels' own
    settings = load_settings(sentinel_master="clipia-main", sentinel_password="s-pw")
    url = "sentinel://:m-pw@10.0.0.1:26379/2;sentinel://10.0.0.2:26379/2"
    # When a client is built
    client = redis_client(url, settings, decode_responses=True, socket_timeout_s=3,
                          connect_timeout_s=1)
    # Then it asks those sentinels for that master, and logs in to each with its password
    pool = client.connection_pool
    assert isinstance(pool, redis.sentinel.SentinelConnectionPool)
    assert pool.service_name == "clipia-main" and pool.is_master
    kwargs = pool.connection_kwargs
    assert (kwargs["db"], kwargs["password"], kwargs["decode_responses"]) == (2, "m-pw", True)
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (3, 1)
    sentinels = pool.sentinel_manager.sentinels
    assert [(s.connection_pool.connection_kwargs["host"],
             s.connection_pool.connection_kwargs["port"]) for s in sentinels] == [
        ("10.0.0.1", 26379), ("10.0.0.2", 26379)]
    assert all(s.connection_pool.connection_kwargs["password"] == "s-pw" for s in sentinels)
    assert "m-pw" not in repr(client) and "s-pw" not in repr(client)


@pytest.mark.parametrize("url", ["redis://:pw@h:6379/4", "rediss://h:6380/0",
                                 "unix:///run/redis.sock?db=1"])
def test_plain_urls_are_what_redis_py_makes_of_them(url: str) -> None:
    client = redis_client(url, load_settings(), socket_timeout_s=2, connect_timeout_s=2)
    assert not isinstance(client.connection_pool, redis.sentinel.SentinelConnectionPool)
    assert client.connection_pool.connection_kwargs["socket_timeout"] == 2
