"""The queue topology, declared once: queues, task names, routes and priorities.

The API, the workers, the queue-depth endpoint and the Helm chart's values all follow this
module; a chart test fails when they drift apart. It imports nothing heavy so any process
can read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Queue(StrEnum):
    HIGH = "high"  # critical notifications; consumed by the notifier alone
    DEFAULT = "default"  # ordinary jobs: emails, probes
    LOW = "low"  # bulk work: reports, images


class TaskName(StrEnum):
    ECHO = "offload.echo"
    SEND_EMAIL = "offload.send_email"
    NOTIFY = "offload.notify"
    REPORT = "offload.report"
    IMAGE_PROCESS = "offload.image.process"
    IMAGE_INDEX = "offload.image.index"


# Which queues each worker image consumes by default. Deployments may split them further
# (one per queue set); the notifier never consumes anything but `high`.
WORKER_QUEUES: tuple[Queue, ...] = (Queue.DEFAULT, Queue.LOW)
NOTIFIER_QUEUES: tuple[Queue, ...] = (Queue.HIGH,)

# Priorities inside a queue, as the Redis transport implements them: 0 is served first,
# 9 last. kombu keeps one Redis list per step, named `queue` for step 0 and
# `queue<SEP><step>` for the others; whatever counts a queue must sum all of them.
PRIORITY_STEPS: tuple[int, ...] = (0, 3, 6, 9)
PRIORITY_SEPARATOR = "\x06\x16"
MIN_PRIORITY, MAX_PRIORITY = 0, 9


@dataclass(frozen=True)
class Route:
    queue: Queue  # where the task goes when the request names no queue
    allowed_queues: frozenset[Queue]  # where a request may send it
    priority: int  # default priority inside the queue (0 first .. 9 last)


ROUTES: dict[TaskName, Route] = {
    # The probe may go anywhere: it exercises queueing, retries and shutdown on every queue.
    TaskName.ECHO: Route(queue=Queue.DEFAULT, allowed_queues=frozenset(Queue), priority=3),
    # Emails run on the worker; bulk mailings may be sent to `low`.
    TaskName.SEND_EMAIL: Route(queue=Queue.DEFAULT, allowed_queues=frozenset({Queue.DEFAULT, Queue.LOW}), priority=3),
    # Critical notifications: the notifier alone, first in line.
    TaskName.NOTIFY: Route(queue=Queue.HIGH, allowed_queues=frozenset({Queue.HIGH}), priority=0),
    # Long and heavy work: bulk, on `low`, so it never starves `default`.
    TaskName.REPORT: Route(queue=Queue.LOW, allowed_queues=frozenset({Queue.LOW}), priority=3),
    TaskName.IMAGE_PROCESS: Route(queue=Queue.LOW, allowed_queues=frozenset({Queue.LOW}), priority=3),
    TaskName.IMAGE_INDEX: Route(queue=Queue.LOW, allowed_queues=frozenset({Queue.LOW}), priority=3),
}


def priority_lists(queue: Queue | str) -> list[str]:
    """The Redis list names that together hold a queue's waiting messages, most urgent first."""
    return [str(queue) if step == 0 else f"{queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS]
