"""How a worker process sees its Redis: full (refusing writes), or emptied (data lost).

Two things Redis cannot tell by itself, said loudly and once:

* **Full.** With ``maxmemory`` reached and ``maxmemory-policy noeviction``, Redis
  refuses writes with ``OOM command not allowed``. Nothing is lost (every chain
  is registered before its first message is published, and the sweep re-sends
  what could not be stored), but nothing moves either. :data:`MEMORY` logs one
  ERROR at the onset, at most one reminder a minute, and one INFO when writes
  are accepted again — per worker process.
* **Emptied.** A Redis restarted without persistence, flushed, or failed over to
  an empty replica has forgotten every request in flight. Workers write a random
  epoch id to the epoch key (``record.EPOCH_KEY``) when they find none, and the
  worker's main process checks it at start and after every broker reconnect (:func:`check_epoch`): a
  missing or different epoch means the data is gone, logged as one ERROR that
  says how to resume (``clipia_tasks.resume`` / ``clipia-tasks resume``). Only a
  worker that stays up through the loss can notice it; a fleet restarted together
  with an empty Redis sees a fresh install.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from enum import StrEnum

import redis

from .record import EPOCH_KEY, RecordStore

__all__ = ["MEMORY", "EpochCheck", "MemoryAlarm", "check_epoch", "is_out_of_memory", "note_epoch"]

log = logging.getLogger("clipia_tasks.redis")

#: At most one reminder per this many seconds while Redis stays full.
REMINDER_S = 60.0
#: Redis's reply to a write it refuses for memory.
_OOM_REPLY = "OOM command not allowed"
def is_out_of_memory(exc: BaseException) -> bool:
    """True if ``exc`` (or what it was raised from) is Redis refusing a write for memory."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, redis.exceptions.OutOfMemoryError):
            return True
        # A write refused inside a Lua script comes back as a plain script error
        # carrying Redis's OOM reply; kombu re-raises it as its own error type.
        if _OOM_REPLY in str(current):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


class MemoryAlarm:
    """One ERROR when Redis starts refusing writes, a reminder a minute, one INFO when clear.

    Near the limit Redis lets some writes through and refuses others: a refusal
    within ``reminder_s`` of the last "clear" continues that episode quietly
    (no second ERROR, and no second INFO when it clears again).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 reminder_s: float = REMINDER_S) -> None:
        self._clock = clock
        self._reminder_s = reminder_s
        self._lock = threading.Lock()
        self._since: float | None = None
        self._last_said = 0.0
        self._quiet_until = float("-inf")
        self._quiet = False
        self._refusals = 0

    @property
    def active(self) -> bool:
        return self._since is not None

    def refused(self, what: str) -> None:
        """Redis refused a write for memory while doing ``what``."""
        with self._lock:
            now = self._clock()
            self._refusals += 1
            if self._since is None:
                self._since = now
                self._quiet = now < self._quiet_until
                if self._quiet:
                    return
                self._last_said = now
                log.error(
                    "Redis is out of memory (maxmemory reached) and refuses writes, first "
                    "while %s. Requests wait, none is lost: every chain is known to the "
                    "sweep, which re-sends what could not be stored once Redis has room. "
                    "Free memory or raise maxmemory (keep maxmemory-policy noeviction).", what,
                )
            elif now - self._last_said >= self._reminder_s:
                self._last_said = now
                log.error("Redis still refuses writes for memory (%d refusals in %.0f s); "
                          "free memory or raise maxmemory", self._refusals, now - self._since)

    def cleared(self) -> None:
        """A write went through: if Redis was refusing writes, say it has room again."""
        if self._since is None:
            return
        with self._lock:
            if self._since is None:
                return
            now = self._clock()
            if not self._quiet:
                log.info("Redis accepts writes again, after %.0f s out of memory "
                         "(%d refusals)", now - self._since, self._refusals)
            self._since, self._refusals, self._quiet = None, 0, False
            self._quiet_until = now + self._reminder_s


#: This process's alarm.
MEMORY = MemoryAlarm()


class EpochCheck(StrEnum):
    """What :func:`check_epoch` found."""

    #: This process's first look (it wrote the epoch if Redis had none: a fresh Redis,
    #: or one emptied while no worker was up, which cannot be told apart).
    STARTED = "started"
    #: The epoch this process saw before: Redis kept its data.
    SAME = "same"
    #: The epoch this process saw is gone: Redis lost its data.
    LOST = "lost"


_known_epoch: str | None = None
_epoch_lock = threading.Lock()


def check_epoch(store: RecordStore) -> EpochCheck:
    """Compare Redis's epoch with the one this process saw; log an ERROR if data was lost."""
    global _known_epoch
    with _epoch_lock:
        current = store.epoch()
        if current is not None and current == _known_epoch:
            return EpochCheck.SAME
        if current is None:
            current = store.start_epoch(uuid.uuid4().hex)
        known, _known_epoch = _known_epoch, current
    if known is None:
        log.info("Redis epoch %s (%s)", current, EPOCH_KEY)
        return EpochCheck.STARTED
    log.error(
        "Redis lost its data: the epoch this worker saw (%s) is gone (a restart without "
        "persistence, a flush, or a failover to an empty replica). Requests in flight were "
        "lost and will not complete on their own. Resume the ids your app still has with "
        "clipia_tasks.resume(ids) or `clipia-tasks resume ID ...` (docs/deployment.md).",
        known,
    )
    return EpochCheck.LOST


def note_epoch(store: RecordStore, seen: str | None) -> None:
    """The epoch a claim read in passing: check it properly only if it is not the known one.

    Free on a steady-state poll (the claim script returns it); a lost epoch is then
    noticed at the next poll, not only at the next broker reconnect.
    """
    if seen is not None and seen == _known_epoch:
        return
    check_epoch(store)


def forget_epoch() -> None:
    """Forget the epoch this process saw (tests; a new process starts without one)."""
    global _known_epoch
    with _epoch_lock:
        _known_epoch = None
