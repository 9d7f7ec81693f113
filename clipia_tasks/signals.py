"""The package's signals, Celery-style.

Connect receivers in the worker's process (e.g. in the module your worker
imports)::

    from clipia_tasks.signals import request_completed

    @request_completed.connect
    def on_done(sender, request_id, result, **kwargs):
        ...

Each fires once per request id, in a worker, right after the outcome is
recorded in Redis (see ``docs/delivery.md`` for what "once" means when a
worker is killed mid-delivery). ``kwargs`` also carries ``delivery_id``, a
stable id (the request id) to dedupe on.
"""

from __future__ import annotations

from celery.utils.dispatch import Signal

__all__ = ["request_completed", "request_failed"]

#: The request ended COMPLETED. Arguments: ``request_id``, ``result`` (the full
#: result body as returned by ``GET /v1/requests/{id}``), ``delivery_id``.
request_completed = Signal(
    name="clipia_tasks.request_completed",
    providing_args={"request_id", "result", "delivery_id"},
)

#: The request ended FAILED or CANCELED, or the poll deadline passed.
#: Arguments: ``request_id``, ``result`` (the result body, ``None`` after a
#: timeout), ``error`` (a :class:`~clipia_tasks.errors.RequestFailedError` or
#: :class:`~clipia_tasks.errors.PollTimeoutError`), ``delivery_id``.
request_failed = Signal(
    name="clipia_tasks.request_failed",
    providing_args={"request_id", "result", "error", "delivery_id"},
)
