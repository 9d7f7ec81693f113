"""Flask views: Clipia webhooks, and live progress for the browser.

The webhook bridge::

    from clipia_tasks.contrib.flask import clipia_webhook

    app.add_url_rule("/hooks/clipia", view_func=clipia_webhook, methods=["POST"])

Live progress (server-sent events, the JSON snapshot, the widget script)::

    from clipia_tasks.contrib.flask import ProgressViews

    progress = ProgressViews()            # ProgressViews(authorize=owns_generation)
    app.add_url_rule("/generations/<request_id>/events", "clipia_events", progress.events)
    app.add_url_rule("/generations/<request_id>/snapshot", "clipia_snapshot", progress.snapshot)
    app.add_url_rule("/clipia/progress.js", "clipia_widget", progress.widget)

Each open stream holds one WSGI worker thread for as long as it lasts (up to
``timeout_s``): run enough threads (``gunicorn --threads`` / gevent), and a request
timeout longer than the streams. The stream format is in :mod:`clipia_tasks.contrib._sse`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Request, Response, jsonify, request, stream_with_context

from ..live import follow
from ..nouns import check_request_id
from ..webhooks import webhook_response
from ._sse import (
    SSE_HEADERS,
    SSE_MEDIA_TYPE,
    WIDGET_CONTENT_TYPE,
    WIDGET_HEADERS,
    ViewSettings,
    bad_id_answer,
    forbidden_answer,
    frames,
    snapshot_answer,
    widget_js,
)

__all__ = ["Authorize", "ProgressViews", "clipia_webhook"]

#: ``authorize(flask.request, request_id)``: may this request follow that generation?
Authorize = Callable[[Request, str], bool]


def clipia_webhook() -> Any:
    status, body = webhook_response(dict(request.headers), request.get_data())
    return jsonify(body), status


class ProgressViews(ViewSettings):
    """The three live-progress views, for rules with a ``<request_id>`` variable.

    ``authorize(flask.request, request_id)`` decides who may follow a request:
    ``False`` answers 403 before anything is read or streamed. The default lets
    everyone: **anyone who knows or guesses a request id can then follow that
    generation and see its output URL.** Pass one that checks the id belongs to the
    signed-in user.

    A stream ends after the final snapshot, or after ``timeout_s`` (``None``: no
    limit) with ``event: end``; a keep-alive comment goes out every ``heartbeat_s``.
    """

    authorize: Authorize | None

    def __init__(self, authorize: Authorize | None = None, *, timeout_s: float | None = 600.0,
                 heartbeat_s: float = 15.0) -> None:
        super().__init__(authorize, timeout_s=timeout_s, heartbeat_s=heartbeat_s)

    def _checked(self, request_id: str) -> str | tuple[Response, int]:
        """The canonical request id, or the answer to give instead (400, 403)."""
        try:
            request_id = check_request_id(request_id)
        except ValueError:
            status, body = bad_id_answer()
            return jsonify(body), status
        if self.authorize is not None and not self.authorize(request, request_id):
            status, body = forbidden_answer()
            return jsonify(body), status
        return request_id

    def events(self, request_id: str) -> Any:
        """``text/event-stream`` of the request's snapshots, closed after the final one."""
        checked = self._checked(request_id)
        if not isinstance(checked, str):
            return checked
        stream = frames(follow(checked, timeout_s=self.timeout_s, heartbeat_s=self.heartbeat_s),
                        timeout_s=self.timeout_s)
        return Response(stream_with_context(stream), mimetype=SSE_MEDIA_TYPE,
                        headers=SSE_HEADERS)

    def snapshot(self, request_id: str) -> Any:
        """The current snapshot as JSON: 200, 400 (not a UUID), 403, 404 (unknown), 503."""
        checked = self._checked(request_id)
        if not isinstance(checked, str):
            return checked
        status, body = snapshot_answer(checked)
        return jsonify(body), status

    def widget(self) -> Response:
        """``clipia-progress.js``, the browser widget that follows ``events``."""
        return Response(widget_js(), content_type=WIDGET_CONTENT_TYPE, headers=WIDGET_HEADERS)
