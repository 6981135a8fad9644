"""1. Submit throughput: POST /v1/jobs/echo with an API key to one API process (uvicorn, as
`python -m offload_api` runs it), against three baselines served by bench/bare_api.py on the
same server settings, each validating the same body and answering the same JSON:
  bare    enqueues nothing (the web stack's own ceiling);
  floor   one async redis-py LPUSH of a 1 KB message (the floor of any Redis-backed submit);
  celery  stock Celery's send_task from a sync route (the hand-written FastAPI + Celery service).
Nothing consumes the queues: Redis is flushed after each run.

Load: wrk on loopback, fixed connections and duration, POSTing {"message": "bench"}
(the Python asyncio+httpx generator if wrk cannot be installed).

Parameters (full / --quick):
  --connections   16 / 16    open connections, each one request at a time
  --threads       1 / 1      wrk threads (the servers have one process; cores are scarce)
  --duration      10 / 3     seconds measured per run
  --warmup        2 / 1      seconds of load before each measured run, not counted
  --rounds        2 / 1      bare and ours alternate this many times; the median counts

Ratio: ours / bare requests per second (the headline); ours / floor and ours / celery are
printed beside it.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import asdict
from typing import Any

from bench.harness import (
    CpuMeter,
    Headline,
    LoadResult,
    Stack,
    ensure_wrk,
    entrypoint,
    machine_facts,
    new_parser,
    note,
    parse_args,
    pick,
    print_table,
    ratio,
    run_python_load,
    run_wrk,
    write_result,
)

NAME = "submit"
BODY = '{"message": "bench"}'


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = new_parser(NAME, __doc__)
    parser.add_argument("--connections", type=int)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--duration", type=float)
    parser.add_argument("--warmup", type=float)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--python-load", action="store_true", help="use the Python generator even if wrk exists")
    return parse_args(parser, argv)


def main(argv: list[str] | None = None) -> Headline:
    args = parse(argv)
    params: dict[str, Any] = {
        "connections": pick(args, "connections", 16, 16),
        "threads": pick(args, "threads", 1, 1),
        "duration_s": pick(args, "duration", 10.0, 3.0),
        "warmup_s": pick(args, "warmup", 2.0, 1.0),
        "rounds": pick(args, "rounds", 2, 1),
        "body": BODY,
        "log_level": args.log_level,
    }
    wrk = None if args.python_load else ensure_wrk()
    if wrk is None:
        note("wrk is not available: using the Python load generator (numbers are lower and noisier)")
    if wrk is None or args.python_load:
        note("the Python generator can cap the bare endpoint's rate itself: the ratio is then an upper bound")
    params["load_generator"] = "wrk" if wrk else "python-httpx"

    with Stack.from_args(NAME, args) as stack:
        stack.start_redis()
        ours_api = stack.start_api()
        bare_api = stack.start_bare_api()
        targets = {
            "bare": (f"{bare_api.extra['url']}/v1/jobs/echo", None),
            "floor": (f"{bare_api.extra['url']}/floor/jobs/echo", None),
            "celery": (f"{bare_api.extra['url']}/stock/jobs/echo", None),
            "offload": (f"{ours_api.extra['url']}/v1/jobs/echo", stack.api_key),
        }
        servers = {"bare": bare_api, "floor": bare_api, "celery": bare_api, "offload": ours_api}

        def load(url: str, key: str | None, seconds: float) -> LoadResult:
            if wrk:
                return run_wrk(wrk, url, BODY, key, params["connections"], params["threads"], seconds, stack.dir)
            return run_python_load(url, BODY, key, params["connections"], seconds)

        runs: dict[str, list[LoadResult]] = {name: [] for name in targets}
        cpu: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        for round_no in range(params["rounds"]):
            for name, (url, key) in targets.items():
                if params["warmup_s"] > 0:
                    load(url, key, params["warmup_s"])
                meter = CpuMeter({"server": servers[name].process.pid, "redis": stack.redis_pid})
                result = load(url, key, params["duration_s"])
                cpu[name].append(meter.ms_per(result.requests))
                runs[name].append(result)
                note(f"round {round_no + 1} {name}: {result.rps:,.0f} req/s, {result.errors} errors")
                stack.flush()  # the queue and job records ours left behind
        facts = machine_facts(stack.redis_url)

    def med(name: str, attr: str) -> float:
        return float(statistics.median(getattr(r, attr) for r in runs[name]))

    rows = []
    labels = {
        "bare": "bare FastAPI endpoint",
        "floor": "+ one async redis-py LPUSH (floor)",
        "celery": "+ stock Celery send_task (sync route)",
        "offload": "offload POST /v1/jobs/echo",
    }

    def cpu_ms(name: str, tree: str) -> float:
        return float(statistics.median(c[tree] for c in cpu[name]))

    for name, label in labels.items():
        rows.append(
            [
                label,
                med(name, "rps"),
                med(name, "p50_ms"),
                med(name, "p99_ms"),
                sum(r.errors for r in runs[name]),
                cpu_ms(name, "server"),
                cpu_ms(name, "redis"),
            ]
        )
    r = ratio(med("offload", "rps"), med("bare", "rps"))
    for name in ("bare", "floor", "celery"):
        rows.append(
            [
                f"ratio offload / {name}",
                ratio(med("offload", "rps"), med(name, "rps")),
                ratio(med("offload", "p50_ms"), med(name, "p50_ms")),
                float("nan"),
                "",
                ratio(cpu_ms("offload", "server"), cpu_ms(name, "server")),
                float("nan"),
            ]
        )
    print_table(
        f"Submit throughput ({params['connections']} connections, {params['duration_s']:g}s x {params['rounds']}, "
        f"{params['load_generator']})",
        ["", "req/s", "p50 ms", "p99 ms", "errors", "server CPU ms/req", "Redis CPU ms/req"],
        rows,
    )
    headline = Headline(NAME, "submit req/s", med("offload", "rps"), med("bare", "rps"), "bare FastAPI", r, "higher")
    results = {
        name: [
            {**asdict(x), **{f"{k}_cpu_ms_per_request": v for k, v in c.items()}}
            for x, c in zip(runs[name], cpu[name], strict=True)
        ]
        for name in runs
    }
    write_result(NAME, args, params, results, headline, facts)
    return headline


if __name__ == "__main__":
    entrypoint(main)
