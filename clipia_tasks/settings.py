"""Every setting clipia_tasks reads, with its environment name, default and unit.

Settings come from the environment or a ``.env`` file in the working
directory, are read once per process by :func:`get_settings`, and are
validated as a whole: a missing or malformed value raises one
:class:`~clipia_tasks.errors.ConfigurationError` that names the variable and
says what is wrong. Secrets (the API key, both signing secrets, the sentinels'
password) lose surrounding whitespace, such as the newline a secret file ends
with. A web process that only enqueues needs ``REDIS_URL`` (a Redis URL, or
Celery's ``sentinel://...;sentinel://...`` form with ``CLIPIA_SENTINEL_MASTER``);
the API key is required only where the API is called
(:meth:`Settings.require_api_key`, checked at worker start).

Field names carry their unit (``_s`` = seconds). ``docs/configuration.md``
lists the same table for people; ``tests/unit/test_settings.py`` keeps the two
in step.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from .connections import is_sentinel, parse_sentinel_url
from .errors import ConfigurationError

__all__ = ["ENV_NAMES", "Settings", "get_settings", "redact_url", "reset_settings"]

_LOCAL_HTTP = re.compile(r"^http://(localhost|127\.0\.0\.1)(:\d+)?(/.*)?$", re.IGNORECASE)
_REDIS_SCHEMES = ("redis", "rediss", "unix")


def _checked_if_sentinel(value: str | None) -> str | None:
    """The URL stripped; a ``sentinel://`` one parsed (ValueError says what is wrong)."""
    if value is None:
        return None
    value = value.strip()
    if is_sentinel(value):
        parse_sentinel_url(value)
    return value


#: Fields holding URLs that may carry a password (redacted in ``repr``).
_URL_FIELDS = frozenset({"redis_url", "broker_url", "result_backend"})


def _env(*names: str) -> Any:
    return AliasChoices(*names)


class Settings(BaseSettings):
    """The configuration of one process. Build it with :func:`get_settings`."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        frozen=True,
    )

    #: The Clipia API key. Required by workers; never logged or stored.
    api_key: SecretStr | None = Field(None, validation_alias=_env("CLIPIA_API_KEY", "CLIPIA_KEY"))
    #: API root. http:// only for localhost / 127.0.0.1 (the local simulator).
    base_url: str = Field("https://api.clipia.ai", validation_alias=_env("CLIPIA_BASE_URL"))
    #: Broker and result backend both, unless the two CELERY_* settings split them.
    redis_url: str = Field("redis://localhost:6379/0", validation_alias=_env("REDIS_URL"))
    #: Overrides REDIS_URL for the broker only.
    broker_url: str | None = Field(None, validation_alias=_env("CELERY_BROKER_URL"))
    #: Overrides REDIS_URL for the result backend (and the request records) only.
    result_backend: str | None = Field(None, validation_alias=_env("CELERY_RESULT_BACKEND"))
    #: With sentinel:// URLs: the name of the master the sentinels monitor.
    sentinel_master: str = Field(
        "mymaster", min_length=1, validation_alias=_env("CLIPIA_SENTINEL_MASTER")
    )
    #: With sentinel:// URLs: the sentinels' own password (the master's is in the URL).
    sentinel_password: SecretStr | None = Field(
        None, validation_alias=_env("CLIPIA_SENTINEL_PASSWORD")
    )
    #: First and shortest delay between two status polls.
    poll_interval_s: float = Field(1.0, gt=0, validation_alias=_env("CLIPIA_POLL_INTERVAL"))
    #: Longest delay between two status polls (a Retry-After may exceed it).
    poll_max_interval_s: float = Field(
        60.0, gt=0, validation_alias=_env("CLIPIA_POLL_MAX_INTERVAL")
    )
    #: How the next poll is timed: adaptive (predicts the end), backoff, or fixed.
    poll_policy: Literal["adaptive", "backoff", "fixed"] = Field(
        "adaptive", validation_alias=_env("CLIPIA_POLL_POLICY")
    )
    #: Deadline per request id, counted from its first enqueue.
    poll_timeout_s: float = Field(3600.0, gt=0, validation_alias=_env("CLIPIA_POLL_TIMEOUT"))
    #: Timeout of one HTTP call to the API (connect, read, write, pool).
    http_timeout_s: float = Field(10.0, gt=0, validation_alias=_env("CLIPIA_HTTP_TIMEOUT"))
    #: How long Celery keeps a task's result in the backend.
    result_expires_s: int = Field(86400, gt=0, validation_alias=_env("CLIPIA_RESULT_EXPIRES"))
    #: How long the request record (state, outcome) is kept after its last write.
    record_ttl_s: int = Field(7 * 86400, gt=0, validation_alias=_env("CLIPIA_RECORD_TTL"))
    #: Redis transport visibility timeout; no single countdown exceeds half of it.
    visibility_timeout_s: int = Field(
        3600, ge=10, validation_alias=_env("CLIPIA_VISIBILITY_TIMEOUT")
    )
    #: Queue the package's tasks are routed to (and the bundled app's default queue).
    queue: str = Field("celery", min_length=1, validation_alias=_env("CLIPIA_QUEUE"))

    #: Signs the HTTP callbacks this package POSTs; required when a callback_url is given.
    callback_secret: SecretStr | None = Field(
        None, validation_alias=_env("CLIPIA_CALLBACK_SECRET")
    )
    #: How long a failing callback is retried before it is given up (with an ERROR log).
    callback_give_up_after_s: float = Field(
        3600.0, gt=0, validation_alias=_env("CLIPIA_CALLBACK_GIVE_UP_AFTER")
    )
    #: Verifies Clipia's signed webhooks in the webhook bridge.
    webhook_secret: SecretStr | None = Field(None, validation_alias=_env("CLIPIA_WEBHOOK_SECRET"))
    #: A request that expects a webhook is not polled before this long (then sparsely).
    webhook_fallback_after_s: float = Field(
        20.0, gt=0, le=30, validation_alias=_env("CLIPIA_WEBHOOK_FALLBACK_AFTER")
    )
    #: How often beat runs the sweep that resumes lost polling chains.
    sweep_interval_s: float = Field(30.0, gt=0, validation_alias=_env("CLIPIA_SWEEP_INTERVAL"))
    #: A chain this far past its planned next message is presumed lost and re-sent.
    sweep_stale_after_s: float = Field(
        60.0, gt=0, validation_alias=_env("CLIPIA_SWEEP_STALE_AFTER")
    )

    #: Most messages one worker holds while they wait out their countdown (memory bound).
    worker_eta_limit: int = Field(
        10_000, ge=10, validation_alias=_env("CLIPIA_WORKER_ETA_LIMIT")
    )
    #: Port for the worker's Prometheus /metrics; unset = no metrics server.
    metrics_port: int | None = Field(
        None, ge=1, le=65535, validation_alias=_env("CLIPIA_METRICS_PORT")
    )
    #: "text" (Celery's usual lines) or "json" (one JSON object per line).
    log_format: Literal["text", "json"] = Field(
        "text", validation_alias=_env("CLIPIA_LOG_FORMAT")
    )

    @field_validator("api_key", "callback_secret", "webhook_secret", "sentinel_password")
    @classmethod
    def _strip_secret(cls, value: SecretStr | None) -> SecretStr | None:
        # A value from a file or a quoted .env line often ends with a newline: a
        # secret with it would sign or compare wrong (valid webhooks got 401).
        if value is None:
            return None
        return SecretStr(value.get_secret_value().strip())

    @field_validator("sentinel_master")
    @classmethod
    def _check_sentinel_master(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("is empty: it names the master the sentinels monitor (e.g. mymaster)")
        return value.strip()

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value.lower().startswith("https://") and urlsplit(value).hostname:
            return value
        if _LOCAL_HTTP.match(value):
            return value
        raise ValueError(
            "must be an https:// URL (http:// is allowed only for localhost and 127.0.0.1, "
            "so the key never travels in clear text)"
        )

    @field_validator("redis_url", "result_backend")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        value = _checked_if_sentinel(value)
        if value is None or is_sentinel(value):
            return value
        parts = urlsplit(value)
        if parts.scheme not in _REDIS_SCHEMES:
            raise ValueError(
                "must be a redis://, rediss://, unix:// or sentinel:// URL, "
                "e.g. redis://localhost:6379/0 or sentinel://10.0.0.1:26379/0;"
                "sentinel://10.0.0.2:26379/0"
            )
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError("has no host, e.g. redis://localhost:6379/0")
        return value

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, value: str | None) -> str | None:
        # Any broker Celery knows is accepted; a sentinel:// one is checked like REDIS_URL.
        return _checked_if_sentinel(value)

    @model_validator(mode="after")
    def _check_intervals(self) -> Settings:
        if self.poll_max_interval_s < self.poll_interval_s:
            raise ValueError(
                "CLIPIA_POLL_MAX_INTERVAL must be >= CLIPIA_POLL_INTERVAL "
                f"(got {self.poll_max_interval_s:g} < {self.poll_interval_s:g})"
            )
        if self.poll_max_interval_s > self.max_countdown_s:
            raise ValueError(
                "CLIPIA_POLL_MAX_INTERVAL must be at most half of CLIPIA_VISIBILITY_TIMEOUT "
                f"(got {self.poll_max_interval_s:g} s with a {self.visibility_timeout_s} s "
                "visibility timeout)"
            )
        return self

    def __repr_args__(self) -> Any:
        # Secrets are SecretStr already; a Redis URL may carry a password too.
        for name, value in super().__repr_args__():
            if name in _URL_FIELDS and isinstance(value, str):
                value = redact_url(value)
            yield name, value

    # -- derived values --------------------------------------------------------

    @property
    def broker(self) -> str:
        """The broker URL in effect."""
        return self.broker_url or self.redis_url

    @property
    def backend(self) -> str:
        """The result backend URL in effect; the request records live there too."""
        return self.result_backend or self.redis_url

    @property
    def max_countdown_s(self) -> float:
        """The longest single countdown that is safe with the visibility timeout.

        With the Redis transport a message waiting out its countdown is held,
        unacked, by a worker; past the visibility timeout Redis hands it to
        another worker as well. Longer waits are split into hops of this size.
        """
        return self.visibility_timeout_s / 2

    def require_callback_secret(self) -> str:
        if self.callback_secret is None or not self.callback_secret.get_secret_value():
            raise ConfigurationError(
                "CLIPIA_CALLBACK_SECRET is not set: it signs HTTP callbacks, so it is required "
                "wherever poll_request is called with callback_url (and on the workers)"
            )
        return self.callback_secret.get_secret_value()

    def require_webhook_secret(self) -> str:
        if self.webhook_secret is None or not self.webhook_secret.get_secret_value():
            raise ConfigurationError(
                "CLIPIA_WEBHOOK_SECRET is not set: the webhook bridge needs Clipia's "
                "webhook signing secret (from the Clipia dashboard)"
            )
        return self.webhook_secret.get_secret_value()

    def require_api_key(self) -> str:
        """The key, or a ConfigurationError saying how to set it."""
        if self.api_key is None or not self.api_key.get_secret_value():
            raise ConfigurationError(
                "CLIPIA_API_KEY is not set: workers need the Clipia API key "
                "(export CLIPIA_API_KEY=clipia_live_... or put it in .env)"
            )
        key = self.api_key.get_secret_value()
        if not key.startswith(("clipia_live_", "clipia_test_")):
            raise ConfigurationError(
                "CLIPIA_API_KEY does not look like a Clipia key: keys start with "
                "clipia_live_ or clipia_test_"
            )
        return key


#: Field name -> the environment variables it is read from (first is canonical).
ENV_NAMES: dict[str, tuple[str, ...]] = {
    name: tuple(str(a) for a in field.validation_alias.choices)  # type: ignore[union-attr]
    for name, field in Settings.model_fields.items()
}


def _redact_one(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username or ''}:***@{host}").geturl()


def redact_url(url: str) -> str:
    """The URL with every password replaced by ``***``, for messages and logs.

    A ``sentinel://...;sentinel://...`` URL is redacted in each ``;``-separated part.
    """
    return ";".join(_redact_one(part) for part in url.split(";"))


def _explain(exc: ValidationError) -> ConfigurationError:
    lines = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else ""
        env = ENV_NAMES.get(field, (field,))[0] if field else "settings"
        # Never echo the input back: it could be the key.
        msg = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"{env}: {msg}" if field else msg)
    return ConfigurationError("invalid configuration: " + "; ".join(lines))


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment (and ``.env``), with optional overrides."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise _explain(exc) from None


@functools.cache
def get_settings() -> Settings:
    """The process's settings, read once."""
    return load_settings()


def reset_settings() -> None:
    """Forget the cached settings (tests, or after changing the environment)."""
    get_settings.cache_clear()
