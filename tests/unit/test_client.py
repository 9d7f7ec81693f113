"""The API wrapper maps every failure to this package's errors (httpx.MockTransport)."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from clipia_tasks import errors
from clipia_tasks.client import ClipiaClient, ResultNotReady

ID = "764cabcf-b745-4b3e-ae38-1200304cf45b"
KEY = "clipia_live_topsecret123"


def client_for(handler: Callable[[httpx.Request], httpx.Response]) -> ClipiaClient:
    transport = httpx.MockTransport(handler)
    return ClipiaClient(KEY, base_url="https://api.clipia.ai", transport=transport)


def envelope(status: int, code: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"error": {"type": "x", "code": code, "message": f"{code} happened"}}
    return httpx.Response(status, json=body, headers=headers)


def test_status_is_parsed_and_the_key_is_sent_but_not_shown() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200, json={"request_id": ID, "status": "IN_PROGRESS", "queue_position": None,
                       "progress": 42, "logs": []},
        )

    client = client_for(handler)
    snap = client.status(ID)
    assert (snap.status, snap.progress, snap.queue_position) == ("IN_PROGRESS", 42, None)
    assert seen[0].url.path == f"/v1/requests/{ID}/status"
    assert KEY in seen[0].headers["authorization"]
    assert KEY not in repr(client) and KEY not in str(vars(client))


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (401, "invalid_api_key", errors.AuthenticationError),
        (403, "insufficient_scope", errors.PermissionDeniedError),
        (404, "not_found", errors.RequestNotFoundError),
        (400, "invalid_request", errors.ApiError),
    ],
)
def test_final_statuses_become_final_errors(status: int, code: str, cls: type) -> None:
    with pytest.raises(cls) as info:
        client_for(lambda r: envelope(status, code)).status(ID)
    assert info.value.code == code and info.value.http_status == status
    assert ID in str(info.value) and KEY not in str(info.value)
    assert not errors.is_retryable(info.value)


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_throttling_and_server_errors_are_transient(status: int) -> None:
    with pytest.raises(errors.RetryableApiError) as info:
        client_for(lambda r: envelope(status, "x", {"Retry-After": "7"})).status(ID)
    assert info.value.retry_after_s == 7.0 and errors.is_retryable(info.value)
    assert info.value.http_status == status  # carried as a number, not sniffed from text


def test_retry_after_as_http_date_is_understood() -> None:
    with pytest.raises(errors.RetryableApiError) as info:
        client_for(
            lambda r: envelope(429, "rate_limit_exceeded",
                               {"Retry-After": "Wed, 21 Oct 2099 07:28:00 GMT"})
        ).status(ID)
    assert info.value.retry_after_s is not None and info.value.retry_after_s > 1e6


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, content=b""),
        httpx.Response(200, content=b"<html>oops</html>"),
        httpx.Response(200, json={"foo": 1}),
        httpx.Response(200, json={"request_id": ID, "status": 7}),
        httpx.Response(200, json={"request_id": ID, "status": "IN_PROGRESS", "progress": "x"}),
        httpx.Response(200, content=b'{"request_id": "'),
    ],
    ids=["empty", "html", "missing", "status-int", "progress-str", "truncated"],
)
def test_malformed_bodies_are_transient(response: httpx.Response) -> None:
    with pytest.raises(errors.MalformedResponseError):
        client_for(lambda r: response).status(ID)


def test_an_error_body_that_is_not_json_still_maps_by_status() -> None:
    with pytest.raises(errors.RetryableApiError):
        client_for(lambda r: httpx.Response(502, content=b"<html>bad gateway</html>")).status(ID)


@pytest.mark.parametrize(
    "exc",
    [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("x")],
)
def test_network_failures_are_transient(exc: Exception) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    with pytest.raises(errors.NetworkError):
        client_for(handler).status(ID)


def test_result_202_means_not_ready_and_200_returns_the_whole_body() -> None:
    bodies = iter([
        httpx.Response(202, json={"request_id": ID, "status": "IN_PROGRESS"}),
        httpx.Response(200, json={"request_id": ID, "status": "COMPLETED", "model": "m",
                                  "output": {"images": []}, "cost": 3, "new_field": True}),
    ])
    client = client_for(lambda r: next(bodies))
    assert client.result(ID) == ResultNotReady(202, "IN_PROGRESS")
    body = client.result(ID)
    assert isinstance(body, dict) and body["new_field"] is True and body["cost"] == 3
    assert json.dumps(body)  # JSON-ready for the result backend


def test_a_result_200_whose_status_is_not_terminal_is_told_apart_from_the_202_race() -> None:
    # Given a result endpoint that answers 200 with a body still IN_PROGRESS
    client = client_for(lambda r: httpx.Response(
        200, json={"request_id": ID, "status": "IN_PROGRESS", "output": None}))
    # When the result is asked
    answer = client.result(ID)
    # Then it is not a result, and says it came as a 200 (the poller backs off for it)
    assert answer == ResultNotReady(200, "IN_PROGRESS")
