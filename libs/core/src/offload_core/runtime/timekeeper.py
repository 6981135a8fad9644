"""The timekeeper: publishes delayed jobs when they are due.

It runs in a thread of every worker's (and the notifier's) main process; no process is special.
Each round is one atomic Redis script (JobStore.promote_due), so however many timekeepers run,
and whichever of them die or restart, a due job is published exactly once: an entry leaves the
scheduled set in the same step that pushes its message. A round publishes at most a batch; when
a batch was full the next round follows at once, otherwise the loop sleeps until the next due
time or the poll interval, whichever comes first (new jobs due sooner may arrive meanwhile).
"""

from __future__ import annotations

import logging
import threading

import redis

from offload_core.runtime import worker_metrics as metrics
from offload_core.settings import Settings
from offload_core.store.jobs import JobStore, Promotion

logger = logging.getLogger(__name__)


class Timekeeper:
    def __init__(self, store: JobStore, settings: Settings) -> None:
        self.store = store
        self.poll_seconds = settings.TIMEKEEPER_POLL_SECONDS
        self.batch = settings.TIMEKEEPER_BATCH

    def run_round(self) -> tuple[Promotion, float]:
        """One round; what it published, and how long to wait before the next."""
        promotion = self.store.promote_due(self.batch)
        for job_id, due in promotion.published:
            lag = max(0.0, promotion.now - due)
            metrics.DELAYED_PUBLISH_LAG_SECONDS.observe(lag)
            logger.debug("delayed job %s published %.3f s after its due time", job_id, lag)
        metrics.DELAYED_JOBS_PUBLISHED.inc(len(promotion.published))
        if len(promotion.published) >= self.batch:
            return promotion, 0.0
        wait = self.poll_seconds
        if promotion.next_due is not None:
            wait = min(wait, max(0.0, promotion.next_due - promotion.now))
        return promotion, wait

    def run(self, stopping: threading.Event) -> None:
        """Rounds until ``stopping`` is set; a Redis outage only pauses them."""
        wait = 0.0
        while not stopping.wait(wait):
            try:
                _, wait = self.run_round()
            except (redis.RedisError, OSError) as exc:
                logger.warning("timekeeper round skipped: Redis unavailable (%s)", exc)
                wait = 1.0
            except Exception:
                logger.exception("timekeeper round failed")
                wait = 1.0
