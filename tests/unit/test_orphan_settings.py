"""The orphan sweep's settings: its grace must outlast the longest publish, and its bound is the
one the README states."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from offload_core.runtime.task_message import message_job_id
from offload_core.settings import Settings


def test_defaults_recover_a_lost_message_within_two_minutes() -> None:
    settings = Settings()
    assert settings.publish_bound_seconds == 36
    assert settings.orphan_recovery_bound_seconds == 120


def test_a_grace_shorter_than_the_longest_publish_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"OFFLOAD_ORPHAN_GRACE_SECONDS \(30\) must exceed the longest publish"):
        Settings(ORPHAN_GRACE_SECONDS=30)
    with pytest.raises(ValidationError, match="must exceed the longest publish"):
        Settings(BROKER_SOCKET_TIMEOUT_SECONDS=30)  # 3 x 32 s with the default grace of 60 s
    assert Settings(
        ORPHAN_GRACE_SECONDS=4, PUBLISH_MAX_RETRIES=0, BROKER_SOCKET_TIMEOUT_SECONDS=2, BROKER_CONNECT_TIMEOUT_SECONDS=1
    )


@pytest.mark.parametrize("value", [0, -1])
def test_the_sweep_interval_must_be_positive(value: float) -> None:
    with pytest.raises(ValidationError, match="ORPHAN_SWEEP_INTERVAL_SECONDS"):
        Settings(ORPHAN_SWEEP_INTERVAL_SECONDS=value)


def test_a_message_names_its_job_only_through_celery_headers() -> None:
    assert message_job_id({"headers": {"id": "abc", "task": "offload.echo"}, "body": "e30="}) == "abc"
    assert message_job_id({"headers": {}}) is None
    assert message_job_id({"headers": "x"}) is None
    assert message_job_id(["not", "a", "message"]) is None
