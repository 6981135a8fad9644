"""Dependencies as Annotated aliases, so route handlers read as plain signatures.

Those that do no I/O are ``async def``: FastAPI runs a plain ``def`` dependency in a worker
thread, a thread hop per dependency per request."""

from __future__ import annotations

import hmac
from typing import Annotated

from celery import Celery
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from offload_core.dead_letters import DeadLetters
from offload_core.jobs import JobStore
from offload_core.registry import JobTypes
from offload_core.settings import Settings, get_settings


async def current_settings() -> Settings:
    return get_settings()


SettingsDep = Annotated[Settings, Depends(current_settings)]


async def get_store(request: Request) -> JobStore:
    store: JobStore = request.app.state.store
    return store


async def get_celery(request: Request) -> Celery:
    celery: Celery = request.app.state.celery
    return celery


async def get_dead_letters(request: Request) -> DeadLetters:
    dead_letters: DeadLetters = request.app.state.dead_letters
    return dead_letters


StoreDep = Annotated[JobStore, Depends(get_store)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
DeadLettersDep = Annotated[DeadLetters, Depends(get_dead_letters)]

_bearer = HTTPBearer(auto_error=False, description="An API key from OFFLOAD_API_KEYS.")
CredentialsDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


async def require_api_key(credentials: CredentialsDep) -> None:
    settings = get_settings()  # not a dependency: one resolution step less on every request
    if not settings.API_KEYS and settings.ENVIRONMENT == "development":
        return  # development without keys: open, and the API logged a warning at start-up
    if credentials is None:
        raise HTTPException(
            401, "Missing API key: send 'Authorization: Bearer <key>'.", headers={"WWW-Authenticate": "Bearer"}
        )
    presented = credentials.credentials.encode()
    # Compare against every key, in constant time, so timing reveals neither key nor position.
    matched = False
    for key in settings.API_KEYS:
        matched |= hmac.compare_digest(presented, key.get_secret_value().encode())
    if not matched:
        raise HTTPException(401, "Invalid API key.", headers={"WWW-Authenticate": "Bearer"})


async def get_job_types(request: Request) -> JobTypes:
    job_types: JobTypes = request.app.state.job_types
    return job_types


JobTypesDep = Annotated[JobTypes, Depends(get_job_types)]
