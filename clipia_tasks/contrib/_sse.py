"""Live progress over server-sent events, framework-free: the frames, the snapshot, the widget.

The framework modules (:mod:`~clipia_tasks.contrib.django`, ``flask``, ``starlette``)
wrap these in their responses; this module never imports a framework.

The stream (``text/event-stream``) that ``clipia-progress.js`` reads::

    data: {"request_id":"…","status":"IN_PROGRESS","progress":40,…}   a snapshot, one per change

    : keep-alive                                        nothing changed for heartbeat_s

    event: end
    data: {"reason": "finished"}                        after the snapshot whose outcome is set

    event: end
    data: {"reason": "timeout", "detail": "no outcome within 600 s"}

    event: end
    data: {"reason": "unavailable", "detail": "…"}      Redis stopped answering

Snapshots are the default event, so ``EventSource.onmessage`` gets them; ``end`` is
always the last frame, after which the server closes the stream (a client that
reconnects after ``end`` starts following again from the current snapshot). A
snapshot is ``clipia_tasks.get_state(id).as_dict()``, as :mod:`clipia_tasks.live`
yields it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterable, Generator, Iterable, Mapping
from enum import StrEnum
from functools import lru_cache
from importlib import resources
from typing import Any

import redis

from ..errors import RedisUnavailableError
from ..state import get_state

__all__ = [
    "KEEP_ALIVE",
    "SSE_HEADERS",
    "SSE_MEDIA_TYPE",
    "WIDGET_CONTENT_TYPE",
    "WIDGET_HEADERS",
    "EndReason",
    "ViewSettings",
    "aframes",
    "bad_id_answer",
    "check_settings",
    "end_frame",
    "forbidden_answer",
    "frames",
    "snapshot_answer",
    "snapshot_frame",
    "widget_js",
]

log = logging.getLogger(__name__)

SSE_MEDIA_TYPE = "text/event-stream"
#: Sent with every stream: no cache may keep it, and nginx must not buffer it.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
#: A comment line: clients ignore it, proxies and load balancers see traffic.
KEEP_ALIVE = ": keep-alive\n\n"

WIDGET_CONTENT_TYPE = "text/javascript; charset=utf-8"
#: Short, so a new package version's widget reaches browsers within minutes.
WIDGET_HEADERS = {"Cache-Control": "public, max-age=300"}

#: Unknown id, not a UUID, Redis down: what the JSON snapshot view answers.
_NOT_A_UUID = "not a Clipia request id (expected a UUID)"
_UNKNOWN = "unknown request id (not enqueued yet, or expired)"
_UNAVAILABLE = "progress is unavailable right now: Redis does not answer"


class EndReason(StrEnum):
    """Why a stream ended, in its last frame (``event: end``)."""

    #: The snapshot before it has ``outcome`` set: nothing will change any more.
    FINISHED = "finished"
    #: ``timeout_s`` passed with no outcome, or with no record of the id at all.
    TIMEOUT = "timeout"
    #: Redis stopped answering; the detail does not name it (the log does).
    UNAVAILABLE = "unavailable"


def snapshot_frame(snapshot: Mapping[str, Any]) -> str:
    """One snapshot as a default (``message``) event: compact JSON on one ``data:`` line."""
    # json.dumps escapes newlines inside strings, so the JSON is always one line.
    return f"data: {json.dumps(snapshot, separators=(',', ':'))}\n\n"


def end_frame(reason: EndReason, detail: str | None = None) -> str:
    """The last frame of every stream."""
    body: dict[str, str] = {"reason": reason.value}
    if detail:
        body["detail"] = detail
    return f"event: end\ndata: {json.dumps(body)}\n\n"


def _timeout_detail(seen_any: bool, timeout_s: float | None) -> str:
    within = f" within {timeout_s:g} s" if timeout_s is not None else ""
    if seen_any:
        return f"no outcome{within}"
    return f"request id not known to Redis{within}"


def _unavailable(exc: Exception) -> str:
    # The exception names the Redis URL (password redacted): log it, do not send it.
    log.warning("live progress stream ended: %s", exc)
    return "Redis does not answer; try again later"


def frames(snapshots: Iterable[Mapping[str, Any] | None], *,
           timeout_s: float | None = None) -> Generator[str, None, None]:
    """SSE frames for what :func:`clipia_tasks.live.follow` yields (or ``watch``).

    ``timeout_s`` only words the timeout's detail; the iterator enforces it. Closing
    this generator (the client went away) closes ``snapshots``.
    """
    seen_any = False
    try:
        for snapshot in snapshots:
            if snapshot is None:
                yield KEEP_ALIVE
                continue
            seen_any = True
            yield snapshot_frame(snapshot)
            if snapshot.get("outcome"):
                yield end_frame(EndReason.FINISHED)
                return
    except TimeoutError:
        yield end_frame(EndReason.TIMEOUT, _timeout_detail(seen_any, timeout_s))
    except (RedisUnavailableError, redis.RedisError) as exc:
        yield end_frame(EndReason.UNAVAILABLE, _unavailable(exc))
    finally:
        close = getattr(snapshots, "close", None)
        if close is not None:
            close()


async def aframes(snapshots: AsyncIterable[Mapping[str, Any] | None], *,
                  timeout_s: float | None = None) -> AsyncGenerator[str, None]:
    """The async twin of :func:`frames`, for :func:`clipia_tasks.live.afollow` / ``awatch``."""
    seen_any = False
    try:
        async for snapshot in snapshots:
            if snapshot is None:
                yield KEEP_ALIVE
                continue
            seen_any = True
            yield snapshot_frame(snapshot)
            if snapshot.get("outcome"):
                yield end_frame(EndReason.FINISHED)
                return
    except TimeoutError:
        yield end_frame(EndReason.TIMEOUT, _timeout_detail(seen_any, timeout_s))
    except (RedisUnavailableError, redis.RedisError) as exc:
        yield end_frame(EndReason.UNAVAILABLE, _unavailable(exc))
    finally:
        aclose = getattr(snapshots, "aclose", None)
        if aclose is not None:
            await aclose()


def snapshot_answer(request_id: str) -> tuple[int, dict[str, Any]]:
    """``(HTTP status, JSON body)`` of the snapshot view: 200, 400, 404 or 503.

    Blocks on one Redis read: call it off the event loop in async code.
    """
    try:
        state = get_state(request_id)
    except ValueError:
        return 400, {"error": _NOT_A_UUID}
    except RedisUnavailableError as exc:
        log.warning("live progress snapshot unavailable: %s", exc)
        return 503, {"error": _UNAVAILABLE}
    if state is None:
        return 404, {"error": _UNKNOWN}
    return 200, state.as_dict()


def bad_id_answer() -> tuple[int, dict[str, Any]]:
    """What the stream view answers, before any stream, for an id that is not a UUID."""
    return 400, {"error": _NOT_A_UUID}


def forbidden_answer() -> tuple[int, dict[str, Any]]:
    """What the stream and snapshot views answer when ``authorize`` says no."""
    return 403, {"error": "not allowed to follow this request"}


@lru_cache(maxsize=1)
def widget_js() -> str:
    """The browser widget, ``clipia_tasks/static/clipia-progress.js``, read once."""
    return (resources.files("clipia_tasks") / "static" / "clipia-progress.js").read_text(
        encoding="utf-8")


class ViewSettings:
    """What the three frameworks' ``ProgressViews`` share: ``authorize``, ``timeout_s``
    and ``heartbeat_s``, checked once here."""

    authorize: Any

    def __init__(self, authorize: Any = None, *, timeout_s: float | None = 600.0,
                 heartbeat_s: float = 15.0) -> None:
        check_settings(timeout_s, heartbeat_s)
        self.authorize = authorize
        self.timeout_s = timeout_s
        self.heartbeat_s = heartbeat_s

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(authorize={self.authorize!r}, "
                f"timeout_s={self.timeout_s!r}, heartbeat_s={self.heartbeat_s!r})")


def check_settings(timeout_s: float | None, heartbeat_s: float) -> None:
    """Reject a ``ProgressViews`` configuration that cannot work, saying why."""
    if timeout_s is not None and not timeout_s > 0:
        raise ValueError(f"ProgressViews: timeout_s must be > 0 seconds or None (no limit), "
                         f"got {timeout_s!r}")
    if not heartbeat_s > 0:
        raise ValueError(f"ProgressViews: heartbeat_s must be > 0 seconds, got {heartbeat_s!r}; "
                         "proxies close streams that stay silent (nginx: 60 s)")
