"""3. End-to-end: jobs submitted through the API while one worker process set drains them.
A closed-loop client (fixed concurrency, a bounded number of jobs) submits no-op echo jobs
through `offload_client.AsyncOffload`, as a user's service would (an Idempotency-Key on every
job); each job's submit-to-finish time runs from the client's clock just before
its request to its record's finished_at (same machine, same clock).

Baseline in the same run: the hand-written equivalent, a FastAPI endpoint publishing with
stock Celery (bench/bare_api.py `POST /stock/jobs/echo`, same uvicorn settings) and a stock
Celery worker (defaults, prefork, 2 processes, result backend on); finish = the result's
date_done.

Parameters (full / --quick):
  --jobs          2000 / 200   jobs submitted per run
  --clients       8 / 8        concurrent submitting connections
  --warmup-jobs   50 / 16      submitted and finished before the measured jobs, not counted
  --concurrency   2 / 2        worker processes, ours and stock
  --timeout       300 / 60     longest wait for all jobs to finish, seconds

Ratio: ours / stock end-to-end jobs per second (first submit to last finish); latencies
are printed for both (lower is better).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from bench.harness import (
    Headline,
    Stack,
    entrypoint,
    machine_facts,
    new_parser,
    note,
    parse_args,
    percentile,
    pick,
    print_table,
    ratio,
    wait_jobs_finished,
    wait_stock_done,
    write_result,
)
from offload_client import AsyncOffload, OffloadError

NAME = "e2e"
BODY = {"message": "", "sleep_ms": 0, "fail_times": 0}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = new_parser(NAME, __doc__)
    parser.add_argument("--jobs", type=int)
    parser.add_argument("--clients", type=int)
    parser.add_argument("--warmup-jobs", type=int)
    parser.add_argument("--concurrency", type=int)
    parser.add_argument("--timeout", type=float)
    return parse_args(parser, argv)


Send = Callable[[], Awaitable[str]]  # submits one job and returns its id; raises when refused


async def closed_loop(send: Send, jobs: int, clients: int, timeout: float) -> tuple[list[tuple[str, float]], int]:
    """(job id, submit time) of every accepted job, and the number of refused or failed requests."""
    accepted: list[tuple[str, float]] = []
    errors = 0
    remaining = jobs
    deadline = time.monotonic() + timeout

    async def loop() -> None:
        nonlocal remaining, errors
        while remaining > 0 and time.monotonic() < deadline:
            remaining -= 1
            submitted = time.time()
            try:
                accepted.append((await send(), submitted))
            except (httpx.HTTPError, OffloadError):
                errors += 1

    await asyncio.gather(*(loop() for _ in range(clients)))
    return accepted, errors


def submit_with_client(
    api_url: str, key: str, jobs: int, clients: int, timeout: float
) -> tuple[list[tuple[str, float]], int]:
    """Ours, as a user's service submits: `AsyncOffload.submit`, which sends an Idempotency-Key
    with every job. Retries off, so a refused request counts as an error as on the stock side."""

    async def run() -> tuple[list[tuple[str, float]], int]:
        async with AsyncOffload(api_url, key, timeout=30, retries=0) as offload:

            async def send() -> str:
                return (await offload.submit("offload.echo", BODY)).id

            return await closed_loop(send, jobs, clients, timeout)

    return asyncio.run(run())


def submit_plain(url: str, jobs: int, clients: int, timeout: float) -> tuple[list[tuple[str, float]], int]:
    """The stock side: a plain JSON POST to the hand-written endpoint."""

    async def run() -> tuple[list[tuple[str, float]], int]:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:

            async def send() -> str:
                response = await client.post(url, json=BODY)
                response.raise_for_status()
                return str(response.json()["id"])

            return await closed_loop(send, jobs, clients, timeout)

    return asyncio.run(run())


def summarise(submitted: list[tuple[str, float]], finished: list[float], submit_seconds: float) -> dict[str, Any]:
    latencies = [f - s for (_, s), f in zip(submitted, finished, strict=True)]
    first_submit = min(s for _, s in submitted)
    return {
        "jobs": len(submitted),
        "submit_per_s": len(submitted) / submit_seconds,
        "jobs_per_s": len(submitted) / (max(finished) - first_submit),
        "latency_p50_ms": percentile(latencies, 50) * 1000,
        "latency_p99_ms": percentile(latencies, 99) * 1000,
        "latency_max_ms": max(latencies) * 1000,
    }


def run_offload(stack: Stack, params: dict[str, Any]) -> dict[str, Any]:
    api = stack.start_api()
    worker = stack.start_worker("worker", concurrency=params["concurrency"])
    url, key = api.extra["url"], stack.api_key
    warm, _ = submit_with_client(url, key, params["warmup_jobs"], params["clients"], params["timeout_s"])
    wait_jobs_finished(stack.redis(), [i for i, _ in warm], params["timeout_s"])
    started = time.perf_counter()
    submitted, errors = submit_with_client(url, key, params["jobs"], params["clients"], params["timeout_s"])
    submit_seconds = time.perf_counter() - started
    rows = wait_jobs_finished(stack.redis(), [i for i, _ in submitted], params["timeout_s"])
    stack.stop(worker)
    stack.stop(api)
    result = summarise(submitted, [r["finished_at"] for r in rows], submit_seconds)
    result["errors"] = errors
    result["not_succeeded"] = sum(1 for r in rows if r["status"] != "succeeded")
    return result


def run_stock(stack: Stack, params: dict[str, Any]) -> dict[str, Any]:
    api = stack.start_bare_api()
    worker = stack.start_stock_worker(concurrency=params["concurrency"])
    url = f"{api.extra['url']}/stock/jobs/echo"
    warm, _ = submit_plain(url, params["warmup_jobs"], params["clients"], params["timeout_s"])
    wait_stock_done(stack.redis(), [i for i, _ in warm], params["timeout_s"])
    started = time.perf_counter()
    submitted, errors = submit_plain(url, params["jobs"], params["clients"], params["timeout_s"])
    submit_seconds = time.perf_counter() - started
    done = wait_stock_done(stack.redis(), [i for i, _ in submitted], params["timeout_s"])
    stack.stop(worker)
    stack.stop(api)
    result = summarise(submitted, done, submit_seconds)
    result["errors"] = errors
    return result


def main(argv: list[str] | None = None) -> Headline:
    args = parse(argv)
    params: dict[str, Any] = {
        "jobs": pick(args, "jobs", 2000, 200),
        "clients": pick(args, "clients", 8, 8),
        "warmup_jobs": pick(args, "warmup_jobs", 50, 16),
        "concurrency": pick(args, "concurrency", 2, 2),
        "timeout_s": pick(args, "timeout", 300.0, 60.0),
        "log_level": args.log_level,
        "body": BODY,
    }
    runs: dict[str, dict[str, Any]] = {}
    with Stack.from_args(NAME, args) as stack:
        stack.start_redis()
        for name, run in (("stock", run_stock), ("offload", run_offload)):
            runs[name] = run(stack, params)
            note(f"{name}: {runs[name]['jobs_per_s']:,.0f} jobs/s, {runs[name]['errors']} errors")
            stack.flush()
        facts = machine_facts(stack.redis_url)

    ours, stock = runs["offload"], runs["stock"]
    r = ratio(ours["jobs_per_s"], stock["jobs_per_s"])
    keys = ("jobs_per_s", "submit_per_s", "latency_p50_ms", "latency_p99_ms")
    print_table(
        f"End-to-end ({params['jobs']:,} no-op jobs, {params['clients']} clients, "
        f"{params['concurrency']} worker processes)",
        ["", "jobs/s", "submit/s", "p50 ms", "p99 ms"],
        [
            ["FastAPI + stock Celery", *(stock[k] for k in keys)],
            ["offload API + worker", *(ours[k] for k in keys)],
            ["ratio offload / stock", *(ratio(ours[k], stock[k]) for k in keys)],
        ],
    )
    headline = Headline(
        NAME, "end-to-end jobs/s", ours["jobs_per_s"], stock["jobs_per_s"], "FastAPI+stock Celery", r, "higher"
    )
    write_result(NAME, args, params, runs, headline, facts)
    return headline


if __name__ == "__main__":
    entrypoint(main)
