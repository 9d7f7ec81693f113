"""A record written by the code before the record package (layout 0) is resumed by today's.

During a rolling deploy old and new workers share Redis: a request an old worker
was polling must be carried on by a new one. ``tests/fixtures/record_layout0.json``
is a record captured from a real worker of commit 4936384 mid-flight (an owner
chain with a callback and a link, and a follower chain).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from clipia_tasks.celery_app import POLL_TASK_NAME, app
from clipia_tasks.record import CHAINS_KEY, LAYOUT_VERSION, RecordStore, record_key

from ..conftest import signal_counts, wait_for

pytestmark = pytest.mark.integration

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "record_layout0.json"
_TIMES = ("first_enqueued_at", "next_poll_at", "deadline_at", "call_started_at",
          "lease_until", "last_poll_at")


def _write_layout0_record(client: redis.Redis, request_id: str) -> dict[str, Any]:
    """The captured record under a fresh request id, its times moved to now."""
    data = json.loads(FIXTURE.read_text())
    shift = time.time() - data["captured_at"]
    fields = dict(data["record"])
    for name in _TIMES:
        fields[name] = repr(float(fields[name]) + shift)
    assert "layout" not in fields  # really the old layout
    client.hset(record_key(request_id), mapping=fields)
    client.expire(record_key(request_id), 600)
    for member, score in data["chains"]:
        task_id = member.split(" ")[1]
        client.zadd(CHAINS_KEY, {f"{request_id} {task_id}": score + shift})
    return {**data, "record": fields}


def test_a_layout0_record_is_resumed_by_the_sweep_reader_and_a_worker(
    celery_env: dict[str, str], simulator: Any, worker: Any, redis_client: redis.Redis
) -> None:
    # Given a request an old worker was polling (6 polls so far, at 8 %), still running
    rid = simulator.simulator.create({"run_s": 3, "progress": "linear"},
                                     request_id=str(uuid.uuid4()))
    data = _write_layout0_record(redis_client, rid)
    owner, follower = data["owner_task_id"], data["follower_task_id"]
    store = RecordStore(redis_client, ttl_s=600)

    # When the sweep reads what it needs to re-send the chains
    owner_chain = store.chain_to_resume(rid, owner)
    follower_chain = store.chain_to_resume(rid, follower)
    # Then it finds the old fields: message numbers, callback URL, links
    assert owner_chain is not None and owner_chain.retries == 6
    assert owner_chain.callback_url == "http://127.0.0.1:9/hook"
    assert owner_chain.links["link"][0]["task"] == "celery.accumulate"
    assert follower_chain is not None and follower_chain.retries == 5
    assert follower_chain.callback_url is None and follower_chain.links == {}
    before = store.get(rid)
    assert before is not None and before.layout == 0 and before.polls == 6
    assert before.history and before.progress == 8

    # When the chains' next messages arrive at a new worker (as after a redeploy)
    first = float(data["record"]["first_enqueued_at"])
    results = [
        app.send_task(POLL_TASK_NAME, args=[rid], kwargs={"enqueued_at": first},
                      task_id=task_id, retries=retries)
        for task_id, retries in ((owner, 6), (follower, 5))
    ]
    # Then the owner carries on polling where the old worker stopped, and both answer
    for res in results:
        assert res.get(timeout=30)["status"] == "COMPLETED"
    after = store.get(rid)
    assert after is not None and after.outcome == "COMPLETED"
    assert after.layout == LAYOUT_VERSION
    assert after.polls > 6  # counted on from the old record
    assert after.owner is None  # finish released the lease
    wait_for(lambda: signal_counts(redis_client, rid)["completed"] == 1)
    time.sleep(0.5)
    assert signal_counts(redis_client, rid) == {"completed": 1}
