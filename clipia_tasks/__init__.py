"""clipia_tasks: follow Clipia generations with Celery, without blocking your web app.

Quickstart::

    # web process (needs REDIS_URL only)
    from clipia_tasks import poll_request, get_state

    async_result = poll_request.delay(request_id)   # returns at once
    get_state(request_id).progress                  # live progress, no API call
    async_result.get(timeout=600)                   # the result body, if you want to wait

    # worker process (needs CLIPIA_API_KEY and REDIS_URL)
    #   celery -A clipia_tasks worker

    # completion, in the worker
    from clipia_tasks.signals import request_completed

    @request_completed.connect
    def on_done(sender, request_id, result, **kwargs): ...
"""

from __future__ import annotations

from ._version import __version__
from .celery_app import POLL_TASK_NAME, app, celery_config
from .errors import (
    ApiError,
    AuthenticationError,
    ClipiaTasksError,
    ConfigurationError,
    MalformedResponseError,
    NetworkError,
    PermissionDeniedError,
    PollTimeoutError,
    RedisFullError,
    RedisUnavailableError,
    RequestCanceledError,
    RequestFailedError,
    RequestNotFoundError,
    RetryableApiError,
    TransientError,
)
from .live import awatch, watch
from .record import RequestState
from .resume import ResumeAction, Resumed, resume
from .settings import Settings, get_settings
from .state import get_state
from .submit import Submission, submit
from .tasks import install, poll_request

__all__ = [
    "POLL_TASK_NAME",
    "ApiError",
    "AuthenticationError",
    "ClipiaTasksError",
    "ConfigurationError",
    "MalformedResponseError",
    "NetworkError",
    "PermissionDeniedError",
    "PollTimeoutError",
    "RedisFullError",
    "RedisUnavailableError",
    "RequestCanceledError",
    "RequestFailedError",
    "RequestNotFoundError",
    "RequestState",
    "ResumeAction",
    "Resumed",
    "RetryableApiError",
    "Settings",
    "Submission",
    "TransientError",
    "__version__",
    "app",
    "awatch",
    "celery_config",
    "get_settings",
    "get_state",
    "install",
    "poll_request",
    "resume",
    "submit",
    "watch",
]
