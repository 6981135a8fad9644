"""Celery's wire format, owned here: a job's message built without Celery's producer, and what
reads messages back out of Redis (the workers' batched take, the orphan sweep).

The API pushes the message onto the queue's Redis list itself, in the same atomic script that
writes the job's record (offload_core.store.jobs.SUBMIT).

The message is what `Celery.send_task(..., task_id=job_id, queue=queue, priority=priority,
headers=..., ignore_result=True)` publishes through kombu's Redis transport (task protocol 2 in
kombu's JSON envelope); tests compare the two field by field, and the workers consume it as any
other Celery message. Building it by hand skips what a submit does not need on the hot path:
the producer pool, the exchange lookup and the reprs of the arguments.
"""

from __future__ import annotations

import base64
import bisect
import json
import uuid
from collections.abc import Mapping
from typing import Any

from kombu.utils import json as kombu_json

from offload_core.contract.topology import PRIORITY_SEPARATOR, PRIORITY_STEPS
from offload_core.runtime.celery_versions import require_supported_versions
from offload_core.store.lua_scripts import lua

# Takes a batch of messages off a queue's lists and records each in kombu's unacked hash as
# kombu itself would (offload_core.runtime.worker_transport).
TAKE = lua("take")

require_supported_versions()  # the message below is Celery 5.7's protocol 2 in kombu 5.7's envelope

# The third element of a protocol 2 body: no callbacks, errbacks, chain or chord.
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


ARGUMENTS_REPR_MAX = 1024  # Celery's default argsrepr_maxsize


def _bounded_repr(kwargs: Mapping[str, Any]) -> str:
    text = repr(dict(kwargs))
    return text if len(text) <= ARGUMENTS_REPR_MAX else text[: ARGUMENTS_REPR_MAX - 3] + "..."


def queue_list(queue: str, priority: int) -> str:
    """The Redis list kombu keeps a queue's messages of this priority in (its `_q_for_pri`)."""
    step = PRIORITY_STEPS[bisect.bisect(PRIORITY_STEPS, priority) - 1]
    return f"{queue}{PRIORITY_SEPARATOR}{step}" if step else queue


def task_message(
    task: str,
    job_id: str,
    kwargs: Mapping[str, Any],
    *,
    queue: str,
    priority: int,
    headers: Mapping[str, object],
    origin: str,
) -> str:
    """The JSON text to LPUSH onto ``queue_list(queue, priority)``."""
    body = kombu_json.dumps([[], dict(kwargs), _EMBED])
    message = {
        "body": base64.b64encode(body.encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": task,
            "id": job_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": job_id,
            "parent_id": None,
            # What Celery logs and Flower shows for the arguments; bounded as Celery bounds it.
            "argsrepr": "()",
            "kwargsrepr": _bounded_repr(kwargs),
            "origin": origin,
            "ignore_result": True,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
            **headers,
        },
        "properties": {
            "correlation_id": job_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": priority,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return kombu_json.dumps(message)


def message_job_id(message: Any) -> str | None:
    """The task id (the job's id) of a kombu message as Celery's protocol 2 writes it."""
    headers = message.get("headers") if isinstance(message, dict) else None
    job_id = headers.get("id") if isinstance(headers, dict) else None
    return job_id if isinstance(job_id, str) else None


def listed_job_id(raw: str) -> str | None:
    """The job id of a message as it waits in a queue's Redis list."""
    try:
        return message_job_id(json.loads(raw))
    except ValueError:
        return None


def held_job_id(raw: str) -> str | None:
    """The job id of a message a worker holds: kombu keeps [message, exchange, routing key] per
    delivery tag in its unacked hash."""
    try:
        held = json.loads(raw)
    except ValueError:
        return None
    return message_job_id(held[0]) if isinstance(held, list) and held else None
