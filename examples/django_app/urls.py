from __future__ import annotations

from django.urls import path

from clipia_tasks.contrib.django import clipia_webhook

from . import views

urlpatterns = [
    path("generations", views.create_generation),
    path("generations/<str:request_id>", views.generation_status),
    # Clipia's signed webhooks (views.py submits with webhook_url; needs
    # CLIPIA_WEBHOOK_SECRET): verified, then a worker fetches the result at once.
    path("hooks/clipia", clipia_webhook),
]
