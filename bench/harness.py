"""What every benchmark shares: a throw-away Redis, the API and workers as subprocesses, the
load generator, percentiles, the table printer and the JSON results.

Everything binds to 127.0.0.1 on free ports, every wait has a deadline, and every process a
benchmark starts is stopped when it ends, fails or is interrupted (Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import os
import platform
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
import redis

from offload_api.compute import percentile as interpolated_percentile
from offload_dev.processes import Service, answers, spawn, start_api, start_redis, start_worker, wait_up
from offload_dev.redis_server import RedisServer, free_port

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

T = TypeVar("T")

# Product settings every benchmark shares. Anything else keeps the product's defaults, and any
# OFFLOAD_* or OTEL_* variable of the caller's shell is dropped so runs do not depend on it.
# The soft shutdown is short so a benchmark's workers stop in seconds.
BASE_OFFLOAD_ENV = {
    "OFFLOAD_ENVIRONMENT": "production",
    "OFFLOAD_API_HOST": "127.0.0.1",
    "OFFLOAD_WORKER_METRICS_HOST": "127.0.0.1",
    "OFFLOAD_WORKER_SOFT_SHUTDOWN_TIMEOUT_SECONDS": "2",
    # A limit no benchmark reaches: the check's Redis round trip, which every limited key pays,
    # is measured, while no request is held back.
    "OFFLOAD_API_RATE_LIMIT": "1000000/1",
}


# --- parameters -------------------------------------------------------------------------


def new_parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's argument parser with the flags every benchmark takes."""
    parser = argparse.ArgumentParser(
        prog=f"bench.{name}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(parser)
    return parser


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick", action="store_true", help="small counts and short durations: a smoke run, not a measurement"
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level of every server and worker, ours and the baselines alike (default: INFO, the product's)",
    )
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results/<name>.json")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="OFFLOAD_X=VALUE",
        help="an extra setting for Offload's API and workers (repeatable), e.g. to try a change",
    )


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """parser.parse_args, remembering the arguments for the results file."""
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def pick(args: argparse.Namespace, name: str, full: T, quick: T) -> T:
    """A flag's value when given on the command line, else the full or --quick default."""
    value = getattr(args, name)
    if value is not None:
        return value  # type: ignore[no-any-return]
    return quick if args.quick else full


# --- statistics and output ----------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) with linear interpolation, as POST /v1/compute computes it;
    NaN for no values."""
    if not values:
        return float("nan")
    return interpolated_percentile(sorted(values), p)


def ratio(ours: float, baseline: float) -> float:
    return ours / baseline if baseline else float("nan")


def fmt(value: object) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Columns of numbers align right, columns of text left."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    numeric = [i > 0 and any(isinstance(row[i], int | float) for row in rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    print(f"\n{title}")
    print(line(headers))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print(line(row))
    sys.stdout.flush()


def entrypoint(main: Callable[[], object]) -> None:
    """Run a benchmark's main(); Ctrl-C or SIGTERM stop it (and its processes) without a traceback."""
    try:
        main()
    except KeyboardInterrupt:
        print("\ninterrupted: every process this benchmark started has been stopped", file=sys.stderr)
        raise SystemExit(130) from None


def note(message: str) -> None:
    print(f"  .. {message}", flush=True)


@dataclass
class Headline:
    """The one line a benchmark contributes to run_all's summary."""

    benchmark: str
    metric: str
    ours: float
    baseline: float
    baseline_name: str
    ratio: float
    better: str  # "higher" or "lower": which direction of the ratio is good


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_facts(redis_url: str | None = None) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "celery": _version("celery"),
        "kombu": _version("kombu"),
        "redis_py": _version("redis"),
        "hiredis": _version("hiredis"),
        "fastapi": _version("fastapi"),
        "uvicorn": _version("uvicorn"),
    }
    wrk = shutil.which("wrk")
    if wrk:
        out = subprocess.run([wrk, "--version"], capture_output=True, text=True, timeout=10, check=False)
        facts["wrk"] = (out.stdout or out.stderr).split("[")[0].strip()
    if redis_url:
        with contextlib.suppress(redis.RedisError):
            info = redis.Redis.from_url(redis_url, socket_timeout=5).info("server")
            facts["redis_server"] = info.get("redis_version")
    return facts


def write_result(
    name: str,
    args: argparse.Namespace,
    params: dict[str, Any],
    results: dict[str, Any],
    headline: Headline | None,
    facts: dict[str, Any],
    module: str | None = None,
) -> Path | None:
    """bench/results/<name>.json; ``module`` is the script's when several results share it."""
    if args.no_write:
        return None
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    document = {
        "benchmark": name,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": bool(args.quick),
        "command": " ".join(["python", "-m", f"bench.{module or name}", *getattr(args, "argv", [])]),
        "parameters": params,
        "extra_env": list(args.env),
        "machine": facts,
        "results": results,
        "headline": asdict(headline) if headline else None,
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    note(f"wrote {path.relative_to(REPO_ROOT)}")
    return path


# --- waiting --------------------------------------------------------------------------------


# --- processes ------------------------------------------------------------------------------


# The processes are offload_dev.processes' (the same harness the tests and `make run` use).
Proc = Service


_LIVE: list[Stack] = []


def _cleanup_all() -> None:
    for stack in list(_LIVE):
        stack.close()


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


atexit.register(_cleanup_all)
with contextlib.suppress(ValueError):  # only possible in the main thread
    signal.signal(signal.SIGTERM, _on_sigterm)


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OFFLOAD_", "OTEL_", "BENCH_"))}
    pythonpath = os.pathsep.join(p for p in [str(REPO_ROOT), env.get("PYTHONPATH", "")] if p)
    return {**env, "PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1", **extra}


class Stack:
    """A temporary directory, a Redis server and the processes of one benchmark, all stopped
    (processes in reverse order, Redis last) on close, exit, Ctrl-C or SIGTERM."""

    def __init__(self, name: str, log_level: str = "INFO", extra_env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_level = log_level
        self.extra_env = extra_env or {}
        self.dir = Path(tempfile.mkdtemp(prefix=f"offload-bench-{name}-"))
        self.procs: list[Proc] = []
        self.redis_server: RedisServer | None = None
        self.api_key = "bench-" + secrets.token_hex(16)
        self.keep_dir = False
        _LIVE.append(self)

    @classmethod
    def from_args(cls, name: str, args: argparse.Namespace) -> Stack:
        extra = {}
        for item in args.env:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise SystemExit(f"--env takes NAME=VALUE, not {item!r}")
            extra[key.strip()] = value
        return cls(name, args.log_level, extra)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc is not None and not isinstance(exc, KeyboardInterrupt):
            self.keep_dir = True
            print(f"\n{self.name}: failed; logs kept in {self.dir}", file=sys.stderr)
        self.close()

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(timeout=10)
        self.procs.clear()
        if self.redis_server is not None:
            self.redis_server.stop()
            self.redis_server = None
        if not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        if self in _LIVE:
            _LIVE.remove(self)

    # --- Redis ---

    def start_redis(self) -> str:
        self.redis_server = start_redis(self.dir / "redis")
        return self.redis_server.url

    @property
    def redis_url(self) -> str:
        assert self.redis_server is not None, "start_redis() first"
        return self.redis_server.url

    @property
    def redis_pid(self) -> int:
        process = self.redis_server.process if self.redis_server else None
        assert process is not None, "start_redis() first"
        return process.pid

    def redis(self, *, decode: bool = True) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, decode_responses=decode, socket_timeout=30)

    def flush(self) -> None:
        self.redis().flushall()

    # --- processes ---

    def offload_env(self, **extra: str) -> dict[str, str]:
        return {
            **BASE_OFFLOAD_ENV,
            "OFFLOAD_REDIS_URL": self.redis_url,
            "OFFLOAD_API_KEYS": self.api_key,
            "OFFLOAD_LOG_LEVEL": self.log_level,
            **self.extra_env,
            **extra,
        }

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        proc = spawn(name, argv, clean_env(env), self.dir, cwd=REPO_ROOT)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, timeout: float = 15) -> None:
        proc.stop(timeout)
        if proc in self.procs:
            self.procs.remove(proc)

    def start_api(self, name: str = "api") -> Proc:
        """`python -m offload_api`: one uvicorn process, as the image runs it."""
        proc = start_api(self.offload_env(), self.dir, name=name, base_env=clean_env({}))
        self.procs.append(proc)
        return proc

    def start_bare_api(self, name: str = "bare-api") -> Proc:
        """bench/bare_api.py under uvicorn with the API's server settings."""
        port = free_port()
        env = {"BENCH_PORT": str(port), "BENCH_LOG_LEVEL": self.log_level, "BENCH_REDIS_URL": self.redis_url}
        proc = self.spawn(name, [sys.executable, "-m", "bench.bare_api"], env)
        proc.extra["url"] = url = f"http://127.0.0.1:{port}"
        return wait_up(proc, lambda: answers(f"{url}/livez"), 60, f"{name} to answer /livez")

    def start_worker(
        self, name: str, *, module: str = "offload_worker", queues: str | None = None, concurrency: int = 2
    ) -> Proc:
        """`python -m offload_worker` (or offload_notifier); ready once it writes its ready file."""
        env = self.offload_env(OFFLOAD_WORKER_CONCURRENCY=str(concurrency))
        proc = start_worker(name, env, self.dir, module=module, queues=queues, host="bench", base_env=clean_env({}))
        self.procs.append(proc)
        return proc

    def start_stock_worker(self, name: str = "stock-worker", concurrency: int = 2) -> Proc:
        """Stock Celery (bench/stock_celery.py): default settings, prefork, result backend on."""
        ready = self.dir / f"{name}.ready"
        argv = [
            sys.executable, "-m", "celery", "-A", "bench.stock_celery", "worker",
            "--pool=prefork", f"--concurrency={concurrency}", f"--loglevel={self.log_level}",
            f"--hostname={name}@bench",
        ]  # fmt: skip
        env = {"BENCH_REDIS_URL": self.redis_url, "BENCH_READY_FILE": str(ready)}
        proc = self.spawn(name, argv, env)
        return wait_up(proc, ready.exists, 60, f"{name} to become ready")


# --- publishing jobs the way the API does ------------------------------------------------------


class OffloadPublisher:
    """Accepts jobs as services/api's JobPublisher does, without the HTTP layer: the same Celery
    message (offload_core.runtime.task_message) and the same script writing it with the job's record
    (offload_core.store.jobs.SUBMIT), pipelined 500 jobs a round trip."""

    def __init__(self, redis_url: str, api_key: str) -> None:
        from offload_core.settings import Settings
        from offload_core.store.jobs import SUBMIT

        self.settings = Settings(REDIS_URL=redis_url, API_KEYS=[api_key])
        self.client = redis.Redis.from_url(redis_url, decode_responses=True)
        self.submit = self.client.register_script(SUBMIT)

    def publish(self, n: int, kwargs: dict[str, object], queue: str | None = None) -> list[str]:
        import uuid

        from offload_core.contract.builtin_jobs import echo
        from offload_core.store.jobs import submit_call
        from offload_core.store.queue_state import ENQUEUED_AT_HEADER

        target = queue or echo.queue
        ids = []
        for start in range(0, n, 500):
            pipe = self.client.pipeline(transaction=False)
            for _ in range(min(500, n - start)):
                job_id = uuid.uuid4().hex
                now = time.time()
                keys, args = submit_call(
                    job_id,
                    echo.name,
                    kwargs,
                    queue=target,
                    priority=echo.priority,
                    headers={ENQUEUED_AT_HEADER: now},
                    origin="offload-bench",
                    now=now,
                    ttl_seconds=self.settings.JOB_TTL_SECONDS,
                )
                self.submit(keys=keys, args=args, client=pipe)
                ids.append(job_id)
            pipe.execute()
        return ids

    def close(self) -> None:
        self.client.close()


def queue_depth(client: redis.Redis, queue: str) -> int:
    from offload_core.contract.topology import priority_lists

    pipe = client.pipeline(transaction=False)
    for name in priority_lists(queue):
        pipe.llen(name)
    return sum(int(n) for n in pipe.execute())


def job_times(client: redis.Redis, ids: Sequence[str]) -> list[dict[str, Any]]:
    """status, created_at, started_at, finished_at of each job record (None when absent)."""
    from offload_core.store.jobs import job_key

    fields = ("status", "created_at", "started_at", "finished_at")
    rows: list[dict[str, Any]] = []
    for start in range(0, len(ids), 5000):
        pipe = client.pipeline(transaction=False)
        for job_id in ids[start : start + 5000]:
            pipe.hmget(job_key(job_id), fields)
        for values in pipe.execute():
            row: dict[str, Any] = dict(zip(fields, values, strict=True))
            for name in fields[1:]:
                row[name] = float(row[name]) if row[name] else None
            rows.append(row)
    return rows


FINISHED_STATUSES = {"succeeded", "failed", "cancelled"}


def wait_jobs_finished(client: redis.Redis, ids: Sequence[str], timeout: float) -> list[dict[str, Any]]:
    """Poll the job records until every job has ended; the records' timestamps."""
    deadline = time.monotonic() + timeout
    pending = list(ids)
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} of {len(ids)} jobs had not finished after {timeout:.0f}s")
        rows = job_times(client, pending[-200:])  # the newest ones end last
        if all(r["status"] in FINISHED_STATUSES for r in rows):
            rows = job_times(client, pending)
            pending = [i for i, r in zip(pending, rows, strict=True) if r["status"] not in FINISHED_STATUSES]
            if not pending:
                break
        time.sleep(0.2)
    return job_times(client, ids)


def stock_done_times(client: redis.Redis, ids: Sequence[str]) -> list[float | None]:
    """date_done (epoch seconds) of each stock Celery result, None while it has none."""
    done: list[float | None] = []
    for start in range(0, len(ids), 5000):
        pipe = client.pipeline(transaction=False)
        for task_id in ids[start : start + 5000]:
            pipe.get(f"celery-task-meta-{task_id}")
        for raw in pipe.execute():
            if not raw:
                done.append(None)
                continue
            meta = json.loads(raw)
            stamp = meta.get("date_done")
            done.append(datetime.fromisoformat(stamp).replace(tzinfo=UTC).timestamp() if stamp else None)
    return done


def wait_stock_done(client: redis.Redis, ids: Sequence[str], timeout: float) -> list[float]:
    deadline = time.monotonic() + timeout
    while True:
        tail = stock_done_times(client, ids[-200:])
        if all(t is not None for t in tail):
            done = stock_done_times(client, ids)
            if all(t is not None for t in done):
                return [t for t in done if t is not None]
        if time.monotonic() > deadline:
            missing = sum(1 for t in stock_done_times(client, ids) if t is None)
            raise TimeoutError(f"{missing} of {len(ids)} stock tasks had no result after {timeout:.0f}s")
        time.sleep(0.2)


# --- CPU ----------------------------------------------------------------------------------------


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants, plus their reaped
    children's (a forking worker's finished children count through their parent)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


class CpuMeter:
    """CPU seconds each named process tree spends from now on: per job, these stay comparable
    when other work shares the cores, unlike rates, which drop with every competitor."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start = {name: tree_cpu_seconds(pid) for name, pid in pids.items()}

    def ms_per(self, count: int) -> dict[str, float]:
        """Milliseconds of CPU per unit of work (job, request) since construction, by tree."""
        return {
            name: (tree_cpu_seconds(pid) - self.start[name]) * 1000 / max(1, count) for name, pid in self.pids.items()
        }


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# --- HTTP load ------------------------------------------------------------------------------


@dataclass
class LoadResult:
    tool: str
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int  # socket errors, timeouts and non-2xx answers


_WRK_LUA = """
wrk.method = "POST"
wrk.body = [[{body}]]
wrk.headers["Content-Type"] = "application/json"
{auth}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "errors": %d}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout + e.status))
end
"""


def ensure_wrk() -> str | None:
    """wrk's path, installing the Debian package when it is missing and we may (root, apt-get).
    BENCH_NO_INSTALL=1 forbids the install."""
    found = shutil.which("wrk")
    apt = shutil.which("apt-get")
    if found or os.environ.get("BENCH_NO_INSTALL") or apt is None or os.geteuid() != 0:
        return found
    note("wrk is missing: apt-get install -y wrk")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in ([apt, "install", "-y", "-q", "wrk"], [apt, "update", "-q"], [apt, "install", "-y", "-q", "wrk"]):
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(argv, env=env, capture_output=True, timeout=300, check=False)
        if shutil.which("wrk"):
            break
    return shutil.which("wrk")


def run_wrk(
    wrk: str, url: str, body: str, auth: str | None, connections: int, threads: int, seconds: float, workdir: Path
) -> LoadResult:
    script = workdir / "post.lua"
    auth_line = f'wrk.headers["Authorization"] = "Bearer {auth}"' if auth else ""
    script.write_text(_WRK_LUA.format(body=body, auth=auth_line))
    argv = [
        wrk, f"--threads={threads}", f"--connections={connections}", f"--duration={max(1, round(seconds))}s",
        "--timeout=10s", "--latency", f"--script={script}", url,
    ]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    match = re.search(r"^BENCH_JSON (.*)$", out.stdout, re.MULTILINE)
    if out.returncode != 0 or not match:
        raise RuntimeError(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    data = json.loads(match.group(1))
    duration = data["duration_us"] / 1e6
    return LoadResult(
        tool="wrk",
        requests=data["requests"],
        seconds=duration,
        rps=data["requests"] / duration,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        errors=data["errors"],
    )


def run_python_load(url: str, body: str, auth: str | None, connections: int, seconds: float) -> LoadResult:
    """The fallback when wrk is unavailable: asyncio + httpx, one process. It spends far more CPU
    per request than wrk, so on a small machine it takes CPU from the server it measures."""

    async def main() -> LoadResult:
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {auth}"
        latencies: list[float] = []
        errors = 0
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        async with httpx.AsyncClient(limits=limits, timeout=10) as client:
            end = time.perf_counter() + seconds

            async def loop() -> None:
                nonlocal errors
                while time.perf_counter() < end:
                    t0 = time.perf_counter()
                    try:
                        response = await client.post(url, content=body, headers=headers)
                        if response.status_code >= 300:
                            errors += 1
                    except httpx.HTTPError:
                        errors += 1
                    latencies.append(time.perf_counter() - t0)

            started = time.perf_counter()
            await asyncio.gather(*(loop() for _ in range(connections)))
            elapsed = time.perf_counter() - started
        return LoadResult(
            tool="python-httpx",
            requests=len(latencies),
            seconds=elapsed,
            rps=len(latencies) / elapsed,
            p50_ms=percentile(latencies, 50) * 1000,
            p99_ms=percentile(latencies, 99) * 1000,
            errors=errors,
        )

    return asyncio.run(main())


@contextlib.contextmanager
def timed(label: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    note(f"{label}: {time.perf_counter() - started:.1f}s")
