"""The task's shape: its fixed name, options, call-site checks, and install() on other apps."""

from __future__ import annotations

import pytest
from celery import Celery

from clipia_tasks import POLL_TASK_NAME, install, poll_request


def test_the_task_has_a_fixed_name_and_production_options() -> None:
    assert poll_request.name == POLL_TASK_NAME == "clipia_tasks.poll_request"
    assert poll_request.acks_late and poll_request.reject_on_worker_lost
    assert poll_request.max_retries is None  # Celery's default of 3 would end polling


def test_install_registers_the_same_task_on_your_own_app() -> None:
    mine = Celery("mine", broker="memory://", set_as_current=False)
    task = install(mine)
    assert POLL_TASK_NAME in mine.tasks and task.app is mine
    assert mine.tasks[POLL_TASK_NAME].acks_late


@pytest.mark.parametrize("bad", ["nope", "", None, 7, "764cabcf-b745-4b3e-ae38-1200304cf45"])
def test_bad_ids_raise_before_anything_is_sent(bad: object) -> None:
    mine = Celery("mine", broker="memory://", set_as_current=False)
    with pytest.raises(ValueError, match="not a Clipia request id"):
        install(mine).delay(bad)


def test_unexpected_arguments_are_named() -> None:
    with pytest.raises(TypeError, match="api_key"):
        poll_request.delay("764cabcf-b745-4b3e-ae38-1200304cf45b", api_key="x")


def test_importing_the_package_reads_no_setting() -> None:
    # The app exists for `celery -A clipia_tasks`, but configuration is a promise:
    # a malformed environment does not break the import, only the first real use.
    import os
    import subprocess
    import sys

    code = (
        "import clipia_tasks as c; assert not c.app.configured\n"
        "try:\n    c.app.conf.broker_url\nexcept c.ConfigurationError as e:\n    print(e)"
    )
    env = {**os.environ, "CLIPIA_POLL_INTERVAL": "abc"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "CLIPIA_POLL_INTERVAL" in run.stdout


def test_expect_webhook_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="expect_webhook must be True or False"):
        poll_request.delay("764cabcf-b745-4b3e-ae38-1200304cf45b", expect_webhook="yes")


def test_model_is_checked_at_the_call_site() -> None:
    from clipia_tasks.nouns import check_model

    assert check_model("nano-banana-2") == "nano-banana-2"
    assert check_model("sim/video") == "sim/video"
    with pytest.raises(TypeError, match="model must be a string"):
        check_model(42)
    for bad in ("", "a b", "x" * 101, "tab\there"):
        with pytest.raises(ValueError, match="is not a model name"):
            check_model(bad)
