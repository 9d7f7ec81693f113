"""The nouns every other module shares: request ids, statuses, phases, outcomes, observations.

Pure values, no I/O and no imports from the rest of the package, so a web
process can validate an id or read a status without loading the worker's
poller, the API client or the poll policy.

=================  ==========================================================
:class:`Status`    what ``GET /v1/requests/{id}/status`` says, plus the two
                   values only the record uses (``SUBMITTED``, ``TIMED_OUT``)
:class:`Phase`     what a status means for a poller: poll again, stop, or
                   an undocumented value (treated as pending, logged once)
:class:`Outcome`   how a request ended for this package: the three terminal
                   API statuses, or ``TIMED_OUT`` (``CLIPIA_POLL_TIMEOUT``)
:class:`Observation`  one status seen by a poller, with its time
=================  ==========================================================

An API status that is not a :class:`Status` member stays a plain ``str``
wherever it is carried (the API may add values; see :func:`classify`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "MODEL_MAX_LEN",
    "TERMINAL_STATUSES",
    "Observation",
    "Outcome",
    "Phase",
    "Status",
    "check_model",
    "check_request_id",
    "classify",
]


class Status(StrEnum):
    """A request's status as the record shows it."""

    #: Enqueued for polling, no status call answered yet (record only).
    SUBMITTED = "SUBMITTED"
    #: Waiting at Clipia; ``queue_position`` is set.
    IN_QUEUE = "IN_QUEUE"
    #: Running at Clipia; ``progress`` (0..100) is set when the model reports it.
    IN_PROGRESS = "IN_PROGRESS"
    #: Finished with an output.
    COMPLETED = "COMPLETED"
    #: Finished without an output; the result carries ``error``.
    FAILED = "FAILED"
    #: Canceled out of band (e.g. the Clipia web UI).
    CANCELED = "CANCELED"
    #: ``CLIPIA_POLL_TIMEOUT`` passed before a terminal status (record only).
    TIMED_OUT = "TIMED_OUT"


class Outcome(StrEnum):
    """How a request ended; recorded once, by the first writer."""

    #: The result body holds the output.
    COMPLETED = "COMPLETED"
    #: The result body holds ``error``; callers get ``RequestFailedError``.
    FAILED = "FAILED"
    #: Callers get ``RequestCanceledError``.
    CANCELED = "CANCELED"
    #: Polling stopped at the deadline; callers get ``PollTimeoutError``.
    TIMED_OUT = "TIMED_OUT"


class Phase(StrEnum):
    """What a status value means for a poller."""

    #: IN_QUEUE or IN_PROGRESS: poll again.
    PENDING = "pending"
    #: COMPLETED, FAILED or CANCELED: fetch the result, stop polling.
    TERMINAL = "terminal"
    #: A value the API docs do not list: treated as pending, logged once.
    UNKNOWN = "unknown"


#: The API statuses after which ``GET /v1/requests/{id}`` holds the final result.
TERMINAL_STATUSES = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELED})
_PENDING_STATUSES = frozenset({Status.IN_QUEUE, Status.IN_PROGRESS})


def classify(status: str) -> Phase:
    """Map an API status value to what the poller does next."""
    if status in TERMINAL_STATUSES:
        return Phase.TERMINAL
    if status in _PENDING_STATUSES:
        return Phase.PENDING
    return Phase.UNKNOWN


@dataclass(frozen=True)
class Observation:
    """One status seen by a poller; ``at_s`` counts from the request's first enqueue."""

    at_s: float
    status: str
    queue_position: int | None = None
    progress: int | None = None


def check_request_id(request_id: object) -> str:
    """The canonical (lower-case) form of a request id, or ValueError saying what to pass."""
    if isinstance(request_id, str):
        try:
            parsed = uuid.UUID(request_id.strip())
        except ValueError:
            parsed = None
        if parsed is not None and len(request_id.strip()) == 36:
            return str(parsed)
    raise ValueError(
        f"poll_request: {request_id!r} is not a Clipia request id; pass the UUID that "
        "submit returned, e.g. '764cabcf-b745-4b3e-ae38-1200304cf45b'"
    )


#: The longest model name kept (Clipia's are like ``nano-banana-2`` or ``sim/video``).
MODEL_MAX_LEN = 100


def check_model(model: object) -> str:
    """A model name as given (``poll_request(..., model=...)``), or an error saying why not.

    Names key the learned durations in Redis, so they are bounded: 1 to
    :data:`MODEL_MAX_LEN` printable characters, no spaces.
    """
    if not isinstance(model, str):
        raise TypeError(f"poll_request: model must be a string such as 'nano-banana-2', "
                        f"got {type(model).__name__}")
    if not 0 < len(model) <= MODEL_MAX_LEN or not model.isprintable() or " " in model:
        raise ValueError(f"poll_request: {model[:40]!r} is not a model name: pass the model "
                         f"you submitted to, e.g. 'nano-banana-2' (1-{MODEL_MAX_LEN} printable "
                         "characters, no spaces)")
    return model
