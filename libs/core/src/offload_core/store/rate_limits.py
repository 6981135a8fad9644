"""Rate and concurrency limits kept in Redis, so that they hold across every API replica and every
worker process: one GCRA script (requests per window of an API key, job starts per second of a
job type) and a semaphore of leased slots (jobs of a type running at once).

GCRA (the generic cell rate algorithm) keeps one number per limit, the theoretical arrival time
(TAT), and decides in one round trip with Redis's own clock, so the clocks of the API and worker
hosts play no part. A caller that may wait (a worker) reserves the next free start and sleeps
exactly until it; one that may not (the API) is refused and told when to come back.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import redis

from offload_core.contract.api_keys import RequestRate
from offload_core.store.lua_scripts import lua

API_KEY_PREFIX = "offload:rate-limit:key:"
JOB_STARTS_PREFIX = "offload:rate-limit:job-starts:"
JOB_SLOTS_PREFIX = "offload:rate-limit:job-slots:"
JOB_WAKE_PREFIX = "offload:rate-limit:job-wake:"

# ARGV: gcra_args(); KEYS: the limit's key. Replies [admitted, wait_us, reset_us, remaining].
GCRA = lua("rate_gcra")
_SLOT_ACQUIRE = lua("slot_acquire")
_SLOT_RELEASE = lua("slot_release")
_MICROS = 1_000_000


@dataclass(frozen=True)
class RateDecision:
    """What the GCRA script decided: admitted (now or after ``wait_seconds``), or refused for
    ``wait_seconds``; ``reset_seconds`` until the whole burst is available again."""

    admitted: bool
    wait_seconds: float
    reset_seconds: float
    remaining: int

    @classmethod
    def from_reply(cls, reply: list[Any]) -> RateDecision:
        admitted, wait_us, reset_us, remaining = (int(value) for value in reply)
        return cls(bool(admitted), wait_us / _MICROS, reset_us / _MICROS, remaining)


def gcra_args(rate: RequestRate, *, burst: bool, longest_wait: float = 0.0) -> list[int]:
    """ARGV of the GCRA script: the emission interval, the burst tolerance (the whole quota at
    once when ``burst``, else none: then no window of ``rate.window_seconds`` ever holds more
    than ``rate.requests``) and the longest wait a caller accepts, in microseconds."""
    interval = rate.window_seconds * _MICROS / rate.requests
    tolerance = rate.window_seconds * _MICROS - interval if burst else 0
    return [math.ceil(interval), math.floor(tolerance), math.floor(longest_wait * _MICROS)]


class JobTypeLimiter:
    """The limits of one job type, held by the worker processes running it: a start reserved at
    most ``rate_limit`` times a second, and at most ``concurrency`` slots held at once, each with a
    lease of ``lease_seconds`` (longer than the job may run) so that a killed worker's slot frees."""

    def __init__(
        self,
        client: redis.Redis,
        job_type: str,
        *,
        rate_limit: float | None,
        concurrency: int | None,
        lease_seconds: float,
        block_seconds: float,
    ) -> None:
        self.client = client
        self.job_type = job_type
        self.rate_limit = rate_limit
        self.concurrency = concurrency
        self.lease_ms = math.ceil(lease_seconds * 1000)
        # One BLPOP blocks at most this long, below the client's socket timeout.
        self.block_seconds = block_seconds
        self.slots_key = JOB_SLOTS_PREFIX + job_type
        self.wake_key = JOB_WAKE_PREFIX + job_type
        self._gcra = client.register_script(GCRA)
        self._acquire = client.register_script(_SLOT_ACQUIRE)
        self._release = client.register_script(_SLOT_RELEASE)

    def acquire_slot(self, job_id: str, deadline: float) -> bool:
        """Hold one of the type's running slots for ``job_id``, blocking (no polling) until one
        frees or ``deadline`` (time.monotonic()) passes; False if it passed."""
        assert self.concurrency is not None
        args: list[str | int] = [job_id, self.concurrency, self.lease_ms]
        while True:
            held, lease_ends_in_ms = self._acquire(keys=[self.slots_key], args=args)
            if held:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            # Woken by a release, or at the latest when the first lease ends (a killed holder).
            block = min(left, self.block_seconds, max(0.001, int(lease_ends_in_ms) / 1000))
            self.client.blpop([self.wake_key], timeout=max(0.01, block))

    def release_slot(self, job_id: str) -> None:
        assert self.concurrency is not None
        self._release(keys=[self.slots_key, self.wake_key], args=[job_id, self.concurrency, self.lease_ms])

    def reserve_start(self, longest_wait: float) -> RateDecision:
        """Reserve the type's next start: admitted with the seconds to sleep until it, or refused
        (nothing reserved) when it is further away than ``longest_wait``. No burst: no second holds
        more than ``rate_limit`` reserved starts."""
        assert self.rate_limit is not None
        interval = math.ceil(_MICROS / self.rate_limit)
        args = [interval, 0, math.floor(longest_wait * _MICROS)]
        return RateDecision.from_reply(self._gcra(keys=[JOB_STARTS_PREFIX + self.job_type], args=args))
