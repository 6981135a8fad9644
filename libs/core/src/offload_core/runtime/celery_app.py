"""The Celery app factory: one production configuration for the API, worker and notifier."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from celery import Celery, chain
from celery.canvas import Signature
from celery.signals import before_task_publish
from kombu import Exchange
from kombu import Queue as KombuQueue

from offload_core.contract.registry import JobTypes, load_job_types
from offload_core.contract.topology import PRIORITY_SEPARATOR, PRIORITY_STEPS, Queue
from offload_core.runtime.job_task import register_job_types, stamp_chain_step
from offload_core.sdk import JobType
from offload_core.settings import Settings
from offload_core.store.redis_connection import celery_connection_config


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings derived from Offload's; each value traces back to one OFFLOAD_ variable."""
    transport_options = {
        # See Settings.VISIBILITY_TIMEOUT_SECONDS: longer than any run or retry countdown.
        "visibility_timeout": settings.VISIBILITY_TIMEOUT_SECONDS,
        # Set explicitly: kombu's default sweep for abandoned messages runs every ~100 s.
        "unacked_restore_interval": settings.UNACKED_RESTORE_INTERVAL_SECONDS,
        "unacked_restore_throttle": settings.UNACKED_RESTORE_THROTTLE,
        "priority_steps": list(PRIORITY_STEPS),
        "sep": PRIORITY_SEPARATOR,
        "queue_order_strategy": "priority",
        "socket_connect_timeout": settings.BROKER_CONNECT_TIMEOUT_SECONDS,
        "socket_timeout": settings.BROKER_SOCKET_TIMEOUT_SECONDS,
        "socket_keepalive": True,
        "health_check_interval": 25,
    }
    exchange = Exchange("offload", type="direct")
    # URLs, TLS and Sentinel (the primary's name and the sentinels' options join the transport's).
    connection = celery_connection_config(settings)
    return {
        **connection,
        "broker_transport_options": {**transport_options, **connection.get("broker_transport_options", {})},
        "result_backend_transport_options": {
            "socket_connect_timeout": settings.BROKER_CONNECT_TIMEOUT_SECONDS,
            "socket_timeout": settings.BROKER_SOCKET_TIMEOUT_SECONDS,
            **connection.get("result_backend_transport_options", {}),
        },
        "redis_socket_connect_timeout": settings.BROKER_CONNECT_TIMEOUT_SECONDS,
        "redis_socket_timeout": settings.BROKER_SOCKET_TIMEOUT_SECONDS,
        "broker_connection_timeout": settings.BROKER_CONNECT_TIMEOUT_SECONDS,
        "broker_connection_retry_on_startup": True,
        # Retry forever on a running worker: it must come back by itself after a Redis restart.
        "broker_connection_max_retries": None,
        "broker_pool_limit": settings.BROKER_POOL_LIMIT,
        "broker_channel_error_retry": True,
        # Bounded publishing: the API answers 503 instead of waiting on a dead broker.
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": settings.PUBLISH_MAX_RETRIES,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        # JSON only: no pickle, so a message cannot carry code.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        "result_accept_content": ["json"],
        # At-least-once: acknowledge after the run; a lost worker's task is redelivered.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": settings.WORKER_PREFETCH_MULTIPLIER,
        "task_soft_time_limit": settings.TASK_SOFT_TIME_LIMIT_SECONDS,
        "task_time_limit": settings.TASK_TIME_LIMIT_SECONDS,
        # The job store holds every job's status and result, so Celery's result backend is not
        # written per task (it cost the worker two GET+SETEX+PUBLISH rounds per job). It stays
        # configured for tasks that opt in with ignore_result=False.
        "task_ignore_result": True,
        "task_track_started": False,
        "result_expires": settings.RESULT_EXPIRES_SECONDS,
        "result_extended": True,
        # Soft shutdown: on SIGTERM (remapped to SIGQUIT by the worker entrypoint) running
        # tasks get this long, then unfinished ones go straight back to their queue.
        "worker_soft_shutdown_timeout": settings.WORKER_SOFT_SHUTDOWN_TIMEOUT_SECONDS,
        "worker_enable_soft_shutdown_on_idle": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # Flower builds its view from the workers' events. No task-sent event from the API: it
        # is published under one process-wide lock, so every concurrent submit waited on it.
        "worker_send_task_events": settings.WORKER_SEND_EVENTS,
        "task_send_sent_event": False,
        # The deployment's queues (OFFLOAD_QUEUES), priorities inside each. Every message names
        # its queue; each job type's default queue is added as a route when it is registered.
        "task_queues": [KombuQueue(queue, exchange, routing_key=queue) for queue in settings.QUEUES],
        "task_default_queue": str(Queue.DEFAULT),
        "task_default_exchange": exchange.name,
        "task_default_routing_key": str(Queue.DEFAULT),
        "task_create_missing_queues": False,
    }


def create_celery_app(settings: Settings, *, main: str = "offload") -> Celery:
    app = Celery(main, set_as_current=True)
    app.conf.update(celery_config(settings))
    return app


def job_signature(
    app: Celery,
    task: str,
    *,
    job_id: str,
    kwargs: Mapping[str, Any] | None,
    queue: str,
    priority: int | None,
    headers: Mapping[str, object],
    retries: int = 0,
) -> Signature[Any]:
    """One job's message, sent by task name: the job's id is the task id, its arguments are its
    own (never a previous chain step's result), and the job store, not Celery, keeps its result.
    ``retries`` is the retries before this attempt (a retry published again keeps its count)."""
    options: dict[str, Any] = {"retries": retries} if retries else {}
    return app.signature(
        task,
        kwargs=dict(kwargs or {}),
        task_id=job_id,
        queue=queue,
        routing_key=queue,
        priority=priority,
        headers=dict(headers),
        ignore_result=True,
        immutable=True,
        **options,
    )


def send_jobs(signatures: Sequence[Signature[Any]]) -> None:
    """Publish one job, or a chain whose later steps Celery sends as each one before succeeds."""
    if len(signatures) == 1:
        signatures[0].apply_async()
    else:
        chain(*signatures).apply_async()


def register_worker_job_types(app: Celery, settings: Settings, queues: Sequence[str]) -> JobTypes:
    """Load the deployment's job types and register a task for each that may arrive on these
    queues; raises JobTypeError (naming the plugin and the fix) if one cannot run here."""
    job_types = load_job_types(settings)
    job_types.check_handlers(queues, settings)
    registered = job_types.for_queues(queues)
    register_job_types(app, registered, settings)
    app.conf.task_routes = task_routes(registered)
    before_task_publish.connect(stamp_chain_step, weak=False)
    return job_types


def task_routes(job_types: Sequence[JobType[Any, Any]]) -> dict[str, dict[str, str]]:
    """Celery routes sending each job type, when a message names no queue, to its default queue."""
    return {job_type.name: {"queue": job_type.queue} for job_type in job_types}
