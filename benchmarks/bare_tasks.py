"""The baseline for throughput: a bare Celery retry chain, loaded into a worker with -I.

Each run makes what a poll makes besides our own work: one keep-alive GET of the
request's status from the same simulator (httpx, one client per process), then
``self.retry(countdown=0)``. The ratio of ``poll_request`` to this then measures our
Redis work and logic, not the HTTP call.
"""

from __future__ import annotations

import os
from typing import Any

import httpx

from clipia_tasks import app

_client: httpx.Client | None = None
_pid = 0


def _http() -> httpx.Client:
    global _client, _pid
    if _client is None or _pid != os.getpid():  # one per (forked) process
        _client = httpx.Client(
            base_url=os.environ["CLIPIA_BASE_URL"], trust_env=False, timeout=10,
            headers={"Authorization": f"Key {os.environ['CLIPIA_API_KEY']}"})
        _pid = os.getpid()
    return _client


@app.task(name="bench.bare_chain", bind=True, max_retries=None, acks_late=True)
def bare_chain(self: Any, request_id: str) -> None:
    _http().get(f"/v1/requests/{request_id}/status").raise_for_status()
    raise self.retry(countdown=0)
