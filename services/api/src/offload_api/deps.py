"""Dependencies as Annotated aliases, so route handlers read as plain signatures.

Those that do no I/O are ``async def``: FastAPI runs a plain ``def`` dependency in a worker
thread, a thread hop per dependency per request."""

from __future__ import annotations

import threading
from typing import Annotated

from celery import Celery
from fastapi import Depends, Request

from offload_core.contract.registry import JobTypes
from offload_core.settings import Settings, get_settings
from offload_core.store.blob_ledger import Blobs
from offload_core.store.dead_letters import DeadLetters
from offload_core.store.jobs import JobStore


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


async def get_job_types(request: Request) -> JobTypes:
    """The deployment's job types, loaded once when the app was created."""
    job_types: JobTypes = request.app.state.job_types
    return job_types


_blobs_lock = threading.Lock()


def get_blobs(request: Request) -> Blobs:
    """The blob store and its ledger (on the job store's Redis client), made on first use."""
    blobs: Blobs | None = getattr(request.app.state, "blobs", None)
    if blobs is None:
        with _blobs_lock:
            blobs = getattr(request.app.state, "blobs", None)
            if blobs is None:
                blobs = request.app.state.blobs = Blobs.from_settings(get_settings(), request.app.state.store.client)
    return blobs


StoreDep = Annotated[JobStore, Depends(get_store)]
BlobsDep = Annotated[Blobs, Depends(get_blobs)]
JobTypesDep = Annotated[JobTypes, Depends(get_job_types)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
DeadLettersDep = Annotated[DeadLetters, Depends(get_dead_letters)]
