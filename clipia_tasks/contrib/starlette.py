"""Starlette / FastAPI endpoints: Clipia webhooks, and live progress for the browser.

The webhook bridge::

    from clipia_tasks.contrib.starlette import clipia_webhook

    app.add_route("/hooks/clipia", clipia_webhook, methods=["POST"])      # Starlette
    app.add_api_route("/hooks/clipia", clipia_webhook, methods=["POST"])  # FastAPI

Live progress (server-sent events, the JSON snapshot, the widget script; needs the
``starlette`` extra for ``sse-starlette``)::

    from clipia_tasks.contrib.starlette import ProgressViews

    progress = ProgressViews()            # ProgressViews(authorize=owns_generation)
    app.add_route("/generations/{request_id}/events", progress.events)
    app.add_route("/generations/{request_id}/snapshot", progress.snapshot)
    app.add_route("/clipia/progress.js", progress.widget)

(FastAPI: the same three with ``app.add_api_route``.) The stream format is in
:mod:`clipia_tasks.contrib._sse`.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..live import awatch
from ..nouns import check_request_id
from ..webhooks import webhook_response
from ._sse import (
    SSE_HEADERS,
    SSE_MEDIA_TYPE,
    WIDGET_CONTENT_TYPE,
    WIDGET_HEADERS,
    ViewSettings,
    aframes,
    bad_id_answer,
    forbidden_answer,
    snapshot_answer,
    widget_js,
)

__all__ = ["Authorize", "ProgressViews", "clipia_webhook"]

#: ``authorize(request, request_id)``: may this request follow that generation?
Authorize = Callable[[Request, str], bool | Awaitable[bool]]


async def clipia_webhook(request: Request) -> JSONResponse:
    raw = await request.body()
    # Redis calls are blocking: keep them off the event loop.
    status, body = await run_in_threadpool(webhook_response, dict(request.headers), raw)
    return JSONResponse(body, status_code=status)


async def _encoded(frames: AsyncGenerator[str, None]) -> AsyncIterator[bytes]:
    # Bytes pass through sse-starlette untouched; a str would be wrapped in "data:".
    try:
        async for frame in frames:
            yield frame.encode()
    finally:
        await frames.aclose()


class ProgressViews(ViewSettings):
    """The three live-progress endpoints, for routes with a ``{request_id}`` parameter.

    ``authorize(request, request_id)`` (sync or async; a sync one runs in the thread
    pool) decides who may follow a request: ``False`` answers 403 before anything is
    read or streamed. The default lets everyone: **anyone who knows or guesses a
    request id can then follow that generation and see its output URL.** Pass one
    that checks the id belongs to the signed-in user.

    A stream ends after the final snapshot, or after ``timeout_s`` (``None``: no
    limit) with ``event: end``; a keep-alive comment goes out every ``heartbeat_s``.
    """

    authorize: Authorize | None

    def __init__(self, authorize: Authorize | None = None, *, timeout_s: float | None = 600.0,
                 heartbeat_s: float = 15.0) -> None:
        super().__init__(authorize, timeout_s=timeout_s, heartbeat_s=heartbeat_s)

    async def _allowed(self, request: Request, request_id: str) -> bool:
        if self.authorize is None:
            return True
        answer: Any
        if inspect.iscoroutinefunction(self.authorize):
            answer = await self.authorize(request, request_id)
        else:
            # A sync hook may query a database: off the event loop. (An object whose
            # __call__ is async hands back a coroutine from there: awaited here.)
            answer = await run_in_threadpool(self.authorize, request, request_id)
            if inspect.isawaitable(answer):
                answer = await answer
        return bool(answer)

    async def _checked(self, request: Request) -> str | JSONResponse:
        """The canonical request id, or the answer to give instead (400, 403)."""
        try:
            request_id = check_request_id(request.path_params["request_id"])
        except ValueError:
            status, body = bad_id_answer()
            return JSONResponse(body, status_code=status)
        if not await self._allowed(request, request_id):
            status, body = forbidden_answer()
            return JSONResponse(body, status_code=status)
        return request_id

    async def events(self, request: Request) -> Response:
        """``text/event-stream`` of the request's snapshots, closed after the final one."""
        from sse_starlette import EventSourceResponse, ServerSentEvent

        checked = await self._checked(request)
        if isinstance(checked, Response):
            return checked
        # awatch reads Redis in a thread; sse-starlette sends the keep-alive comments.
        frames = aframes(awatch(checked, timeout_s=self.timeout_s), timeout_s=self.timeout_s)
        return EventSourceResponse(
            _encoded(frames), headers=SSE_HEADERS, media_type=SSE_MEDIA_TYPE,
            ping=self.heartbeat_s, sep="\n",
            ping_message_factory=lambda: ServerSentEvent(comment="keep-alive", sep="\n"))

    async def snapshot(self, request: Request) -> JSONResponse:
        """The current snapshot as JSON: 200, 400 (not a UUID), 403, 404 (unknown), 503."""
        checked = await self._checked(request)
        if isinstance(checked, JSONResponse):
            return checked
        status, body = await run_in_threadpool(snapshot_answer, checked)
        return JSONResponse(body, status_code=status)

    async def widget(self, request: Request) -> Response:
        """``clipia-progress.js``, the browser widget that follows ``events``."""
        return Response(widget_js(), headers=WIDGET_HEADERS, media_type=WIDGET_CONTENT_TYPE)
