"""The queue topology, declared once: queues and priorities. Which job goes where is each job
type's declaration (offload_core.sdk; Offload's own in offload_core.builtin_jobs).

The API, the workers, the queue-depth endpoint and the Helm chart's values all follow this
module; a chart test fails when they drift apart. It imports nothing heavy so any process
can read it.
"""

from __future__ import annotations

from enum import StrEnum


class Queue(StrEnum):
    HIGH = "high"  # critical notifications; consumed by the notifier alone
    DEFAULT = "default"  # ordinary jobs: emails, probes
    LOW = "low"  # bulk work: reports, images


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


def priority_lists(queue: Queue | str) -> list[str]:
    """The Redis list names that together hold a queue's waiting messages, most urgent first."""
    return [str(queue) if step == 0 else f"{queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS]
