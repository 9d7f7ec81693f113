"""Resume following requests the app still knows but Redis may have forgotten.

::

    from clipia_tasks import resume

    for r in resume(ids_of_unfinished_orders):
        print(r.request_id, r.action)      # resumed / following / already_ended

After Redis lost its data (a worker logs "Redis lost its data"), the app's own
database still has the request ids it submitted: pass them here (or run
``clipia-tasks resume ID ...``). An id whose record says it ended is left alone;
any other id gets a ``poll_request`` chain. Where the record was lost with the
outcome already delivered, the signals may fire again for that id — at least
once, with the same ``delivery_id`` (the request id) to dedupe on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .nouns import check_model, check_request_id
from .state import get_state

__all__ = ["ResumeAction", "Resumed", "resume"]


class ResumeAction(StrEnum):
    """What :func:`resume` did for one id."""

    #: Redis has no record of it (lost, expired, or never enqueued): a new chain follows it.
    RESUMED = "resumed"
    #: Its record is in flight: a chain was added, which follows the live poller (no extra
    #: API calls) or takes over if that poller's messages were lost.
    FOLLOWING = "following"
    #: Its record has an outcome: nothing to do.
    ALREADY_ENDED = "already_ended"


@dataclass(frozen=True)
class Resumed:
    request_id: str
    action: ResumeAction
    #: The new chain's ``AsyncResult`` (``None`` for ``ALREADY_ENDED``).
    result: Any = None


def resume(
    request_ids: Iterable[str],
    *,
    callback_url: str | None = None,
    model: str | None = None,
    expect_webhook: bool = False,
) -> list[Resumed]:
    """Enqueue ``poll_request`` for every id that has not ended; one :class:`Resumed` each.

    Raises :class:`~clipia_tasks.errors.RedisUnavailableError` when Redis does not
    answer. All ids and options are checked first (``ValueError`` names a bad id or
    model, ``TypeError`` a wrong type; nothing is enqueued then). ``callback_url``,
    ``model`` and ``expect_webhook`` are passed to ``poll_request`` as given; the
    defaults pass nothing.
    """
    from .tasks import POLL_KWARGS, poll_request

    ids = [check_request_id(rid) for rid in request_ids]
    kwargs: dict[str, Any] = {}
    if callback_url is not None:
        kwargs["callback_url"] = callback_url
    if model is not None:
        kwargs["model"] = check_model(model)
    if expect_webhook:
        kwargs["expect_webhook"] = True
    unsupported = sorted(set(kwargs) - POLL_KWARGS)
    if unsupported:
        raise TypeError(f"resume: poll_request in this version does not take {unsupported}; "
                        "nothing was enqueued")
    out = []
    for rid in dict.fromkeys(ids):
        state = get_state(rid)  # RedisUnavailableError, naming the URL, if Redis is away
        if state is not None and state.outcome:
            out.append(Resumed(rid, ResumeAction.ALREADY_ENDED))
            continue
        action = ResumeAction.RESUMED if state is None else ResumeAction.FOLLOWING
        out.append(Resumed(rid, action, poll_request.apply_async((rid,), kwargs)))
    return out
