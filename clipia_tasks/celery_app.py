"""The bundled Celery app and the configuration any app needs to run these tasks.

``celery -A clipia_tasks worker`` finds :data:`app` here. Importing it reads
no setting: the configuration is a promise that Celery evaluates the first
time it needs it (sending a task, starting a worker). At worker start
:func:`check_worker_settings` validates everything, the API key included,
and stops the worker with one clear line if something is missing.

Using your own Celery app instead: call :func:`clipia_tasks.install` on it
(it registers ``clipia_tasks.poll_request`` there) and merge
:func:`celery_config` into its configuration where you want our defaults.
"""

from __future__ import annotations

import logging
import os
import ssl
import sys
from typing import Any, NoReturn
from urllib.parse import parse_qs, urlsplit

from celery import Celery
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    celeryd_init,
    worker_process_init,
)

from .connections import is_sentinel, sentinel_kwargs
from .errors import ConfigurationError
from .settings import Settings, get_settings

__all__ = [
    "CALLBACK_TASK_NAME",
    "POLL_TASK_NAME",
    "SWEEP_TASK_NAME",
    "app",
    "celery_config",
    "check_worker_settings",
]

log = logging.getLogger(__name__)

#: The fixed task name; usable with ``send_task`` from apps that do not import us.
POLL_TASK_NAME = "clipia_tasks.poll_request"
CALLBACK_TASK_NAME = "clipia_tasks.deliver_callback"
SWEEP_TASK_NAME = "clipia_tasks.sweep"


def _ssl_options(url: str) -> dict[str, Any] | None:
    """Celery refuses a rediss:// URL without ssl_cert_reqs; default to verifying."""
    parts = urlsplit(url)
    if parts.scheme != "rediss" or "ssl_cert_reqs" in parse_qs(parts.query):
        return None
    return {"ssl_cert_reqs": ssl.CERT_REQUIRED}


def _transport_for(url: str) -> str:
    scheme = urlsplit(url).scheme
    name = "SentinelTransport" if scheme == "sentinel" else "Transport"
    return f"clipia_tasks.transport:{name}"


def _sentinel_options(settings: Settings, url: str) -> dict[str, Any]:
    """Transport options for a ``sentinel://`` URL: the master's name, the sentinels' options."""
    if not is_sentinel(url):
        return {}
    return {"master_name": settings.sentinel_master, "sentinel_kwargs": sentinel_kwargs(settings)}


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings this package relies on, from our settings."""
    transport = {
        "visibility_timeout": settings.visibility_timeout_s,
        **_sentinel_options(settings, settings.broker),
    }
    backend_transport = {
        "retry_policy": {"timeout": 5.0},
        **_sentinel_options(settings, settings.backend),
    }
    config: dict[str, Any] = {
        "broker_url": settings.broker,
        # kombu's Redis transport with the fix that keeps workers up through a Redis
        # restart or failover (clipia_tasks/transport.py).
        "broker_transport": _transport_for(settings.broker),
        "result_backend": settings.backend,
        # JSON only: nothing that can execute code crosses the broker.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # A message is acknowledged after its run, so a killed worker's
        # message is delivered again instead of lost.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # Countdowns are held unacked by the worker; the longest single
        # countdown is half of this (see Settings.max_countdown_s).
        "broker_transport_options": transport,
        # With sentinel:// URLs both also name the master and carry the sentinels' password.
        "result_backend_transport_options": backend_transport,
        # Task events feed Flower.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "result_expires": settings.result_expires_s,
        "task_default_queue": settings.queue,
        "broker_connection_retry_on_startup": True,
        # One message at a time beyond those held for their countdown, and at
        # most this many held: a worker's memory stays bounded however many
        # requests are in flight (the rest wait in Redis for another worker).
        "worker_prefetch_multiplier": 1,
        "worker_eta_task_limit": settings.worker_eta_limit,
        # Beat runs the sweep that re-sends polling chains lost in a crash or outage.
        "beat_schedule": {
            "clipia-tasks-sweep": {
                "task": SWEEP_TASK_NAME,
                "schedule": settings.sweep_interval_s,
                "options": {"expires": settings.sweep_interval_s},
            }
        },
    }
    broker_ssl = _ssl_options(settings.broker)
    if broker_ssl:
        config["broker_use_ssl"] = broker_ssl
    backend_ssl = _ssl_options(settings.backend)
    if backend_ssl:
        config["redis_backend_use_ssl"] = backend_ssl
    return config


def _under_celery_command() -> bool:
    """True in ``celery ... worker|beat|flower`` (``celery`` or ``python -m celery``)."""
    argv0 = sys.argv[0] if sys.argv else ""
    return os.path.basename(argv0) == "celery" or argv0.endswith(
        os.path.join("celery", "__main__.py")
    )


def _config_error_exit(exc: ConfigurationError, what: str) -> NoReturn:
    # One clear line instead of a traceback from deep inside Celery.
    print(f"clipia-tasks: cannot start the {what}: {exc}", file=sys.stderr)
    raise SystemExit(2) from None


def _lazy_config() -> dict[str, Any]:
    try:
        return celery_config(get_settings())
    except ConfigurationError as exc:
        if _under_celery_command():
            _config_error_exit(exc, "celery command")
        raise  # a web process gets the exception at the call site


app = Celery("clipia_tasks", set_as_current=False)
app.add_defaults(_lazy_config)


def check_worker_settings() -> Settings:
    """Validate what a worker needs; raise ConfigurationError naming the variable."""
    settings = get_settings()
    settings.require_api_key()
    return settings


@celeryd_init.connect  # type: ignore[untyped-decorator]
def _check_at_worker_start(sender: Any = None, instance: Any = None, **_: Any) -> None:
    worker_app = getattr(instance, "app", None)
    if worker_app is None or POLL_TASK_NAME not in worker_app.tasks:
        return
    try:
        settings = check_worker_settings()
    except ConfigurationError as exc:
        _config_error_exit(exc, "worker")
    from . import _runtime
    from .redis_health import check_epoch
    from .transport import after_reconnect, check_kombu_version

    check_kombu_version()
    # At the first broker connection and after every reconnect: did Redis lose its data?
    def _check_epoch() -> None:
        check_epoch(_runtime.get_store())

    after_reconnect.append(_check_epoch)
    if settings.metrics_port:
        from .metrics import prepare_multiprocess_dir, serve_metrics

        # Before the pool forks, so every child writes into the same directory.
        prepare_multiprocess_dir()
        serve_metrics(settings.metrics_port)


@after_setup_logger.connect  # type: ignore[untyped-decorator]
@after_setup_task_logger.connect  # type: ignore[untyped-decorator]
def _log_format(logger: logging.Logger, loglevel: int | None = None, **_: Any) -> None:
    from .logs import quiet_http_client_logs

    # Our own DEBUG line per poll says more than httpx's INFO line per request.
    quiet_http_client_logs(logging.INFO if loglevel is None else loglevel)
    try:
        json_logs = get_settings().log_format == "json"
    except ConfigurationError:
        return  # reported at worker start
    if json_logs:
        from .logs import install_json_logging

        install_json_logging(logger)


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _fresh_process(**_: Any) -> None:
    # Connection pools must not be shared across a fork.
    from . import _runtime

    _runtime.reset()
