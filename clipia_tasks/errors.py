"""Every error this package raises, under one root.

The tree::

    ClipiaTasksError
     ├── ConfigurationError        a setting is missing or malformed (worker start, call site)
 ├── RedisUnavailableError     Redis (broker or records) cannot be reached from this process
     │    └── RedisFullError       Redis refuses writes: maxmemory reached (noeviction)
     ├── TransientError            nothing usable came back; poll again later (never final)
     │    ├── NetworkError         connection refused / reset / timed out
     │    ├── MalformedResponseError  a 2xx whose body is not what the API documents
     │    └── RetryableApiError    429 / 5xx, with the server's Retry-After when given
     ├── ApiError                  a final 4xx came back: polling cannot succeed
     │    ├── AuthenticationError  401 invalid_api_key
     │    ├── PermissionDeniedError 403 insufficient_scope
     │    └── RequestNotFoundError 404 not_found
     ├── RequestFailedError        Clipia finished the request as FAILED
     │    └── RequestCanceledError Clipia finished the request as CANCELED
     └── PollTimeoutError          CLIPIA_POLL_TIMEOUT passed before a terminal status
                                   (``cause``: an undocumented status, or no terminal result)

The split between :class:`TransientError` ("poll again") and everything else
("stop") is the line between retryable and final; :func:`is_retryable` is the
one predicate that decides it.

Every exception that can leave a task is rebuilt by Celery's JSON result
backend as ``cls(*exc.args)``, so each ``__init__`` here takes exactly the
positional arguments it passes to ``super().__init__`` and nothing else. The
round trip is tested in ``tests/unit/test_errors.py``. No message ever includes
the API key: nothing here is given it.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ApiError",
    "AuthenticationError",
    "ClipiaTasksError",
    "ConfigurationError",
    "MalformedResponseError",
    "NetworkError",
    "PermissionDeniedError",
    "PollPending",
    "PollTimeoutError",
    "RedisFullError",
    "RedisUnavailableError",
    "RequestCanceledError",
    "RequestFailedError",
    "RequestNotFoundError",
    "RetryableApiError",
    "TransientError",
    "error_from_dict",
    "error_to_dict",
    "is_retryable",
]


class ClipiaTasksError(Exception):
    """Root of every error raised by clipia_tasks."""


class ConfigurationError(ClipiaTasksError):
    """A setting is missing or malformed. The message names the variable."""


class RedisUnavailableError(ClipiaTasksError):
    """Redis cannot be reached from this process (web side: nothing was enqueued or read).

    ``url`` is the URL tried, password redacted.
    """

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(url, reason)
        self.url = url
        self.reason = reason

    def __str__(self) -> str:
        return (
            f"cannot reach Redis at {self.url} ({self.reason}); nothing was enqueued or read: "
            "start Redis or fix REDIS_URL (or CELERY_BROKER_URL / CELERY_RESULT_BACKEND)"
        )


class RedisFullError(RedisUnavailableError):
    """Redis answers but refuses writes: it reached ``maxmemory`` (policy ``noeviction``).

    Nothing was enqueued. ``url`` is the URL tried, password redacted.
    """

    def __str__(self) -> str:
        return (
            f"Redis at {self.url} is out of memory ({self.reason}); nothing was enqueued: "
            "free memory or raise maxmemory there (keep maxmemory-policy noeviction), "
            "then call again"
        )


class TransientError(ClipiaTasksError):
    """Nothing usable came back from one call; the poller tries again later.

    ``retry_after_s`` is the server's ``Retry-After`` in seconds, when it gave one.
    """

    def __init__(self, request_id: str, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(request_id, reason, retry_after_s)
        self.request_id = request_id
        self.reason = reason
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        wait = f" (Retry-After {self.retry_after_s:g} s)" if self.retry_after_s is not None else ""
        return f"request {self.request_id}: {self.reason}{wait}; will poll again"


class NetworkError(TransientError):
    """Connection refused, reset, or timed out."""

    code = "network"


class MalformedResponseError(TransientError):
    """A 2xx answer whose body is missing, not JSON, or lacks documented fields."""

    code = "malformed"


class RetryableApiError(TransientError):
    """HTTP 429 or 5xx from the API; ``http_status`` says which (0 when unknown)."""

    def __init__(
        self,
        request_id: str,
        reason: str,
        retry_after_s: float | None = None,
        http_status: int = 0,
    ) -> None:
        ClipiaTasksError.__init__(self, request_id, reason, retry_after_s, http_status)
        self.request_id = request_id
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.http_status = http_status

    @property
    def code(self) -> str:
        """The API's error code (the reason ends with it), e.g. ``rate_limit_exceeded``."""
        return self.reason.rsplit(" ", 1)[-1]


class ApiError(ClipiaTasksError):
    """A final error status came back from the API; polling again cannot help."""

    def __init__(self, request_id: str, http_status: int, code: str, message: str) -> None:
        super().__init__(request_id, http_status, code, message)
        self.request_id = request_id
        self.http_status = http_status
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return (
            f"request {self.request_id}: Clipia answered HTTP {self.http_status} "
            f"{self.code or 'error'}: {self.message}{self._hint()}"
        )

    def _hint(self) -> str:
        return ""


class AuthenticationError(ApiError):
    """401: the API key is wrong or revoked."""

    def _hint(self) -> str:
        return " (check CLIPIA_API_KEY on the worker, then enqueue poll_request again)"


class PermissionDeniedError(ApiError):
    """403: the key lacks the scope for this call."""

    def _hint(self) -> str:
        return " (use a key with the needed scope, then enqueue poll_request again)"


class RequestNotFoundError(ApiError):
    """404: Clipia does not know this request id (typo, other account, or expired)."""

    def _hint(self) -> str:
        return " (check the request id and that the key belongs to the account that submitted it)"


class RequestFailedError(ClipiaTasksError):
    """Clipia finished the request without an output.

    ``status`` is ``FAILED`` or ``CANCELED``; ``code`` and ``message`` come from
    the result's ``error`` object (empty strings when the API gave none).
    """

    def __init__(self, request_id: str, status: str, code: str, message: str) -> None:
        super().__init__(request_id, status, code, message)
        self.request_id = request_id
        self.status = status
        self.code = code
        self.message = message

    def __str__(self) -> str:
        detail = f" {self.code}: {self.message}" if self.code or self.message else ""
        return f"request {self.request_id} ended {self.status}{detail}"


class RequestCanceledError(RequestFailedError):
    """The request was canceled out of band (e.g. from the Clipia web UI)."""


class PollTimeoutError(ClipiaTasksError):
    """The request did not reach a terminal status within CLIPIA_POLL_TIMEOUT.

    ``cause`` says why, when it was not simply a long generation: the API kept
    answering a status its docs do not list (:attr:`UNKNOWN_STATUS`), or
    ``/status`` said the request had ended but the result endpoint kept
    answering without a terminal result (:attr:`RESULT_NOT_TERMINAL`). Empty
    otherwise.
    """

    #: ``cause``: the last status answers were a value the API docs do not list.
    UNKNOWN_STATUS = "unknown_status"
    #: ``cause``: /status said terminal, the result endpoint kept answering not finished.
    RESULT_NOT_TERMINAL = "result_not_terminal"

    def __init__(
        self,
        request_id: str,
        waited_s: float,
        last_status: str,
        last_error: str = "",
        cause: str = "",
    ) -> None:
        super().__init__(request_id, waited_s, last_status, last_error, cause)
        self.request_id = request_id
        self.waited_s = waited_s
        self.last_status = last_status
        #: Why the last call failed, when the deadline came during API errors.
        self.last_error = last_error
        #: Why no terminal result came, when it was not the generation's length.
        self.cause = cause

    def __str__(self) -> str:
        status = self.last_status or "unknown"
        stopped = "polling stopped, though it may still finish on Clipia"
        if self.cause == self.UNKNOWN_STATUS:
            text = (
                f"request {self.request_id} still had the status {status!r}, which the API "
                f"docs do not list, after {self.waited_s:.1f} s (CLIPIA_POLL_TIMEOUT); "
                f"{stopped}. Neither /status nor the result endpoint said it had finished: "
                "check the request in the Clipia dashboard"
            )
        elif self.cause == self.RESULT_NOT_TERMINAL:
            text = (
                f"request {self.request_id}: /status said {status}, but the result endpoint "
                f"kept answering without a terminal result until the deadline "
                f"({self.waited_s:.1f} s, CLIPIA_POLL_TIMEOUT); polling stopped. Fetch the "
                f"result later (GET /v1/requests/{self.request_id}) or report it to Clipia"
            )
        else:
            text = (
                f"request {self.request_id} still {status} after {self.waited_s:.1f} s "
                f"(CLIPIA_POLL_TIMEOUT); {stopped}"
            )
        if self.last_error:
            return (
                f"{text}. The API was failing when time ran out (last: {self.last_error}): "
                "check CLIPIA_BASE_URL and the network (clipia-tasks doctor)"
            )
        if self.cause:
            return text
        return f"{text}: raise CLIPIA_POLL_TIMEOUT for generations this long"


class PollPending(ClipiaTasksError):
    """Not a failure: the reason a poller re-scheduled itself.

    Passed as ``exc`` to ``Task.retry``. The tasks' worker request class
    (``clipia_tasks.tasks.PlannedRetryRequest``) sends its ``str`` as the
    task-retried event's exception, without a traceback, so Flower shows
    ``IN_PROGRESS 42 %, next poll in 3.1 s``.
    """


def error_to_dict(exc: ClipiaTasksError) -> dict[str, Any]:
    """A JSON-ready form of one of this package's errors (for the request record)."""
    return {"type": type(exc).__name__, "args": list(exc.args)}


def error_from_dict(data: dict[str, Any]) -> ClipiaTasksError:
    """Rebuild an error stored by :func:`error_to_dict`."""
    cls = globals().get(str(data.get("type")))
    args = data.get("args") or []
    if isinstance(cls, type) and issubclass(cls, ClipiaTasksError):
        try:
            return cls(*args)
        except TypeError:
            pass
    return ClipiaTasksError(*args)


def is_retryable(exc: BaseException) -> bool:
    """True when polling again later may succeed (the one retry predicate)."""
    return isinstance(exc, TransientError)
