"""Errors: messages name the request and what to do; all survive Celery's JSON backend."""

from __future__ import annotations

import json

import pytest
from celery import Celery

import clipia_tasks
from clipia_tasks import errors

ID = "764cabcf-b745-4b3e-ae38-1200304cf45b"

SAMPLES = [
    errors.NetworkError(ID, "ConnectError: refused"),
    errors.MalformedResponseError(ID, "unexpected response body"),
    errors.RetryableApiError(ID, "Clipia answered HTTP 429 rate_limit_exceeded", 2.0, 429),
    errors.ApiError(ID, 400, "invalid_request", "bad"),
    errors.AuthenticationError(ID, 401, "invalid_api_key", "Invalid API key"),
    errors.PermissionDeniedError(ID, 403, "insufficient_scope", "no scope"),
    errors.RequestNotFoundError(ID, 404, "not_found", "Unknown request"),
    errors.RequestFailedError(ID, "FAILED", "generation_failed", "The model failed"),
    errors.RequestCanceledError(ID, "CANCELED", "canceled", "Canceled in the web UI"),
    errors.PollTimeoutError(ID, 12.5, "IN_PROGRESS"),
    errors.PollTimeoutError(ID, 3.0, "SUBMITTED", "ConnectError: [Errno 111] refused"),
    errors.PollTimeoutError(ID, 60.0, "DONE", "", errors.PollTimeoutError.UNKNOWN_STATUS),
    errors.PollTimeoutError(ID, 60.0, "COMPLETED", "",
                            errors.PollTimeoutError.RESULT_NOT_TERMINAL),
    errors.RedisUnavailableError("redis://:***@cache:6379/0", "ConnectionError"),
    errors.PollPending("IN_PROGRESS 42 %, next poll in 3.1 s"),
    errors.ConfigurationError("CLIPIA_API_KEY is not set"),
]


@pytest.mark.parametrize("exc", SAMPLES, ids=lambda e: type(e).__name__)
def test_every_error_round_trips_through_the_json_result_backend(exc: Exception) -> None:
    # Given Celery's Redis result backend configured for JSON (no connection is made)
    app = Celery("roundtrip", backend="redis://127.0.0.1:1/0", set_as_current=False)
    app.conf.result_serializer = "json"
    backend = app.backend
    # When the exception is stored and read back as the backend does
    stored = json.loads(json.dumps(backend.prepare_exception(exc)))
    back = backend.exception_to_python(stored)
    # Then it comes back as the same class with the same attributes and message
    assert type(back) is type(exc)
    assert back.args == exc.args
    assert str(back) == str(exc)
    assert vars(back) == vars(exc)


def test_messages_name_the_request_and_the_api_code() -> None:
    text = str(errors.RequestNotFoundError(ID, 404, "not_found", "Unknown request"))
    assert ID in text and "not_found" in text and "404" in text
    assert "CLIPIA_API_KEY" in str(errors.AuthenticationError(ID, 401, "invalid_api_key", "x"))
    timeout = str(errors.PollTimeoutError(ID, 12.5, "IN_PROGRESS"))
    assert ID in timeout and "12.5 s" in timeout and "CLIPIA_POLL_TIMEOUT" in timeout
    failing = str(errors.PollTimeoutError(ID, 3.0, "SUBMITTED", "ConnectError: refused"))
    assert "ConnectError: refused" in failing and "CLIPIA_BASE_URL" in failing
    down = str(errors.RedisUnavailableError("redis://cache:6379/0", "ConnectionError"))
    assert "redis://cache:6379/0" in down and "REDIS_URL" in down and "nothing was enqueued" in down


def test_a_timeout_with_a_cause_names_it_instead_of_suggesting_a_longer_timeout() -> None:
    # Given the deadline passed while the status was undocumented, or the result never came
    unknown = errors.PollTimeoutError(ID, 60.0, "DONE", "", errors.PollTimeoutError.UNKNOWN_STATUS)
    no_result = errors.PollTimeoutError(ID, 60.0, "COMPLETED", "",
                                        errors.PollTimeoutError.RESULT_NOT_TERMINAL)
    # Then each message says what happened, and neither suggests raising the timeout
    assert "'DONE'" in str(unknown) and "do not list" in str(unknown)
    assert "/status said COMPLETED" in str(no_result) and "result endpoint" in str(no_result)
    for exc in (unknown, no_result):
        assert ID in str(exc) and "60.0 s" in str(exc)
        assert "raise CLIPIA_POLL_TIMEOUT" not in str(exc)
    # while a plain long generation still gets that advice
    assert "raise CLIPIA_POLL_TIMEOUT" in str(errors.PollTimeoutError(ID, 60.0, "IN_PROGRESS"))


def test_callers_can_catch_failures_by_class() -> None:
    assert issubclass(errors.RequestCanceledError, errors.RequestFailedError)
    for cls in (errors.ApiError, errors.RequestFailedError, errors.PollTimeoutError):
        assert issubclass(cls, errors.ClipiaTasksError)
    assert errors.is_retryable(errors.RetryableApiError(ID, "x"))
    assert not errors.is_retryable(errors.RequestNotFoundError(ID, 404, "not_found", "x"))


@pytest.mark.parametrize("exc", SAMPLES[:-2], ids=lambda e: type(e).__name__)
def test_record_serialization_rebuilds_the_same_error(exc: errors.ClipiaTasksError) -> None:
    back = errors.error_from_dict(json.loads(json.dumps(errors.error_to_dict(exc))))
    assert type(back) is type(exc) and back.args == exc.args


def test_public_names_match_dunder_all() -> None:
    import types

    public = {
        name for name, value in vars(clipia_tasks).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    } - {"annotations"}
    assert public | {"__version__"} == set(clipia_tasks.__all__)
