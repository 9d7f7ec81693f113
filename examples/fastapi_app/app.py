"""FastAPI: submit with a Clipia webhook, show the state, complete through the webhook bridge.

Clipia POSTs a signed webhook to ``/hooks/clipia`` when the generation ends; the
package's bridge verifies it with ``CLIPIA_WEBHOOK_SECRET`` and has a worker fetch
the result at once, so polling is only the fallback. Completion then lands in the
request record (``GET /generations/{id}``) and fires the worker's signals. The page at
``/`` submits with ``"live_progress": true`` (polled as well, for progress) and opens
``/generations/{id}/view``, where the browser follows the request live
(``clipia_tasks.contrib.starlette.ProgressViews``). Run it from the repository root
(see README.md)::

    uvicorn examples.fastapi_app.app:app
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field, StrictBool

import clipia_tasks
from clipia_tasks.contrib.starlette import ProgressViews, clipia_webhook

from ..pages import index_page, view_page

#: "sim/image" is a model of the simulator; set CLIPIA_EXAMPLE_MODEL for the real API.
MODEL = os.environ.get("CLIPIA_EXAMPLE_MODEL", "sim/image")

app = FastAPI(title="clipia-tasks FastAPI example")


class GenerationIn(BaseModel):
    prompt: str = Field(min_length=1)
    #: The simulator's script (queue_s, run_s, final, ...); leave it out for the real API.
    sim: dict[str, Any] | None = None
    #: Your id for this generation: the same one again returns the same Clipia request.
    client_ref: str | None = None
    #: Poll for progress too (the live view shows it); the webhook still ends it at once.
    live_progress: StrictBool = False


class GenerationOut(BaseModel):
    request_id: str
    task_id: str


def webhook_url(request: Request) -> str:
    """Where Clipia must deliver the webhook: this app, reachable from outside."""
    base = os.environ.get("PUBLIC_URL") or str(request.base_url)
    return base.rstrip("/") + "/hooks/clipia"


# Plain `def` endpoints: submit() and get_state() block on I/O, so FastAPI runs them in
# its thread pool instead of on the event loop.
@app.post("/generations", status_code=202)
def create_generation(body: GenerationIn, request: Request) -> GenerationOut:
    generation_input: dict[str, Any] = {"prompt": body.prompt}
    if body.sim is not None:
        generation_input["sim"] = body.sim
    sub = clipia_tasks.submit(
        MODEL,
        generation_input,
        caller_id=body.client_ref or str(uuid.uuid4()),
        webhook_url=webhook_url(request),
        # Without live progress no status call is made until CLIPIA_WEBHOOK_FALLBACK_AFTER:
        # the record says SUBMITTED until the webhook. With it, polled as usual.
        expect_webhook=False if body.live_progress else None,
    )
    return GenerationOut(request_id=sub.request_id, task_id=sub.result.id)


@app.get("/generations/{request_id}")
def generation_status(request_id: str) -> dict[str, Any]:
    try:
        state = clipia_tasks.get_state(request_id)  # one Redis read, no API call
    except ValueError:  # not a UUID
        state = None
    if state is None:
        raise HTTPException(404, "unknown request id (or not polled yet)")
    return state.as_dict()


@app.get("/", response_class=HTMLResponse)
def index() -> str:
    """The prompt form: it POSTs to /generations, then opens the live view."""
    return index_page()


@app.get("/generations/{request_id}/view", response_class=HTMLResponse)
def generation_view(request_id: str) -> str:
    """One generation, followed live in the browser by /clipia/progress.js."""
    page = view_page(request_id)
    if page is None:
        raise HTTPException(404, "not a Clipia request id")
    return page


# Live progress: the SSE stream, the JSON snapshot (the widget's fallback), the widget.
# Async endpoints: a stream waits on the event loop, not in a thread. Anyone who knows a
# request id may follow it here; in your app pass
# ProgressViews(authorize=<async or sync (request, request_id) -> the user owns it>).
progress = ProgressViews()
app.add_api_route("/generations/{request_id}/events", progress.events, methods=["GET"],
                  include_in_schema=False)
app.add_api_route("/generations/{request_id}/snapshot", progress.snapshot, methods=["GET"],
                  include_in_schema=False)
app.add_api_route("/clipia/progress.js", progress.widget, methods=["GET"],
                  include_in_schema=False)

# The webhook bridge: verifies the signature, records the terminal status, and enqueues
# one poll_request that fetches the result (first-writer-wins with the poller).
app.add_api_route("/hooks/clipia", clipia_webhook, methods=["POST"])
