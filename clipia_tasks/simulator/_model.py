"""The pure part of the simulator: scripts, faults, and "what does request X look like at time t".

Nothing here does I/O, sleeps, reads a clock or takes a lock. A request's whole life is
decided by its :class:`Script` and the moment it was created, so the answer for any time
``t`` is a plain function (:func:`lifecycle`); the JSON bodies the API would send are built
from that answer by the ``*_body`` functions. :mod:`._simulator` adds state, locking, the
call log and the HTTP semantics on top.

Timeline of one request (``t0`` = creation)::

    t0 ──── queue_s ────► t0+queue_s ──── run_s ────► t0+queue_s+run_s
       IN_QUEUE                 IN_PROGRESS                  final (COMPLETED|FAILED|CANCELED)
       queue_position counts    progress 0..99 (linear or
       down to 0                jumpy), or null ("none")

``set_final`` can end a request early ("forced" final); a forced final wins from the
moment it was set.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import struct
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

IN_QUEUE = "IN_QUEUE"
IN_PROGRESS = "IN_PROGRESS"
COMPLETED = "COMPLETED"
FAILED = "FAILED"
CANCELED = "CANCELED"
TERMINAL_STATUSES = frozenset({COMPLETED, FAILED, CANCELED})

#: Credits a request reserves while running and is charged when COMPLETED.
COST_CREDITS = 10

#: Progress values a "jumpy" request shows, spread evenly over its run time.
JUMPY_STEPS = (0, 10, 10, 35, 35, 60, 90, 95)

#: Error code and message of a CANCELED request (``error`` of the result body).
CANCELED_ERROR = {"code": "canceled", "message": "The request was canceled."}

PROGRESS_MODES = frozenset({"linear", "jumpy", "none"})
MEDIA_KINDS = frozenset({"image", "video", "audio"})
FAULT_ENDPOINTS = frozenset({"status", "result", "any", "submit"})
FAULT_BODIES = frozenset({"envelope", "empty", "html", "malformed", "truncated"})
ENDPOINTS = frozenset({"submit", "status", "result", "other"})


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _require_seconds(owner: str, name: str, value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{owner}.{name} must be a number of seconds >= 0, got {value!r}")


def _require_count(owner: str, name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{owner}.{name} must be an integer >= 0, got {value!r}")


def _require_str(owner: str, name: str, value: object) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{owner}.{name} must be a string, got {value!r}")


def _require_choice(owner: str, name: str, value: object, choices: frozenset[str]) -> None:
    if value not in choices:
        allowed = ", ".join(sorted(choices))
        raise ValueError(f"{owner}.{name} must be one of {allowed}; got {value!r}")


def _reject_unknown_keys(owner: str, data: Mapping[str, Any], known: set[str]) -> None:
    if not isinstance(data, Mapping):
        raise ValueError(f"{owner} must be an object, got {type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise ValueError(
            f"unknown {owner} field(s): {', '.join(unknown)} "
            f"(known fields: {', '.join(sorted(known))})"
        )


@dataclass
class Fault:
    """One scripted misbehaviour of the API for one request.

    Matching calls are counted per fault; calls ``after_calls+1 .. after_calls+count``
    are answered with this fault instead of the normal response. With several faults,
    the first one (in list order) whose window covers the call answers.
    """

    #: Which calls it hits: "status", "result", "any" (status or result) or "submit"
    #: (the submit call, counted across idempotent re-submits).
    endpoint: str = "status"
    #: HTTP status code to answer with.
    http: int = 503
    #: How many consecutive matching calls get the fault.
    count: int = 1
    #: Matching calls to let through before the fault starts.
    after_calls: int = 0
    #: ``Retry-After`` header value (seconds or an HTTP date); ints are accepted.
    retry_after: str | None = None
    #: "envelope" | "empty" | "html" | "malformed" (JSON missing the required fields)
    #: | "truncated" (invalid JSON).
    body: str = "envelope"
    #: Error code in the envelope; derived from ``http`` when None.
    code: str | None = None

    def __post_init__(self) -> None:
        _require_choice("Fault", "endpoint", self.endpoint, FAULT_ENDPOINTS)
        if (
            not isinstance(self.http, int)
            or isinstance(self.http, bool)
            or not 100 <= self.http <= 599
        ):
            raise ValueError(f"Fault.http must be an HTTP status code, got {self.http!r}")
        _require_count("Fault", "count", self.count)
        _require_count("Fault", "after_calls", self.after_calls)
        if _is_number(self.retry_after):
            # JSON scripts may say "retry_after": 2; the header is text either way.
            self.retry_after = str(self.retry_after)
        if self.retry_after is not None:
            _require_str("Fault", "retry_after", self.retry_after)
        _require_choice("Fault", "body", self.body, FAULT_BODIES)
        if self.code is not None:
            _require_str("Fault", "code", self.code)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fault:
        """Build a fault from JSON; unknown keys raise ``ValueError`` naming them."""
        _reject_unknown_keys("Fault", data, {f.name for f in fields(cls)})
        return cls(**data)

    def matches(self, endpoint: str) -> bool:
        """Whether a call to ``endpoint`` counts towards this fault."""
        if self.endpoint == "any":
            return endpoint in ("status", "result")
        return self.endpoint == endpoint

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Script:
    """How one simulated request behaves. Every field has a default."""

    #: Seconds IN_QUEUE.
    queue_s: float = 0.0
    #: Seconds IN_PROGRESS.
    run_s: float = 1.0
    #: "linear" | "jumpy" (uneven steps) | "none" (progress always null).
    progress: str = "linear"
    #: Terminal status: "COMPLETED" | "FAILED" | "CANCELED".
    final: str = COMPLETED
    #: ``error.code`` when FAILED.
    error_code: str = "generation_failed"
    #: ``error.message`` when FAILED.
    error_message: str = "The model failed to generate an output."
    #: Output shape: "image" | "video" | "audio"; None: by model slug (:func:`media_for_model`).
    media: str | None = None
    #: queue_position at submit; counts down linearly to 0 over ``queue_s``.
    queue_position_start: int = 5
    #: The first N result calls after the request is terminal still answer 202.
    result_pending_calls: int = 0
    #: Scripted misbehaviour, see :class:`Fault`; dicts are converted.
    faults: list[Fault] = field(default_factory=list)
    #: Every answer about this request is delayed this long.
    latency_s: float = 0.0
    #: Model slug reported in results (an HTTP submit uses the slug from its URL).
    model: str = "sim/image"

    def __post_init__(self) -> None:
        _require_seconds("Script", "queue_s", self.queue_s)
        _require_seconds("Script", "run_s", self.run_s)
        _require_seconds("Script", "latency_s", self.latency_s)
        _require_choice("Script", "progress", self.progress, PROGRESS_MODES)
        _require_choice("Script", "final", self.final, TERMINAL_STATUSES)
        if self.media is not None:
            _require_choice("Script", "media", self.media, MEDIA_KINDS)
        _require_str("Script", "error_code", self.error_code)
        _require_str("Script", "error_message", self.error_message)
        _require_str("Script", "model", self.model)
        _require_count("Script", "queue_position_start", self.queue_position_start)
        _require_count("Script", "result_pending_calls", self.result_pending_calls)
        if not isinstance(self.faults, list | tuple):
            raise ValueError(f"Script.faults must be a list, got {self.faults!r}")
        faults: list[Fault] = []
        for item in self.faults:
            if isinstance(item, Fault):
                faults.append(Fault(**item.to_dict()))  # a copy: counters live elsewhere
            elif isinstance(item, Mapping):
                faults.append(Fault.from_dict(item))
            else:
                raise ValueError(f"Script.faults items must be objects, got {item!r}")
        self.faults = faults

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Script:
        """Build a script from JSON; unknown keys raise ``ValueError`` naming them."""
        _reject_unknown_keys("Script", data, {f.name for f in fields(cls)})
        return cls(**data)

    @classmethod
    def coerce(cls, script: Script | Mapping[str, Any] | None) -> Script:
        """A private copy of ``script`` (a Script, a dict for :meth:`from_dict`, or None)."""
        if script is None:
            return cls()
        if isinstance(script, Script):
            return cls(**script.to_dict())
        return cls.from_dict(script)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["faults"] = [f.to_dict() for f in self.faults]
        return data

    @property
    def total_s(self) -> float:
        """Seconds from creation to the scripted terminal status."""
        return self.queue_s + self.run_s


@dataclass(frozen=True)
class Call:
    """One ``/v1`` API call the simulator answered. The API key is never kept."""

    method: str
    #: Path without the query string.
    path: str
    #: "submit" | "status" | "result" | "other".
    endpoint: str
    request_id: str | None
    #: The status code actually sent (a fault's code when a fault answered).
    status_code: int
    #: ``time.time()`` when answered.
    at: float
    #: "Key" | "Bearer" | None (missing or another scheme).
    auth_scheme: str | None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Snapshot:
    """A request's lifecycle fields at one instant."""

    status: str
    queue_position: int | None
    progress: int | None
    #: When the request became terminal (None while it is not).
    terminal_at: float | None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


def lifecycle(
    script: Script,
    created_at: float,
    now: float,
    forced: tuple[str, float] | None = None,
) -> Snapshot:
    """The lifecycle fields of a request created at ``created_at``, as seen at ``now``.

    ``forced`` is ``(status, at)`` from an out-of-band ``set_final``.
    """
    if forced is not None:
        return Snapshot(forced[0], None, None, forced[1])
    elapsed = max(0.0, now - created_at)
    if elapsed < script.queue_s:
        start = script.queue_position_start
        # start+1 equal slices, so start, start-1, ..., 0 are each shown for a while.
        passed = int(elapsed / script.queue_s * (start + 1))
        return Snapshot(IN_QUEUE, min(start, max(0, start - passed)), None, None)
    if elapsed < script.total_s:
        fraction = (elapsed - script.queue_s) / script.run_s
        return Snapshot(IN_PROGRESS, None, _progress(script.progress, fraction), None)
    return Snapshot(script.final, None, None, created_at + script.total_s)


def _progress(mode: str, fraction: float) -> int | None:
    if mode == "none":
        return None
    if mode == "jumpy":
        return JUMPY_STEPS[min(len(JUMPY_STEPS) - 1, int(fraction * len(JUMPY_STEPS)))]
    return min(99, max(0, int(fraction * 100)))


def iso_utc(timestamp: float) -> str:
    """``2024-05-01T12:00:00.000Z`` for a unix timestamp."""
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def canonical_request_id(value: object) -> str | None:
    """The canonical UUID string for ``value``, or None if it is not a UUID."""
    if not isinstance(value, str) or not 32 <= len(value) <= 45:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def media_for_model(model: str) -> str:
    """The output kind a model slug implies: "video" or "audio" if its name says so, else "image".

    ``sim/video`` and ``acme/text-to-video-v2`` give videos, ``sim/audio`` an audio track,
    anything else (``sim/image``) images, so a submit to ``sim/video`` gets an ``.mp4``
    without scripting ``media``.
    """
    words = set(re.split(r"[/_.\-]+", model.lower()))
    for kind in ("video", "audio"):
        if kind in words:
            return kind
    return "image"


#: ``/files/<file id>.<ext>``: the media URLs :func:`build_output` gives.
FILE_PATH = re.compile(r"^/files/(?P<file_id>sandbox|[0-9a-f-]{36})\.(?P<ext>png|mp3|mp4)$")


def media_file(file_id: str, ext: str) -> tuple[str, bytes] | None:
    """(content type, bytes) the simulator serves at a media URL, or None (no such file).

    A 256 x 256 PNG in a colour taken from the file id, and a one-second tone (WAV
    bytes, ``audio/wav``, behind the ``.mp3`` URL): enough for a page to show the
    image and play the sound. No video: there is no small way to make a playable MP4
    here, so a ``.mp4`` URL is a 404 (documented).
    """
    if ext == "png":
        return "image/png", _png(hashlib.sha256(file_id.encode()).digest()[:3])
    if ext == "mp3":
        return "audio/wav", _wav_tone()
    return None


def _png(rgb: bytes, size: int = 256) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    row = b"\x00" + rgb * size  # filter byte "none", then the pixels
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(row * size, 9)) + chunk(b"IEND", b""))


@functools.cache
def _wav_tone(rate: int = 8000, seconds: float = 1.0, hz: float = 440.0) -> bytes:
    frames = b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * hz * i / rate)))
        for i in range(int(rate * seconds)))
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)  # PCM, mono, 16-bit
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack(
        "<I", len(frames)) + frames
    return b"RIFF" + struct.pack("<I", len(body)) + body


def build_output(media: str, base_url: str, file_id: str) -> dict[str, Any]:
    """A result ``output`` of the given media kind, shaped as the real API's."""
    base = base_url.rstrip("/")
    if media == "video":
        return {
            "video": {
                "url": f"{base}/files/{file_id}.mp4",
                "width": 1280,
                "height": 720,
                "duration": 5.0,
            }
        }
    if media == "audio":
        track = {"url": f"{base}/files/{file_id}.mp3", "format": "mp3"}
        return {"audio": track, "audios": [dict(track)]}
    return {"images": [{"url": f"{base}/files/{file_id}.png", "width": 1024, "height": 1024}]}


def terminal_error(script: Script, status: str) -> dict[str, str] | None:
    """The ``error`` object of a terminal request (None when COMPLETED)."""
    if status == FAILED:
        return {"code": script.error_code, "message": script.error_message}
    if status == CANCELED:
        return dict(CANCELED_ERROR)
    return None


def status_body(request_id: str, snap: Snapshot) -> dict[str, Any]:
    """Body of ``GET /v1/requests/{id}/status``."""
    return {
        "request_id": request_id,
        "status": snap.status,
        "queue_position": snap.queue_position,
        "progress": snap.progress,
        "logs": [],
    }


def pending_body(request_id: str, snap: Snapshot) -> dict[str, Any]:
    """Body of a ``202`` answer to ``GET /v1/requests/{id}``."""
    return {
        "request_id": request_id,
        "status": snap.status,
        "queue_position": snap.queue_position,
        "progress": snap.progress,
    }


def raced_pending_body(request_id: str, script: Script) -> dict[str, Any]:
    """The 202 body while ``result_pending_calls`` remain: the result store still says
    the request is running, although ``/status`` already reports it terminal."""
    return pending_body(
        request_id, Snapshot(IN_PROGRESS, None, _progress(script.progress, 0.999), None)
    )


def result_body(
    request_id: str,
    script: Script,
    model: str,
    snap: Snapshot,
    created_at: float,
    output: dict[str, Any] | None,
) -> dict[str, Any]:
    """Body of the ``200`` answer to ``GET /v1/requests/{id}`` once terminal."""
    completed = snap.status == COMPLETED
    return {
        "request_id": request_id,
        "status": snap.status,
        "model": model,
        "output": output if completed else None,
        "error": terminal_error(script, snap.status),
        "cost": COST_CREDITS if completed else 0,
        "created_at": iso_utc(created_at),
        "completed_at": iso_utc(snap.terminal_at) if snap.terminal_at is not None else None,
    }


def webhook_body(result: Mapping[str, Any]) -> dict[str, Any]:
    """The webhook delivery body for a terminal result body."""
    body: dict[str, Any] = {"request_id": result["request_id"]}
    if result["status"] == COMPLETED:
        body["status"] = "OK"
        body["payload"] = {
            "model": result["model"],
            "output": result["output"],
            "cost": result["cost"],
        }
    else:
        body["status"] = "ERROR"
        body["error"] = result["error"]
    return body


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    429: "rate_limit_error",
}

_DEFAULT_CODES = {
    400: "invalid_request",
    401: "invalid_api_key",
    403: "insufficient_scope",
    404: "not_found",
    409: "idempotency_key_reuse",
    429: "rate_limit_exceeded",
    500: "internal_error",
    502: "service_unavailable",
    503: "service_unavailable",
    504: "service_unavailable",
}

_DEFAULT_MESSAGES = {
    "invalid_request": "The request is invalid.",
    "invalid_api_key": "Missing or invalid API key.",
    "insufficient_scope": "The API key is not allowed to do this.",
    "not_found": "Not found.",
    "idempotency_key_reuse": "This Idempotency-Key was used with a different request body.",
    "rate_limit_exceeded": "Too many requests. Slow down.",
    "concurrency_limit_exceeded": "Too many requests in flight.",
    "internal_error": "Internal server error.",
    "service_unavailable": "The service is temporarily unavailable.",
}


def default_error_code(http: int) -> str:
    """The error code the real API uses for an HTTP status."""
    if http in _DEFAULT_CODES:
        return _DEFAULT_CODES[http]
    return "internal_error" if http >= 500 else "invalid_request"


def error_envelope(
    http: int, code: str | None = None, message: str | None = None
) -> dict[str, Any]:
    """``{"error": {"type", "code", "message"}}`` for an HTTP status."""
    code = code or default_error_code(http)
    if message is None:
        message = _DEFAULT_MESSAGES.get(code, f"HTTP {http}")
    error_type = _ERROR_TYPES.get(http, "api_error" if http >= 500 else "invalid_request_error")
    return {"error": {"type": error_type, "code": code, "message": message}}
