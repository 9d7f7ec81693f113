"""RecordStore: every read and atomic transition of request records on one Redis.

Each transition is one Lua script from ``lua/`` (its header lists the keys,
arguments and fields it touches) and answers with a typed result: :class:`Role`,
:class:`PollGate`, :class:`DeliveryTurn`, :class:`WebhookNote`, or ``bool``
where the answer is yes or no. Nothing outside this package reads or writes a
record field by name.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from typing import Any, cast

import redis

from .keys import (
    CHAINS_KEY,
    DELIVERY_LOCK_PREFIX,
    DURATIONS_PREFIX,
    DURATIONS_TTL_S,
    EPOCH_KEY,
    LAYOUT_VERSION,
    PAUSE_PREFIX,
    POLL_LOCK_PREFIX,
    ChainField,
    Field,
    chain_member,
    changes_channel,
    record_key,
)
from .state import RequestState

__all__ = [
    "CLIENT_NAME",
    "ChainToResume",
    "Claim",
    "DeliveryTurn",
    "Gate",
    "GateAsk",
    "PollGate",
    "RecordStore",
    "Role",
    "WebhookNote",
    "holder_is_dead",
    "lock_token",
]


#: Every connection of a store made by :meth:`RecordStore.from_url` names itself so.
CLIENT_NAME = "clipia-record"


class Role(StrEnum):
    """What one ``poll_request`` message should do (the answer of ``claim``)."""

    #: The outcome is recorded: return it.
    DONE = "done"
    #: This message is the live poller.
    OWNER = "owner"
    #: Another chain polls; read the record on our own countdowns.
    FOLLOWER = "follower"
    #: Another chain owns the request, but a terminal status was reported (a webhook):
    #: fetch the result now instead of waiting for the owner's countdown.
    FETCH = "fetch"
    #: A superseded message of a chain that has moved on: exit, call nothing.
    STALE = "stale"


@dataclass(frozen=True)
class Claim:
    role: Role
    state: RequestState
    #: The poll gate, for an owner asked with a :class:`GateAsk` (else ``None``).
    gate: PollGate | None = None
    #: Until when every poller of the key holds off (after a 429), or 0.
    pause_until: float = 0.0
    #: The epoch workers wrote (``None``: Redis has none: fresh, or its data was lost).
    epoch: str | None = None
    #: The model's learned durations as stored (``clipia_tasks.durations``), or "".
    durations: str = ""


@dataclass(frozen=True)
class GateAsk:
    """What :meth:`RecordStore.claim` needs to open the poll gate in the same round trip."""

    token: str
    key_tag: str
    lock_s: float
    min_gap_s: float
    unanswered_margin_s: float
    webhook_fallback_s: float
    result_waits_before_status: int


class Gate(StrEnum):
    """The answer of ``begin_poll``."""

    #: The poll lock is taken (and, for a status call, the call time stamped): call now.
    OPEN = "ok"
    #: The last status call is too recent: not before ``PollGate.earliest_at``.
    EARLY = "early"
    #: Another process holds the poll lock (``PollGate.holder``).
    LOCKED = "locked"
    #: (claim only) The next poll is planned later (``next_poll_at``).
    WAIT = "wait"
    #: (claim only) The deadline has passed.
    DUE = "due"
    #: (claim only) A webhook is expected and the fallback delay has not passed.
    WEBHOOK = "webhook"
    #: (claim only) Every poller of the key holds off after a 429.
    PAUSED = "paused"


@dataclass(frozen=True)
class PollGate:
    gate: Gate
    #: With :attr:`Gate.EARLY`: the earliest allowed call time (unix s).
    earliest_at: float = 0.0
    #: With :attr:`Gate.LOCKED`: the holder's lock token.
    holder: str = ""


class DeliveryTurn(StrEnum):
    """The answer of ``begin_delivery``: may this process fire the signals?"""

    #: Yes: the delivery lock is taken; fire, then ``end_delivery``.
    GO = "go"
    #: No: already delivered (or no outcome yet).
    SKIP = "skip"
    #: Not now: another live process is firing them.
    BUSY = "busy"


class WebhookNote(StrEnum):
    """The answer of ``note_terminal`` (a verified webhook)."""

    #: The terminal status is recorded now: fetch the result.
    NEW = "new"
    #: A webhook for this request was noted before: nothing to do.
    SEEN = "seen"
    #: The outcome is already recorded: nothing to do.
    DONE = "done"


@dataclass(frozen=True)
class ChainToResume:
    """What the sweep needs to re-send one chain's next message faithfully."""

    request_id: str
    task_id: str
    #: The number of the message the record expects next from this chain.
    retries: int
    first_enqueued_at: float | None
    callback_url: str | None = None
    #: Celery ``link`` / ``link_error`` signatures as stored at the first message.
    links: dict[str, Any] = field(default_factory=dict)
    expect_webhook: bool = False
    model: str | None = None


def _flat(fields: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for name, value in fields.items():
        if value is None:
            text = ""
        elif isinstance(value, dict | list | tuple):
            text = json.dumps(value, separators=(",", ":"))
        else:
            text = str(value)
        out.extend((str(name), text))
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


def _lua(name: str) -> str:
    return (resources.files(__package__) / "lua" / f"{name}.lua").read_text()


class RecordStore:
    """Reads and atomic transitions of request records on one Redis."""

    def __init__(self, client: redis.Redis, *, ttl_s: int) -> None:
        self.redis = client
        self.ttl_s = ttl_s
        script = client.register_script
        self._claim = script(_lua("claim"))
        self._schedule = script(_lua("schedule"))
        self._finish = script(_lua("finish"))
        self._release = script(_lua("release"))
        self._begin_poll = script(_lua("begin_poll"))
        self._begin_delivery = script(_lua("begin_delivery"))
        self._end_delivery = script(_lua("end_delivery"))
        self._unlock = script(_lua("unlock"))
        self._note_terminal = script(_lua("note_terminal"))
        self._remember_chain = script(_lua("remember_chain"))
        self._answer_chain = script(_lua("answer_chain"))
        self._mark_chain_field = script(_lua("mark_chain_field"))
        self._pause = script(_lua("pause"))
        self._register = script(_lua("register"))

    @classmethod
    def from_url(cls, url: str, *, ttl_s: int) -> RecordStore:
        """A store on ``url``: any form the settings accept, ``sentinel://`` included.

        A Sentinel URL takes the master's name and the sentinels' password from the
        process's settings (``CLIPIA_SENTINEL_MASTER``, ``CLIPIA_SENTINEL_PASSWORD``).
        """
        from ..connections import redis_client
        from ..settings import get_settings

        client = redis_client(url, get_settings(), decode_responses=True, socket_timeout_s=10,
                              connect_timeout_s=5, client_name=CLIENT_NAME)
        return cls(client, ttl_s=ttl_s)

    def __repr__(self) -> str:
        return f"RecordStore(ttl_s={self.ttl_s})"

    # -- reads -------------------------------------------------------------------

    def _fields(self, request_id: str) -> dict[str, str]:
        return cast(dict[str, str], self.redis.hgetall(record_key(request_id)))

    def get(self, request_id: str) -> RequestState | None:
        """The record of ``request_id``, or ``None`` if Redis has none (never seen, expired)."""
        raw = self._fields(request_id)
        if not raw:
            return None
        return RequestState.from_hash(request_id, raw)

    def overdue_chains(self, before: float, limit: int = 500) -> list[tuple[str, str, float]]:
        """Chains whose next message was due before ``before``: (request_id, task_id, due)."""
        rows = self.redis.zrangebyscore(CHAINS_KEY, "-inf", before, start=0, num=limit,
                                        withscores=True)
        out = []
        for member, score in cast(list[tuple[str, float]], rows):
            rid, _, task_id = member.partition(" ")
            out.append((rid, task_id, float(score)))
        return out

    def chain_to_resume(self, request_id: str, task_id: str) -> ChainToResume | None:
        """How to re-send chain ``task_id`` of ``request_id``; ``None`` if the record expired."""
        raw = self._fields(request_id)
        if not raw:
            return None
        if raw.get(Field.OWNER) == task_id:
            retries = int(raw.get(Field.GEN) or 0)
        else:
            retries = int(raw.get(ChainField.SEEN.of(task_id)) or 0)
        first = raw.get(Field.FIRST_ENQUEUED_AT)
        return ChainToResume(
            request_id=request_id,
            task_id=task_id,
            retries=retries,
            first_enqueued_at=float(first) if first else None,
            callback_url=raw.get(ChainField.CALLBACK_URL.of(task_id)) or None,
            links=json.loads(raw.get(ChainField.LINKS.of(task_id)) or "{}"),
            expect_webhook=raw.get(Field.EXPECTS_WEBHOOK) == "1",
            model=raw.get(Field.MODEL) or None,
        )

    # -- the polling chain ---------------------------------------------------------

    def remember_chain(
        self,
        request_id: str,
        task_id: str,
        *,
        callback_url: str | None,
        links: Mapping[str, Any] | None,
        expect_webhook: bool = False,
        model: str | None = None,
    ) -> None:
        """Store what the sweep needs to re-send this chain: its callback URL and links.

        ``expect_webhook`` marks the request (not only this chain) as ending by webhook;
        ``model`` names the request's model (whose durations the poller learns).
        """
        fields: dict[str, Any] = {}
        if expect_webhook:
            fields[Field.EXPECTS_WEBHOOK] = "1"
        if model:
            fields[Field.MODEL] = model
        if callback_url:
            fields[ChainField.CALLBACK_URL.of(task_id)] = callback_url
        if links:
            fields[ChainField.LINKS.of(task_id)] = json.dumps(dict(links))
        if fields:
            self._remember_chain(keys=[record_key(request_id)],
                                 args=[self.ttl_s, *_flat(fields)])

    def register(
        self,
        request_id: str,
        task_id: str,
        *,
        first_enqueued_at: float,
        due_at: float,
    ) -> bool:
        """Before a chain's first message is published: known to the sweep from now on.

        Creates the record (status ``SUBMITTED``) if the request is new,
        and indexes the chain as due at ``due_at``; a message lost before its first run
        is re-sent by the sweep. True if this created the record.
        """
        return bool(self._register(
            keys=[record_key(request_id), CHAINS_KEY],
            args=[task_id, request_id, repr(first_enqueued_at), self.ttl_s, repr(due_at),
                  LAYOUT_VERSION, changes_channel(request_id)],
        ) == "new")

    def unregister(self, request_id: str, task_id: str, *, created: bool) -> None:
        """Undo :meth:`register` after the message could not be published.

        Only deletes (allowed even when Redis is full): the chain's index entry, and
        the record if ``register`` created it.
        """
        self.forget_chain(request_id, task_id)
        if created:
            self.redis.delete(record_key(request_id))

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
        gate: GateAsk | None = None,
        model: str | None = None,
    ) -> Claim:
        """Learn this message's role; a new owner holds the lease for ``lease_s``.

        The chain counts as overdue if this message has not re-planned it within
        ``run_s`` (it died mid-run). With ``gate``, an owner whose status call is due
        also takes the poll lock (see ``lua/claim.lua`` for the order of the checks),
        and the record, the key's pause and the epoch come back: one round trip.
        """
        now = time.time() if now is None else now
        ask = gate
        reply = self._claim(
            keys=[record_key(request_id), CHAINS_KEY, POLL_LOCK_PREFIX + request_id,
                  PAUSE_PREFIX + (ask.key_tag if ask else ""), EPOCH_KEY,
                  DURATIONS_PREFIX + (model or "")],
            args=[task_id, retries, repr(now), repr(first_enqueued_at), repr(timeout_s),
                  self.ttl_s, repr(lease_s), request_id, repr(run_s), LAYOUT_VERSION,
                  changes_channel(request_id),
                  ask.token if ask else "", int((ask.lock_s if ask else 0) * 1000),
                  repr(ask.min_gap_s if ask else 0.0),
                  repr(ask.unanswered_margin_s if ask else 0.0),
                  repr(ask.webhook_fallback_s if ask else 0.0),
                  ask.result_waits_before_status if ask else 0],
        )
        role, verdict, info, pause, epoch, durations, *flat = (str(v) for v in reply)
        state = RequestState.from_hash(request_id, dict(zip(flat[::2], flat[1::2], strict=True)))
        poll_gate = None
        if verdict:
            poll_gate = PollGate(Gate(verdict),
                                 earliest_at=float(info) if verdict == Gate.EARLY else 0.0,
                                 holder=info if verdict == Gate.LOCKED else "")
        return Claim(Role(role), state, poll_gate, float(pause or 0), epoch or None, durations)

    def schedule(
        self,
        request_id: str,
        task_id: str,
        *,
        gen_next: int,
        lease_until: float,
        wake_at: float,
        fields: Mapping[str, Any],
        unlock: str = "",
    ) -> bool:
        """Owner only: store what was seen and the planned next poll. False if replaced.

        ``wake_at`` is when the chain's next message is due; it is also the record's
        ``next_poll_at`` unless ``fields`` says otherwise. ``unlock``: a poll lock token
        released in the same round trip (whether or not the chain is still the owner).
        """
        ok = self._schedule(
            keys=[record_key(request_id), CHAINS_KEY, POLL_LOCK_PREFIX + request_id],
            args=[task_id, gen_next, repr(lease_until), self.ttl_s, repr(wake_at), request_id,
                  changes_channel(request_id), unlock,
                  *_flat({Field.NEXT_POLL_AT: repr(wake_at), **fields})],
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
                             wake_at=due_at, fields={**fields, Field.NEXT_POLL_AT: ""})

    def plan(self, request_id: str, task_id: str, wake_at: float) -> None:
        """Note when a chain's next message is due (followers, hand-offs, the sweep)."""
        self.redis.zadd(CHAINS_KEY, {chain_member(request_id, task_id): wake_at})

    def finish(self, request_id: str, fields: Mapping[str, Any]) -> bool:
        """Record the terminal outcome. True for the first writer only."""
        if Field.OUTCOME not in fields:
            raise ValueError("finish() needs an outcome")
        return bool(
            self._finish(keys=[record_key(request_id)],
                         args=[self.ttl_s, changes_channel(request_id), *_flat(fields)])
        )

    def release(self, request_id: str, task_id: str, fields: Mapping[str, Any]) -> bool:
        """Owner only: give up ownership after a final error, recording it."""
        return bool(
            self._release(
                keys=[record_key(request_id)], args=[task_id, self.ttl_s, *_flat(fields)]
            )
        )

    # -- the poll lock and the per-key pause -----------------------------------

    def begin_poll(
        self,
        request_id: str,
        token: str,
        *,
        lock_s: float,
        now: float,
        min_gap_s: float,
        unanswered_margin_s: float,
    ) -> PollGate:
        """Take the poll lock and stamp the call time, unless a call is running or too recent.

        A lock whose holder died on this host is taken over at once.
        """
        args: list[str | int] = [token, int(lock_s * 1000), repr(now), repr(min_gap_s),
                                 repr(unanswered_margin_s)]
        verdict, info = self._run_taking_over(
            self._begin_poll, request_id, POLL_LOCK_PREFIX, args, Gate.LOCKED
        )
        gate = Gate(verdict)
        if gate is Gate.EARLY:
            return PollGate(gate, earliest_at=float(info))
        return PollGate(gate, holder=info)

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
        return self._ttl_s(POLL_LOCK_PREFIX + request_id)

    def unlock(self, request_id: str, token: str) -> None:
        self._unlock(keys=[POLL_LOCK_PREFIX + request_id], args=[token])

    def pause_until(self, key_tag: str) -> float:
        """Until when every poller of this key holds off (after a 429), or 0."""
        value = self.redis.get(PAUSE_PREFIX + key_tag)
        return float(value) if value else 0.0

    def pause(self, key_tag: str, until: float, now: float) -> None:
        """Make every poller of this key hold off until ``until`` (never shortens a pause)."""
        ttl_ms = max(int((until - now) * 1000), 1)
        self._pause(keys=[PAUSE_PREFIX + key_tag], args=[repr(until), ttl_ms])

    # -- delivery bookkeeping (used by clipia_tasks.delivery) ---------------------

    def begin_delivery(self, request_id: str, token: str, lock_s: float = 60.0) -> DeliveryTurn:
        """May this process fire the signals now? (A dead holder on this host is replaced.)"""
        args = [token, int(lock_s * 1000)]
        return DeliveryTurn(self._run_taking_over(
            self._begin_delivery, request_id, DELIVERY_LOCK_PREFIX, args, DeliveryTurn.BUSY
        )[0])

    def delivery_lock_ttl_s(self, request_id: str) -> float:
        return self._ttl_s(DELIVERY_LOCK_PREFIX + request_id)

    def end_delivery(self, request_id: str, token: str) -> None:
        """The receivers returned: set ``delivered`` and free the delivery lock, atomically."""
        self._end_delivery(keys=[record_key(request_id), DELIVERY_LOCK_PREFIX + request_id],
                           args=[token])

    def answer_chain(self, request_id: str, task_id: str) -> None:
        """The chain has answered its caller: nothing left to resume or answer again."""
        self._answer_chain(keys=[record_key(request_id), CHAINS_KEY],
                           args=[task_id, chain_member(request_id, task_id)])

    def forget_chain(self, request_id: str, task_id: str) -> None:
        """Drop a chain from the index (its record expired: nothing to resume)."""
        self.redis.zrem(CHAINS_KEY, chain_member(request_id, task_id))

    def mark_callback_done(self, request_id: str, task_id: str) -> bool:
        """Chain ``task_id``'s HTTP callback got a 2xx. False if the record expired."""
        return bool(self._mark_chain_field(
            keys=[record_key(request_id)], args=[ChainField.CALLBACK_DONE.of(task_id), "done"]
        ))

    def note_terminal(
        self, request_id: str, status: str, *, webhook_id: str, timeout_s: float,
        now: float | None = None,
    ) -> WebhookNote:
        """A verified webhook says the request ended."""
        now = time.time() if now is None else now
        return WebhookNote(
            self._note_terminal(
                keys=[record_key(request_id)],
                args=[status, repr(now), webhook_id, self.ttl_s, repr(timeout_s), request_id,
                      LAYOUT_VERSION],
            )
        )

    # -- learned durations per model ---------------------------------------------------

    def durations(self, model: str) -> str:
        """A model's learned durations as stored ("" if none). The claim reads them too."""
        return str(self.redis.get(DURATIONS_PREFIX + model) or "")

    def save_durations(self, model: str, text: str) -> None:
        """Store a model's durations (read-modify-write by the finishing worker: two
        requests of one model finishing at the same instant may keep one sample of two)."""
        self.redis.set(DURATIONS_PREFIX + model, text, ex=DURATIONS_TTL_S)

    # -- the epoch: did Redis lose its data? --------------------------------------

    def epoch(self) -> str | None:
        """The epoch id workers wrote, or ``None`` if Redis has none (fresh, or data lost)."""
        value = self.redis.get(EPOCH_KEY)
        return str(value) if value else None

    def start_epoch(self, epoch: str) -> str:
        """Write ``epoch`` unless one is there; returns the epoch in effect."""
        self.redis.set(EPOCH_KEY, epoch, nx=True)
        return self.epoch() or epoch
