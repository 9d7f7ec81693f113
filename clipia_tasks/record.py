"""The per-request record in Redis: the one source of truth about a request id.

One hash per request id, ``clipia:request:<id>``, written only by Lua scripts
so every transition is atomic across processes and machines:

``claim``
    Every ``poll_request`` message starts here and learns its role:
    ``done`` (the outcome is recorded: answer from it, no API call),
    ``owner`` (this message is the one live poller of the id),
    ``follower`` (another chain polls; wait on the record with cheap reads),
    ``stale`` (an older message of a chain that has moved on: exit quietly).
    A chain is one Celery task id; its messages are numbered by Celery's
    ``retries`` counter and the record keeps the number it expects next
    (``gen``). The owner holds a lease up to its planned next poll plus a
    grace period; a chain that misses it (its message was lost) is replaced by
    the next caller.
``schedule``
    The owner writes what it saw and when it polls next, then re-sends itself.
``finish``
    Records the terminal outcome; the first writer wins, later ones get
    ``False``. Signals and callbacks key off this transition.
``begin_poll``
    The owner takes a short poll lock and stamps the call time: a duplicate of
    the same message waits, a lock left by a dead process on this host is taken
    over, and no two calls come closer than ``CLIPIA_POLL_INTERVAL``.
``begin_delivery`` / ``end_delivery``
    Fire the completion signals once: a short lock guards the firing, and the
    ``delivered`` flag is set right after the receivers return.
``note_terminal``
    A verified webhook marks the terminal status, so the next step fetches the
    result instead of polling ``/status``.

Beside the records: ``clipia:index:chains``, a sorted set of live chains by
the time their next message is due (the sweep re-sends those far past due),
and ``clipia:pause:<key tag>``, set after a 429 so every poller of that key
holds off.

The record never holds the API key: only what ``/status`` and the result
return. It expires ``CLIPIA_RECORD_TTL`` seconds after its last write.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, cast

import redis

from .policy import Observation

__all__ = ["Claim", "RecordStore", "RequestState", "Role", "record_key"]

KEY_PREFIX = "clipia:request:"
LOCK_PREFIX = "clipia:lock:"
DELIVERY_PREFIX = "clipia:delivering:"
#: Sorted set of live chains: member ``"<request_id> <task_id>"``, score = when that
#: chain's next message is due. The sweep resumes chains far past due.
CHAINS_KEY = "clipia:index:chains"
#: Per API key (by a one-way tag): a 429 makes every poller of that key hold off.
PAUSE_PREFIX = "clipia:pause:"
HISTORY_LEN = 4


def record_key(request_id: str) -> str:
    return KEY_PREFIX + request_id


class Role(StrEnum):
    """What one ``poll_request`` message should do."""

    #: The outcome is recorded: return it.
    DONE = "done"
    #: This message is the live poller.
    OWNER = "owner"
    #: Another chain polls; read the record on our own countdowns.
    FOLLOWER = "follower"
    #: A superseded message of a chain that has moved on: exit, call nothing.
    STALE = "stale"


# KEYS: record, chains index. ARGV: task_id, retries, now, first_enqueued_at, timeout_s,
# ttl_s, lease_s, request_id, run_s (how long this message may take before it is overdue)
_CLAIM = """
local k, chains = KEYS[1], KEYS[2]
local task_id, retries, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local enq, timeout, ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local member = ARGV[8] .. ' ' .. task_id
if redis.call('HEXISTS', k, 'outcome') == 1 then return 'done' end
if redis.call('HSETNX', k, 'first_enqueued_at', ARGV[4]) == 1 then
  redis.call('HSET', k, 'deadline_at', tostring(enq + timeout))
  redis.call('HSETNX', k, 'status', 'SUBMITTED')
end
local owner = redis.call('HGET', k, 'owner')
local role
if owner == task_id then
  local gen = tonumber(redis.call('HGET', k, 'gen') or '0')
  if retries < gen then return 'stale' end
  redis.call('HSET', k, 'gen', tostring(retries))
  role = 'owner'
else
  local lease = tonumber(redis.call('HGET', k, 'lease_until') or '0')
  local seen = tonumber(redis.call('HGET', k, 'w:' .. task_id) or '-1')
  if retries < seen then return 'stale' end
  redis.call('HSET', k, 'w:' .. task_id, tostring(retries))
  if owner and owner ~= '' and now < lease then
    role = 'follower'
  else
    redis.call('HSET', k, 'owner', task_id, 'gen', tostring(retries),
               'lease_until', tostring(now + tonumber(ARGV[7])), 'fatal', '')
    role = 'owner'
  end
end
redis.call('ZADD', chains, now + tonumber(ARGV[9]), member)
redis.call('EXPIRE', k, ttl)
return role
"""

# KEYS: record, chains. ARGV: task_id, gen_next, lease_until, ttl_s, wake_at, request_id,
# then field/value pairs. A terminal status already seen (e.g. from a webhook) is kept.
_SCHEDULE = """
local k = KEYS[1]
if redis.call('HGET', k, 'owner') ~= ARGV[1] then return 0 end
if redis.call('HEXISTS', k, 'outcome') == 1 then return 0 end
local current = redis.call('HGET', k, 'status')
local terminal = {COMPLETED = true, FAILED = true, CANCELED = true}
redis.call('HSET', k, 'gen', ARGV[2], 'lease_until', ARGV[3])
for i = 7, #ARGV, 2 do
  if not (ARGV[i] == 'status' and terminal[current] and not terminal[ARGV[i + 1]]) then
    redis.call('HSET', k, ARGV[i], ARGV[i + 1])
  end
end
redis.call('ZADD', KEYS[2], tonumber(ARGV[5]), ARGV[6] .. ' ' .. ARGV[1])
redis.call('EXPIRE', k, tonumber(ARGV[4]))
return 1
"""

# KEYS: record. ARGV: ttl_s, then field/value pairs (must include 'outcome')
_FINISH = """
local k = KEYS[1]
if redis.call('HEXISTS', k, 'outcome') == 1 then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSET', k, ARGV[i], ARGV[i + 1]) end
redis.call('HSET', k, 'owner', '', 'lease_until', '0')
redis.call('EXPIRE', k, tonumber(ARGV[1]))
return 1
"""

# KEYS: record. ARGV: task_id, ttl_s, field/value pairs. Drops ownership (final API error).
_RELEASE = """
local k = KEYS[1]
if redis.call('HGET', k, 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', k, 'owner', '', 'lease_until', '0')
for i = 3, #ARGV, 2 do redis.call('HSET', k, ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', k, tonumber(ARGV[2]))
return 1
"""

# KEYS: record, poll lock. ARGV: token, lock_ms, now, min_gap_s, unanswered_margin_s.
# 'ok' (lock taken, call time stamped), 'early' <earliest allowed>, or 'locked' <holder>.
# The gap counts from when the last status call was answered (last_poll_at); a call
# that was sent but never answered (its process died) counts from when it was sent
# plus a margin for the time it may have taken to reach the API. min_gap_s 0 (a
# result fetch) only takes the lock.
_BEGIN_POLL = """
local holder = redis.call('GET', KEYS[2])
if holder then return {'locked', holder} end
if tonumber(ARGV[4]) <= 0 then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', tonumber(ARGV[2]))
  return {'ok', ''}
end
local sent = tonumber(redis.call('HGET', KEYS[1], 'call_started_at') or '0')
local answered = tonumber(redis.call('HGET', KEYS[1], 'last_poll_at') or '0')
local from = answered
if answered < sent then from = sent + tonumber(ARGV[5]) end
local earliest = from + tonumber(ARGV[4])
if tonumber(ARGV[3]) < earliest then return {'early', tostring(earliest)} end
redis.call('SET', KEYS[2], ARGV[1], 'PX', tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], 'call_started_at', ARGV[3])
return {'ok', ''}
"""

# KEYS: record, delivery lock. ARGV: token, lock_ms. 'skip', 'go', or 'busy' <holder>.
_BEGIN_DELIVERY = """
if redis.call('HEXISTS', KEYS[1], 'outcome') == 0 then return {'skip', ''} end
if redis.call('HGET', KEYS[1], 'delivered') == '1' then return {'skip', ''} end
local holder = redis.call('GET', KEYS[2])
if holder then return {'busy', holder} end
redis.call('SET', KEYS[2], ARGV[1], 'PX', tonumber(ARGV[2]))
return {'go', ''}
"""

# KEYS: a lock. ARGV: token. Deletes the lock only if it still holds this token.
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: record, chains. ARGV: status, now, webhook_id, ttl_s, timeout_s, request_id
# A signed webhook said the request ended: remember the terminal status so the next
# step fetches the result instead of polling /status. 'done', 'seen' or 'new'.
_NOTE_TERMINAL = """
local k = KEYS[1]
if redis.call('HEXISTS', k, 'outcome') == 1 then return 'done' end
if redis.call('HGET', k, 'webhook_id') then return 'seen' end
if redis.call('HSETNX', k, 'first_enqueued_at', ARGV[2]) == 1 then
  redis.call('HSET', k, 'deadline_at', tostring(tonumber(ARGV[2]) + tonumber(ARGV[5])))
end
redis.call('HSET', k, 'status', ARGV[1], 'webhook_id', ARGV[3], 'webhook_at', ARGV[2],
           'next_poll_at', ARGV[2])
redis.call('EXPIRE', k, tonumber(ARGV[4]))
return 'new'
"""


_STATUS_CODES = {"IN_QUEUE": "Q", "IN_PROGRESS": "P", "COMPLETED": "C", "FAILED": "F",
                 "CANCELED": "X"}
_STATUS_NAMES = {v: k for k, v in _STATUS_CODES.items()}


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
    out = []
    for item in filter(None, text.split(";")):
        at, code, qp, pr = item.split("|")
        status = _STATUS_NAMES.get(code, code.lstrip("?"))
        out.append(Observation(float(at), status, int(qp) if qp else None,
                               int(pr) if pr else None))
    return tuple(out)


def trim_history(history: list[Observation], keep: int = 4) -> list[Observation]:
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
        if last.status == "IN_PROGRESS" and (
            prev.progress is None or cur.progress is None or prev.progress > cur.progress
        ):
            break
        if last.status == "IN_QUEUE" and prev.queue_position is None:
            break
        start -= 1
    tail = history[-(keep - 1):]
    anchor = history[start]
    return tail if anchor in tail else [anchor, *tail]


def _num(value: str | None) -> float | None:
    if value is None or value == "":
        return None
    return float(value)


def _int(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    return int(float(value))


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
    #: Task ids of chains that have answered their caller (SUCCESS or FAILURE stored).
    answered: frozenset[str] = frozenset()

    @property
    def is_terminal(self) -> bool:
        return self.outcome is not None

    @classmethod
    def from_hash(cls, request_id: str, raw: Mapping[str, str]) -> RequestState:
        def js(name: str) -> Any:
            text = raw.get(name)
            return json.loads(text) if text else None

        history = decode_history(raw.get("history") or "")
        return cls(
            request_id=request_id,
            status=raw.get("status") or None,
            queue_position=_int(raw.get("queue_position")),
            progress=_int(raw.get("progress")),
            last_poll_at=_num(raw.get("last_poll_at")),
            next_poll_at=_num(raw.get("next_poll_at")),
            polls=_int(raw.get("polls")) or 0,
            outcome=raw.get("outcome") or None,
            result=js("result"),
            error=js("error"),
            first_enqueued_at=_num(raw.get("first_enqueued_at")),
            deadline_at=_num(raw.get("deadline_at")),
            finished_at=_num(raw.get("finished_at")),
            fatal=js("fatal"),
            history=history,
            owner=raw.get("owner") or None,
            gen=_int(raw.get("gen")) or 0,
            errors=_int(raw.get("errors")) or 0,
            last_error=raw.get("last_error") or "",
            delivered=raw.get("delivered") == "1",
            unknown_logged=raw.get("unknown_logged") == "1",
            answered=frozenset(k[4:] for k in raw if k.startswith("ans:")),
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
        }


@dataclass(frozen=True)
class Claim:
    role: Role
    state: RequestState


def _flat(fields: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for name, value in fields.items():
        if value is None:
            text = ""
        elif isinstance(value, dict | list | tuple):
            text = json.dumps(value, separators=(",", ":"))
        else:
            text = str(value)
        out.extend((name, text))
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_token(task_id: str, retries: int) -> str:
    """Who holds a lock: host, pid, chain and message, so a dead holder can be told."""
    return f"{socket.gethostname()}|{os.getpid()}|{task_id}|{retries}"


def holder_is_dead(token: str) -> bool:
    """True only when the holder ran on this host and its process is gone."""
    host, _, rest = token.partition("|")
    pid_text = rest.partition("|")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    return not _pid_alive(int(pid_text))


class RecordStore:
    """Reads and atomic transitions of request records on one Redis."""

    def __init__(self, client: redis.Redis, *, ttl_s: int) -> None:
        self.redis = client
        self.ttl_s = ttl_s
        self._claim = client.register_script(_CLAIM)
        self._schedule = client.register_script(_SCHEDULE)
        self._finish = client.register_script(_FINISH)
        self._release = client.register_script(_RELEASE)
        self._begin_poll = client.register_script(_BEGIN_POLL)
        self._begin_delivery = client.register_script(_BEGIN_DELIVERY)
        self._unlock = client.register_script(_UNLOCK)
        self._note_terminal = client.register_script(_NOTE_TERMINAL)

    @classmethod
    def from_url(cls, url: str, *, ttl_s: int) -> RecordStore:
        return cls(
            redis.Redis.from_url(
                url, decode_responses=True, socket_timeout=10, socket_connect_timeout=5
            ),
            ttl_s=ttl_s,
        )

    def __repr__(self) -> str:
        return f"RecordStore(ttl_s={self.ttl_s})"

    def fields(self, request_id: str) -> dict[str, str]:
        """The record's raw fields (per-chain ones included); empty if it expired."""
        return cast(dict[str, str], self.redis.hgetall(record_key(request_id)))

    def get(self, request_id: str) -> RequestState | None:
        raw = self.fields(request_id)
        if not raw:
            return None
        return RequestState.from_hash(request_id, raw)

    def claim(
        self,
        request_id: str,
        task_id: str,
        retries: int,
        *,
        first_enqueued_at: float,
        timeout_s: float,
        lease_s: float,
        run_s: float,
        now: float | None = None,
    ) -> Claim:
        """Learn this message's role; a new owner holds the lease for ``lease_s``.

        The chain counts as overdue if this message has not re-planned it within
        ``run_s`` (it died mid-run).
        """
        now = time.time() if now is None else now
        role = self._claim(
            keys=[record_key(request_id), CHAINS_KEY],
            args=[task_id, retries, repr(now), repr(first_enqueued_at), repr(timeout_s),
                  self.ttl_s, repr(lease_s), request_id, repr(run_s)],
        )
        state = self.get(request_id)
        assert state is not None  # claim always writes the record
        return Claim(Role(role), state)

    def schedule(
        self,
        request_id: str,
        task_id: str,
        *,
        gen_next: int,
        lease_until: float,
        wake_at: float,
        fields: Mapping[str, Any],
    ) -> bool:
        """Owner only: store what was seen and the planned next poll. False if replaced.

        ``wake_at`` is when the chain's next message is due; it is also the record's
        ``next_poll_at`` unless ``fields`` says otherwise.
        """
        ok = self._schedule(
            keys=[record_key(request_id), CHAINS_KEY],
            args=[task_id, gen_next, repr(lease_until), self.ttl_s, repr(wake_at), request_id,
                  *_flat({"next_poll_at": repr(wake_at), **fields})],
        )
        return bool(ok)

    def note_seen_terminal(
        self,
        request_id: str,
        task_id: str,
        retries: int,
        fields: Mapping[str, Any],
        *,
        lease_until: float,
        due_at: float,
    ) -> bool:
        """Owner only: /status said terminal; the result is fetched next, by this message.

        The message keeps its number (a redelivered copy of it is still the owner) and
        the record asks for the result at once; the chain counts as overdue after
        ``due_at``. False if the chain was replaced.
        """
        return self.schedule(request_id, task_id, gen_next=retries, lease_until=lease_until,
                             wake_at=due_at, fields={**fields, "next_poll_at": ""})

    def plan(self, request_id: str, task_id: str, wake_at: float) -> None:
        """Note when a chain's next message is due (followers, hand-offs, the sweep)."""
        self.redis.zadd(CHAINS_KEY, {f"{request_id} {task_id}": wake_at})

    def chain_done(self, request_id: str, task_id: str) -> None:
        """The chain has answered its caller: nothing left to resume or answer again."""
        pipe = self.redis.pipeline()
        if self.redis.exists(record_key(request_id)):
            pipe.hset(record_key(request_id), f"ans:{task_id}", "1")
        pipe.zrem(CHAINS_KEY, f"{request_id} {task_id}")
        pipe.execute()

    def overdue_chains(self, before: float, limit: int = 500) -> list[tuple[str, str, float]]:
        """Chains whose next message was due before ``before``: (request_id, task_id, due)."""
        rows = self.redis.zrangebyscore(CHAINS_KEY, "-inf", before, start=0, num=limit,
                                        withscores=True)
        out = []
        for member, score in cast(list[tuple[str, float]], rows):
            rid, _, task_id = member.partition(" ")
            out.append((rid, task_id, float(score)))
        return out

    def finish(self, request_id: str, fields: Mapping[str, Any]) -> bool:
        """Record the terminal outcome. True for the first writer only."""
        if "outcome" not in fields:
            raise ValueError("finish() needs an outcome")
        return bool(
            self._finish(keys=[record_key(request_id)], args=[self.ttl_s, *_flat(fields)])
        )

    def release(self, request_id: str, task_id: str, fields: Mapping[str, Any]) -> bool:
        """Owner only: give up ownership after a final error, recording it."""
        return bool(
            self._release(
                keys=[record_key(request_id)], args=[task_id, self.ttl_s, *_flat(fields)]
            )
        )

    def begin_poll(
        self,
        request_id: str,
        token: str,
        *,
        lock_s: float,
        now: float,
        min_gap_s: float,
        unanswered_margin_s: float,
    ) -> tuple[str, str]:
        """Take the poll lock and stamp the call time, unless a call is running or too recent.

        Returns ``("ok", "")``, ``("early", <earliest allowed call time>)`` or
        ``("locked", <holder token>)``. A lock whose holder died on this host is
        taken over at once.
        """
        args: list[str | int] = [token, int(lock_s * 1000), repr(now), repr(min_gap_s),
                                 repr(unanswered_margin_s)]
        return self._run_taking_over(self._begin_poll, request_id, LOCK_PREFIX, args, "locked")

    def _run_taking_over(
        self, script: Any, request_id: str, prefix: str, args: list[Any], held: str
    ) -> tuple[str, str]:
        """Run a lock-taking script; if the lock's holder died on this host, take it over."""
        keys = [record_key(request_id), prefix + request_id]
        verdict, info = script(keys=keys, args=args)
        if verdict == held and holder_is_dead(info):
            self._unlock(keys=[prefix + request_id], args=[info])
            verdict, info = script(keys=keys, args=args)
        return str(verdict), str(info)

    def _ttl_s(self, key: str) -> float:
        return max(int(self.redis.pttl(key)), 0) / 1000

    def lock_ttl_s(self, request_id: str) -> float:
        return self._ttl_s(LOCK_PREFIX + request_id)

    def unlock(self, request_id: str, token: str) -> None:
        self._unlock(keys=[LOCK_PREFIX + request_id], args=[token])

    def begin_delivery(self, request_id: str, token: str, lock_s: float = 60.0) -> str:
        """``"go"``: fire the signals now; ``"skip"``: already done; ``"busy"``: someone is."""
        args = [token, int(lock_s * 1000)]
        return self._run_taking_over(
            self._begin_delivery, request_id, DELIVERY_PREFIX, args, "busy"
        )[0]

    def delivery_lock_ttl_s(self, request_id: str) -> float:
        return self._ttl_s(DELIVERY_PREFIX + request_id)

    def end_delivery(self, request_id: str, token: str) -> None:
        self.redis.hset(record_key(request_id), "delivered", "1")
        self._unlock(keys=[DELIVERY_PREFIX + request_id], args=[token])

    def note_terminal(
        self, request_id: str, status: str, *, webhook_id: str, timeout_s: float,
        now: float | None = None,
    ) -> str:
        """A verified webhook says the request ended: ``"new"``, ``"seen"`` or ``"done"``."""
        now = time.time() if now is None else now
        return str(
            self._note_terminal(
                keys=[record_key(request_id), CHAINS_KEY],
                args=[status, repr(now), webhook_id, self.ttl_s, repr(timeout_s), request_id],
            )
        )

    def pause_until(self, key_tag: str) -> float:
        """Until when every poller of this key holds off (after a 429), or 0."""
        value = self.redis.get(PAUSE_PREFIX + key_tag)
        return float(value) if value else 0.0

    def pause(self, key_tag: str, until: float, now: float) -> None:
        """Make every poller of this key hold off until ``until`` (never shortens a pause)."""
        if until > self.pause_until(key_tag):
            ttl_ms = max(int((until - now) * 1000), 1)
            self.redis.set(PAUSE_PREFIX + key_tag, repr(until), px=ttl_ms)

    def mark_fields(self, request_id: str, fields: Mapping[str, Any]) -> None:
        """Plain writes that need no transition (callback bookkeeping)."""
        flat = _flat(fields)
        mapping = dict(zip(flat[::2], flat[1::2], strict=True))
        self.redis.hset(record_key(request_id), mapping=cast(Any, mapping))
