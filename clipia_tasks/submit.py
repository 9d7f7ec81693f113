"""Submit a generation and start following it, in one call from a web app.

::

    from clipia_tasks import submit

    sub = submit("nano-banana-2", {"prompt": "a cat"}, caller_id=f"order-{order.pk}")
    sub.request_id      # Clipia's request id: store it with your order
    sub.result          # the poll_request AsyncResult

With ``caller_id`` the ``Idempotency-Key`` is derived from it (and the model), so
a retried web request (a double click, a proxy retry) gets the same Clipia request
back instead of paying twice. Needs ``CLIPIA_API_KEY`` in the calling process
(submitting is an API call); only ``poll_request.delay`` alone does not.

In Django, submit after the transaction that creates your row commits, so a
worker never looks for a row that is not there yet::

    transaction.on_commit(lambda: start_generation(order.pk))
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from .client import ClipiaClient
from .nouns import check_model
from .settings import get_settings

__all__ = ["Submission", "idempotency_key_for", "submit"]

_NAMESPACE = uuid.UUID("3c1d6f0a-2b7e-4d7e-8f1a-9b2c5d4e6f70")


@dataclass(frozen=True)
class Submission:
    request_id: str
    #: The ``poll_request`` AsyncResult (``.get()`` waits for the result body).
    result: Any
    idempotency_key: str


def idempotency_key_for(model: str, caller_id: str) -> str:
    """The same caller id (and model) always gives the same Idempotency-Key."""
    return str(uuid.uuid5(_NAMESPACE, f"{model}|{caller_id}"))


def submit(
    model: str,
    input: dict[str, Any],
    *,
    caller_id: str | None = None,
    webhook_url: str | None = None,
    callback_url: str | None = None,
    queue: str | None = None,
    expect_webhook: bool | None = None,
) -> Submission:
    """Submit through the official SDK, then ``poll_request.delay`` the new request id.

    With a ``webhook_url`` the request is marked as expecting a webhook (polling waits
    ``CLIPIA_WEBHOOK_FALLBACK_AFTER`` first) unless ``expect_webhook=False``: then it is
    polled as usual (live progress) and the webhook still completes it at once.
    """
    from .tasks import poll_request

    settings = get_settings()
    check_model(model)  # before paying for a request that could not then be followed
    key = idempotency_key_for(model, caller_id) if caller_id else str(uuid.uuid4())
    client = ClipiaClient.from_settings(settings)
    try:
        answer = client.submit(model, input, webhook_url=webhook_url, idempotency_key=key)
    finally:
        client.close()
    kwargs: dict[str, Any] = {"callback_url": callback_url} if callback_url else {}
    # The poller learns how long this model's requests take, and polls accordingly.
    kwargs["model"] = model
    if webhook_url and expect_webhook is not False:
        # Clipia will POST the outcome: polling waits CLIPIA_WEBHOOK_FALLBACK_AFTER first.
        kwargs["expect_webhook"] = True
    options = {"queue": queue} if queue else {}
    result = poll_request.apply_async((answer["request_id"],), kwargs, **options)
    return Submission(answer["request_id"], result, key)
