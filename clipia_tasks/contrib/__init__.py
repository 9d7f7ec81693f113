"""Thin framework adapters: the webhook bridge (:mod:`clipia_tasks.webhooks`) and live
progress (:mod:`clipia_tasks.live` as Server-Sent Events, a JSON snapshot and the widget).

Each module imports its framework only when used: ``clipia_tasks.contrib.django``,
``clipia_tasks.contrib.flask``, ``clipia_tasks.contrib.starlette`` (FastAPI too). Each
has ``clipia_webhook`` and ``ProgressViews``; ``_sse`` is the framework-free part.
"""
