"""Starlette / FastAPI endpoint for Clipia webhooks::

    from clipia_tasks.contrib.starlette import clipia_webhook

    app.add_route("/hooks/clipia", clipia_webhook, methods=["POST"])      # Starlette
    app.add_api_route("/hooks/clipia", clipia_webhook, methods=["POST"])  # FastAPI
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from ..webhooks import webhook_response

__all__ = ["clipia_webhook"]


async def clipia_webhook(request: Request) -> JSONResponse:
    raw = await request.body()
    # Redis calls are blocking: keep them off the event loop.
    status, body = await run_in_threadpool(webhook_response, dict(request.headers), raw)
    return JSONResponse(body, status_code=status)
