"""BodySizeLimit's per-path limits: an upload route may take larger bodies than the rest, and
only that exact path does. Driven over ASGI with real requests, declared and streamed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from offload_api.limits import BodySizeLimit


async def echo_size(request: Request) -> JSONResponse:
    return JSONResponse({"received": len(await request.body())})


def client() -> httpx.AsyncClient:
    app = Starlette(
        routes=[Route("/v1/images", echo_size, methods=["POST"]), Route("/v1/x", echo_size, methods=["POST"])]
    )
    limited = BodySizeLimit(app, max_bytes=100, overrides={"/v1/images": 1000})
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=limited), base_url="http://test")


async def chunks(total: int, size: int = 64) -> AsyncIterator[bytes]:
    for start in range(0, total, size):
        yield b"x" * min(size, total - start)


def test_the_override_applies_to_its_path_only() -> None:
    async def run() -> None:
        async with client() as http:
            big = await http.post("/v1/images", content=b"x" * 1000)
            assert (big.status_code, big.json()) == (200, {"received": 1000})
            too_big = await http.post("/v1/images", content=b"x" * 1001)
            assert too_big.status_code == 413
            assert too_big.json() == {"detail": "Request body exceeds 1000 bytes.", "code": "payload_too_large"}
            elsewhere = await http.post("/v1/x", content=b"x" * 101)
            assert (elsewhere.status_code, elsewhere.json()["detail"]) == (413, "Request body exceeds 100 bytes.")
            assert (await http.post("/v1/images/", content=b"x" * 101)).status_code == 413  # exact paths only

    asyncio.run(run())


def test_the_override_holds_while_the_body_streams_without_a_length() -> None:
    async def run() -> None:
        async with client() as http:
            streamed = await http.post("/v1/images", content=chunks(900))
            assert (streamed.status_code, streamed.json()) == (200, {"received": 900})
            refused = await http.post("/v1/images", content=chunks(1200))
            assert refused.status_code == 413
            assert refused.json()["detail"] == "Request body exceeds 1000 bytes."

    asyncio.run(run())
