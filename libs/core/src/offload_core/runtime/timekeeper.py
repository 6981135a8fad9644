"""The timekeeper: publishes delayed jobs when they are due and fires recurring schedules.

It runs in a thread of every worker's (and the notifier's) main process; no process is special.
Each delayed job is published by one atomic Redis script (JobStore.promote_due) and each
schedule tick by another (ScheduleStore.fire_due), so however many timekeepers run, and
whichever of them die or restart, a due job is published once and a tick makes one job. A round
handles at most a batch of each; when a batch was full the next round follows at once, otherwise
the loop sleeps until the next due time or the poll interval, whichever comes first (new jobs
and schedules due sooner may arrive meanwhile).
"""

from __future__ import annotations

import logging
import os
import socket
import threading

import redis

from offload_core.runtime import worker_metrics as metrics
from offload_core.settings import Settings
from offload_core.store.jobs import JobStore
from offload_core.store.schedules import ScheduleStore

logger = logging.getLogger(__name__)


class Timekeeper:
    def __init__(self, store: JobStore, settings: Settings) -> None:
        self.store = store
        self.schedules = ScheduleStore(
            store.client, settings.JOB_TTL_SECONDS, misfire_grace_seconds=settings.SCHEDULE_MISFIRE_GRACE_SECONDS
        )
        self.poll_seconds = settings.TIMEKEEPER_POLL_SECONDS
        self.batch = settings.TIMEKEEPER_BATCH
        self.origin = f"offload-timekeeper-{os.getpid()}@{socket.gethostname()}"  # Celery's `origin` header

    def run_round(self) -> float:
        """One round; how long to wait before the next."""
        promotion = self.store.promote_due(self.batch)
        for job_id, due in promotion.published:
            lag = max(0.0, promotion.now - due)
            metrics.DELAYED_PUBLISH_LAG_SECONDS.observe(lag)
            logger.debug("delayed job %s published %.3f s after its due time", job_id, lag)
        metrics.DELAYED_JOBS_PUBLISHED.inc(len(promotion.published))
        fired, next_tick = self.schedules.fire_due(most=self.batch, origin=self.origin)
        for outcome in fired:
            metrics.SCHEDULE_TICKS.labels("fired" if outcome.job_id else "skipped").inc()
            if outcome.misfire:
                metrics.SCHEDULE_MISFIRES.inc()
                logger.warning(
                    "schedule %s misfired (no timekeeper ran at its tick): %s",
                    outcome.schedule_id,
                    f"ran once as job {outcome.job_id}" if outcome.job_id else "skipped",
                )
        if len(promotion.published) >= self.batch or len(fired) >= self.batch:
            return 0.0
        wait = self.poll_seconds
        for upcoming in (promotion.next_due, next_tick):
            if upcoming is not None:
                wait = min(wait, max(0.0, upcoming - promotion.now))
        return wait

    def run(self, stopping: threading.Event) -> None:
        """Rounds until ``stopping`` is set; a Redis outage only pauses them."""
        wait = 0.0
        while not stopping.wait(wait):
            try:
                wait = self.run_round()
            except (redis.RedisError, OSError) as exc:
                logger.warning("timekeeper round skipped: Redis unavailable (%s)", exc)
                wait = 1.0
            except Exception:
                logger.exception("timekeeper round failed")
                wait = 1.0
