"""Idempotency-Key: a client that repeats a submission (after a timeout, a lost answer) gets the
first job back instead of a second one.

The key is claimed in Redis before anything is published, atomically, with the job id and a
fingerprint of the request (route, task, payload, queue, priority), so concurrent repeats
produce one job. Keys are scoped per API key id and expire after OFFLOAD_IDEMPOTENCY_TTL_SECONDS.
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
from offload_core.api_keys import ANONYMOUS_PRINCIPAL
from offload_core.settings import get_settings

HEADER = "Idempotency-Key"
KEY_PREFIX = "offload:idempotency:"
# Answers a repeat carries, so a client can tell it from a fresh acceptance.
REPLAYED_HEADER = "Idempotent-Replayed"
_VALID_KEY = re.compile(r"[\x20-\x7e]{1,255}")  # printable ASCII

# KEYS[1] the idempotency key; ARGV claim, ttl. Returns the earlier claim, or nil once claimed.
_CLAIM = """
local earlier = redis.call('GET', KEYS[1])
if earlier then return earlier end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
"""

# KEYS[1] the idempotency key; ARGV our claim. Releases it only if it is still ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def request_fingerprint(route: str, task: str, payload: Mapping[str, object], queue: str, priority: int) -> str:
    """A hash of what the request asks for, once validated, so equal requests match however they
    were spelled (key order, defaults left out)."""
    canonical = json.dumps(
        {"route": route, "task": task, "payload": dict(payload), "queue": queue, "priority": priority},
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
        """Claim the key for this request; if an earlier request holds it, its acceptance (JSON).

        A held key with another fingerprint is a 409: the client reused a key for a new request."""
        claim = self._new_claim(fingerprint, acceptance)
        earlier = client.register_script(_CLAIM)(keys=[self.redis_key], args=[claim, self.ttl_seconds])
        return self._outcome(claim, earlier, fingerprint)

    async def claim_async(self, client: aioredis.Redis, fingerprint: str, acceptance: str) -> str | None:
        """``claim`` on the event loop."""
        claim = self._new_claim(fingerprint, acceptance)
        earlier = await client.register_script(_CLAIM)(keys=[self.redis_key], args=[claim, self.ttl_seconds])
        return self._outcome(claim, earlier, fingerprint)

    def release(self, client: redis.Redis) -> None:
        """Give the key back after a failed publish, so the client's retry can succeed."""
        client.register_script(_RELEASE)(keys=[self.redis_key], args=[self._claim])

    async def release_async(self, client: aioredis.Redis) -> None:
        """``release`` on the event loop."""
        await client.register_script(_RELEASE)(keys=[self.redis_key], args=[self._claim])

    @staticmethod
    def _new_claim(fingerprint: str, acceptance: str) -> str:
        return json.dumps({"fingerprint": fingerprint, "accepted": acceptance})

    def _outcome(self, claim: str, earlier: str | None, fingerprint: str) -> str | None:
        if earlier is None:
            self._claim = claim
            return None
        held = json.loads(earlier)
        if held["fingerprint"] != fingerprint:
            raise HTTPException(
                409,
                f"{HEADER} {self.key!r} was already used for a different request (route or body); "
                "send a new key for a new request.",
            )
        # The first job's acceptance again, as 200: nothing new was enqueued.
        self.response.status_code = 200
        self.response.headers[REPLAYED_HEADER] = "true"
        accepted: str = held["accepted"]
        return accepted


async def idempotency_key(
    request: Request,
    response: Response,
    key: Annotated[
        str | None,
        Header(
            alias=HEADER,
            description="Any 1 to 255 printable ASCII characters (a UUID, say). A repeat with the same key and "
            "body answers 200 with the first job; the same key with another body is 409.",
        ),
    ] = None,
) -> IdempotencyKey | None:
    # No sub-dependencies: each one costs every submit a resolution step.
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


IdempotencyDep = Annotated[IdempotencyKey | None, Depends(idempotency_key)]
