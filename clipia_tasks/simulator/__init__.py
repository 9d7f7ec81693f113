"""An offline stand-in for the Clipia queue API, for testing your integration.

It is a real HTTP server on loopback (standard library only) that speaks the same
endpoints, bodies, errors and webhooks as ``https://api.clipia.ai``, so the official SDK
and ``httpx`` talk to it unchanged::

    python -m clipia_tasks.simulator --port 8787 --webhook-secret whsec_local

or from Python::

    from clipia_tasks.simulator import SimulatorServer

    with SimulatorServer() as server:                      # port=0: any free port
        client = clipia.Clipia(api_key="clipia_live_x", base_url=server.url)
        job = client.submit("sim/image", input={"prompt": "a cat"})

Any key ``clipia_live_<something>`` is accepted (or only ``--api-key`` keys);
``clipia_test_…`` keys are the sandbox: the request is COMPLETED at once with a fixed
mock output, and scripts' timing, faults and races are ignored.

Scripting a request
-------------------
Every request follows a :class:`Script` (all fields optional)::

    {"queue_s": 2, "run_s": 5,            # IN_QUEUE for 2 s, then IN_PROGRESS for 5 s
     "progress": "jumpy",                 # "linear" | "jumpy" | "none" (progress null)
     "final": "FAILED",                   # "COMPLETED" | "FAILED" | "CANCELED"
     "error_code": "nsfw", "error_message": "...",
     "media": "video",                    # "image" | "video" | "audio"; default: by model,
                                          # sim/video -> .mp4, sim/audio -> audio, else .png
     "queue_position_start": 5,           # counts down to 0 over queue_s
     "result_pending_calls": 1,           # result still 202 once after /status says done
     "latency_s": 0.5,                    # every answer about it is this slow
     "faults": [                          # see Fault
        {"endpoint": "status", "http": 429, "retry_after": "2"},
        {"endpoint": "any", "http": 503, "count": 3, "after_calls": 1},
        {"endpoint": "status", "http": 200, "body": "malformed"}]}

There are three ways to attach one:

1. In the submit itself, as ``input["sim"]``: ``client.submit("m", input={"prompt": "x",
   "sim": {"run_s": 3, "final": "FAILED"}})``. Unknown keys are a 400 naming them.
   Without ``sim`` the default script applies (done after 1 s).
2. Ahead of time over HTTP: ``POST /_sim/requests`` with ``{"script": {...},
   "request_id"?: uuid, "webhook_url"?: str}`` answers ``{"request_id"}``; then poll it.
3. In process: ``server.simulator.create({...})`` (or a :class:`Script`).

A :class:`Fault` answers instead of the normal response for ``count`` matching calls
after the first ``after_calls`` ones. ``endpoint`` is "status", "result", "any" (status or
result) or "submit" (the submit call; the request is still created, so an idempotent
re-submit finds it). ``body`` is "envelope" (the real ``{"error": {type, code, message}}``),
"empty", "html", "malformed" (JSON without the required fields; use ``http: 200``) or
"truncated" (cut-off JSON). ``retry_after`` sets the ``Retry-After`` header.

Control endpoints (no auth): ``GET /_sim/health``, ``POST /_sim/reset``,
``GET /_sim/calls?request_id=&endpoint=`` (the call log), ``POST /_sim/requests``,
``POST /_sim/requests/{id}/final`` with ``{"status": "CANCELED"}`` (an out-of-band end).

Inspecting what a client did: :meth:`Simulator.calls` lists every ``/v1`` call with its
endpoint, request id, status code sent, time and auth scheme; the key itself is never
kept. With a ``webhook_secret``, a request submitted with a loopback ``webhook_url`` gets
one signed delivery when it ends (:meth:`Simulator.webhook_attempts` shows them).
"""

from ._model import Call, Fault, Script
from ._server import SimulatorServer, main
from ._simulator import Reply, Simulator
from ._webhooks import WebhookAttempt

__all__ = [
    "Call",
    "Fault",
    "Reply",
    "Script",
    "Simulator",
    "SimulatorServer",
    "WebhookAttempt",
    "main",
]
