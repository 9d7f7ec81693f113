from __future__ import annotations

from django.urls import path

from clipia_tasks.contrib.django import ProgressViews, clipia_webhook

from . import views

#: Live progress: the SSE stream, the JSON snapshot (the widget's fallback), the widget.
#: Anyone who knows a request id may follow it here; in your app pass
#: ProgressViews(authorize=lambda request, request_id: <request.user owns it>).
progress = ProgressViews()

urlpatterns = [
    path("", views.index),
    path("generations", views.create_generation),
    path("generations/<str:request_id>", views.generation_status),
    path("generations/<str:request_id>/view", views.generation_view),
    path("generations/<str:request_id>/events", progress.events),
    path("generations/<str:request_id>/snapshot", progress.snapshot),
    path("clipia/progress.js", progress.widget),
    # Clipia's signed webhooks (views.py submits with webhook_url; needs
    # CLIPIA_WEBHOOK_SECRET): verified, then a worker fetches the result at once.
    path("hooks/clipia", clipia_webhook),
]
