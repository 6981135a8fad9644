from __future__ import annotations

import pytest

from offload_core.celery_app import celery_config, task_routes
from offload_core.job_task import retry_countdown
from offload_core.registry import load_job_types
from offload_core.settings import Settings
from offload_core.topology import NOTIFIER_QUEUES, WORKER_QUEUES, Queue, priority_lists

SETTINGS = Settings(API_KEYS=["k" * 16])
BUILTINS = load_job_types(SETTINGS, known_queues=list(Queue))


def test_every_queue_is_consumed_by_exactly_one_image() -> None:
    assert sorted(WORKER_QUEUES + NOTIFIER_QUEUES) == sorted(Queue)
    assert NOTIFIER_QUEUES == (Queue.HIGH,)


def test_every_builtin_job_type_sends_to_a_queue_it_allows() -> None:
    assert set(BUILTINS) >= {
        "offload.echo",
        "offload.send_email",
        "offload.notify",
        "offload.report",
        "offload.image.process",
        "offload.image.index",
    }
    for job_type in BUILTINS.values():
        assert job_type.queue in job_type.allowed_queues
        assert 0 <= job_type.priority <= 9


def test_priority_lists_follow_kombus_naming() -> None:
    assert priority_lists(Queue.LOW) == ["low", "low\x06\x163", "low\x06\x166", "low\x06\x169"]


def test_celery_configuration_follows_the_settings() -> None:
    settings = Settings(API_KEYS=["k" * 16], VISIBILITY_TIMEOUT_SECONDS=500, UNACKED_RESTORE_INTERVAL_SECONDS=3)
    config = celery_config(settings)
    assert config["task_acks_late"] is True
    assert config["task_reject_on_worker_lost"] is True
    assert config["accept_content"] == ["json"]
    assert config["broker_transport_options"]["visibility_timeout"] == 500
    assert config["broker_transport_options"]["unacked_restore_interval"] == 3
    assert config["broker_transport_options"]["unacked_restore_throttle"] == 1
    assert config["worker_soft_shutdown_timeout"] == settings.WORKER_SOFT_SHUTDOWN_TIMEOUT_SECONDS
    assert {q.name for q in config["task_queues"]} == {"high", "default", "low"}


def test_each_job_type_is_routed_to_its_default_queue() -> None:
    routes = task_routes(list(BUILTINS.values()))
    assert routes["offload.notify"] == {"queue": "high"}  # critical work on the notifier alone
    assert routes["offload.report"] == {"queue": "low"}
    assert routes["offload.send_email"] == {"queue": "default"}


@pytest.mark.parametrize("retries", range(8))
def test_retry_countdown_grows_with_jitter_and_stays_capped(retries: int) -> None:
    delays = [retry_countdown(retries, base=1.0, cap=10.0) for _ in range(200)]
    expected = min(10.0, 2.0**retries)
    assert all(expected / 2 <= d <= expected for d in delays)
    assert len(set(delays)) > 1  # jittered, so retries of many jobs do not arrive together


def test_task_events_follow_the_setting() -> None:
    on = celery_config(Settings(API_KEYS=["k" * 16]))
    off = celery_config(Settings(API_KEYS=["k" * 16], WORKER_SEND_EVENTS=False))
    assert (on["worker_send_task_events"], off["worker_send_task_events"]) == (True, False)
