from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from offload_core.celery_app import celery_config
from offload_core.job_task import retry_countdown
from offload_core.settings import Settings
from offload_core.topology import (
    BUILTIN_QUEUES,
    DEFAULT_WORKER_SETS,
    NOTIFIER_QUEUES,
    ROUTES,
    WORKER_QUEUES,
    Queue,
    priority_lists,
    queue_name_problem,
)


def test_every_queue_is_consumed_by_exactly_one_image() -> None:
    assert sorted(WORKER_QUEUES + NOTIFIER_QUEUES) == sorted(Queue)
    assert NOTIFIER_QUEUES == (Queue.HIGH,)


def test_the_default_worker_sets_consume_every_built_in_queue_once_and_high_on_the_notifier() -> None:
    consumed = [queue for worker_set in DEFAULT_WORKER_SETS for queue in worker_set.queues]
    assert sorted(consumed) == sorted(BUILTIN_QUEUES)
    for worker_set in DEFAULT_WORKER_SETS:
        assert set(worker_set.queues) <= set(NOTIFIER_QUEUES if worker_set.image == "notifier" else WORKER_QUEUES)


@pytest.mark.parametrize("name", ["acme", "a", "acme-resize", "bulk_2", "q" * 63])
def test_queue_names_users_may_choose(name: str) -> None:
    assert queue_name_problem(name) is None


@pytest.mark.parametrize(
    "name", ["", "Acme", "2fast", "-x", "a.b", "a:b", "a b", "q" * 64, "unacked", "unacked_index", "in-process"]
)
def test_queue_names_that_would_break_something_are_refused(name: str) -> None:
    assert queue_name_problem(name) is not None


def test_every_route_sends_to_a_queue_it_allows() -> None:
    for route in ROUTES.values():
        assert route.queue in route.allowed_queues
        assert 0 <= route.priority <= 9


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
    assert [q.name for q in config["task_queues"]] == ["high", "default", "low"]
    added = celery_config(Settings(API_KEYS=["k" * 16], QUEUES=["high", "default", "low", "acme"]))
    assert [(q.name, q.routing_key) for q in added["task_queues"]][-1] == ("acme", "acme")
    assert config["task_routes"] == {str(name): {"queue": str(route.queue)} for name, route in ROUTES.items()}
    assert config["task_routes"]["offload.notify"] == {"queue": "high"}  # critical work on the notifier alone
    assert config["task_routes"]["offload.report"] == {"queue": "low"}


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


def test_compose_runs_the_default_worker_sets_on_the_default_queues() -> None:
    compose = yaml.safe_load((Path(__file__).resolve().parents[2] / "compose.yaml").read_text())
    services = compose["services"]
    for name in ("api", *(f"worker-{worker_set.name}" for worker_set in DEFAULT_WORKER_SETS)):
        assert services[name]["environment"]["OFFLOAD_QUEUES"].split(",") == list(BUILTIN_QUEUES), name
    for worker_set in DEFAULT_WORKER_SETS:
        service = services[f"worker-{worker_set.name}"]
        assert service["image"].startswith(f"offload-{worker_set.image}:")
        assert service["environment"]["OFFLOAD_WORKER_QUEUES"].split(",") == list(worker_set.queues)
    workers = {name for name, service in services.items() if "OFFLOAD_WORKER_QUEUES" in service.get("environment", {})}
    assert workers == {f"worker-{worker_set.name}" for worker_set in DEFAULT_WORKER_SETS}
