"""The web side: submit after the transaction commits, show progress, show completion.

Requests are submitted with a ``webhook_url`` pointing at this app's ``/hooks/clipia``
(``clipia_tasks.contrib.django.clipia_webhook``): Clipia's signed webhook completes the
request at once, and polling is only the safety net in case it never arrives. With
``"live_progress": true`` (the page at ``/`` sends it) the request is polled as usual
as well, so its queue position and progress reach the live view
(``/generations/<id>/view``, streamed by ``clipia_tasks.contrib.django.ProgressViews``).
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

from django.core.cache import cache
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseNotFound, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

import clipia_tasks

from ..pages import index_page, view_page

#: "sim/image" is a model of the simulator; set CLIPIA_EXAMPLE_MODEL for the real API.
MODEL = os.environ.get("CLIPIA_EXAMPLE_MODEL", "sim/image")


def completion_key(request_id: str) -> str:
    """Where the worker's signal receiver (receivers.py) leaves the outcome."""
    return f"generation-done:{request_id}"


def webhook_url(request: HttpRequest) -> str:
    """Where Clipia must deliver the webhook: this app, reachable from outside.

    Behind a proxy or tunnel set ``PUBLIC_URL`` (e.g. ``https://app.example.com``).
    """
    base = os.environ.get("PUBLIC_URL") or request.build_absolute_uri("/")
    return base.rstrip("/") + "/hooks/clipia"


def start_generation(prompt: str, sim: dict[str, Any] | None, caller_id: str,
                     hook_url: str, live_progress: bool = False) -> dict[str, str]:
    """Submit to Clipia with a webhook and start following the request."""
    generation_input: dict[str, Any] = {"prompt": prompt}
    if sim is not None:
        generation_input["sim"] = sim  # the simulator's script; never sent to the real API
    # caller_id makes the submit idempotent: a retried call gets the same request back.
    # webhook_url: Clipia POSTs the outcome to /hooks/clipia; until CLIPIA_WEBHOOK_FALLBACK_AFTER
    # no status call is made, after it polling is a sparse safety net. With live progress
    # (expect_webhook=False) it is polled as usual, and the webhook still ends it at once.
    sub = clipia_tasks.submit(MODEL, generation_input, caller_id=caller_id,
                              webhook_url=hook_url,
                              expect_webhook=False if live_progress else None)
    return {"request_id": sub.request_id, "task_id": sub.result.id}


@csrf_exempt  # a JSON API for the example: protect yours with your API auth or CSRF
@require_POST
def create_generation(request: HttpRequest) -> JsonResponse:
    try:
        body = json.loads(request.body or b"{}")
        prompt = body["prompt"]
        live_progress = body.get("live_progress", False)
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError
        if not isinstance(live_progress, bool):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        return JsonResponse({"error": 'expected JSON {"prompt": "...", "sim"?: {...}, '
                                      '"live_progress"?: true}'}, status=400)
    caller_id = str(body.get("client_ref") or uuid.uuid4())
    hook_url = webhook_url(request)
    started: dict[str, str] = {}
    with transaction.atomic():
        # Your own writes go here, e.g.
        #     generation = Generation.objects.create(user=request.user, prompt=prompt)
        # and the submit waits until they are committed: a worker or a signal receiver
        # must never look for a row that is not there yet, and a rolled-back transaction
        # must not leave a paid generation behind. (Outside an atomic block on_commit
        # runs the function at once.)
        transaction.on_commit(
            lambda: started.update(start_generation(prompt, body.get("sim"), caller_id,
                                                   hook_url, live_progress))
        )
    # The outermost atomic block has committed, so the callback has run. (With
    # ATOMIC_REQUESTS = True it would run after this view returns: then store the
    # request id on your row inside the callback and let the page poll the row.)
    return JsonResponse(started, status=202)


@require_GET
def generation_status(request: HttpRequest, request_id: str) -> JsonResponse:
    try:
        state = clipia_tasks.get_state(request_id)  # one Redis read, no API call
    except ValueError:  # not a UUID
        state = None
    if state is None:
        return JsonResponse({"error": "unknown request id (or not polled yet)"}, status=404)
    return JsonResponse({**state.as_dict(), "notified": cache.get(completion_key(request_id))})


@require_GET
def index(request: HttpRequest) -> HttpResponse:
    """The prompt form: it POSTs to /generations, then opens the live view."""
    return HttpResponse(index_page())


@require_GET
def generation_view(request: HttpRequest, request_id: str) -> HttpResponse:
    """One generation, followed live in the browser by /clipia/progress.js."""
    page = view_page(request_id)
    if page is None:
        return HttpResponseNotFound("not a Clipia request id")
    return HttpResponse(page)
