"""The baseline for throughput: a bare Celery retry chain, loaded into a worker with -I."""

from __future__ import annotations

import os
from typing import Any

import redis

from clipia_tasks import app

_redis = redis.Redis.from_url(os.environ["REDIS_URL"])


@app.task(name="bench.bare_chain", bind=True, max_retries=None, acks_late=True)
def bare_chain(self: Any, n: int) -> None:
    _redis.incr("bench:bare_runs")
    raise self.retry(countdown=0)
