"""Reading a request's live state from a web process: one Redis call, no API call."""

from __future__ import annotations

import redis

from . import _runtime
from .errors import RedisUnavailableError
from .nouns import check_request_id
from .record import RequestState
from .settings import get_settings, redact_url

__all__ = ["get_state"]


def get_state(request_id: str) -> RequestState | None:
    """The latest status, queue position, progress and poll times of a request.

    ``None`` when Redis has no record of the id: never enqueued, expired after
    ``CLIPIA_RECORD_TTL``, or lost with Redis's data (then :func:`clipia_tasks.resume`
    follows it again). An id enqueued but not polled yet has a state with status
    ``SUBMITTED`` and ``polls`` 0: ``delay()`` records it before it returns. Raises
    ``ValueError`` for an id that is not a UUID and
    :class:`~clipia_tasks.errors.RedisUnavailableError` when Redis does not answer.
    """
    request_id = check_request_id(request_id)
    try:
        return _runtime.get_store().get(request_id)
    except redis.RedisError as exc:
        url = redact_url(get_settings().backend)
        raise RedisUnavailableError(url, type(exc).__name__) from exc
