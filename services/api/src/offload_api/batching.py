"""Automatic pipelining of one Lua script's calls, as ioredis's `enableAutoPipelining` does.

A Redis round trip costs the API more CPU than the rest of a submit's own work (two system
calls and a wake-up of the event loop). Calls made while a batch is on the wire wait for the
next one, so under load many requests share a round trip, and a lone call goes out at once.
Each call stays its own EVALSHA, atomic on its own, with its own result or error.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import ConnectionError, NoScriptError


@dataclass
class _Call:
    keys: list[str]
    args: list[Any]
    result: asyncio.Future[Any] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class ScriptBatcher:
    """Runs ``script`` for every ``await batcher(keys, args)``, pipelining the calls that wait
    together: one batch on the wire at a time, at most ``max_batch`` calls in it."""

    def __init__(self, client: aioredis.Redis, script: str, *, max_batch: int = 128) -> None:
        self.client = client
        self.script = script
        self.sha = hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()  # Redis names scripts so
        self.max_batch = max_batch
        self._waiting: list[_Call] = []
        self._sender: asyncio.Task[None] | None = None

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        call = _Call(keys, args)
        self._waiting.append(call)
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_waiting())
        return await call.result

    async def _send_waiting(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
                await self._send(batch)
        finally:
            self._sender = None

    async def _send(self, batch: list[_Call], *, loaded: bool = False) -> None:
        try:
            results = await self._execute(batch)
        except asyncio.CancelledError:
            for call in batch:
                call.result.cancel()
            raise
        except Exception as exc:  # the connection failed: every call of the batch with it
            for call in batch:
                if not call.result.done():
                    call.result.set_exception(exc)
            return
        unknown_script = []
        for call, result in zip(batch, results, strict=True):
            if isinstance(result, NoScriptError) and not loaded:
                unknown_script.append(call)  # not run at all: safe to send again once loaded
            elif call.result.done():
                continue  # its caller went away; the call itself ran
            elif isinstance(result, Exception):
                call.result.set_exception(result)
            else:
                call.result.set_result(result)
        if unknown_script:
            # Redis restarted or its scripts were flushed since the last call.
            try:
                await self.client.script_load(self.script)
            except Exception as exc:
                for call in unknown_script:
                    if not call.result.done():
                        call.result.set_exception(exc)
                return
            await self._send(unknown_script, loaded=True)

    async def _execute(self, batch: list[_Call]) -> list[Any]:
        try:
            return await self._pipeline(batch).execute(raise_on_error=False)
        except ConnectionError:
            # Most often a pooled connection that Redis closed when it restarted: once more on a
            # new one, as Celery's publish retry did. At worst a call runs twice; for a job, a
            # second message with the same id, which the job store skips once the job has ended.
            return await self._pipeline(batch).execute(raise_on_error=False)

    def _pipeline(self, batch: list[_Call]) -> Pipeline:
        pipe = self.client.pipeline(transaction=False)
        for call in batch:
            pipe.evalsha(self.sha, len(call.keys), *call.keys, *call.args)
        return pipe
