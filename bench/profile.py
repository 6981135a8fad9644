"""Where the CPU goes: Offload's CPU per submitted job and per drained job, split by component.

Runs one load (the submit benchmark's or the drain benchmark's), samples the measured
process tree with py-spy (a sampling profiler: the process is not paused, nothing is
instrumented) and meters its CPU with the same CpuMeter the benchmarks use, over the same
window. Each sample is given to a component by its innermost frame that belongs to one
(bench.profile.COMPONENTS; libraries used by many, such as redis-py, json and asyncio's
futures, are charged to their caller), and a component's share of the samples times the
measured CPU per job is its CPU milliseconds per job. Idle samples are left out, so the
shares are of CPU, not of wall time.

  submit   POST /v1/jobs/echo under wrk (16 connections) against one API process
  drain    a worker (2 prefork processes) draining pre-queued no-op echo jobs

Parameters (full / --quick):
  --duration    15 / 4       seconds sampled
  --rate        200 / 200    samples per second per thread
  --jobs        30000 / 6000 drain: jobs queued first (more than the window drains)

Needs py-spy (a dev dependency) and the right to read the measured processes' memory: root,
or ptrace allowed (kernel.yama.ptrace_scope = 0). The folded stacks are kept in
bench/results/profile-<load>.folded for a flame graph (e.g. speedscope.app opens them).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.drain import NOOP_KWARGS
from bench.harness import (
    RESULTS_DIR,
    CpuMeter,
    OffloadPublisher,
    Stack,
    ensure_wrk,
    entrypoint,
    job_times,
    machine_facts,
    new_parser,
    parse_args,
    pick,
    print_table,
    run_wrk,
    wait_jobs_finished,
    wait_until,
    write_result,
)

NAME = "profile"
SUBMIT_BODY = '{"message": "bench"}'

# (component, pattern matched at the start of a frame's file path as py-spy prints it, relative
# to its package root). A sample belongs to the first component, in this order, that its
# innermost frame outside LIBRARIES matches: the libraries everyone uses are charged to their
# caller (a Redis call of the job store to the job store, of kombu to kombu).
COMPONENTS: list[tuple[str, str]] = [
    ("Offload: job store scripts (start, succeed) and their round trips", r"offload_core/store/jobs\.py"),
    ("Offload: rate limits (per key, per job type)", r"offload_\w+/(store/)?rate_limits?\.py"),
    ("Offload: audit trail", r"offload_api/audit\.py"),
    (
        "Offload: submit (route, message, submit script, idempotency)",
        r"offload_api/(enqueue|batching|idempotency|routes/)",
    ),
    ("logging", r"logging/|offload_core/logs\.py"),
    ("Offload: API middlewares (auth, size limits, metrics, trace context)", r"offload_api/"),
    ("Offload: broker transport (batched takes, acks)", r"offload_core/runtime/worker_transport\.py"),
    ("Offload: task wrapper, timekeeper, other", r"offload_(core|worker)/"),
    # The OpenTelemetry API's namespace packages lose their "opentelemetry/" in py-spy's paths.
    (
        "OpenTelemetry (trace context, unrecorded spans)",
        r"(opentelemetry|trace|context|propagators|sdk)/|util/_decorator",
    ),
    ("Prometheus metrics", r"prometheus_client/"),
    ("pydantic (validation, serialisation)", r"pydantic(_core)?/"),
    ("FastAPI dependencies", r"fastapi/(dependencies|security)/"),
    ("FastAPI and Starlette (routing, middleware stack, responses)", r"(fastapi|starlette)/"),
    ("asyncio event loop, socket I/O", r"uvicorn/(_compat|server|main)\.py|asyncio/runners\.py"),
    ("HTTP server (uvicorn, h11)", r"(uvicorn|h11)/"),
    ("Celery: task tracing, signals (pool process)", r"celery/app/trace\.py"),
    ("billiard: prefork pool IPC", r"billiard/"),
    ("Celery: worker consumer, strategy, request", r"celery/"),
    ("kombu: broker transport, event loop", r"kombu/"),
]
LIBRARIES = re.compile(
    r"(redis|hiredis|asyncio|json|contextlib|typing|abc|functools|uuid|socket|ssl|selectors|enum|re|"
    r"dataclasses|threading|copy|weakref|collections|datetime|email|urllib|base64|hashlib|hmac)(/|\.py)|<frozen"
)
# Samples no component above claims: an awaited call resumed by the event loop has no caller
# in its stack.
FALLBACKS: list[tuple[str, str]] = [
    ("redis-py, resumed by the event loop (the API's scripts, limits, audit writes)", r"redis/"),
    ("asyncio (tasks, timeouts, streams)", r"asyncio/"),
]
_COMPILED = [(name, re.compile(pattern)) for name, pattern in COMPONENTS]
_FALLBACKS = [(name, re.compile(pattern)) for name, pattern in FALLBACKS]
_PATH = re.compile(r"\(([^()]*?)(:\d+)?\)$")
OTHER = "interpreter, standard library, other"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = new_parser(NAME, __doc__)
    parser.add_argument("load", choices=["submit", "drain"])
    parser.add_argument("--duration", type=float)
    parser.add_argument("--rate", type=int)
    parser.add_argument("--jobs", type=int)
    return parse_args(parser, argv)


def component(stack: str) -> str:
    paths = [_path(frame) for frame in reversed(stack.split(";"))]
    for path in paths:
        if not LIBRARIES.match(path):
            for name, pattern in _COMPILED:
                if pattern.match(path):
                    return name
    for name, pattern in _FALLBACKS:
        if any(pattern.match(path) for path in paths):
            return name
    return OTHER


def _path(frame: str) -> str:
    found = _PATH.search(frame)
    return found.group(1) if found else frame


def split(folded: Path) -> collections.Counter[str]:
    """Samples per component, from py-spy's raw (folded) output."""
    counts: collections.Counter[str] = collections.Counter()
    for line in folded.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if stack and samples.isdigit():
            counts[component(stack)] += int(samples)
    return counts


def py_spy() -> str:
    found = Path(sys.executable).parent / "py-spy"
    path = str(found) if found.exists() else shutil.which("py-spy")
    if path is None:
        raise SystemExit("py-spy is not installed: run `make install` (it is a dev dependency)")
    return path


def record(pid: int, seconds: float, rate: int, out: Path) -> subprocess.Popen[bytes]:
    argv = [
        py_spy(), "record", "--pid", str(pid), "--subprocesses", "--nonblocking", "--format", "raw",
        "--duration", str(max(1, round(seconds))), "--rate", str(rate), "--output", str(out),
    ]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish_recording(spy: subprocess.Popen[bytes], seconds: float) -> None:
    _, err = spy.communicate(timeout=seconds + 60)
    if spy.returncode != 0:
        raise SystemExit(f"py-spy failed ({spy.returncode}): {err.decode(errors='replace').strip()[-400:]}")


def profile_submit(stack: Stack, seconds: float, rate: int, out: Path) -> dict[str, Any]:
    api = stack.start_api()
    url = f"{api.extra['url']}/v1/jobs/echo"
    wrk = ensure_wrk()
    if wrk is None:
        raise SystemExit("wrk is needed for the submit profile (apt-get install wrk)")
    run_wrk(wrk, url, SUBMIT_BODY, stack.api_key, 16, 1, 2, stack.dir)  # warm-up
    stack.flush()
    spy = record(api.process.pid, seconds, rate, out)
    meter = CpuMeter({"server": api.process.pid, "redis": stack.redis_pid})
    load = run_wrk(wrk, url, SUBMIT_BODY, stack.api_key, 16, 1, seconds, stack.dir)
    cpu = meter.ms_per(load.requests)
    finish_recording(spy, seconds)
    return {"unit": "request", "count": load.requests, "per_s": load.rps, "cpu_ms": cpu["server"]}


def profile_drain(stack: Stack, jobs: int, seconds: float, rate: int, out: Path) -> dict[str, Any]:
    publisher = OffloadPublisher(stack.redis_url, stack.api_key)
    ids = publisher.publish(jobs, NOOP_KWARGS)
    publisher.close()
    worker = stack.start_worker("worker", concurrency=2)
    client = stack.redis()
    wait_until(lambda: job_times(client, ids[:1])[0]["finished_at"] is not None, 120, "the first job")
    began = time.time()
    spy = record(worker.process.pid, seconds, rate, out)
    meter = CpuMeter({"worker": worker.process.pid})
    time.sleep(seconds)  # the worker drains meanwhile; py-spy stops by itself
    ended = time.time()
    cpu_s = meter.ms_per(1)["worker"] / 1000
    finish_recording(spy, seconds)
    rows = wait_jobs_finished(client, ids, 600)
    stack.stop(worker)
    done = sum(1 for r in rows if r["finished_at"] is not None and began <= r["finished_at"] < ended)
    if done == 0 or done == len(ids):
        raise SystemExit(f"{done} of {len(ids)} jobs finished in the window: raise --jobs or shorten --duration")
    return {"unit": "job", "count": done, "per_s": done / (ended - began), "cpu_ms": cpu_s * 1000 / done}


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    params: dict[str, Any] = {
        "load": args.load,
        "duration_s": pick(args, "duration", 15.0, 4.0),
        "rate": pick(args, "rate", 200, 200),
        "jobs": pick(args, "jobs", 30000, 6000),
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"{NAME}-{args.load}.folded"
    with Stack.from_args(f"{NAME}-{args.load}", args) as stack:
        stack.start_redis()
        if args.load == "submit":
            run = profile_submit(stack, params["duration_s"], params["rate"], out)
        else:
            run = profile_drain(stack, params["jobs"], params["duration_s"], params["rate"], out)
        facts = machine_facts(stack.redis_url)
    counts = split(out)
    total = sum(counts.values())
    if total == 0:
        raise SystemExit(f"py-spy took no samples ({out}): is ptrace allowed?")
    rows: list[list[object]] = [
        [name, 100 * samples / total, run["cpu_ms"] * samples / total] for name, samples in counts.most_common()
    ]
    rows.append(["total", 100.0, run["cpu_ms"]])
    print_table(
        f"CPU per {run['unit']} by component ({args.load}: {run['count']:,} {run['unit']}s in "
        f"{params['duration_s']:.0f} s, {run['per_s']:,.0f}/s; {total:,} samples)",
        ["component", "% of samples", f"CPU ms per {run['unit']}"],
        rows,
    )
    results = {**run, "samples": total, "components": {name: samples for name, samples in counts.items()}}
    write_result(f"{NAME}-{args.load}", args, params, results, None, facts, module=NAME)


if __name__ == "__main__":
    entrypoint(main)
