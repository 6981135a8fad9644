"""What the worker and the notifier entrypoints share: probe files, the consumer
announcement, logs, traces and metrics, a task consumer that survives Redis restarts, and
starting Celery's worker with the queues and concurrency from settings.

The entrypoint must call worker_env.prepare_worker_environment before this module is imported:
REMAP_SIGTERM makes SIGTERM start the soft shutdown that hands unfinished tasks back to the
queue, and the metrics directory lets pool processes count together.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from queue import Empty
from typing import Any

import redis
from celery import Celery, bootsteps
from celery.apps.worker import Worker as CeleryWorker
from celery.signals import (
    setup_logging,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutting_down,
)
from celery.worker.consumer import Consumer
from opentelemetry.instrumentation.celery import CeleryInstrumentor

from offload_core.contract.topology import NOTIFIER_QUEUES
from offload_core.logs import configure_logging, wants_json
from offload_core.otlp_metrics import start_metrics_export
from offload_core.runtime.orphans import OrphanSweep
from offload_core.runtime.timekeeper import Timekeeper
from offload_core.runtime.worker_metrics import serve_worker_metrics, worker_registry
from offload_core.runtime.worker_transport import use_worker_transport
from offload_core.settings import Settings, get_settings
from offload_core.store.blob_ledger import Blobs, BlobSweep
from offload_core.store.jobs import JobStore
from offload_core.store.queue_state import announce_consumer, withdraw_consumer
from offload_core.store.redis_connection import sync_client
from offload_core.telemetry import NOTIFIER_SERVICE, flush_telemetry, setup_tracing

logger = logging.getLogger(__name__)

HEARTBEAT_FILE = "heartbeat"
READY_FILE = "ready"
# Task events wait this long in the worker's buffer, so that one message to Flower carries many.
EVENT_FLUSH_SECONDS = 0.1


def probe_files(settings: Settings) -> tuple[Path, Path]:
    return settings.WORKER_STATE_DIR / HEARTBEAT_FILE, settings.WORKER_STATE_DIR / READY_FILE


class WorkerProbes(bootsteps.StartStopStep):
    """Touches the heartbeat file from the worker's own event loop (so it stops when the loop
    is stuck, without depending on Redis) and announces the worker as a consumer of its queues."""

    requires = ("celery.worker.components:Timer",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.settings = get_settings()
        self.heartbeat, self.ready = probe_files(self.settings)
        self.tref: Any = None
        self.client: redis.Redis | None = None

    def start(self, worker: Any) -> None:
        self.settings.WORKER_STATE_DIR.mkdir(parents=True, exist_ok=True)
        # Short timeouts: this runs in the worker's main loop and must not stall it.
        self.client = sync_client(self.settings, socket_connect_timeout=1, socket_timeout=1)
        self.queues = sorted(worker.app.amqp.queues.consume_from)
        self.hostname = worker.hostname
        self.beat()
        self.tref = worker.timer.call_repeatedly(
            self.settings.WORKER_HEARTBEAT_INTERVAL_SECONDS, self.beat, priority=10
        )

    def beat(self) -> None:
        self.heartbeat.touch()
        try:
            assert self.client is not None
            announce_consumer(
                self.client, self.hostname, self.queues, stale_after=3 * self.settings.WORKER_HEARTBEAT_INTERVAL_SECONDS
            )
        except redis.RedisError as exc:
            logger.warning(
                "could not announce %s as a consumer at %s: %s", self.hostname, self.settings.redis_location, exc
            )

    def stop(self, worker: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
        self.heartbeat.unlink(missing_ok=True)
        self.ready.unlink(missing_ok=True)
        if self.client is not None:
            with contextlib.suppress(redis.RedisError):  # the announcement expires by itself
                withdraw_consumer(self.client, self.hostname, self.queues)


class MainProcessLoop(bootsteps.StartStopStep):
    """A daemon thread of the worker's main process, running ``loop(stopping)`` until the worker
    stops: work that must not stall the event loop taking messages and touching the heartbeat.
    Subclasses say what runs (None: nothing in this worker)."""

    thread_name = ""

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def loop(self, worker: Any) -> Callable[[threading.Event], None] | None:
        raise NotImplementedError

    def start(self, worker: Any) -> None:
        run = self.loop(worker)
        if run is None:
            return
        self.thread = threading.Thread(target=run, args=(self.stopping,), name=self.thread_name, daemon=True)
        self.thread.start()

    def stop(self, worker: Any) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=10)  # a round in progress ends within its Redis timeouts


def every(interval: float, what: str, run_once: Callable[[], object]) -> Callable[[threading.Event], None]:
    """``run_once`` every ``interval`` seconds until stopped; a failed round is logged, never fatal."""

    def loop(stopping: threading.Event) -> None:
        while not stopping.wait(interval):
            try:
                run_once()
            except (redis.RedisError, OSError) as exc:
                logger.warning("%s skipped: %s", what, exc)
            except Exception:
                logger.exception("%s failed", what)

    return loop


class OrphanSweeper(MainProcessLoop):
    """Every OFFLOAD_ORPHAN_SWEEP_INTERVAL_SECONDS, publishes again the queued jobs whose broker
    message Redis lost (offload_core.runtime.orphans; one worker at a time sweeps); a sweep reads
    whole queues."""

    thread_name = "orphan-sweep"

    def loop(self, worker: Any) -> Callable[[threading.Event], None]:
        settings = get_settings()
        sweep = OrphanSweep(worker.app, JobStore.from_settings(settings), settings, owner=worker.hostname)
        return every(settings.ORPHAN_SWEEP_INTERVAL_SECONDS, "orphan sweep", sweep.run_once)


class BlobSweeper(MainProcessLoop):
    """Every OFFLOAD_BLOB_SWEEP_INTERVAL_SECONDS, deletes the blobs whose TTL has passed and frees
    their quota (offload_core.store.blob_ledger; one worker at a time sweeps). Only in workers
    that hold the blob store: the notifier never touches blobs."""

    thread_name = "blob-sweep"

    def loop(self, worker: Any) -> Callable[[threading.Event], None]:
        settings = get_settings()
        blobs = Blobs.from_settings(settings, JobStore.from_settings(settings).client)
        sweep = BlobSweep(blobs, settings.BLOB_SWEEP_INTERVAL_SECONDS, owner=worker.hostname)
        return every(sweep.interval, "blob sweep", sweep.run_once)


class TimekeeperStep(MainProcessLoop):
    """Publishes delayed jobs and fires schedules when due (offload_core.runtime.timekeeper), in
    every worker: each round is atomic in Redis, so any number may run."""

    thread_name = "timekeeper"

    def loop(self, worker: Any) -> Callable[[threading.Event], None] | None:
        settings = get_settings()
        if not settings.TIMEKEEPER_ENABLED:
            return None
        return Timekeeper(JobStore.from_settings(settings), settings).run


class ReconnectingConsumer(Consumer):
    """Celery's task consumer, with a reconnect that survives the Redis transport's close, and
    task events sent in batches.

    Task events: Celery buffers them (in prefork) but flushes the buffer at the next turn of the
    event loop, which on a busy worker is about one PUBLISH round trip per event, three per task,
    all in the main process that also takes every message. Flushed every EVENT_FLUSH_SECONDS
    instead (or when the dispatcher's buffer is full), Flower still sees every task within a
    fraction of a second, at a small part of the cost.

    When the broker connection is lost, Celery closes it twice: ``collect()``, which closes the
    channels and then detaches the transport, and ``close()``. kombu's Redis channel starts
    closing by reading the reply of the BRPOP it has in flight; with Redis gone that read raises,
    and the channel is left open. If nothing else closes it before the transport is detached
    (``collect()`` stops at the first channel that fails, such as the remote-control channel
    deleting its queue), the second close finds no transport to reach Redis through and raises
    AttributeError while restoring the unacknowledged messages: for Celery an unrecoverable error,
    so the worker process exits and its queues have no consumer until something restarts it.
    """

    _event_flush_timer: Any = None
    _event_flush_due = 0.0

    def on_send_event_buffered(self) -> Any:
        hub: Any = getattr(self, "hub", None)  # the event loop; None without one (no buffering)
        if not hub:
            return super().on_send_event_buffered()
        # Overdue: the loop dropped its timers (it does when the connection is lost).
        overdue = self._event_flush_timer is not None and time.monotonic() > self._event_flush_due + 1
        if self._event_flush_timer is None or overdue:
            self._event_flush_due = time.monotonic() + EVENT_FLUSH_SECONDS
            self._event_flush_timer = hub.call_later(EVENT_FLUSH_SECONDS, self._flush_buffered_events)
        return None

    def _flush_buffered_events(self) -> None:
        self._event_flush_timer = None
        dispatcher: Any = getattr(self, "event_dispatcher", None)
        if dispatcher is not None:
            dispatcher.flush()

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        # The task consumer's channel: a kombu Redis channel (untyped), or None before it started.
        channel: Any = getattr(getattr(self, "task_consumer", None), "channel", None)
        if channel is not None and getattr(channel, "_in_poll", None):
            # Read the pending BRPOP reply first, as kombu's close would, but let a reply that
            # cannot be read go with the connection instead of aborting the close: kombu's close
            # then runs to the end, and the channel's unacknowledged messages are restored (now,
            # or by any worker after the visibility timeout).
            with contextlib.suppress(Empty, *channel.connection_errors):
                channel._brpop_read()
        super().on_connection_error_after_connected(exc)


@worker_ready.connect
def _write_ready_file(sender: Any = None, **_: Any) -> None:
    ready = probe_files(get_settings())[1]
    ready.parent.mkdir(parents=True, exist_ok=True)
    queues = sorted(sender.app.amqp.queues.consume_from) if sender is not None else []
    ready.write_text(json.dumps({"hostname": getattr(sender, "hostname", ""), "queues": queues, "pid": os.getpid()}))


@worker_shutting_down.connect
def _remove_ready_file(**_: Any) -> None:
    # Not ready as soon as shutdown begins, so nothing routes new work here.
    probe_files(get_settings())[1].unlink(missing_ok=True)


class OffloadWorker(CeleryWorker):
    """Celery's worker, not ready from the first moment of a soft shutdown: on SIGTERM (remapped
    to SIGQUIT) Celery sends worker_shutting_down only after the soft shutdown's wait."""

    def wait_for_soft_shutdown(self) -> bool:
        _remove_ready_file()
        return bool(super().wait_for_soft_shutdown())


def _trace_task_runs(service: str, queues: list[str]) -> None:
    setup_tracing(service, queues)
    CeleryInstrumentor().instrument()  # type: ignore[no-untyped-call]


def run_worker(app: Celery, *, queues: list[str], default_name: str, service: str) -> None:
    settings = get_settings()
    configure_logging(service, settings)
    # Our logging, not Celery's: a connected receiver stops Celery from configuring its own.
    setup_logging.connect(lambda **_: configure_logging(service, settings), weak=False)
    if os.environ.get("REMAP_SIGTERM") != "SIGQUIT":
        logger.warning("REMAP_SIGTERM is not SIGQUIT: SIGTERM will wait for running tasks instead of handing them back")
    shared = sorted(set(queues) & set(NOTIFIER_QUEUES))
    if shared and service != NOTIFIER_SERVICE:
        # Allowed (a single shared worker for small setups), but critical work then waits
        # behind everything this worker has prefetched.
        logger.warning("this worker also consumes %s, the notifier's queue", ", ".join(shared))
    if settings.WORKER_POOL == "prefork":
        # Tracing starts in each pool process: its export thread would not survive the fork.
        worker_process_init.connect(lambda **_: _trace_task_runs(service, queues), weak=False)
        # Pool processes end without atexit handlers; send their last spans and logs first.
        worker_process_shutdown.connect(lambda **_: flush_telemetry(), weak=False)
    else:
        _trace_task_runs(service, queues)
    if settings.WORKER_METRICS_PORT:
        registry = worker_registry()
        serve_worker_metrics(settings, registry)
        # The same metrics over OTLP when asked; the main process's last values go at exit.
        if (pusher := start_metrics_export(registry, service, queues)) is not None:
            atexit.register(pusher.stop)
    app.steps["worker"].add(WorkerProbes)
    app.steps["worker"].add(OrphanSweeper)
    if service != NOTIFIER_SERVICE:
        app.steps["worker"].add(BlobSweeper)
    app.steps["worker"].add(TimekeeperStep)
    # Acks written in batches and one Redis client per pool (offload_core.runtime.worker_transport).
    use_worker_transport()
    # Celery's consumer, but one that does not exit when a Redis restart catches it mid-read.
    app.conf.worker_consumer = f"{ReconnectingConsumer.__module__}:{ReconnectingConsumer.__qualname__}"
    app.Worker = app.subclass_with_self(OffloadWorker)  # type: ignore[misc]  # what `celery worker` starts
    # The banner is for people; a JSON log stream gets one line per event instead.
    quiet = ["--quiet"] if wants_json(settings) else []
    app.worker_main(
        [
            *quiet,
            "worker",
            f"--queues={','.join(queues)}",
            f"--concurrency={settings.WORKER_CONCURRENCY}",
            f"--pool={settings.WORKER_POOL}",
            f"--hostname={settings.WORKER_NAME or default_name}",
            f"--loglevel={settings.LOG_LEVEL}",
            *(["--task-events"] if settings.WORKER_SEND_EVENTS else []),
            # Mingle and gossip only slow start-up; Offload's state lives in Redis.
            "--without-mingle",
            "--without-gossip",
        ]
    )
