"""Django view for Clipia webhooks::

    # urls.py
    from clipia_tasks.contrib.django import clipia_webhook

    urlpatterns = [path("hooks/clipia", clipia_webhook)]
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from ..webhooks import webhook_response

__all__ = ["clipia_webhook"]


@csrf_exempt  # type: ignore[untyped-decorator]  # Clipia signs the body; no CSRF token
@require_POST  # type: ignore[untyped-decorator]
def clipia_webhook(request: HttpRequest) -> Any:
    status, body = webhook_response(dict(request.headers), request.body)
    return JsonResponse(body, status=status)
