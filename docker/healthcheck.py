#!/usr/bin/env python3
"""Container healthcheck for the clipia-tasks image: exit 0 if healthy, 1 if not.

``clipia-healthcheck``
    PING the broker and the result backend this container is configured with,
    read through the package's own settings (``CELERY_BROKER_URL`` /
    ``CELERY_RESULT_BACKEND``, else ``REDIS_URL``; ``.env`` in the working
    directory counts), so it checks exactly the Redis the worker uses (with a
    ``sentinel://`` URL, the master the sentinels name). About
    0.3 s. It proves Redis answers and the configuration is valid; it does not
    prove the worker consumes (``celery -A clipia_tasks inspect ping`` does, at
    seconds per check).

``clipia-healthcheck --http URL``
    GET ``URL`` and expect a 2xx: Flower's ``/healthcheck`` (no auth needed) or the
    simulator's ``/_sim/health``.

One line on stdout says why it failed; URLs are printed without their password.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request
from urllib.parse import urlsplit

TIMEOUT_S = 5.0


def _redacted(url: str) -> str:
    """The URL without passwords, in each ``;``-separated part of a sentinel:// URL."""
    out = []
    for part in url.split(";"):
        parts = urlsplit(part)
        if parts.password is not None:
            netloc = parts.netloc.rsplit("@", 1)[1]
            user = f"{parts.username}:***@" if parts.username else "***@"
            part = parts._replace(netloc=user + netloc).geturl()
        out.append(part)
    return ";".join(out)


def check_redis() -> str | None:
    """None if every Redis URL in the configuration answers PING, else the reason."""
    try:
        from clipia_tasks.connections import redis_client
        from clipia_tasks.settings import load_settings

        settings = load_settings()
    except Exception as exc:  # a config error is a reason to be unhealthy, not a crash
        return f"cannot read the configuration: {exc}"
    for url in dict.fromkeys((settings.broker, settings.backend)):
        try:
            # redis://, rediss://, unix:// and sentinel:// (through the sentinels).
            client = redis_client(
                url, settings, socket_timeout_s=TIMEOUT_S, connect_timeout_s=TIMEOUT_S
            )
            try:
                client.ping()
            finally:
                client.close()
        except Exception as exc:
            return f"redis {_redacted(url)}: {type(exc).__name__}: {exc}"
    return None


def check_http(url: str) -> str | None:
    """None if GET url answers 2xx, else the reason."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
            if 200 <= resp.status < 300:
                return None
            return f"GET {url}: HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return f"GET {url}: HTTP {exc.code}"
    except Exception as exc:
        return f"GET {url}: {type(exc).__name__}: {exc}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clipia-healthcheck", description=__doc__.split("\n")[0])
    parser.add_argument("--http", metavar="URL", help="GET this URL instead of pinging Redis")
    args = parser.parse_args(argv)
    problem = check_http(args.http) if args.http else check_redis()
    if problem:
        print(f"unhealthy: {problem}", flush=True)
        return 1
    print("ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
