from __future__ import annotations

import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from offload_api.deps import SettingsDep, StoreDep
from offload_api.errors import error_body

router = APIRouter(tags=["health"])


@router.get("/livez")
async def livez() -> dict[str, str]:
    """The process is alive and its event loop answers."""
    return {"status": "alive"}


@router.get("/readyz", responses={503: {"description": "Redis is unreachable."}})
def readyz(store: StoreDep, settings: SettingsDep) -> JSONResponse:
    """Ready when Redis answers; otherwise 503 with the reason."""
    try:
        store.client.ping()
    except redis.RedisError as exc:
        reason = str(exc).rstrip(".")
        detail = f"Redis at {settings.redis_location} is unreachable: {reason}. Is it running? (OFFLOAD_REDIS_URL)"
        return JSONResponse(status_code=503, content=error_body(detail, "redis_unavailable"))
    return JSONResponse({"status": "ready"})
