"""The read view of a request record: :class:`RequestState`, parsed from one ``HGETALL``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..nouns import TERMINAL_STATUSES, Observation
from .history import decode_history
from .keys import ChainField, Field

__all__ = ["RequestState"]


def _chain_values(raw: Mapping[str, str], kind: ChainField) -> dict[str, str]:
    """Per-chain fields of one kind: task id -> value."""
    n = len(kind.value)
    return {name[n:]: value for name, value in raw.items() if name.startswith(kind.value)}


def _chains(raw: Mapping[str, str], kind: ChainField) -> frozenset[str]:
    return frozenset(_chain_values(raw, kind))


def _terminal_seen(raw: Mapping[str, str]) -> str | None:
    if raw.get(Field.OUTCOME):
        return None
    seen = raw.get(Field.TERMINAL_SEEN)
    if seen:
        return seen
    # Layout 0 wrote a terminal status seen before the outcome into ``status`` itself.
    status = raw.get(Field.STATUS)
    return status if status in TERMINAL_STATUSES else None


def _num(value: str | None) -> float | None:
    if value is None or value == "":
        return None
    return float(value)


def _int(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    return int(float(value))


def _within(value: int | None, low: int, high: int | None = None) -> int | None:
    """``value`` clamped (pollers clamp before writing; this covers records they did not)."""
    if value is None:
        return None
    value = max(value, low)
    return value if high is None else min(value, high)


@dataclass(frozen=True)
class RequestState:
    """What a web app can show about a request, read from Redis in one call."""

    request_id: str
    #: Last status seen (``SUBMITTED`` until the first poll; ``TIMED_OUT`` after the deadline).
    status: str | None
    queue_position: int | None
    progress: int | None
    #: Unix time of the last successful status call, ``None`` before the first.
    last_poll_at: float | None
    #: Unix time the next status call is planned for.
    next_poll_at: float | None
    #: Successful status calls so far.
    polls: int
    #: ``COMPLETED`` / ``FAILED`` / ``CANCELED`` / ``TIMED_OUT`` once recorded, else ``None``.
    outcome: str | None
    #: The result body once ``COMPLETED`` / ``FAILED`` / ``CANCELED`` (as the API returned it).
    result: dict[str, Any] | None
    #: ``{"type", "args"}`` of the error the outcome carries, if any.
    error: dict[str, Any] | None
    first_enqueued_at: float | None
    deadline_at: float | None
    finished_at: float | None
    #: Last final error (401/403/404) that stopped a poller; cleared by the next claim.
    fatal: dict[str, Any] | None = None
    history: tuple[Observation, ...] = field(default_factory=tuple)
    owner: str | None = None
    gen: int = 0
    errors: int = 0
    #: Why the last call failed, while ``errors`` > 0.
    last_error: str = ""
    delivered: bool = False
    unknown_logged: bool = False
    #: Status calls in a row that answered a status the API docs do not list.
    unknown_polls: int = 0
    #: Result calls in a row, since ``/status`` said terminal, that found no terminal result.
    result_waits: int = 0
    #: A result answer without a terminal result was logged (once per request).
    result_logged: bool = False
    #: A progress or queue position out of range was logged (once per request).
    range_logged: bool = False
    #: Task ids of chains that have answered their caller (SUCCESS or FAILURE stored).
    answered: frozenset[str] = frozenset()
    #: Task ids of chains whose HTTP callback got a 2xx.
    callbacks_done: frozenset[str] = frozenset()
    #: Unix time a verified webhook said the request ended, ``None`` if none did.
    webhook_at: float | None = None
    #: A terminal status reported (by ``/status`` or a verified webhook) whose result is
    #: not recorded yet; ``status`` turns terminal only with ``outcome``, in one write.
    terminal_seen: str | None = None
    #: A webhook is expected to end it (polling is a late safety net).
    expects_webhook: bool = False
    #: The record layout that last wrote it (0: written before the field existed).
    layout: int = 0
    #: Unix time the request is predicted to end (from progress or queue drain), if known.
    eta_at: float | None = None
    #: The model the request was submitted to, when the caller or the result said.
    model: str | None = None

    @property
    def is_terminal(self) -> bool:
        return self.outcome is not None

    @classmethod
    def from_hash(cls, request_id: str, raw: Mapping[str, str]) -> RequestState:
        def js(name: Field) -> Any:
            text = raw.get(name)
            return json.loads(text) if text else None

        history = decode_history(raw.get(Field.HISTORY) or "")
        return cls(
            request_id=request_id,
            status=raw.get(Field.STATUS) or None,
            queue_position=_within(_int(raw.get(Field.QUEUE_POSITION)), 0),
            progress=_within(_int(raw.get(Field.PROGRESS)), 0, 100),
            last_poll_at=_num(raw.get(Field.LAST_POLL_AT)),
            next_poll_at=_num(raw.get(Field.NEXT_POLL_AT)),
            polls=_int(raw.get(Field.POLLS)) or 0,
            outcome=raw.get(Field.OUTCOME) or None,
            result=js(Field.RESULT),
            error=js(Field.ERROR),
            first_enqueued_at=_num(raw.get(Field.FIRST_ENQUEUED_AT)),
            deadline_at=_num(raw.get(Field.DEADLINE_AT)),
            finished_at=_num(raw.get(Field.FINISHED_AT)),
            fatal=js(Field.FATAL),
            history=history,
            owner=raw.get(Field.OWNER) or None,
            gen=_int(raw.get(Field.GEN)) or 0,
            errors=_int(raw.get(Field.ERRORS)) or 0,
            last_error=raw.get(Field.LAST_ERROR) or "",
            delivered=raw.get(Field.DELIVERED) == "1",
            unknown_logged=raw.get(Field.UNKNOWN_LOGGED) == "1",
            unknown_polls=_int(raw.get(Field.UNKNOWN_POLLS)) or 0,
            result_waits=_int(raw.get(Field.RESULT_WAITS)) or 0,
            result_logged=raw.get(Field.RESULT_LOGGED) == "1",
            range_logged=raw.get(Field.RANGE_LOGGED) == "1",
            answered=_chains(raw, ChainField.ANSWERED),
            callbacks_done=frozenset(
                t for t, v in _chain_values(raw, ChainField.CALLBACK_DONE).items() if v == "done"
            ),
            webhook_at=_num(raw.get(Field.WEBHOOK_AT)),
            terminal_seen=_terminal_seen(raw),
            expects_webhook=raw.get(Field.EXPECTS_WEBHOOK) == "1",
            layout=_int(raw.get(Field.LAYOUT)) or 0,
            eta_at=_num(raw.get(Field.ETA_AT)),
            model=raw.get(Field.MODEL) or None,
        )

    def as_dict(self) -> dict[str, Any]:
        """The fields a web app shows, JSON-ready."""
        return {
            "request_id": self.request_id,
            "status": self.status,
            "queue_position": self.queue_position,
            "progress": self.progress,
            "last_poll_at": self.last_poll_at,
            "next_poll_at": self.next_poll_at,
            "polls": self.polls,
            "outcome": self.outcome,
            "result": self.result,
            "error": self.error,
            "eta_at": self.eta_at,
        }


