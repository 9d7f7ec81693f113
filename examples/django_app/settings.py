"""Settings of the Django example: one view module, no models, Redis as the shared cache.

Run from the repository root (see README.md)::

    python examples/django_app/manage.py runserver

clipia_tasks reads its own settings (``REDIS_URL``, ``CLIPIA_API_KEY``,
``CLIPIA_BASE_URL``, ...) from the environment, not from here.
"""

from __future__ import annotations

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "insecure-example-key-change-me")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

ROOT_URLCONF = "examples.django_app.urls"
INSTALLED_APPS: list[str] = []
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]

# The example stores nothing in a database; transaction.atomic / on_commit still need
# one, so an in-memory SQLite stands in for your real DATABASES.
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}

# Completion arrives in the *worker* (a signal receiver, receivers.py) and is read by the
# *web* process (views.py): they share it through a cache both can reach, the same Redis.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": os.environ.get("REDIS_URL", "redis://localhost:6379/0"),
        "KEY_PREFIX": "clipia-example-django",
        "TIMEOUT": 7 * 86400,
    }
}

USE_TZ = True
# Django's default is America/Chicago, which it also applies to the process (and so to
# its log timestamps); the worker and Clipia's timestamps are UTC.
TIME_ZONE = "UTC"
