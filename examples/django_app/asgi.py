"""The Django example under ASGI, where live progress streams cost no thread each.

From the repository root (see README.md)::

    uvicorn examples.django_app.asgi:application --port 8000
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_app.settings")

application = get_asgi_application()
