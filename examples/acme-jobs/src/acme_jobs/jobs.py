"""The declarations of Acme's jobs: the module the ``offload.jobs`` entry point names.

The API imports this module to learn the jobs (their names, queues and request models) and never
runs a handler, so it stays light: ``acme.primes`` is small enough to live here, while
``acme.fetch`` names its handler by reference and only workers import ``acme_jobs.fetch``.
"""

from __future__ import annotations

import math

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field

from offload_core.sdk import JobContext, JobType, declare_job, job

# Both jobs run on a queue of their own, so a worker set with the plugin installed (and only
# that one) consumes them; the deployment lists the queue in OFFLOAD_QUEUES.
ACME_QUEUE = "acme"


class PrimesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"limit": 1_000_000, "steps": 10}]})

    limit: int = Field(description="Count the primes below this number.", ge=2, le=200_000_000)
    steps: int = Field(10, description="Progress is reported after each of this many segments.", ge=1, le=1000)


class PrimesResult(BaseModel):
    limit: int
    count: int = Field(description="How many primes are below the limit.")
    largest: int | None = Field(description="The largest of them (none when the limit is 2).")


@job("acme.primes", queue=ACME_QUEUE, request=PrimesRequest, result=PrimesResult, max_retries=2)
def count_primes(ctx: JobContext, req: PrimesRequest) -> PrimesResult:
    """Counts the primes below `limit` with a segmented sieve, reporting progress after each of
    `steps` segments; a cancelled job stops at the next segment."""
    base = _sieve(math.isqrt(req.limit - 1) + 1)
    base_primes = [n for n, is_prime in enumerate(base) if is_prime]
    segment = -(-req.limit // req.steps)  # ceiling: `steps` segments cover [0, limit)
    count, largest = 0, None
    for low in range(0, req.limit, segment):
        ctx.check_cancelled()
        high = min(low + segment, req.limit)
        is_prime = _segment(low, high, base_primes)
        count += is_prime.count(1)
        if (last := is_prime.rfind(1)) >= 0:
            largest = low + last
        ctx.progress(high * 100 // req.limit, f"{high:,} of {req.limit:,} checked, {count:,} primes")
    return PrimesResult(limit=req.limit, count=count, largest=largest)


def _sieve(limit: int) -> bytearray:
    """is_prime[n] for 0 <= n < limit."""
    is_prime = bytearray([1]) * limit
    is_prime[: min(2, limit)] = bytes(min(2, limit))
    for n in range(2, math.isqrt(max(limit - 1, 0)) + 1):
        if is_prime[n]:
            is_prime[n * n :: n] = bytes(len(range(n * n, limit, n)))
    return is_prime


def _segment(low: int, high: int, base_primes: list[int]) -> bytearray:
    """is_prime[n - low] for low <= n < high, given every prime up to sqrt(high)."""
    is_prime = bytearray([1]) * (high - low)
    for n in range(low, min(2, high)):
        is_prime[n - low] = 0
    for p in base_primes:
        if p * p >= high:
            break
        first = max(p * p, -(-low // p) * p)
        is_prime[first - low :: p] = bytes(len(range(first, high, p)))
    return is_prime


class FetchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"url": "https://example.com/"}]})

    url: AnyHttpUrl = Field(description="The http(s) URL to fetch. Private addresses are refused.")
    max_bytes: int = Field(
        10 * 1024 * 1024, description="A longer body fails the job rather than being read.", ge=1, le=1024**3
    )


class FetchResult(BaseModel):
    url: str
    status: int = Field(description="The HTTP status of the response (redirects are not followed).")
    bytes: int = Field(description="Length of the body.")
    sha256: str = Field(description="SHA-256 of the body, hex.")
    content_type: str | None


fetch: JobType[FetchRequest, FetchResult] = declare_job(
    "acme.fetch",
    request=FetchRequest,
    result=FetchResult,
    queue=ACME_QUEUE,
    max_retries=3,
    description="Fetches `url` and returns its status, length and SHA-256; a 5xx answer is retried.",
    # Only workers import the handler's module (and whatever it imports).
    handler="acme_jobs.fetch:fetch_url",
)
