"""The queue topology, declared once: queues, task names, routes and priorities.

A deployment's queues are configuration (OFFLOAD_QUEUES; the chart renders it from its worker
sets); this module names the built-in ones Offload's own jobs use and the worker sets that
consume them by default. The settings, compose, `make run` and the Helm chart's defaults follow
it; a chart test fails when they drift apart. It imports nothing heavy so any process can read it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class Queue(StrEnum):
    """The built-in queues: every deployment has them, and may add its own."""

    HIGH = "high"  # critical notifications; consumed by the notifier alone
    DEFAULT = "default"  # ordinary jobs: emails, probes
    LOW = "low"  # bulk work: reports, images


BUILTIN_QUEUES: tuple[str, ...] = tuple(str(q) for q in Queue)

# A queue's name is a Redis key, a metric label and part of a KEDA trigger's name: lower-case
# letters, digits, - and _, starting with a letter. The chart's schema holds the same pattern.
QUEUE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
# Names taken: kombu's Redis transport keeps its unacknowledged messages under the first three
# keys (a queue of that name would overwrite them); the API names its own compute queue
# `in-process` in GET /v1/queues, job records and metrics.
RESERVED_QUEUE_NAMES = frozenset({"unacked", "unacked_index", "unacked_mutex", "in-process"})


def queue_name_problem(name: str) -> str | None:
    """Why a queue name cannot be used, if it cannot."""
    if not QUEUE_NAME.match(name):
        return (
            f"{name!r} is not a valid queue name: a lower-case letter, then lower-case letters, digits, "
            "- and _ (63 characters at most)"
        )
    if name in RESERVED_QUEUE_NAMES:
        return f"{name!r} is reserved (a Redis transport key, or the API's in-process queue); choose another name"
    return None


@dataclass(frozen=True)
class WorkerSet:
    """A group of worker processes consuming the same queues; the chart runs one Deployment each."""

    name: str
    queues: tuple[str, ...]
    image: str = "worker"  # "worker" (offload_worker) or "notifier" (offload_notifier)


# The built-in worker sets: the chart's default `workers.sets` and compose's worker services
# (tests check both against this), and the workers `make run` starts. `low` gets its own set so bulk work
# never starves `default`; `high` runs on the notifier alone.
DEFAULT_WORKER_SETS: tuple[WorkerSet, ...] = (
    WorkerSet("default", (Queue.DEFAULT,)),
    WorkerSet("low", (Queue.LOW,)),
    WorkerSet("high", (Queue.HIGH,), image="notifier"),
)


class TaskName(StrEnum):
    ECHO = "offload.echo"
    SEND_EMAIL = "offload.send_email"
    NOTIFY = "offload.notify"
    REPORT = "offload.report"
    IMAGE_PROCESS = "offload.image.process"
    IMAGE_INDEX = "offload.image.index"


# Which queues each image consumes when OFFLOAD_WORKER_QUEUES does not say. Deployments split
# them further (one set per queue) and add their own queues to either image.
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
