"""The worker side: completion signals, handled with Django available.

Load it into the worker::

    celery -A clipia_tasks worker -I examples.django_app.receivers

Each signal fires once per request id, in one worker process, after the outcome
is recorded. ``delivery_id`` is stable (the request id): keep side effects
idempotent on it, since a receiver that crashed before returning runs again.
"""

from __future__ import annotations

import os
from typing import Any

import django

# A worker process is not a Django process until something sets Django up; in a
# project this usually lives in the module that creates your Celery app.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_app.settings")
django.setup()

from django.core.cache import cache  # noqa: E402

from clipia_tasks.signals import request_completed, request_failed  # noqa: E402

from .views import completion_key  # noqa: E402


@request_completed.connect
def generation_completed(sender: Any, request_id: str, result: dict[str, Any],
                         delivery_id: str, **kwargs: Any) -> None:
    # In your app: Generation.objects.filter(request_id=request_id).update(...), e-mail the
    # user, ... cache.add() writes only once, so a repeated delivery changes nothing.
    cache.add(completion_key(request_id), {
        "outcome": "COMPLETED",
        "output": result.get("output"),
        "delivery_id": delivery_id,
        "worker_pid": os.getpid(),
    })


@request_failed.connect
def generation_failed(sender: Any, request_id: str, result: dict[str, Any] | None,
                      error: Exception, delivery_id: str, **kwargs: Any) -> None:
    cache.add(completion_key(request_id), {
        "outcome": "FAILED",
        "error": {"type": type(error).__name__, "message": str(error)},
        "delivery_id": delivery_id,
        "worker_pid": os.getpid(),
    })
