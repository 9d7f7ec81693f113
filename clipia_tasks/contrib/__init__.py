"""Thin framework adapters for the webhook bridge (:mod:`clipia_tasks.webhooks`).

Each module imports its framework only when used: ``clipia_tasks.contrib.django``,
``clipia_tasks.contrib.flask``, ``clipia_tasks.contrib.starlette`` (FastAPI too).
"""
