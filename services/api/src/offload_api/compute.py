"""Small CPU-bound jobs run inside the API: statistics over posted numbers.

A bounded priority queue (0 first, 9 last, first come first served within a priority) feeds a
fixed pool of consumers; each hands its computation to a process pool of OFFLOAD_COMPUTE_WORKERS
processes, so the work runs beside the event loop, not on it, and on as many cores as there are
processes (threads would share one core under the GIL). The job's record lives in the job store
like any other job (task ``offload.compute``, queue ``in-process``), so ``GET /v1/jobs/{id}``
shows it and ``DELETE /v1/jobs/{id}`` cancels it while it waits.

What the queue is not: durable. It lives in one API process. On shutdown it stops taking work,
lets running computations finish within OFFLOAD_API_SHUTDOWN_TASKS_TIMEOUT_SECONDS, and marks
every waiting one failed ("API shutting down; resubmit"), so none is lost without a word; a
crash loses the waiting ones with their records left "queued". Work that must survive that
belongs on a Celery queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import multiprocessing
import socket
import statistics
import time
from array import array
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis

from offload_core.settings import Settings
from offload_core.store.jobs import JobStatus, JobStore, StartOutcome
from offload_core.store.queue_state import QueueState

logger = logging.getLogger(__name__)

COMPUTE_TASK = "offload.compute"
IN_PROCESS_QUEUE = "in-process"
SHUTDOWN_ERROR = "API shutting down; resubmit"


# --- the computation, run in a pool process --------------------------------------------------


def percentile(ordered: Sequence[float], percent: float) -> float:
    """Linear interpolation between the two nearest ranks (NumPy's default, and what
    statistics.quantiles(method="inclusive") gives for whole percents)."""
    rank = percent / 100 * (len(ordered) - 1)
    low = math.floor(rank)
    fraction = rank - low
    if fraction == 0:
        return float(ordered[low])
    # Weighted, not low + (high - low) * f, which overflows for values near the float limits.
    return float(ordered[low] * (1 - fraction) + ordered[low + 1] * fraction)


def summarize(numbers: Sequence[float], percentiles: Sequence[float]) -> dict[str, Any]:
    """count, mean, median, sample standard deviation (null for one number), min, max and the
    asked percentiles keyed by their value ("50", "99.9")."""
    ordered = sorted(numbers)
    try:
        return {
            "count": len(ordered),
            "mean": statistics.fmean(ordered),
            "median": statistics.median(ordered),
            "stdev": statistics.stdev(ordered) if len(ordered) > 1 else None,
            "min": ordered[0],
            "max": ordered[-1],
            "percentiles": {f"{p:g}": percentile(ordered, p) for p in sorted(set(percentiles))},
        }
    except OverflowError as exc:
        raise ValueError(f"the numbers are too large to summarize as floats ({exc}); scale them down") from exc


def _warm_up() -> None:
    """Submitted once per pool process at start, so the processes exist before the first job."""


# --- the queue and its consumers, on the API's event loop ---------------------------------------


class InProcessJobs(JobStore):
    """The job store, plus a failure that makes no dead letter: in-process jobs cannot be
    replayed through the workers, and their payload (up to OFFLOAD_COMPUTE_MAX_NUMBERS numbers)
    is not worth keeping."""

    def fail_running(self, job_id: str, error: str) -> bool:
        return self.fail_if(job_id, error, JobStatus.STARTED)

    def fail_waiting(self, job_id: str, error: str) -> bool:
        return self.fail_if(job_id, error, JobStatus.QUEUED)


class Refusal(StrEnum):
    FULL = "full"
    SHUTTING_DOWN = "shutting down"


@dataclass(frozen=True)
class Computation:
    job_id: str
    # 8 bytes a number, where a list of floats takes 32: a full queue holds up to
    # COMPUTE_QUEUE_MAX x COMPUTE_MAX_NUMBERS of them (80 MB with the defaults).
    numbers: array[float]
    percentiles: list[float]
    priority: int
    enqueued_at: float  # time.time(), for the oldest waiting job's age


class ComputeQueue:
    """Every method runs on the event loop, except ``state`` (read from any thread)."""

    def __init__(self, store: InProcessJobs, *, max_waiting: int, workers: int) -> None:
        self.store = store
        self.max_waiting = max_waiting
        self.workers = workers
        self.worker_name = f"in-process@{socket.gethostname()}"
        # Unbounded itself: the bound is enforced by reserve(), before a job's record exists.
        self._queue: asyncio.PriorityQueue[tuple[int, int, Computation]] = asyncio.PriorityQueue()
        self._sequence = itertools.count()  # first in, first out within a priority
        self._waiting: dict[str, Computation] = {}
        self._reserved = 0
        self._running: dict[str, Computation] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._consumers: list[asyncio.Task[None]] = []
        self._pool: ProcessPoolExecutor | None = None
        self._closing = False
        self._seconds_per_job = 0.1  # moving average, for Retry-After

    @classmethod
    def from_settings(cls, settings: Settings, client: redis.Redis) -> ComputeQueue:
        store = InProcessJobs(client, settings.JOB_TTL_SECONDS)
        return cls(store, max_waiting=settings.COMPUTE_QUEUE_MAX, workers=settings.COMPUTE_WORKERS)

    def start(self) -> None:
        self._pool = self._new_pool()
        # A spawned process takes a second or two to import; start them now, not on the first job.
        for _ in range(self.workers):
            self._pool.submit(_warm_up)
        self._consumers = [
            asyncio.get_running_loop().create_task(self._consume(), name=f"compute-consumer-{n}")
            for n in range(self.workers)
        ]

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn, not fork: forking a process that runs an event loop and client threads can copy
        # a lock some thread holds, and deadlock the child.
        return ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"))

    # --- submitting ---

    def reserve(self) -> Refusal | None:
        """Hold a place for one computation (None), or say why there is none. A reservation
        ends with put() or release()."""
        if self._closing:
            return Refusal.SHUTTING_DOWN
        if len(self._waiting) + self._reserved >= self.max_waiting:
            return Refusal.FULL
        self._reserved += 1
        return None

    def release(self) -> None:
        self._reserved -= 1

    def put(self, computation: Computation) -> None:
        self._reserved -= 1
        self._waiting[computation.job_id] = computation
        self._queue.put_nowait((computation.priority, next(self._sequence), computation))

    def retry_after_seconds(self) -> int:
        """A guess at when a place frees up: the waiting work shared by the consumers."""
        estimate = len(self._waiting) * self._seconds_per_job / self.workers
        return max(1, min(60, math.ceil(estimate)))

    def state(self) -> QueueState:
        # dict.copy() is atomic under the GIL, so a reader in a worker thread sees a consistent snapshot.
        waiting = self._waiting.copy()
        oldest = min((c.enqueued_at for c in waiting.values()), default=None)
        return QueueState(
            name=IN_PROCESS_QUEUE,
            depth=len(waiting),
            consumers=sum(1 for task in self._consumers if not task.done()),
            oldest_age_seconds=None if oldest is None else round(max(0.0, time.time() - oldest), 3),
            dead_letters=0,  # in-process failures make no dead letters
        )

    # --- running ---

    async def _consume(self) -> None:
        while True:
            _, _, computation = await self._queue.get()
            if self._waiting.pop(computation.job_id, None) is None:
                continue  # failed by stop() already
            self._running[computation.job_id] = computation
            self._idle.clear()
            try:
                await self._run(computation)
            finally:
                del self._running[computation.job_id]
                if not self._running:
                    self._idle.set()

    async def _run(self, computation: Computation) -> None:
        job_id = computation.job_id
        try:
            outcome = await asyncio.to_thread(
                self.store.start, job_id, task=COMPUTE_TASK, queue=IN_PROCESS_QUEUE, worker=self.worker_name
            )
        except redis.RedisError as exc:
            logger.error("computation %s dropped: its record could not be started: %s", job_id, exc)
            return
        if outcome is not StartOutcome.RUN:
            logger.info("computation %s not run: %s", job_id, outcome.value)
            return
        assert self._pool is not None, "start() creates the pool"
        started = time.perf_counter()
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                self._pool, summarize, computation.numbers, computation.percentiles
            )
        except BrokenProcessPool:
            self._pool = self._new_pool()  # a process died (killed, out of memory): start afresh
            await self._record(self.store.fail_running, job_id, "the computation's process died; resubmit")
            return
        except ValueError as exc:
            await self._record(self.store.fail_running, job_id, str(exc))
            return
        elapsed = time.perf_counter() - started
        self._seconds_per_job = 0.8 * self._seconds_per_job + 0.2 * elapsed
        if await self._record(self.store.cancel_requested, job_id):
            await self._record(self.store.mark_cancelled, job_id)
        else:
            await self._record(self.store.succeed, job_id, result)
        logger.info("computation %s done in %.3fs (%d numbers)", job_id, elapsed, len(computation.numbers))

    async def _record(self, write: Any, job_id: str, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(write, job_id, *args)
        except redis.RedisError as exc:
            logger.error("computation %s: its record could not be written (%s): %s", job_id, write.__name__, exc)
            return None

    # --- stopping ---

    async def stop(self, timeout: float) -> None:
        """Take nothing more; fail what waits; give what runs ``timeout`` seconds, then fail it too."""
        self._closing = True
        waiting = list(self._waiting)
        self._waiting.clear()  # consumers skip these from now on
        for job_id in waiting:
            await self._record(self.store.fail_waiting, job_id, SHUTDOWN_ERROR)
        if waiting:
            logger.warning("failed %d waiting computations (%s): %s", len(waiting), SHUTDOWN_ERROR, ", ".join(waiting))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        unfinished = list(self._running)
        for consumer in self._consumers:
            consumer.cancel()
        await asyncio.gather(*self._consumers, return_exceptions=True)
        for job_id in unfinished:
            await self._record(self.store.fail_running, job_id, SHUTDOWN_ERROR)
        if unfinished:
            logger.warning(
                "failed %d computations still running after %.1fs: %s", len(unfinished), timeout, ", ".join(unfinished)
            )
        if self._pool is None:
            return
        if unfinished:
            # The interpreter joins the pool at exit, which would wait for these computations
            # however long they take: end their processes (they hold nothing worth keeping).
            # ProcessPoolExecutor has no public way to before Python 3.14 (terminate_workers).
            for process in list(self._pool._processes.values()):
                process.kill()
        self._pool.shutdown(wait=False, cancel_futures=True)
