"""2. Drain throughput: N no-op echo jobs are queued first (each with its job record, in the
API's own submit script: bench.harness.OffloadPublisher), then one worker process set
(`python -m offload_worker`, 2 prefork processes) drains them.

Baseline in the same run: stock Celery (bench/stock_celery.py: default settings, prefork,
2 processes, result backend on) draining N pre-queued no-op tasks on the same Redis, which is
flushed between runs.

Peers in the same run (bench/peers.py, each in its own virtualenv): Dramatiq with its default
8 threads per process and with 1, RQ's SimpleWorker and forking worker, arq, each with the same
number of worker processes. `--peers none` leaves them out.

Both rates are counted the same way, from the finish times each side records (the job
records' finished_at; the results' date_done): (N - 1) / (last finish - first finish), so
worker start-up is not counted. Ours also reports first start to last finish.

Parameters (full / --quick):
  --jobs          5000 / 500   jobs (tasks) per run
  --concurrency   2 / 2        worker processes, ours and stock
  --rounds        1 / 1        stock and ours alternate; the median counts
  --timeout       300 / 60     longest wait for one drain, seconds

Ratio: ours / stock jobs per second; the table also prints ours / each peer.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from bench import peers
from bench.harness import (
    CpuMeter,
    Headline,
    OffloadPublisher,
    Stack,
    entrypoint,
    job_times,
    machine_facts,
    new_parser,
    note,
    parse_args,
    pick,
    print_table,
    ratio,
    stock_done_times,
    wait_jobs_finished,
    wait_stock_done,
    wait_until,
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
    parser.add_argument(
        "--peers",
        default="all",
        help="comma-separated peer runs (celery_floor,dramatiq,dramatiq_1_thread,rq_simple,rq_fork,arq), all or none",
    )
    return parse_args(parser, argv)


def drain_offload(stack: Stack, jobs: int, concurrency: int, timeout: float) -> dict[str, Any]:
    publisher = OffloadPublisher(stack.redis_url, stack.api_key)
    started = time.perf_counter()
    ids = publisher.publish(jobs, NOOP_KWARGS)
    publish_s = time.perf_counter() - started
    publisher.close()
    worker = stack.start_worker("worker", concurrency=concurrency)
    client = stack.redis()
    # The CPU of the drain itself, from the first job's end (start-up and imports are done).
    wait_until(lambda: job_times(client, ids[:1])[0]["finished_at"] is not None, timeout, "the first job")
    meter = CpuMeter({"worker": worker.process.pid, "redis": stack.redis_pid})
    rows = wait_jobs_finished(client, ids, timeout)
    cpu = meter.ms_per(jobs - 1)
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
        "worker_cpu_ms_per_job": cpu["worker"],
        "redis_cpu_ms_per_job": cpu["redis"],
    }


def drain_stock(stack: Stack, jobs: int, concurrency: int, timeout: float) -> dict[str, Any]:
    stock = make_app(stack.redis_url)
    started = time.perf_counter()
    ids = [str(stock.send_task(NOOP).id) for _ in range(jobs)]
    publish_s = time.perf_counter() - started
    worker = stack.start_stock_worker(concurrency=concurrency)
    client = stack.redis()
    wait_until(lambda: stock_done_times(client, ids[:1])[0] is not None, timeout, "the first task")
    meter = CpuMeter({"worker": worker.process.pid, "redis": stack.redis_pid})
    done = sorted(wait_stock_done(client, ids, timeout))
    cpu = meter.ms_per(jobs - 1)
    stack.stop(worker)
    return {
        "jobs": jobs,
        "publish_per_s": jobs / publish_s,
        "jobs_per_s": (jobs - 1) / (done[-1] - done[0]),
        "seconds": done[-1] - done[0],
        "worker_cpu_ms_per_job": cpu["worker"],
        "redis_cpu_ms_per_job": cpu["redis"],
    }


def chosen_peers(spec: str, processes: int, log_level: str) -> list[peers.PeerDrain]:
    available = {p.key: p for p in peers.drains(processes, log_level)}
    if spec == "none":
        return []
    if spec == "all":
        return list(available.values())
    wanted = [k.strip() for k in spec.split(",") if k.strip()]
    unknown = [k for k in wanted if k not in available]
    if unknown:
        raise SystemExit(f"--peers: unknown {', '.join(unknown)}; choose from {', '.join(available)}, all or none")
    return [available[k] for k in wanted]


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
    peer_runs = chosen_peers(args.peers, params["concurrency"], args.log_level)
    params["peers"] = {p.key: {"label": p.label, "per_job": p.per_job, "command": p.command} for p in peer_runs}
    runs: dict[str, list[dict[str, Any]]] = {"stock": [], "offload": [], **{p.key: [] for p in peer_runs}}
    with Stack.from_args(NAME, args) as stack:
        stack.start_redis()
        for round_no in range(params["rounds"]):
            for name, drain in (("stock", drain_stock), ("offload", drain_offload)):
                result = drain(stack, params["jobs"], params["concurrency"], params["timeout_s"])
                runs[name].append(result)
                note(f"round {round_no + 1} {name}: {result['jobs_per_s']:,.0f} jobs/s")
                stack.flush()
            for peer in peer_runs:
                result = peers.drain(stack, peer, params["jobs"], params["timeout_s"])
                runs[peer.key].append(result)
                note(f"round {round_no + 1} {peer.key}: {result['jobs_per_s']:,.0f} jobs/s")
                stack.flush()
        facts = machine_facts(stack.redis_url)

    def med(name: str, key: str) -> float:
        return float(statistics.median(r[key] for r in runs[name]))

    ours, stock = med("offload", "jobs_per_s"), med("stock", "jobs_per_s")
    r = ratio(ours, stock)
    rows: list[list[object]] = [
        ["stock Celery (defaults)", "ack before the run, result stored", stock, med("stock", "seconds"), 1.0],
        [
            "offload worker",
            "ack after the run, job record + result, progress, audit",
            ours,
            med("offload", "seconds"),
            r,
        ],
    ]
    for peer in peer_runs:
        rate = med(peer.key, "jobs_per_s")
        rows.append([peer.label, peer.per_job, rate, med(peer.key, "seconds"), ratio(rate, stock)])
    for row, name in zip(rows, ["stock", "offload", *(p.key for p in peer_runs)], strict=True):
        row += [med(name, "worker_cpu_ms_per_job"), med(name, "redis_cpu_ms_per_job")]
    print_table(
        f"Drain throughput ({params['jobs']:,} no-op jobs, {params['concurrency']} worker processes, "
        f"x {params['rounds']}; x stock: jobs/s over stock Celery's; CPU ms per job from the first finish)",
        ["", "per job", "jobs/s", "seconds", "x stock", "worker CPU ms", "Redis CPU ms"],
        rows,
    )
    for peer in peer_runs:
        note(f"offload / {peer.key}: {ratio(ours, med(peer.key, 'jobs_per_s')):.2f}")
    headline = Headline(NAME, "drain jobs/s", ours, stock, "stock Celery", r, "higher")
    write_result(NAME, args, params, runs, headline, facts)
    return headline


if __name__ == "__main__":
    entrypoint(main)
