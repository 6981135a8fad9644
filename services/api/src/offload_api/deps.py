"""Dependencies as Annotated aliases, so route handlers read as plain signatures.

Those that do no I/O are ``async def``: FastAPI runs a plain ``def`` dependency in a worker
thread, a thread hop per dependency per request."""

from __future__ import annotations

from typing import Annotated

from celery import Celery
from fastapi import Depends, Request

from offload_core.dead_letters import DeadLetters
from offload_core.jobs import JobStore
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
