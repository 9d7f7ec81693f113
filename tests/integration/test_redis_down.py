"""With Redis down, the web side gets one clear error naming the URL, and nothing is sent."""

from __future__ import annotations

import uuid

import pytest
from celery import Celery

from clipia_tasks import RedisUnavailableError, get_state, install
from clipia_tasks.redis_server import free_port

pytestmark = pytest.mark.integration


def test_delay_with_redis_down_names_the_url_and_enqueues_nothing() -> None:
    dead = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    app = Celery("down", broker=dead, backend=dead, set_as_current=False)
    # Give up reconnecting quickly (the bundled app's config allows 5 s)
    app.conf.result_backend_transport_options = {"retry_policy": {"timeout": 1.0}}
    with pytest.raises(RedisUnavailableError) as info:
        install(app).delay(str(uuid.uuid4()))
    text = str(info.value)
    assert "127.0.0.1" in text and "REDIS_URL" in text and "nothing was enqueued" in text
    assert "hunter2" not in text


def test_get_state_with_redis_down_names_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    from clipia_tasks import _runtime
    from clipia_tasks.settings import reset_settings

    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.delenv("CELERY_RESULT_BACKEND", raising=False)
    reset_settings()
    _runtime.reset()
    try:
        with pytest.raises(RedisUnavailableError, match="cannot reach Redis at redis://127"):
            get_state(str(uuid.uuid4()))
    finally:
        monkeypatch.undo()
        reset_settings()
        _runtime.reset()
