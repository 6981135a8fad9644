"""2. Drain throughput: N no-op echo jobs are queued first (each with its job record, in the
API's own submit script: bench.harness.OffloadPublisher), then one worker process set
(`python -m offload_worker`, 2 prefork processes) drains them.

Baseline in the same run: stock Celery (bench/stock_celery.py: default settings, prefork,
2 processes, result backend on) draining N pre-queued no-op tasks on the same Redis, which is
flushed between runs.

Both rates are counted the same way, from the finish times each side records (the job
records' finished_at; the results' date_done): (N - 1) / (last finish - first finish), so
worker start-up is not counted. Ours also reports first start to last finish.

Parameters (full / --quick):
  --jobs          5000 / 500   jobs (tasks) per run
  --concurrency   2 / 2        worker processes, ours and stock
  --rounds        1 / 1        stock and ours alternate; the median counts
  --timeout       300 / 60     longest wait for one drain, seconds

Ratio: ours / stock jobs per second (the issue's target: at least 2).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from bench.harness import (
    Headline,
    OffloadPublisher,
    Stack,
    entrypoint,
    machine_facts,
    new_parser,
    note,
    parse_args,
    pick,
    print_table,
    ratio,
    wait_jobs_finished,
    wait_stock_done,
    write_result,
)
from bench.stock_celery import NOOP, make_app

NAME = "drain"
NOOP_KWARGS: dict[str, object] = {"message": "", "sleep_ms": 0, "fail_times": 0}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = new_parser(NAME, __doc__)
    parser.add_argument("--jobs", type=int)
    parser.add_argument("--concurrency", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--timeout", type=float)
    return parse_args(parser, argv)


def drain_offload(stack: Stack, jobs: int, concurrency: int, timeout: float) -> dict[str, Any]:
    publisher = OffloadPublisher(stack.redis_url, stack.api_key)
    started = time.perf_counter()
    ids = publisher.publish(jobs, NOOP_KWARGS)
    publish_s = time.perf_counter() - started
    publisher.close()
    worker = stack.start_worker("worker", concurrency=concurrency)
    rows = wait_jobs_finished(stack.redis(), ids, timeout)
    stack.stop(worker)
    finished = sorted(r["finished_at"] for r in rows)
    first_start = min(r["started_at"] for r in rows)
    failed = sum(1 for r in rows if r["status"] != "succeeded")
    return {
        "jobs": jobs,
        "publish_per_s": jobs / publish_s,
        "jobs_per_s": (jobs - 1) / (finished[-1] - finished[0]),
        "jobs_per_s_from_first_start": jobs / (finished[-1] - first_start),
        "seconds": finished[-1] - finished[0],
        "not_succeeded": failed,
    }


def drain_stock(stack: Stack, jobs: int, concurrency: int, timeout: float) -> dict[str, Any]:
    stock = make_app(stack.redis_url)
    started = time.perf_counter()
    ids = [str(stock.send_task(NOOP).id) for _ in range(jobs)]
    publish_s = time.perf_counter() - started
    worker = stack.start_stock_worker(concurrency=concurrency)
    done = sorted(wait_stock_done(stack.redis(), ids, timeout))
    stack.stop(worker)
    return {
        "jobs": jobs,
        "publish_per_s": jobs / publish_s,
        "jobs_per_s": (jobs - 1) / (done[-1] - done[0]),
        "seconds": done[-1] - done[0],
    }


def main(argv: list[str] | None = None) -> Headline:
    args = parse(argv)
    params: dict[str, Any] = {
        "jobs": pick(args, "jobs", 5000, 500),
        "concurrency": pick(args, "concurrency", 2, 2),
        "rounds": pick(args, "rounds", 1, 1),
        "timeout_s": pick(args, "timeout", 300.0, 60.0),
        "log_level": args.log_level,
        "task_kwargs": NOOP_KWARGS,
    }
    runs: dict[str, list[dict[str, Any]]] = {"stock": [], "offload": []}
    with Stack.from_args(NAME, args) as stack:
        stack.start_redis()
        for round_no in range(params["rounds"]):
            for name, drain in (("stock", drain_stock), ("offload", drain_offload)):
                result = drain(stack, params["jobs"], params["concurrency"], params["timeout_s"])
                runs[name].append(result)
                note(f"round {round_no + 1} {name}: {result['jobs_per_s']:,.0f} jobs/s")
                stack.flush()
        facts = machine_facts(stack.redis_url)

    def med(name: str, key: str) -> float:
        return float(statistics.median(r[key] for r in runs[name]))

    ours, stock = med("offload", "jobs_per_s"), med("stock", "jobs_per_s")
    r = ratio(ours, stock)
    print_table(
        f"Drain throughput ({params['jobs']:,} no-op jobs, {params['concurrency']} prefork processes, "
        f"x {params['rounds']})",
        ["", "jobs/s", "seconds", "publish/s"],
        [
            ["stock Celery (defaults, results on)", stock, med("stock", "seconds"), med("stock", "publish_per_s")],
            ["offload worker", ours, med("offload", "seconds"), med("offload", "publish_per_s")],
            [
                "ratio offload / stock",
                r,
                float("nan"),
                ratio(med("offload", "publish_per_s"), med("stock", "publish_per_s")),
            ],
        ],
    )
    headline = Headline(NAME, "drain jobs/s", ours, stock, "stock Celery", r, "higher")
    write_result(NAME, args, params, runs, headline, facts)
    return headline


if __name__ == "__main__":
    entrypoint(main)
