"""Every Redis key and record field this package writes, named once.

The table of what each holds, who writes it and how long it lives is in the
package docstring (:mod:`clipia_tasks.record`); ``docs/architecture.md``
repeats it for readers of the docs. The names are a persistent format: old and
new workers share them during a rolling deploy, so a rename needs a new
:data:`LAYOUT_VERSION` and code that reads both.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "CHAINS_KEY",
    "CHANGES_PREFIX",
    "DELIVERY_LOCK_PREFIX",
    "DURATIONS_PREFIX",
    "DURATIONS_TTL_S",
    "EPOCH_KEY",
    "KEY_PREFIXES",
    "LAYOUT_VERSION",
    "PAUSE_PREFIX",
    "POLL_LOCK_PREFIX",
    "REQUEST_PREFIX",
    "ChainField",
    "Field",
    "chain_member",
    "changes_channel",
    "record_key",
]

#: The record layout this code writes (field ``layout``). Records written before the
#: field existed read as layout 0, which has the same names: nothing to migrate.
LAYOUT_VERSION = 1

#: Hash per request id: ``clipia:request:<request_id>``.
REQUEST_PREFIX = "clipia:request:"
#: String per request id while a status or result call runs: the lock token.
POLL_LOCK_PREFIX = "clipia:lock:"
#: String per request id while its completion signals are being fired: the lock token.
DELIVERY_LOCK_PREFIX = "clipia:delivering:"
#: Sorted set of live chains, member ``"<request_id> <task_id>"``, score = when that
#: chain's next message is due. The sweep re-sends chains far past due.
CHAINS_KEY = "clipia:index:chains"
#: String per API key (a one-way tag of it): a 429 makes every poller of that key hold off.
PAUSE_PREFIX = "clipia:pause:"
#: String: a random id a worker writes when it finds none. Gone = Redis lost its data.
EPOCH_KEY = "clipia:epoch"

#: String per model: the durations its requests took lately (``clipia_tasks.durations``
#: encodes it; a few hundred bytes), refreshed on every write, expires unused.
DURATIONS_PREFIX = "clipia:durations:"
#: How long a model's durations stay without a new request of that model.
DURATIONS_TTL_S = 30 * 86400

#: Pub/sub channel per request id (not a key: nothing is stored). The scripts that
#: change what ``RequestState.as_dict`` shows PUBLISH a short hint on it in the same
#: atomic step; :mod:`clipia_tasks.live` subscribes and re-reads the record.
CHANGES_PREFIX = "clipia:changes:"

#: Every key and key prefix above, and the channel prefix (a test checks each is documented).
KEY_PREFIXES = (REQUEST_PREFIX, POLL_LOCK_PREFIX, DELIVERY_LOCK_PREFIX, CHAINS_KEY, PAUSE_PREFIX,
                EPOCH_KEY, DURATIONS_PREFIX, CHANGES_PREFIX)


class Field(StrEnum):
    """The fields of a request record (``clipia:request:<id>``) that occur once."""

    LAYOUT = "layout"
    FIRST_ENQUEUED_AT = "first_enqueued_at"
    DEADLINE_AT = "deadline_at"
    STATUS = "status"
    QUEUE_POSITION = "queue_position"
    PROGRESS = "progress"
    HISTORY = "history"
    POLLS = "polls"
    LAST_POLL_AT = "last_poll_at"
    NEXT_POLL_AT = "next_poll_at"
    CALL_STARTED_AT = "call_started_at"
    ERRORS = "errors"
    LAST_ERROR = "last_error"
    UNKNOWN_LOGGED = "unknown_logged"
    UNKNOWN_POLLS = "unknown_polls"
    RESULT_WAITS = "result_waits"
    RESULT_LOGGED = "result_logged"
    RANGE_LOGGED = "range_logged"
    OWNER = "owner"
    GEN = "gen"
    LEASE_UNTIL = "lease_until"
    FATAL = "fatal"
    TERMINAL_SEEN = "terminal_seen"
    EXPECTS_WEBHOOK = "expects_webhook"
    MODEL = "model"
    WEBHOOK_ID = "webhook_id"
    WEBHOOK_AT = "webhook_at"
    OUTCOME = "outcome"
    RESULT = "result"
    ERROR = "error"
    FINISHED_AT = "finished_at"
    ETA_AT = "eta_at"
    DELIVERED = "delivered"


class ChainField(StrEnum):
    """Per-chain fields of a request record: the prefix, then the chain's task id."""

    #: Last message number seen from a chain that is not the owner (``w:<task_id>``).
    SEEN = "w:"
    #: The chain answered its caller (``ans:<task_id>`` = ``1``).
    ANSWERED = "ans:"
    #: The chain's ``callback_url`` (``cbu:<task_id>``), for the sweep.
    CALLBACK_URL = "cbu:"
    #: The chain's Celery ``link`` / ``link_error`` as JSON (``lnk:<task_id>``), for the sweep.
    LINKS = "lnk:"
    #: The chain's HTTP callback got a 2xx (``cb:<task_id>`` = ``done``).
    CALLBACK_DONE = "cb:"

    def of(self, task_id: str) -> str:
        """The field name for one chain, e.g. ``ans:<task_id>``."""
        return f"{self.value}{task_id}"


def record_key(request_id: str) -> str:
    """The record hash of one request id."""
    return REQUEST_PREFIX + request_id


def changes_channel(request_id: str) -> str:
    """The pub/sub channel on which changes of one request's record are announced."""
    return CHANGES_PREFIX + request_id


def chain_member(request_id: str, task_id: str) -> str:
    """A chain's member in :data:`CHAINS_KEY`."""
    return f"{request_id} {task_id}"
