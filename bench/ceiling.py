"""5. The ceiling: what a Redis list queue can move on this machine from Python (redis-py),
with no framework at all. Messages are the size of a real Offload echo message (one is
published the API's way and measured first).

  push, pipelined   LPUSH in pipelines of --batch messages, one producer
  push, one by one  LPUSH one round trip per message (what a request-per-job API pays)
  pop               one consumer process, BRPOP one message per round trip (what a worker pays
                    per message it takes; popping in batches would not be a fair comparison)

Parameters (full / --quick):
  --messages      200000 / 20000   messages pushed pipelined, then popped
  --single        20000 / 2000     messages pushed one by one
  --batch         100 / 100        pipeline size
  --drain-jobs-per-s               our drain throughput to put against the ceiling
                                   (bench.run_all passes the one it just measured)

Ratio: our drain jobs/s as a fraction of the pop ceiling, when a drain figure is at hand.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

import redis

from bench.harness import (
    Headline,
    OffloadPublisher,
    Stack,
    clean_env,
    entrypoint,
    machine_facts,
    new_parser,
    note,
    parse_args,
    pick,
    print_table,
    ratio,
    write_result,
)
from offload_core.contract.topology import priority_lists

NAME = "ceiling"
KEY = "bench:ceiling"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = new_parser(NAME, __doc__)
    parser.add_argument("--messages", type=int)
    parser.add_argument("--single", type=int)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--drain-jobs-per-s", type=float)
    parser.add_argument("--consume", nargs=2, metavar=("URL", "COUNT"), help=argparse.SUPPRESS)
    return parse_args(parser, argv)


def consume(url: str, count: int) -> None:
    """The consumer process: BRPOP `count` messages, print the rate as JSON."""
    client = redis.Redis.from_url(url, socket_timeout=30)
    got = 0
    first = last = 0.0
    while got < count:
        item = client.brpop([KEY], timeout=5)
        if item is None:
            break
        last = time.perf_counter()
        if got == 0:
            first = last
        got += 1
    print(json.dumps({"popped": got, "seconds": last - first}))


def real_message_size(stack: Stack) -> int:
    publisher = OffloadPublisher(stack.redis_url, stack.api_key)
    publisher.publish(1, {"message": "", "sleep_ms": 0, "fail_times": 0})
    publisher.close()
    client = stack.redis(decode=False)
    sizes = [len(raw) for name in priority_lists("default") if isinstance(raw := client.lindex(name, 0), bytes)]
    stack.flush()
    if not sizes:
        raise RuntimeError("the published echo message is not in any `default` list")
    return sizes[0]


def main(argv: list[str] | None = None) -> Headline | None:
    args = parse(argv)
    if args.consume:
        consume(args.consume[0], int(args.consume[1]))
        return None
    params: dict[str, Any] = {
        "messages": pick(args, "messages", 200_000, 20_000),
        "single": pick(args, "single", 20_000, 2000),
        "batch": pick(args, "batch", 100, 100),
    }
    with Stack.from_args(NAME, args) as stack:
        stack.start_redis()
        size = real_message_size(stack)
        params["message_bytes"] = size
        payload = b"x" * size
        client = stack.redis(decode=False)

        started = time.perf_counter()
        for _ in range(params["single"]):
            client.lpush(KEY, payload)
        single_rate = params["single"] / (time.perf_counter() - started)
        client.delete(KEY)

        started = time.perf_counter()
        left = params["messages"]
        while left > 0:
            pipe = client.pipeline(transaction=False)
            for _ in range(min(params["batch"], left)):
                pipe.lpush(KEY, payload)
            pipe.execute()
            left -= params["batch"]
        pipelined_rate = params["messages"] / (time.perf_counter() - started)

        argv_consumer = [sys.executable, "-m", f"bench.{NAME}", "--consume", stack.redis_url, str(params["messages"])]
        out = subprocess.run(
            argv_consumer, env=clean_env({}), capture_output=True, text=True, timeout=600, check=True
        ).stdout
        popped = json.loads(out.strip().splitlines()[-1])
        pop_rate = popped["popped"] / popped["seconds"] if popped["seconds"] else float("nan")
        stack.flush()
        facts = machine_facts(stack.redis_url)

    drain = args.drain_jobs_per_s
    rows: list[list[object]] = [
        ["push, pipelined", pipelined_rate],
        ["push, one by one", single_rate],
        ["pop, one consumer (BRPOP)", pop_rate],
    ]
    r = float("nan")
    if drain:
        r = ratio(drain, pop_rate)
        rows.append(["offload drain (from bench.drain)", drain])
        rows.append(["offload drain / pop ceiling", r])
    else:
        note("no drain figure given (--drain-jobs-per-s, or run bench.run_all): the ceiling alone")
    print_table(f"Redis list ceiling ({size:,}-byte messages, redis-py)", ["", "messages/s"], rows)
    results = {"push_pipelined_per_s": pipelined_rate, "push_single_per_s": single_rate, "pop_per_s": pop_rate}
    if drain:
        results["offload_drain_per_s"] = drain
    headline = Headline(NAME, "drain / BRPOP ceiling", drain or float("nan"), pop_rate, "redis-py BRPOP", r, "higher")
    write_result(NAME, args, params, results, headline, facts)
    return headline


if __name__ == "__main__":
    entrypoint(main)
