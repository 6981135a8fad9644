"""4. Priority latency: how long a `high` job waits to start while `default` holds a backlog.
A backlog of `default` echo jobs of 50 ms each is queued first (published as the API does),
then the workers start, then `high` echo jobs (sleep 0) are submitted through the API one at
a time, spaced out. Enqueue-to-start = the job record's started_at - created_at.

Ours: the dedicated notifier (`python -m offload_notifier`, queue `high`) beside the worker
(`python -m offload_worker`, queues default,low). Baseline in the same run: one shared
worker consuming high,default,low and no notifier. Both with the product's other settings
(prefork, 2 processes each, prefetch multiplier 1, acks late).

Parameters (full / --quick):
  --backlog       10000 / 1000   `default` jobs queued before the workers start
  --backlog-ms    50 / 50        run time of each backlog job
  --high          50 / 10        `high` jobs submitted through the API
  --spacing-ms    100 / 100      pause between two `high` submissions
  --concurrency   2 / 2          processes of each worker (and of the notifier)
  --timeout       60 / 30        longest wait for the `high` jobs to finish, seconds

Ratio: dedicated / shared p99 start latency (lower is better; the issue's target for the
dedicated p99 is under 25 ms).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import httpx

from bench.harness import (
    Headline,
    OffloadPublisher,
    Stack,
    entrypoint,
    machine_facts,
    new_parser,
    note,
    parse_args,
    percentile,
    pick,
    print_table,
    queue_depth,
    ratio,
    wait_jobs_finished,
    write_result,
)

NAME = "priority"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = new_parser(NAME, __doc__)
    parser.add_argument("--backlog", type=int)
    parser.add_argument("--backlog-ms", type=int)
    parser.add_argument("--high", type=int)
    parser.add_argument("--spacing-ms", type=int)
    parser.add_argument("--concurrency", type=int)
    parser.add_argument("--timeout", type=float)
    return parse_args(parser, argv)


def scenario(stack: Stack, api_url: str, dedicated: bool, params: dict[str, Any]) -> dict[str, Any]:
    publisher = OffloadPublisher(stack.redis_url, stack.api_key)
    backlog_kwargs: dict[str, object] = {"message": "", "sleep_ms": params["backlog_ms"], "fail_times": 0}
    started = time.perf_counter()
    publisher.publish(params["backlog"], backlog_kwargs, queue="default")
    publisher.close()
    note(f"backlog of {params['backlog']:,} queued in {time.perf_counter() - started:.1f}s")
    if dedicated:
        stack.start_worker("notifier", module="offload_notifier", concurrency=params["concurrency"])
        stack.start_worker("worker", queues="default,low", concurrency=params["concurrency"])
    else:
        stack.start_worker("shared-worker", queues="high,default,low", concurrency=params["concurrency"])
    time.sleep(1.0)  # the worker is busy with (and has prefetched from) the backlog
    ids: list[str] = []
    body = {"message": "", "sleep_ms": 0, "queue": "high"}
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {stack.api_key}"}, timeout=30) as client:
        for _ in range(params["high"]):
            response = client.post("/v1/jobs/echo", json=body)
            response.raise_for_status()
            ids.append(response.json()["id"])
            time.sleep(params["spacing_ms"] / 1000)
    rows = wait_jobs_finished(stack.redis(), ids, params["timeout_s"])
    left = queue_depth(stack.redis(), "default")
    for proc in list(stack.procs):
        if proc.name != "api":
            stack.stop(proc)
    stack.flush()
    waits = [(r["started_at"] - r["created_at"]) * 1000 for r in rows]
    return {
        "high_jobs": len(ids),
        "start_p50_ms": percentile(waits, 50),
        "start_p99_ms": percentile(waits, 99),
        "start_max_ms": max(waits),
        "backlog_left": left,
        "waits_ms": [round(w, 2) for w in waits],
    }


def main(argv: list[str] | None = None) -> Headline:
    args = parse(argv)
    params: dict[str, Any] = {
        "backlog": pick(args, "backlog", 10_000, 1000),
        "backlog_ms": pick(args, "backlog_ms", 50, 50),
        "high": pick(args, "high", 50, 10),
        "spacing_ms": pick(args, "spacing_ms", 100, 100),
        "concurrency": pick(args, "concurrency", 2, 2),
        "timeout_s": pick(args, "timeout", 60.0, 30.0),
        "log_level": args.log_level,
    }
    runs: dict[str, dict[str, Any]] = {}
    with Stack.from_args(NAME, args) as stack:
        stack.start_redis()
        api = stack.start_api()
        for name, dedicated in (("shared", False), ("dedicated", True)):
            runs[name] = scenario(stack, api.extra["url"], dedicated, params)
            note(f"{name}: p99 {runs[name]['start_p99_ms']:.1f} ms, backlog left {runs[name]['backlog_left']:,}")
            if runs[name]["backlog_left"] == 0:
                note(f"{name}: the backlog ran out before the last high job: raise --backlog")
        facts = machine_facts(stack.redis_url)

    ours, base = runs["dedicated"], runs["shared"]
    r = ratio(ours["start_p99_ms"], base["start_p99_ms"])
    keys = ("start_p50_ms", "start_p99_ms", "start_max_ms")
    print_table(
        f"Priority latency: {params['high']} high jobs every {params['spacing_ms']} ms behind "
        f"{params['backlog']:,} default jobs of {params['backlog_ms']} ms",
        ["enqueue-to-start", "p50 ms", "p99 ms", "max ms", "backlog left"],
        [
            ["one shared worker (high,default,low)", *(base[k] for k in keys), base["backlog_left"]],
            ["dedicated notifier (high)", *(ours[k] for k in keys), ours["backlog_left"]],
            ["ratio dedicated / shared", *(ratio(ours[k], base[k]) for k in keys), ""],
        ],
    )
    headline = Headline(
        NAME, "high p99 start ms", ours["start_p99_ms"], base["start_p99_ms"], "shared worker", r, "lower"
    )
    write_result(NAME, args, params, runs, headline, facts)
    return headline


if __name__ == "__main__":
    entrypoint(main)
