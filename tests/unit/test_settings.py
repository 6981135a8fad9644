from __future__ import annotations

import pytest
from pydantic import ValidationError

from offload_core.contract.topology import Queue
from offload_core.settings import Settings

KEY = "k" * 16


def test_defaults_are_consistent_and_need_only_an_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OFFLOAD_API_KEYS", KEY)
    settings = Settings()
    assert settings.VISIBILITY_TIMEOUT_SECONDS > settings.TASK_TIME_LIMIT_SECONDS + settings.RETRY_BACKOFF_MAX_SECONDS
    assert settings.unacked_restore_bound_seconds == 425
    assert settings.WORKER_QUEUES == [Queue.DEFAULT, Queue.LOW]
    assert settings.QUEUES == ["high", "default", "low"]


def test_production_needs_api_keys_for_the_api_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OFFLOAD_API_KEYS", raising=False)
    assert Settings().missing_api_keys() is not None  # the API refuses to start (see below)
    assert Settings(ENVIRONMENT="development").missing_api_keys() is None
    assert Settings(API_KEYS=[KEY]).missing_api_keys() is None


def test_the_api_refuses_to_start_in_production_without_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    from offload_api.main import create_app
    from offload_core.settings import get_settings

    monkeypatch.delenv("OFFLOAD_API_KEYS", raising=False)
    monkeypatch.setenv("OFFLOAD_ENVIRONMENT", "production")
    get_settings.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="OFFLOAD_API_KEYS is empty"):
            create_app()
    finally:
        get_settings.cache_clear()


def test_lists_come_from_comma_separated_or_json_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OFFLOAD_API_KEYS", f"{KEY}a, {KEY}b")
    monkeypatch.setenv("OFFLOAD_WORKER_QUEUES", '["low"]')
    settings = Settings()
    assert [k.get_secret_value() for k in settings.API_KEYS] == [f"{KEY}a", f"{KEY}b"]
    assert settings.WORKER_QUEUES == [Queue.LOW]


def test_secrets_do_not_show_in_repr() -> None:
    settings = Settings(API_KEYS=[KEY], REDIS_URL="redis://:hunter2@redis:6379/0")
    assert KEY not in repr(settings)
    assert "hunter2" not in repr(settings)
    assert settings.redis_location == "redis:6379"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"VISIBILITY_TIMEOUT_SECONDS": 300}, "must exceed"),
        ({"TASK_SOFT_TIME_LIMIT_SECONDS": 300}, "must be below"),
        ({"API_KEYS": ["short"]}, "at least 16 characters"),
        ({"REDIS_URL": "http://redis:6379"}, "redis://"),
        ({"WORKER_QUEUES": ["urgent"]}, "OFFLOAD_WORKER_QUEUES names urgent, which OFFLOAD_QUEUES"),
        ({"WORKER_QUEUES": []}, "OFFLOAD_WORKER_QUEUES names no queue"),
        ({"QUEUES": ["high", "default"]}, "lacks the built-in queue"),
        ({"QUEUES": ["high", "default", "low", "Acme"]}, "'Acme' is not a valid queue name"),
        ({"QUEUES": ["high", "default", "low", "acme jobs"]}, "not a valid queue name"),
        ({"QUEUES": ["high", "default", "low", "a" * 64]}, "63 characters at most"),
        ({"QUEUES": ["high", "default", "low", "unacked"]}, "'unacked' is reserved"),
        ({"QUEUES": ["high", "default", "low", "low"]}, "names a queue twice"),
        ({"WORKER_QUEUES": ["default", "-x"]}, "OFFLOAD_WORKER_QUEUES: '-x' is not a valid queue name"),
    ],
)
def test_inconsistent_settings_are_refused_with_the_rule(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**{"API_KEYS": [KEY], **overrides})  # type: ignore[arg-type]


def test_a_deployment_adds_its_own_queues(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OFFLOAD_QUEUES", "high,default,low,acme,acme-bulk_2")
    monkeypatch.setenv("OFFLOAD_WORKER_QUEUES", "acme,acme-bulk_2")
    settings = Settings(API_KEYS=[KEY])
    assert settings.QUEUES == ["high", "default", "low", "acme", "acme-bulk_2"]
    assert settings.WORKER_QUEUES == ["acme", "acme-bulk_2"]


def test_a_worker_image_consumes_its_own_default_queues_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OFFLOAD_WORKER_QUEUES", raising=False)
    assert Settings(API_KEYS=[KEY]).consumed_queues(["high"]) == ["high"]  # the notifier's default
    monkeypatch.setenv("OFFLOAD_QUEUES", "high,default,low,urgent")
    monkeypatch.setenv("OFFLOAD_WORKER_QUEUES", "high,urgent")
    assert Settings(API_KEYS=[KEY]).consumed_queues(["high"]) == ["high", "urgent"]


# --- the orphan sweep's: its grace must outlast the longest publish, its bound is the README's


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
