"""The compact observation history a record keeps for the adaptive policy.

A few observations (time, status, queue position, progress) as one short
string, so the whole record stays in Redis's compact hash encoding while the
request is in flight.
"""

from __future__ import annotations

from ..nouns import Observation, Status

__all__ = ["HISTORY_LEN", "decode_history", "encode_history", "trim_history"]

#: Observations kept per record (the anchor of the current run plus the latest ones).
HISTORY_LEN = 4

_STATUS_CODES: dict[str, str] = {
    Status.IN_QUEUE: "Q", Status.IN_PROGRESS: "P", Status.COMPLETED: "C", Status.FAILED: "F",
    Status.CANCELED: "X",
}
_STATUS_NAMES: dict[str, str] = {v: str(k) for k, v in _STATUS_CODES.items()}


def encode_history(history: tuple[Observation, ...] | list[Observation]) -> str:
    """Observations as a short string, e.g. ``0.2|Q|3|;1.25|P||4``.

    Kept under Redis's 64-byte listpack limit for up to four observations, so the
    whole record stays in the compact encoding while the request is in flight.
    """
    def one(o: Observation) -> str:
        code = _STATUS_CODES.get(o.status, "?" + o.status[:8])
        qp = "" if o.queue_position is None else str(o.queue_position)
        pr = "" if o.progress is None else str(o.progress)
        return f"{o.at_s:.2f}".rstrip("0").rstrip(".") + f"|{code}|{qp}|{pr}"

    return ";".join(one(o) for o in history)


def decode_history(text: str) -> tuple[Observation, ...]:
    """The observations :func:`encode_history` wrote (unknown status codes kept as text)."""
    out = []
    for item in filter(None, text.split(";")):
        at, code, qp, pr = item.split("|")
        status = _STATUS_NAMES.get(code, code.lstrip("?"))
        out.append(Observation(float(at), status, int(qp) if qp else None,
                               int(pr) if pr else None))
    return tuple(out)


def trim_history(history: list[Observation], keep: int = HISTORY_LEN) -> list[Observation]:
    """The last ``keep - 1`` observations plus the anchor of the current run.

    The anchor is the earliest observation of the run the adaptive policy measures
    rates over (same status, progress never going back; queue positions for
    IN_QUEUE): keeping it keeps the long baseline its final prediction rests on.
    """
    if len(history) <= keep:
        return history
    last = history[-1]
    start = len(history) - 1
    while start > 0:
        prev, cur = history[start - 1], history[start]
        if prev.status != last.status:
            break
        if last.status == Status.IN_PROGRESS and (
            prev.progress is None or cur.progress is None or prev.progress > cur.progress
        ):
            break
        if last.status == Status.IN_QUEUE and prev.queue_position is None:
            break
        start -= 1
    tail = history[-(keep - 1):]
    anchor = history[start]
    return tail if anchor in tail else [anchor, *tail]


