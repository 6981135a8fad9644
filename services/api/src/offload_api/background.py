"""Tracked asyncio tasks: work a request starts that must not hold up its response and must not
vanish unnoticed when the API stops.

A bare ``asyncio.create_task`` can be garbage-collected mid-run (the loop keeps only a weak
reference), its exception goes unseen, and shutdown drops it silently. The tracker keeps a
strong reference to every task until it ends, logs how it ended, bounds how many run at once,
and on shutdown waits for them up to a deadline, then cancels the rest and names them in the log.

Use it for short, best-effort work whose loss costs little (the result is a hint, or can be
recomputed): anything that must survive a crash belongs on a Celery queue.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

logger = logging.getLogger(__name__)

Work = Callable[[], Coroutine[Any, Any, None]]
# Cancelled tasks normally end at their next await; this only bounds a misbehaving one.
_CANCEL_GRACE_SECONDS = 1.0


class TaskTracker:
    """Every method runs on the event loop."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    def running(self) -> list[str]:
        return sorted(task.get_name() for task in self._tasks)

    def start(self, name: str, work: Work) -> bool:
        """Run ``work()`` as a tracked task named ``name``; False (and nothing runs) when the
        tracker is at its limit or shutting down. ``work`` is a coroutine function rather than
        a coroutine, so nothing is created that would never be awaited."""
        if self._closing:
            logger.warning("tracked task %s not started: the API is shutting down", name)
            return False
        if len(self._tasks) >= self.limit:
            logger.warning("tracked task %s not started: %d already running (the limit)", name, self.limit)
            return False
        task = asyncio.get_running_loop().create_task(work(), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return True

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return  # drain() logs the ones it cancelled
        if (exc := task.exception()) is not None:
            logger.error("tracked task %s failed", task.get_name(), exc_info=exc)

    async def drain(self, timeout: float) -> list[str]:
        """Refuse new tasks, wait up to ``timeout`` seconds for the running ones, cancel those
        still running and return their names (also logged)."""
        self._closing = True
        if not self._tasks:
            return []
        running = self.running()
        logger.info("waiting up to %.1fs for %d tracked tasks: %s", timeout, len(running), ", ".join(running))
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        if not pending:
            return []
        cancelled = sorted(task.get_name() for task in pending)
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=_CANCEL_GRACE_SECONDS)
        logger.warning(
            "cancelled %d tracked tasks still running after %.1fs: %s", len(cancelled), timeout, ", ".join(cancelled)
        )
        return cancelled
