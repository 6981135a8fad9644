"""Requests per window of each API key on /v1, checked by ApiKeyAuth once the key is known and
before anything reads the body, in one Redis round trip (offload_core.store.rate_limits).

Answers carry the IETF httpapi draft's fields (draft-ietf-httpapi-ratelimit-headers, structured
fields): ``RateLimit-Policy: "default";q=60000;w=60`` on every /v1 answer, ``RateLimit:
"default";r=<left now>;t=<seconds until the whole quota is back>``, and on 429 ``Retry-After``
(seconds until the next request is allowed). The policy is "default" for a key under
OFFLOAD_API_RATE_LIMIT, "key" for one with a limit of its own (OFFLOAD_API_KEY_RATE_LIMITS).

When Redis does not answer, requests go through unchecked (fail open) and are counted: the
limit protects the service's capacity, and without Redis every route that needs it answers 503
on its own anyway; refusing the rest (health of a job, cached answers, compute) would turn a
Redis outage into a total one. After a failure the check is skipped for a second, so that an
outage does not add a connect timeout to every request.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping

import redis
import redis.asyncio as aioredis

from offload_api import metrics
from offload_api.batching import ScriptBatcher
from offload_core.contract.api_keys import RequestRate
from offload_core.settings import Settings
from offload_core.store.rate_limits import API_KEY_PREFIX, GCRA, RateDecision, gcra_args

logger = logging.getLogger(__name__)

DEFAULT_POLICY = "default"
KEY_POLICY = "key"
_SKIP_AFTER_FAILURE_SECONDS = 1.0
Headers = list[tuple[bytes, bytes]]


class Verdict:
    """A request's standing against its key's limit, and the header fields that say so."""

    def __init__(self, policy: str, rate: RequestRate, decision: RateDecision) -> None:
        self.allowed = decision.admitted
        self.retry_after = max(1, math.ceil(decision.wait_seconds))
        self.headers: Headers = [
            (b"ratelimit-policy", f'"{policy}";q={rate.requests};w={rate.window_seconds}'.encode()),
            (b"ratelimit", f'"{policy}";r={decision.remaining};t={math.ceil(decision.reset_seconds)}'.encode()),
        ]
        if not self.allowed:
            self.headers.append((b"retry-after", str(self.retry_after).encode()))


class RequestLimiter:
    """The rate of each key id: its own (OFFLOAD_API_KEY_RATE_LIMITS) or the default
    (OFFLOAD_API_RATE_LIMIT); None for no limit."""

    def __init__(self, default: RequestRate | None, per_key: Mapping[str, RequestRate | None]) -> None:
        self.default = default
        self.per_key = dict(per_key)
        self._gcra: ScriptBatcher | None = None
        self._skip_until = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestLimiter:
        return cls(settings.api_rate_limit, settings.api_key_rate_limits())

    def start(self, client: aioredis.Redis) -> None:
        """Use the API's event-loop client (made in the app's lifespan). Concurrent requests'
        checks share round trips, as submits do (offload_api.batching)."""
        self._gcra = ScriptBatcher(client, GCRA)

    def policy(self, key_id: str) -> tuple[str, RequestRate] | None:
        if key_id in self.per_key:
            own = self.per_key[key_id]
            return None if own is None else (KEY_POLICY, own)
        return None if self.default is None else (DEFAULT_POLICY, self.default)

    async def check(self, key_id: str) -> Verdict | None:
        """The request's verdict; None when the key has no limit or Redis did not answer."""
        policy = self.policy(key_id)
        if policy is None or self._gcra is None:
            return None
        if time.monotonic() < self._skip_until:
            metrics.REQUESTS_UNLIMITED.inc()
            return None
        name, rate = policy
        try:
            # Bursts of the whole quota allowed.
            reply = await self._gcra([API_KEY_PREFIX + key_id], gcra_args(rate, burst=True))
        except redis.RedisError as exc:
            self._skip_until = time.monotonic() + _SKIP_AFTER_FAILURE_SECONDS
            metrics.REQUESTS_UNLIMITED.inc()
            logger.warning("rate limit of key %s not checked, the request goes through: Redis: %s", key_id, exc)
            return None
        verdict = Verdict(name, rate, RateDecision.from_reply(reply))
        if not verdict.allowed:
            metrics.REQUESTS_THROTTLED.labels(key_id).inc()
        return verdict
