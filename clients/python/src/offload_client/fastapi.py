"""Offload inside a FastAPI service: one `AsyncOffload` for the app's lifetime, handed to routes
as a dependency, so a route reads like a task queue's one-liner::

    from fastapi import FastAPI
    from offload_client.fastapi import OffloadDep, offload_lifespan

    app = FastAPI(lifespan=offload_lifespan())

    @app.post("/payments", status_code=202)
    async def pay(payment: Payment, offload: OffloadDep) -> dict[str, str]:
        job = await offload.submit("acme.charge", payment)
        return {"job_id": job.id, "status_url": job.status_url}

Only this module imports FastAPI (the user's app has it); the client itself needs httpx and pydantic.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI, Request

from offload_client._base import DEFAULT_TIMEOUT
from offload_client.aio import AsyncOffload

STATE_NAME = "offload"

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[Any]]


def offload_lifespan(
    url: str | None = None,
    api_key: str | None = None,
    *,
    timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
    retries: int = 3,
    then: Lifespan | None = None,
) -> Lifespan:
    """A lifespan that opens one `AsyncOffload` (arguments, else OFFLOAD_URL / OFFLOAD_API_KEY)
    on ``app.state.offload`` and closes it at shutdown; ``then`` is the app's own lifespan, run inside."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncOffload(url, api_key, timeout=timeout, retries=retries) as client:
            setattr(app.state, STATE_NAME, client)
            try:
                if then is None:
                    yield
                else:
                    async with then(app):
                        yield
            finally:
                delattr(app.state, STATE_NAME)

    return lifespan


def get_offload(request: Request) -> AsyncOffload:
    """The app's client, opened by `offload_lifespan`."""
    client = getattr(request.app.state, STATE_NAME, None)
    if not isinstance(client, AsyncOffload):
        raise RuntimeError(
            "No Offload client on app.state: create the app with FastAPI(lifespan=offload_lifespan()) "
            "(from offload_client.fastapi)."
        )
    return client


OffloadDep = Annotated[AsyncOffload, Depends(get_offload)]
