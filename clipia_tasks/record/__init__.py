"""The per-request record in Redis: the one source of truth about a request id.

Every key and field is named once in :mod:`.keys`; every transition is one Lua
script in ``lua/`` (atomic across processes and machines) run by
:class:`~.store.RecordStore`; :class:`~.state.RequestState` is the read view.
Nothing outside this package touches a key or a field by name. The record never
holds the API key: only what ``/status`` and the result return.

The layout (``layout`` = 1; records without the field are layout 0, same names)
--------------------------------------------------------------------------------

Writers are the scripts in ``lua/`` (``claim`` is ``lua/claim.lua``) and
``plan`` / ``forget_chain``, the only plain commands on the index.

==========================  ======  ============================  ===============  ============
key                         type    value                         written by       lifetime
==========================  ======  ============================  ===============  ============
``clipia:request:<id>``     hash    the fields below              every script     record TTL
                                                                  but ``pause``    after the
                                                                                   last write
``clipia:lock:<id>``        string  lock token                    ``begin_poll``   2 x HTTP
                                    ``host|pid|task|retries``     ``unlock``       timeout + 5s
``clipia:delivering:<id>``  string  lock token                    ``begin_``,      60 s
                                                                  ``end_delivery``
``clipia:index:chains``     zset    ``"<id> <task_id>"`` scored   ``register``,    no TTL; left
                                    by when the chain's next      ``claim``,       on answer or
                                    message is due                ``schedule``,    expiry
                                                                  ``plan``,
                                                                  ``answer_chain``
``clipia:pause:<key tag>``  string  unix s every poller of the    ``pause``        until then
                                    key holds off (after a 429)
``clipia:epoch``            string  random id; gone = Redis lost  ``start_epoch``  no TTL
                                    its data (redis_health)       (SET NX)
``clipia:durations:<model>`` string  recent queue and run times   finishing        30 days after
                                    of the model's requests        worker (SET)     the last write
                                    (:mod:`clipia_tasks.durations`,
                                    a few hundred bytes)
``clipia:changes:<id>``     pub/sub a hint (``created``,          ``register``,    nothing
                            channel ``changed``, ``finished``)    ``claim``,       stored
                                    published in the same step    ``schedule``,
                                    as the record change it       ``finish``
                                    announces (:mod:`..live`)
==========================  ======  ============================  ===============  ============

The record TTL is ``CLIPIA_RECORD_TTL``; the key tag is a one-way hash of the key.
Fields of ``clipia:request:<id>`` (unix s = seconds since the epoch, as text):

=====================  ===============================================  ==================
field                  holds                                            written by
=====================  ===============================================  ==================
``layout``             layout version of the last writer (1)            register, claim,
                                                                        note_terminal
``first_enqueued_at``  unix s of the first enqueue (deadline base)      register, claim
                                                                        (once), note_terminal
``deadline_at``        ``first_enqueued_at`` + ``CLIPIA_POLL_TIMEOUT``  claim (once),
                                                                        note_terminal
``status``             last status seen; ``SUBMITTED`` before one       register, claim,
                                                                        schedule, finish,
                                                                        note_terminal
``queue_position``     last queue position (>= 0), empty if none        schedule
``progress``           last progress 0..100, empty if none              schedule
``history``            compact recent observations (:mod:`.history`)    schedule
``polls``              successful status calls                          schedule
``last_poll_at``       unix s the last status call was answered         schedule
``next_poll_at``       unix s of the next planned call, empty if none   schedule, finish,
                                                                        note_terminal
``call_started_at``    unix s the last status call was sent             begin_poll
``errors``             transient API errors in a row                    schedule
``last_error``         why the last call failed (60 chars at most)      schedule
``unknown_logged``     ``1`` once an undocumented status was logged     schedule
``unknown_polls``      status calls in a row that answered an           schedule, finish
                       undocumented status; empty or 0 if none
``result_waits``       result calls in a row, since ``/status`` said    schedule
                       terminal, that found no terminal result
``result_logged``      ``1`` once such a result answer was logged       schedule
``range_logged``       ``1`` once a progress or queue position out of   schedule, finish
                       range was logged (and clamped)
``owner``              task id of the polling chain; empty when none    claim, finish, release
``gen``                number of the owner's next message               claim, schedule
``lease_until``        unix s the owner's lease ends                    claim, schedule,
                                                                        finish, release
``fatal``              last final API error, JSON ``{"type", "args"}``  release; claim clears
``model``              the model it was submitted to (durations key)    remember_chain
``expects_webhook``    ``1``: a webhook should end it; polling waits      remember_chain
                       ``CLIPIA_WEBHOOK_FALLBACK_AFTER`` first
``terminal_seen``      a terminal status reported before the outcome        schedule,
                       (``status`` turns terminal only with it)         note_terminal,
                                                                        finish clears
``webhook_id``         delivery id of the first verified webhook        note_terminal
``webhook_at``         unix s that webhook was noted                    note_terminal
``outcome``            COMPLETED / FAILED / CANCELED / TIMED_OUT        finish (first wins)
``result``             the result body as the API returned it (JSON)    finish
``error``              the outcome's error, JSON ``{"type", "args"}``   finish
``finished_at``        unix s the outcome was recorded                  finish
``eta_at``             unix s the request is predicted to end, from     schedule
                       its progress or queue drain; empty if unknown
``delivered``          ``1`` once the signals' receivers returned       end_delivery
``w:<task_id>``        last message number of a non-owner chain         claim
``ans:<task_id>``      ``1``: that chain answered its caller            answer_chain
``cbu:<task_id>``      that chain's ``callback_url``                    remember_chain
``lnk:<task_id>``      that chain's Celery links (JSON)                 remember_chain
``cb:<task_id>``       ``done``: its HTTP callback got a 2xx            mark_chain_field
=====================  ===============================================  ==================

The transitions, in the order a request meets them
--------------------------------------------------

``register``
    ``poll_request.delay`` indexes the chain (and creates the record) before the
    message is published, so a message lost before its first run is re-sent by
    the sweep, and ``get_state`` tells "enqueued, not polled yet" (``SUBMITTED``)
    from "unknown to Redis" (``None``).
``claim``
    Every ``poll_request`` message starts here and learns its :class:`Role`:
    ``done`` (the outcome is recorded: answer from it, no API call), ``owner``
    (this message is the one live poller of the id), ``follower`` (another chain
    polls; wait on the record with cheap reads), ``stale`` (an older message of a
    chain that has moved on: exit quietly). A chain is one Celery task id; its
    messages are numbered by Celery's ``retries`` counter and the record keeps
    the number it expects next (``gen``). The owner holds a lease up to its
    planned next poll plus a grace period; a chain that misses it (its message
    was lost) is replaced by the next caller.
``begin_poll``
    The owner takes a short poll lock and stamps the call time: a duplicate of
    the same message waits, a lock left by a dead process on this host is taken
    over, and no two calls come closer than ``CLIPIA_POLL_INTERVAL``.
``schedule``
    The owner writes what it saw and when it polls next, then re-sends itself.
``finish``
    Records the terminal outcome; the first writer wins. Signals and callbacks
    key off this transition (:mod:`clipia_tasks.delivery`).
``note_terminal``
    A verified webhook marks the terminal status, so the next step fetches the
    result instead of polling ``/status``.
"""

from __future__ import annotations

from . import history, keys, state, store
from .history import *  # noqa: F403
from .keys import *  # noqa: F403
from .state import *  # noqa: F403
from .store import *  # noqa: F403

__all__ = [*history.__all__, *keys.__all__, *state.__all__, *store.__all__]
