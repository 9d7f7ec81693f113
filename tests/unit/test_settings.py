"""Settings: env names, defaults, one clear message per bad value, no key in repr."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from clipia_tasks.celery_app import celery_config
from clipia_tasks.errors import ConfigurationError
from clipia_tasks.settings import ENV_NAMES, Settings, load_settings

KEY = "clipia_live_s3cr3tvalue"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: pytest.TempPathFactory) -> None:
    for names in ENV_NAMES.values():
        for name in names:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_a_web_process_needs_nothing_but_defaults() -> None:
    settings = load_settings()
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.broker == settings.backend == settings.redis_url
    assert settings.api_key is None


def test_both_key_names_are_read_and_the_key_never_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPIA_KEY", KEY)
    settings = load_settings()
    assert settings.require_api_key() == KEY
    assert KEY not in repr(settings) and KEY not in str(settings)
    monkeypatch.setenv("CLIPIA_API_KEY", "clipia_test_other")
    assert load_settings().require_api_key() == "clipia_test_other"


def test_secrets_lose_the_whitespace_a_secret_file_or_a_dotenv_line_leaves(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pytest.TempPathFactory
) -> None:
    # Given secrets ending in a newline: from a mounted file, and from quoted .env lines
    monkeypatch.setenv("CLIPIA_WEBHOOK_SECRET", "whsec_abc123\n")
    (tmp_path / ".env").write_text(  # type: ignore[operator]
        'CLIPIA_CALLBACK_SECRET="cb_secret\n"\nCLIPIA_API_KEY=" clipia_live_s3cr3tvalue\n"\n'
    )
    # When the settings are read
    settings = load_settings()
    # Then each secret is exactly the secret (a webhook signed with it verifies)
    assert settings.require_webhook_secret() == "whsec_abc123"
    assert settings.require_callback_secret() == "cb_secret"
    assert settings.require_api_key() == KEY
    # and stays a SecretStr that never shows
    for name in ("api_key", "callback_secret", "webhook_secret"):
        assert isinstance(getattr(settings, name), SecretStr)
    for value in ("whsec_abc123", "cb_secret", KEY):
        assert value not in repr(settings) and value not in str(settings)


def test_a_secret_of_only_whitespace_counts_as_not_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPIA_WEBHOOK_SECRET", " \n")
    with pytest.raises(ConfigurationError, match="CLIPIA_WEBHOOK_SECRET is not set"):
        load_settings().require_webhook_secret()


def test_a_missing_key_is_one_clear_message() -> None:
    with pytest.raises(ConfigurationError, match="CLIPIA_API_KEY is not set"):
        load_settings().require_api_key()


def test_a_key_of_the_wrong_shape_is_named_but_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPIA_API_KEY", "sk-not-clipia-123")
    with pytest.raises(ConfigurationError) as info:
        load_settings().require_api_key()
    assert "CLIPIA_API_KEY" in str(info.value) and "sk-not-clipia-123" not in str(info.value)


@pytest.mark.parametrize(
    ("env", "value", "expected"),
    [
        ("CLIPIA_POLL_INTERVAL", "abc", "CLIPIA_POLL_INTERVAL"),
        ("CLIPIA_POLL_INTERVAL", "0", "CLIPIA_POLL_INTERVAL"),
        ("CLIPIA_POLL_TIMEOUT", "-5", "CLIPIA_POLL_TIMEOUT"),
        ("CLIPIA_HTTP_TIMEOUT", "soon", "CLIPIA_HTTP_TIMEOUT"),
        ("CLIPIA_BASE_URL", "http://api.clipia.ai", "CLIPIA_BASE_URL"),
        ("REDIS_URL", "localhost:6379", "REDIS_URL"),
        ("CELERY_RESULT_BACKEND", "postgres://x", "CELERY_RESULT_BACKEND"),
    ],
)
def test_malformed_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert expected in str(info.value)
    assert "Traceback" not in str(info.value)


def test_max_interval_below_interval_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPIA_POLL_INTERVAL", "5")
    monkeypatch.setenv("CLIPIA_POLL_MAX_INTERVAL", "2")
    with pytest.raises(ConfigurationError, match="CLIPIA_POLL_MAX_INTERVAL"):
        load_settings()


def test_http_is_allowed_for_the_local_simulator_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPIA_BASE_URL", "http://127.0.0.1:8787/")
    assert load_settings().base_url == "http://127.0.0.1:8787"
    monkeypatch.setenv("CLIPIA_BASE_URL", "http://localhost.evil.com")
    with pytest.raises(ConfigurationError):
        load_settings()


def test_dotenv_file_is_read(tmp_path: pytest.TempPathFactory) -> None:
    (tmp_path / ".env").write_text("REDIS_URL=redis://cache:6380/2\nCLIPIA_POLL_INTERVAL=2.5\n")  # type: ignore[operator]
    settings = load_settings()
    assert settings.redis_url == "redis://cache:6380/2" and settings.poll_interval_s == 2.5


def test_broker_and_backend_can_be_split(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://a:6379/0")
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://b:6379/1")
    config = celery_config(load_settings())
    assert config["broker_url"] == "redis://b:6379/1"
    assert config["result_backend"] == "redis://a:6379/0"


def test_rediss_urls_verify_certificates_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ssl

    monkeypatch.setenv("REDIS_URL", "rediss://:pw@managed.example.com:6380/0")
    config = celery_config(load_settings())
    assert config["broker_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert config["redis_backend_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    monkeypatch.setenv("REDIS_URL", "rediss://managed.example.com:6380/0?ssl_cert_reqs=none")
    assert "broker_use_ssl" not in celery_config(load_settings())


def test_celery_config_is_json_only_acks_late_with_events() -> None:
    config = celery_config(Settings())
    assert config["accept_content"] == ["json"] and config["task_serializer"] == "json"
    assert config["task_acks_late"] and config["task_reject_on_worker_lost"]
    assert config["worker_send_task_events"] and config["task_send_sent_event"]
    vt = config["broker_transport_options"]["visibility_timeout"]
    assert vt >= 2 * Settings().poll_max_interval_s


def test_every_setting_is_documented() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    for names in ENV_NAMES.values():
        for name in names:
            assert f"`{name}`" in doc, name


SENTINEL_URL = ("sentinel://:m%40ster-pw@10.0.0.1:26379/2;sentinel://10.0.0.2:26380/2;"
                "sentinel://10.0.0.3/2")


@pytest.mark.parametrize("env", ["REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"])
def test_every_redis_url_takes_celerys_sentinel_form(
    monkeypatch: pytest.MonkeyPatch, env: str
) -> None:
    monkeypatch.setenv(env, SENTINEL_URL)
    settings = load_settings()
    assert SENTINEL_URL in (settings.broker, settings.backend)
    assert settings.sentinel_master == "mymaster" and settings.sentinel_password is None


@pytest.mark.parametrize(
    ("env", "value", "says"),
    [
        ("REDIS_URL", "sentinel://10.0.0.1:26379/0;redis://10.0.0.2:6379/0", "mixes"),
        ("CELERY_BROKER_URL", "sentinel://:s3cr3t@10.0.0.1:port/0", "bad port"),
        ("CELERY_RESULT_BACKEND", "sentinel://10.0.0.1:26379/zero", "not a number"),
        ("REDIS_URL", "sentinel://:s3cr3t@10.0.0.1/0;sentinel://:other@10.0.0.2/0",
         "different databases or passwords"),
        ("REDIS_URL", "sentinel://10.0.0.1/0;sentinel://10.0.0.2/1", "different databases"),
        ("REDIS_URL", "sentinel://:s3cr3t@/0", "no host"),
        ("REDIS_URL", "sentinel://10.0.0.1/0?ssl=true", "no ?options"),
        ("CLIPIA_SENTINEL_MASTER", "  ", "is empty"),
    ],
)
def test_a_malformed_sentinel_setting_is_named_and_its_password_not_echoed(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, says: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert f"{env}: " in str(info.value) and says in str(info.value)
    assert "s3cr3t" not in str(info.value)


def test_the_sentinels_password_is_a_stripped_secret_that_never_shows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", SENTINEL_URL)
    monkeypatch.setenv("CLIPIA_SENTINEL_PASSWORD", "sentinel-s3cr3t\n")
    monkeypatch.setenv("CLIPIA_SENTINEL_MASTER", " clipia-main ")
    settings = load_settings()
    assert isinstance(settings.sentinel_password, SecretStr)
    assert settings.sentinel_password.get_secret_value() == "sentinel-s3cr3t"
    assert settings.sentinel_master == "clipia-main"
    assert "sentinel-s3cr3t" not in repr(settings) and "sentinel-s3cr3t" not in str(settings)


def test_celery_reaches_broker_and_backend_through_the_sentinels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", SENTINEL_URL)
    monkeypatch.setenv("CLIPIA_SENTINEL_MASTER", "clipia-main")
    monkeypatch.setenv("CLIPIA_SENTINEL_PASSWORD", "sentinel-s3cr3t")
    config = celery_config(load_settings())
    assert config["broker_transport"] == "clipia_tasks.transport:SentinelTransport"
    broker = config["broker_transport_options"]
    backend = config["result_backend_transport_options"]
    assert broker["visibility_timeout"] == 3600  # merged, not replaced
    assert backend["retry_policy"] == {"timeout": 5.0}
    for options in (broker, backend):
        assert options["master_name"] == "clipia-main"
        assert options["sentinel_kwargs"]["password"] == "sentinel-s3cr3t"
        assert options["sentinel_kwargs"]["socket_connect_timeout"] > 0
    # Without a sentinel password, none is sent; a plain Redis gets no Sentinel options
    monkeypatch.delenv("CLIPIA_SENTINEL_PASSWORD")
    assert "password" not in celery_config(load_settings())["broker_transport_options"][
        "sentinel_kwargs"]
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://b:6379/1")
    config = celery_config(load_settings())
    assert config["broker_transport"] == "clipia_tasks.transport:Transport"
    assert "master_name" not in config["broker_transport_options"]
    assert config["result_backend_transport_options"]["master_name"] == "clipia-main"


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("rediss://user:pw@h:6380/0?ssl_cert_reqs=none",
         "rediss://user:***@h:6380/0?ssl_cert_reqs=none"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("sentinel://:pw@a:26379/0;sentinel://:pw@b:26379/0;sentinel://c:26379/0",
         "sentinel://:***@a:26379/0;sentinel://:***@b:26379/0;sentinel://c:26379/0"),
    ],
)
def test_redact_url_hides_every_password(url: str, redacted: str) -> None:
    from clipia_tasks.settings import redact_url

    assert redact_url(url) == redacted


def test_repr_shows_no_redis_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://:r3dis-pw@cache:6379/0")
    monkeypatch.setenv("CELERY_BROKER_URL", "sentinel://:br0ker-pw@s1:26379/0;sentinel://s2:26379/0")
    text = repr(load_settings())
    assert "r3dis-pw" not in text and "br0ker-pw" not in text
    assert "redis://:***@cache:6379/0" in text
