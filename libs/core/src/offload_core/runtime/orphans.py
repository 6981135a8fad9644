"""Recovery of accepted jobs whose broker message Redis lost.

kombu's Redis transport takes a message with BRPOP and records it as unacknowledged in a
separate write (kombu #305). If Redis goes down between the two, or after the pop but before
the reply reaches the worker, the message exists nowhere and its job would stay queued forever.
The visibility-timeout restore cannot help: it only knows the messages that were recorded.

So the job store keeps every job whose message was published in a waiting set, with its
arguments, until a worker starts it: a job the API accepted (JobStore.create), a retry a worker
published (JobStore.mark_retrying, due at its countdown), a chain step published after the one
before it succeeded or was skipped (the SUCCEED and START scripts). One worker at a time sweeps
that set: a job waiting longer than the grace whose message is on none of its queue's lists and
in no worker's hands (kombu's unacked hash) is missing. Missing in two sweeps in a row (which rules
out a message caught between a list and the hash while it was read), it is published again with
its id, arguments, priority and retry count (a chain step with the steps after it), and keeps its
status.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import cast

import redis
from celery import Celery
from kombu.transport.redis import Channel

from offload_core.contract.topology import priority_lists
from offload_core.runtime import worker_metrics as metrics
from offload_core.runtime.celery_app import job_signature, send_jobs
from offload_core.runtime.task_message import held_job_id, listed_job_id
from offload_core.settings import Settings
from offload_core.store.jobs import AWAITING_DELIVERY, JobStatus, JobStore, RecoveryOutcome, WaitingJob
from offload_core.store.queue_state import ENQUEUED_AT_HEADER

logger = logging.getLogger(__name__)

LOCK_KEY = "offload:orphans:lock"
# Jobs the previous sweep found missing: a second sighting republishes them.
SUSPECTS_KEY = "offload:orphans:suspects"
# Where the next sweep continues in the waiting set when one sweep cannot look at all of it.
CURSOR_KEY = "offload:orphans:cursor"
# kombu's hash of the messages workers hold (Channel.unacked_key; Offload does not change it).
UNACKED_KEY: str = Channel.unacked_key

JOBS_PER_SWEEP = 1000  # waiting jobs judged per sweep, besides the previous sweep's suspects
LIST_CHUNK = 500  # list entries (or hash fields) read per Redis call
MESSAGES_PER_SWEEP = 200_000  # messages read per sweep; a queue holding more is judged later
MOST_RECOVERIES = 3  # a job lost more often than this fails instead: something discards it
MOST_CHAIN_STEPS = 64


class OrphanSweep:
    def __init__(self, app: Celery, store: JobStore, settings: Settings, *, owner: str) -> None:
        self.app = app
        self.store = store
        self.client: redis.Redis = store.client
        self.grace = settings.ORPHAN_GRACE_SECONDS
        self.interval = settings.ORPHAN_SWEEP_INTERVAL_SECONDS
        self.owner = owner

    def run_once(self) -> list[str]:
        """Sweep unless another worker swept less than an interval ago; the recovered job ids."""
        # The lock is left to expire, not released: sweeps stay an interval apart whichever
        # worker runs them, so two sightings are never a moment apart. A little under the
        # interval, so a worker's own next tick finds it free.
        if not self.client.set(LOCK_KEY, self.owner, nx=True, px=max(1, int(self.interval * 800))):
            return []
        return self.sweep()

    def sweep(self) -> list[str]:
        suspects = {str(job_id) for job_id in self.client.smembers(SUSPECTS_KEY)}
        batch = self._next_batch()
        candidates = list(dict.fromkeys([*batch, *sorted(suspects)]))
        records = self.store.waiting_jobs(candidates)
        # Started, finished, cancelled or expired: the waiting set has nothing more to say of it.
        stale = [
            job_id for job_id in candidates if job_id not in records or records[job_id].status not in AWAITING_DELIVERY
        ]
        self.store.forget_waiting(stale)
        queued = {job_id: job for job_id, job in records.items() if job.status in AWAITING_DELIVERY}
        missing: list[str] = []
        if queued:
            present, unjudged = self._present_job_ids({job.queue for job in queued.values()})
            missing = [job_id for job_id, job in queued.items() if job_id not in present and job.queue not in unjudged]
        recovered = []
        first_seen = []
        for job_id in missing:
            if job_id not in suspects:
                first_seen.append(job_id)
            elif self._recover(queued[job_id]):
                recovered.append(job_id)
        self._remember_suspects(first_seen)
        logger.debug(
            "orphan sweep: %d candidates, %d missing, %d recovered", len(candidates), len(missing), len(recovered)
        )
        return recovered

    def _next_batch(self) -> list[str]:
        """The next waiting jobs past the grace, oldest first, continuing where the last sweep stopped."""
        cursor = self.client.get(CURSOR_KEY)
        after = float(str(cursor)) if cursor is not None else None
        batch = self.store.waiting_since(before=time.time() - self.grace, after=after, limit=JOBS_PER_SWEEP)
        if len(batch) == JOBS_PER_SWEEP:
            self.client.set(CURSOR_KEY, repr(batch[-1][1]), ex=max(60, int(10 * self.interval)))
        else:
            self.client.delete(CURSOR_KEY)  # the end of the set: start from the oldest again
        return [job_id for job_id, _ in batch]

    def _present_job_ids(self, queues: set[str]) -> tuple[set[str], set[str]]:
        """Ids of the jobs whose message is on one of the queues' lists or held by a worker, and
        the queues too long to read in this sweep (their jobs are not judged now). The lists
        first, then the unacked hash: a message moving from a list to a worker between the two
        reads is seen in one of them."""
        present: set[str] = set()
        unjudged: set[str] = set()
        budget = MESSAGES_PER_SWEEP
        for queue in sorted(queues):
            names = priority_lists(queue)
            pipe = self.client.pipeline(transaction=False)
            for name in names:
                pipe.llen(name)
            depth = sum(int(n) for n in pipe.execute())
            if depth > budget:
                unjudged.add(queue)
                logger.warning(
                    "orphan sweep: %s holds %d messages, more than one sweep reads; its jobs are checked later",
                    queue,
                    depth,
                )
                continue
            for name in names:
                read = self._read_list(name, present, budget)
                if read is None:  # grew past the budget while it was read
                    unjudged.add(queue)
                    break
                budget -= read
        held = self._read_unacked(present)
        if not held:
            return present, queues  # the unacked hash could not be read whole: judge nothing
        return present, unjudged

    def _read_list(self, name: str, present: set[str], budget: int) -> int | None:
        # kombu pushes on the left: a push during the read shifts entries to later indexes, so
        # reading from the left sees some twice but skips none; pops on the right remove entries
        # that the unacked read then finds.
        start = 0
        while start < budget:
            chunk = self.client.lrange(name, start, start + LIST_CHUNK - 1)
            present.update(job_id for raw in chunk if (job_id := listed_job_id(str(raw))) is not None)
            start += LIST_CHUNK
            if len(chunk) < LIST_CHUNK:
                return start - LIST_CHUNK + len(chunk)
        return None

    def _read_unacked(self, present: set[str]) -> bool:
        cursor, fields = 0, 0
        while True:
            cursor, chunk = cast(tuple[int, dict[str, str]], self.client.hscan(UNACKED_KEY, cursor, count=LIST_CHUNK))
            fields += len(chunk)
            present.update(job_id for raw in chunk.values() if (job_id := held_job_id(str(raw))) is not None)
            if cursor == 0:
                return True
            if fields > MESSAGES_PER_SWEEP:
                logger.warning("orphan sweep: more than %d messages held by workers; no job judged", fields)
                return False

    def _remember_suspects(self, job_ids: list[str]) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(SUSPECTS_KEY)
        if job_ids:
            pipe.sadd(SUSPECTS_KEY, *job_ids[: 2 * JOBS_PER_SWEEP])
            # Only the next sweep's business: a sighting from long ago proves nothing now.
            pipe.pexpire(SUSPECTS_KEY, max(1, int(3 * self.interval * 1000)))
        pipe.execute()

    def _recover(self, job: WaitingJob) -> bool:
        if job.kwargs is None:
            logger.error("job %s lost its message and its arguments are gone: it cannot be published again", job.id)
            self.store.forget_waiting([job.id])
            return False
        outcome = self.store.claim_recovery(job.id, most=MOST_RECOVERIES)
        if outcome is RecoveryOutcome.GONE:
            return False
        if outcome is RecoveryOutcome.EXHAUSTED:
            error = f"its broker message was lost {MOST_RECOVERIES + 1} times; no worker ever took it"
            logger.error("job %s (%s on %s) failed: %s", job.id, job.task, job.queue, error)
            queue = self.store.fail(job.id, error, task=job.task, queue=job.queue, payload=job.kwargs)
            metrics.JOBS_FAILED.labels(job.task, queue).inc()
            return False
        steps = self._steps_from(job)
        try:
            self._publish(steps)
        except Exception as exc:  # one job's publish must not end the sweep
            # The claim restarted its wait: the sweeps after the next grace try again.
            logger.warning("job %s lost its message and could not be published again: %s", job.id, exc)
            return False
        metrics.JOBS_RECOVERED.labels(job.task, job.queue).inc()
        later = f" with the {len(steps) - 1} chain steps after it" if len(steps) > 1 else ""
        logger.warning(
            "job %s (%s on %s) was queued but its broker message was lost; published it again%s",
            job.id,
            job.task,
            job.queue,
            later,
            extra={"job_id": job.id, "task": job.task, "queue": job.queue},
        )
        return True

    def _steps_from(self, job: WaitingJob) -> list[WaitingJob]:
        """The job and, for a chain step, the steps after it: publishing it alone would end the chain."""
        steps = [job]
        next_step = job.next_step
        while next_step and len(steps) < MOST_CHAIN_STEPS:
            step = self.store.waiting_jobs([next_step]).get(next_step)
            if step is None:
                break
            if step.status == JobStatus.QUEUED and step.kwargs is not None:
                steps.append(step)
            elif step.status == JobStatus.CANCELLED:
                # Its arguments went with the cancel; a worker skips it and goes on with the chain.
                steps.append(dataclasses.replace(step, kwargs={}))
            else:
                break
            next_step = step.next_step
        return steps

    def _publish(self, steps: list[WaitingJob]) -> None:
        # The original acceptance time: the queue-wait figures then show the wait the job had.
        headers: dict[str, object] = {ENQUEUED_AT_HEADER: steps[0].created_at}
        send_jobs(
            [
                job_signature(
                    self.app,
                    step.task,
                    job_id=step.id,
                    kwargs=step.kwargs,
                    queue=step.queue,
                    priority=step.priority,
                    headers=headers,
                    retries=step.retries,
                )
                for step in steps
            ]
        )
