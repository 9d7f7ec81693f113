"""Flask: submit a generation, show its progress, receive completion as an HTTP callback.

The worker POSTs the outcome to ``/callbacks/clipia``, signed like Clipia's webhooks
with ``CLIPIA_CALLBACK_SECRET``; the view verifies it with the official SDK and keeps
each delivery once (``X-Clipia-Webhook-Id`` is stable across retries). The page at
``/`` submits and opens ``/generations/<id>/view``, where the browser follows the
request live (``clipia_tasks.contrib.flask.ProgressViews``). Run it from the
repository root (see README.md)::

    flask --app examples.flask_app.app run
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from typing import Any

from clipia import verify_signature
from flask import Flask, jsonify, request, url_for

import clipia_tasks
from clipia_tasks.contrib.flask import ProgressViews, clipia_webhook

from ..pages import index_page, view_page

#: "sim/image" is a model of the simulator; set CLIPIA_EXAMPLE_MODEL for the real API.
MODEL = os.environ.get("CLIPIA_EXAMPLE_MODEL", "sim/image")

app = Flask(__name__)

# Callback deliveries received: delivery id -> body, and request id -> body. An example
# keeps them in memory (one process); your app writes them to its database, with a
# unique constraint on the delivery id.
_lock = threading.Lock()
DELIVERIES: dict[str, dict[str, Any]] = {}
OUTCOMES: dict[str, dict[str, Any]] = {}


def public_url(endpoint: str) -> str:
    """An absolute URL of this app the workers can reach (PUBLIC_URL behind a proxy)."""
    base = os.environ.get("PUBLIC_URL")
    if base:
        return base.rstrip("/") + url_for(endpoint)
    return url_for(endpoint, _external=True)


@app.post("/generations")
def create_generation() -> Any:
    body = request.get_json(silent=True) or {}
    prompt = body.get("prompt")
    if (not isinstance(prompt, str) or not prompt.strip()
            or not isinstance(body.get("live_progress", False), bool)):
        return jsonify(error='expected JSON {"prompt": "...", "sim"?: {...}, '
                             '"live_progress"?: true}'), 400
    generation_input: dict[str, Any] = {"prompt": prompt}
    if body.get("sim") is not None:
        generation_input["sim"] = body["sim"]  # the simulator's script
    # No webhook here, so the request is always polled and "live_progress" needs nothing
    # more: its progress reaches /generations/<id>/events as the polls see it.
    sub = clipia_tasks.submit(
        MODEL,
        generation_input,
        caller_id=str(body.get("client_ref") or uuid.uuid4()),  # idempotent on retries
        callback_url=public_url("receive_callback"),
    )
    return jsonify(request_id=sub.request_id, task_id=sub.result.id), 202


@app.get("/generations/<request_id>")
def generation_status(request_id: str) -> Any:
    try:
        state = clipia_tasks.get_state(request_id)  # one Redis read, no API call
    except ValueError:  # not a UUID
        state = None
    if state is None:
        return jsonify(error="unknown request id (or not polled yet)"), 404
    with _lock:
        callback = OUTCOMES.get(request_id)
    return jsonify({**state.as_dict(), "callback": callback})


@app.post("/callbacks/clipia")
def receive_callback() -> Any:
    raw = request.get_data()
    secret = clipia_tasks.get_settings().require_callback_secret()
    if not verify_signature(secret, dict(request.headers), raw):
        return jsonify(error="invalid or expired signature"), 401
    delivery_id = request.headers.get("X-Clipia-Webhook-Id", "")
    try:
        body = json.loads(raw)
        request_id = body["request_id"]
    except (ValueError, KeyError, TypeError):
        return jsonify(error="malformed body"), 400
    with _lock:
        duplicate = delivery_id in DELIVERIES
        if not duplicate:
            DELIVERIES[delivery_id] = body
            # body["status"] is "OK" (with "payload") or "ERROR" (with "error")
            OUTCOMES[request_id] = body
    # Any 2xx ends the retries; answer duplicates 200 too.
    return jsonify(ok=True, duplicate=duplicate)


@app.get("/")
def index() -> Any:
    """The prompt form: it POSTs to /generations, then opens the live view."""
    return index_page()


@app.get("/generations/<request_id>/view")
def generation_view(request_id: str) -> Any:
    """One generation, followed live in the browser by /clipia/progress.js."""
    page = view_page(request_id)
    return page if page is not None else ("not a Clipia request id", 404)


# Live progress: the SSE stream, the JSON snapshot (the widget's fallback), the widget.
# Anyone who knows a request id may follow it here; in your app pass
# ProgressViews(authorize=lambda request, request_id: <the signed-in user owns it>).
# Each open stream holds a server thread until it ends: run a threaded server.
progress = ProgressViews()
app.add_url_rule("/generations/<request_id>/events", "generation_events", progress.events)
app.add_url_rule("/generations/<request_id>/snapshot", "generation_snapshot",
                 progress.snapshot)
app.add_url_rule("/clipia/progress.js", "clipia_widget", progress.widget)

# Clipia's own webhooks, if you also submit with webhook_url (needs CLIPIA_WEBHOOK_SECRET).
app.add_url_rule("/hooks/clipia", view_func=clipia_webhook, methods=["POST"])
