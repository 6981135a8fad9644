"""Idempotency-Key: a client that repeats a submission (after a timeout, a lost answer) gets the
first job back instead of a second one.

The key is claimed in Redis before anything is published, atomically, with a fingerprint of the
request (route, task, payload, queue, priority), so concurrent repeats produce one job. The claim
is "in progress" until the first request accepted its job (``finish``); only then does a repeat
get the first answer (200, Idempotent-Replayed). A repeat that arrives while the first is still
in flight is 409 with Retry-After: its job may not exist yet, and may never exist if the first
request fails (then the claim is released, or its short lease ends if the API process died).
Keys are scoped per API key id and kept OFFLOAD_IDEMPOTENCY_TTL_SECONDS after the first answer.

Against the IETF Idempotency-Key draft: a reused key with another payload is 422, a repeat while
the first is in progress 409; the key is optional (no 400 without it), and a replayed answer is
the first one's body and Location with status 200 and Idempotent-Replayed: true rather than the
original 202, so a client can tell a replay from a fresh acceptance.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated

import redis
import redis.asyncio as aioredis
from fastapi import Depends, Header, HTTPException, Request, Response

from offload_api.errors import InvalidField
from offload_core.contract.api_keys import ANONYMOUS_PRINCIPAL
from offload_core.settings import get_settings
from offload_core.store.lua_scripts import lua

HEADER = "Idempotency-Key"
KEY_PREFIX = "offload:idempotency:"
# Answers a repeat carries, so a client can tell it from a fresh acceptance.
REPLAYED_HEADER = "Idempotent-Replayed"
_VALID_KEY = re.compile(r"[\x20-\x7e]{1,255}")  # printable ASCII

# How long an unfinished claim holds its key: far beyond any request's publish, short enough that
# a key whose request died with its API process frees itself.
IN_PROGRESS_LEASE_SECONDS = 60
# What a repeat sent while the first is in flight is told to wait.
RETRY_AFTER_SECONDS = 1

_CLAIM = lua("idempotency_claim", package=__package__)
_FINISH = lua("idempotency_finish", package=__package__)
_RELEASE = lua("idempotency_release", package=__package__)


def request_fingerprint(
    route: str,
    task: str,
    payload: Mapping[str, object],
    queue: str,
    priority: int,
    start: Mapping[str, object] | None = None,
) -> str:
    """A hash of what the request asks for, once validated, so equal requests match however they
    were spelled (key order, defaults left out). ``start`` is the start time as requested (the
    `run_at` or `delay_seconds` sent, not the time computed from it, so a retry matches)."""
    asked: dict[str, object] = {
        "route": route,
        "task": task,
        "payload": dict(payload),
        "queue": queue,
        "priority": priority,
    }
    if start:  # left out when absent: keys claimed before delayed jobs existed keep their fingerprint
        asked["start"] = dict(start)
    canonical = json.dumps(
        asked,
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class IdempotencyKey:
    key: str
    redis_key: str
    route: str  # the request's path; a key reused on another route is a different request
    ttl_seconds: int
    response: Response
    _claim: str = field(default="", init=False)  # what this request stored, to release only that

    def claim(self, client: redis.Redis, fingerprint: str, acceptance: str) -> str | None:
        """Claim the key for this request (in progress until ``finish``); if an earlier request
        finished with it, its acceptance (JSON), to answer again.

        A held key with another fingerprint is 422: the client reused a key for a new request.
        One still in progress is 409 with Retry-After."""
        claim = self._new_claim(fingerprint, acceptance, finished=False)
        lease = min(IN_PROGRESS_LEASE_SECONDS, self.ttl_seconds)
        earlier = client.register_script(_CLAIM)(keys=[self.redis_key], args=[claim, lease])
        return self._outcome(claim, earlier, fingerprint)

    async def claim_async(self, client: aioredis.Redis, fingerprint: str, acceptance: str) -> str | None:
        """``claim`` on the event loop."""
        claim = self._new_claim(fingerprint, acceptance, finished=False)
        lease = min(IN_PROGRESS_LEASE_SECONDS, self.ttl_seconds)
        earlier = await client.register_script(_CLAIM)(keys=[self.redis_key], args=[claim, lease])
        return self._outcome(claim, earlier, fingerprint)

    def finish(self, client: redis.Redis) -> None:
        """The request accepted its job: repeats get its answer from now on, for the TTL."""
        if self._claim:
            client.register_script(_FINISH)(keys=[self.redis_key], args=[*self._finished(), self.ttl_seconds])

    async def finish_async(self, client: aioredis.Redis) -> None:
        """``finish`` on the event loop."""
        if self._claim:
            await client.register_script(_FINISH)(keys=[self.redis_key], args=[*self._finished(), self.ttl_seconds])

    def _finished(self) -> tuple[str, str]:
        held = json.loads(self._claim)
        return self._claim, json.dumps({**held, "finished": True})

    def release(self, client: redis.Redis) -> None:
        """Give the key back after a failed publish, so the client's retry can succeed."""
        client.register_script(_RELEASE)(keys=[self.redis_key], args=[self._claim])

    async def release_async(self, client: aioredis.Redis) -> None:
        """``release`` on the event loop."""
        await client.register_script(_RELEASE)(keys=[self.redis_key], args=[self._claim])

    @staticmethod
    def _new_claim(fingerprint: str, acceptance: str, *, finished: bool) -> str:
        return json.dumps({"fingerprint": fingerprint, "accepted": acceptance, "finished": finished})

    def _outcome(self, claim: str, earlier: str | None, fingerprint: str) -> str | None:
        if earlier is None:
            self._claim = claim
            return None
        held = json.loads(earlier)
        if held["fingerprint"] != fingerprint:
            raise HTTPException(
                422,
                f"{HEADER} {self.key!r} was already used for a different request (route or body); "
                "send a new key for a new request.",
            )
        if not held.get("finished", True):  # claims written before this state existed are finished
            raise HTTPException(
                409,
                f"The first request with {HEADER} {self.key!r} is still in progress; "
                f"repeat it after {RETRY_AFTER_SECONDS} s to get its answer.",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        # The first job's acceptance again, as 200: nothing new was enqueued.
        self.response.status_code = 200
        self.response.headers[REPLAYED_HEADER] = "true"
        accepted: str = held["accepted"]
        return accepted


IdempotencyHeader = Annotated[
    str | None,
    Header(
        alias=HEADER,
        description="Any 1 to 255 printable ASCII characters (a UUID, say). A repeat with the same key and "
        "body answers 200 with the first job (409 with Retry-After while the first is still in progress); "
        "the same key with another body is 422.",
    ),
]


def idempotency_for(request: Request, response: Response, key: str | None) -> IdempotencyKey | None:
    """The request's Idempotency-Key, scoped to the API key that sent it; None without one."""
    if key is None:
        return None
    if not _VALID_KEY.fullmatch(key):
        raise InvalidField(f"header.{HEADER}", "must be 1 to 255 printable ASCII characters, e.g. a UUID")
    # Scoped per principal (the API key's id, which a rotation keeps), never the key itself.
    client = getattr(request.state, "principal", ANONYMOUS_PRINCIPAL).id
    digest = hashlib.sha256(key.encode()).hexdigest()
    return IdempotencyKey(
        key=key,
        redis_key=f"{KEY_PREFIX}{client}:{digest}",
        route=request.url.path,
        ttl_seconds=get_settings().IDEMPOTENCY_TTL_SECONDS,
        response=response,
    )


async def idempotency_key(request: Request, response: Response, key: IdempotencyHeader = None) -> IdempotencyKey | None:
    # async, and no sub-dependencies: a thread hop or a resolution step would cost every request.
    return idempotency_for(request, response, key)


IdempotencyDep = Annotated[IdempotencyKey | None, Depends(idempotency_key)]
