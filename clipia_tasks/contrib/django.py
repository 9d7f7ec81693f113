"""Django views: Clipia webhooks, and live progress for the browser.

The webhook bridge::

    # urls.py
    from clipia_tasks.contrib.django import clipia_webhook

    urlpatterns = [path("hooks/clipia", clipia_webhook)]

Live progress (server-sent events, the JSON snapshot, the widget script)::

    from clipia_tasks.contrib.django import ProgressViews

    progress = ProgressViews()            # ProgressViews(authorize=owns_generation)
    urlpatterns = [
        path("generations/<str:request_id>/events", progress.events),
        path("generations/<str:request_id>/snapshot", progress.snapshot),
        path("clipia/progress.js", progress.widget),
    ]

Under ASGI (uvicorn, daphne) a stream is a coroutine on the event loop, so one process
holds many. Under WSGI (runserver, gunicorn) each open stream holds a worker thread
for as long as it lasts, and a server's request timeout (gunicorn sync workers: 30 s)
cuts it. The stream format is in :mod:`clipia_tasks.contrib._sse`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.handlers.asgi import ASGIRequest
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    HttpResponseNotAllowed,
    JsonResponse,
    StreamingHttpResponse,
)
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from ..live import afollow, follow
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
    frames,
    snapshot_answer,
    widget_js,
)

__all__ = ["Authorize", "ProgressViews", "clipia_webhook"]

#: ``authorize(request, request_id)``: may this request follow that generation?
Authorize = Callable[[HttpRequest, str], bool]


@csrf_exempt  # type: ignore[untyped-decorator]  # Clipia signs the body; no CSRF token
@require_POST  # type: ignore[untyped-decorator]
def clipia_webhook(request: HttpRequest) -> Any:
    status, body = webhook_response(dict(request.headers), request.body)
    return JsonResponse(body, status=status)


class ProgressViews(ViewSettings):
    """The three live-progress views, for paths with a ``<str:request_id>`` parameter.

    ``authorize(request, request_id)`` decides who may follow a request: ``False``
    answers 403 before anything is read or streamed. The default lets everyone:
    **anyone who knows or guesses a request id can then follow that generation and
    see its output URL.** Pass one that checks the id belongs to ``request.user``.

    A stream ends after the final snapshot, or after ``timeout_s`` (``None``: no
    limit) with ``event: end``; a keep-alive comment goes out every ``heartbeat_s``.
    The views are plain (sync) views: they work under WSGI and ASGI alike, and under
    ASGI the stream itself is asynchronous.
    """

    authorize: Authorize | None

    def __init__(self, authorize: Authorize | None = None, *, timeout_s: float | None = 600.0,
                 heartbeat_s: float = 15.0) -> None:
        super().__init__(authorize, timeout_s=timeout_s, heartbeat_s=heartbeat_s)

    def _checked(self, request: HttpRequest, request_id: str, methods: tuple[str, ...]
                 ) -> str | HttpResponseBase:
        """The canonical request id, or the answer to give instead (405, 400, 403)."""
        if request.method not in methods:
            return HttpResponseNotAllowed(list(methods))
        try:
            request_id = check_request_id(request_id)
        except ValueError:
            status, body = bad_id_answer()
            return JsonResponse(body, status=status)
        if self.authorize is not None and not self.authorize(request, request_id):
            status, body = forbidden_answer()
            return JsonResponse(body, status=status)
        return request_id

    def events(self, request: HttpRequest, request_id: str) -> HttpResponseBase:
        """``text/event-stream`` of the request's snapshots, closed after the final one."""
        checked = self._checked(request, request_id, ("GET",))
        if not isinstance(checked, str):
            return checked
        content: Any
        if isinstance(request, ASGIRequest):
            # An async iterator: Django's ASGI handler sends each frame as it comes.
            content = aframes(afollow(checked, timeout_s=self.timeout_s,
                                      heartbeat_s=self.heartbeat_s), timeout_s=self.timeout_s)
        else:
            # WSGI would consume an async iterator whole before sending anything.
            content = frames(follow(checked, timeout_s=self.timeout_s,
                                    heartbeat_s=self.heartbeat_s), timeout_s=self.timeout_s)
        response = StreamingHttpResponse(content, content_type=SSE_MEDIA_TYPE)
        for name, value in SSE_HEADERS.items():
            response[name] = value
        return response

    def snapshot(self, request: HttpRequest, request_id: str) -> HttpResponseBase:
        """The current snapshot as JSON: 200, 400 (not a UUID), 403, 404 (unknown), 503."""
        checked = self._checked(request, request_id, ("GET", "HEAD"))
        if not isinstance(checked, str):
            return checked
        status, body = snapshot_answer(checked)
        return JsonResponse(body, status=status)

    def widget(self, request: HttpRequest) -> HttpResponseBase:
        """``clipia-progress.js``, the browser widget that follows ``events``."""
        if request.method not in ("GET", "HEAD"):
            return HttpResponseNotAllowed(["GET", "HEAD"])
        response = HttpResponse(widget_js(), content_type=WIDGET_CONTENT_TYPE)
        for name, value in WIDGET_HEADERS.items():
            response[name] = value
        return response
