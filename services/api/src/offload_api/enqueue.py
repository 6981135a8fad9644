"""Publishing a job: create its record, then send the task by name (the API has no task code)."""

from __future__ import annotations

import time
import uuid

from celery import Celery
from kombu.exceptions import OperationalError
from pydantic import BaseModel

from offload_api.errors import InvalidField
from offload_core.jobs import JobStatus, JobStore
from offload_core.queue_state import ENQUEUED_AT_HEADER
from offload_core.topology import ROUTES, Queue, TaskName


class JobAccepted(BaseModel):
    id: str
    status: JobStatus
    task: str
    queue: Queue
    priority: int
    status_url: str


def enqueue(
    celery: Celery,
    store: JobStore,
    task: TaskName,
    kwargs: dict[str, object],
    *,
    queue: Queue | None = None,
    priority: int | None = None,
) -> JobAccepted:
    route = ROUTES[task]
    queue = queue or route.queue
    if queue not in route.allowed_queues:
        allowed = ", ".join(sorted(route.allowed_queues))
        raise InvalidField("body.queue", f"{task} may run on {allowed}, not {queue}")
    priority = route.priority if priority is None else priority
    job_id = uuid.uuid4().hex
    # The record first: a worker that takes the message at once must find it.
    store.create(job_id, task=task, queue=queue)
    try:
        celery.send_task(
            task,
            kwargs=kwargs,
            task_id=job_id,
            queue=queue,
            routing_key=queue,
            priority=priority,
            headers={ENQUEUED_AT_HEADER: time.time()},
        )
    except (OperationalError, OSError):
        store.discard(job_id)
        raise
    return JobAccepted(
        id=job_id, status=JobStatus.QUEUED, task=task, queue=queue, priority=priority, status_url=f"/v1/jobs/{job_id}"
    )
