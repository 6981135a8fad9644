from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel

from offload_api.compute import ComputeQueue
from offload_api.deps import SettingsDep, StoreDep
from offload_core.queue_state import read_queue_states

router = APIRouter(prefix="/queues", tags=["queues"])


class QueueView(BaseModel):
    name: str
    depth: int  # waiting messages, all priority lists summed; not counting reserved ones
    consumers: int  # workers that announced themselves within three heartbeats
    oldest_age_seconds: float | None  # age of the oldest waiting message, if any
    dead_letters: int  # jobs of this queue that failed for good and are still kept


class QueuesView(BaseModel):
    queues: list[QueueView]


@router.get("")
def list_queues(store: StoreDep, settings: SettingsDep, request: Request) -> QueuesView:
    """The deployment's Celery queues (OFFLOAD_QUEUES, shared by every API process) and this API
    process's in-process compute queue."""
    states = read_queue_states(
        store.client,
        settings.QUEUES,
        stale_after=3 * settings.WORKER_HEARTBEAT_INTERVAL_SECONDS,
        dead_letter_ttl=settings.DEAD_LETTER_TTL_SECONDS,
    )
    compute: ComputeQueue = request.app.state.compute
    states.append(compute.state())
    return QueuesView(queues=[QueueView(**vars(state)) for state in states])
