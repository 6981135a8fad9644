"""The peers a user would pick instead of Offload — Dramatiq, RQ and arq — draining the same
no-op jobs on the benchmark's Redis. Each peer gets a virtualenv of its own with pinned versions
(their pins conflict with ours: arq wants an older redis-py), made once with uv under
.tools/bench-peers/ and reused; the job modules are bench/peer_jobs/.

A peer's job records its finish time with one RPUSH (none of them keeps a finish time the
drain could read as it reads Offload's job records or stock Celery's results), and its rate is
counted as ours is: (N - 1) / (last finish - first finish), with the jobs queued before the
workers start."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import REPO_ROOT, CpuMeter, Stack, clean_env, note, wait_until
from bench.peer_jobs import FINISHED_KEY, QUEUE

VENVS_DIR = REPO_ROOT / ".tools" / "bench-peers"
# The versions compared in bench/README.md; a change here makes a new virtualenv.
REQUIREMENTS = {
    "dramatiq": ("dramatiq[redis]==2.2.1", "redis==8.1.0"),
    "rq": ("rq==2.12.0", "redis==8.1.0"),
    "arq": ("arq==0.28.0",),
    # Offload's own versions (uv.lock): the floor Offload's worker runs on.
    "celery": ("celery[redis]==5.7.0", "kombu==5.7.0", "redis==8.1.0", "hiredis==3.5.0"),
}
JOB_MODULES = {"dramatiq": "dramatiq_jobs", "rq": "rq_jobs", "arq": "arq_jobs", "celery": "celery_jobs"}


@dataclass(frozen=True)
class PeerDrain:
    """One way of running a peer: `copies` of the worker command, each a process (set) of its own."""

    key: str
    peer: str
    label: str
    per_job: str  # what the peer does for each job, for the table
    command: tuple[str, ...]  # the console script first, then its arguments
    copies: int = 1


def drains(processes: int, log_level: str = "INFO") -> list[PeerDrain]:
    """The peer configurations with `processes` worker processes, as ours run; Celery logs at
    `log_level`, as Offload's worker and stock Celery do (the others have no such level)."""
    dramatiq_module = "bench.peer_jobs.dramatiq_jobs"
    rq = ("rq", "worker", QUEUE, "--burst", "--quiet")
    arq = ("arq", "bench.peer_jobs.arq_jobs.WorkerSettings")
    return [
        PeerDrain(
            "celery_floor",
            "celery",
            f"Celery, lean (prefork x {processes}, acks late, no result)",
            "ack after the run, no result, no events",
            (
                "celery",
                "-A",
                "bench.peer_jobs.celery_jobs",
                "worker",
                "--pool=prefork",
                f"--concurrency={processes}",
                f"--loglevel={log_level}",
                "--without-gossip",
                "--without-mingle",
            ),
        ),
        PeerDrain(
            "dramatiq",
            "dramatiq",
            f"Dramatiq ({processes} processes x 8 threads, its defaults)",
            "ack after the run, no result",
            ("dramatiq", dramatiq_module, "--processes", str(processes), "--threads", "8"),
        ),
        PeerDrain(
            "dramatiq_1_thread",
            "dramatiq",
            f"Dramatiq ({processes} processes x 1 thread)",
            "ack after the run, no result",
            ("dramatiq", dramatiq_module, "--processes", str(processes), "--threads", "1"),
        ),
        PeerDrain(
            "rq_simple",
            "rq",
            f"RQ SimpleWorker (x {processes})",
            "job hash + result kept, registries",
            (*rq, "--worker-class", "rq.SimpleWorker"),
            copies=processes,
        ),
        PeerDrain(
            "rq_fork",
            "rq",
            f"RQ forking Worker (x {processes})",
            "a fork per job, job hash + result kept",
            rq,
            copies=processes,
        ),
        PeerDrain(
            "arq",
            "arq",
            f"arq (x {processes}, 10 jobs at once each)",
            "result kept 1 h, 0.5 s queue poll",
            arq,
            copies=processes,
        ),
    ]


def _uv() -> str:
    found = REPO_ROOT / ".tools" / "bin" / "uv"
    path = str(found) if found.exists() else shutil.which("uv")
    if path is None:
        raise RuntimeError("uv is needed to make the peers' virtualenvs: run `make install` first")
    return path


def venv(peer: str) -> Path:
    """The peer's virtualenv (its bin directory), made on first use."""
    requirements = REQUIREMENTS[peer]
    digest = hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:10]
    root = VENVS_DIR / f"{peer}-{digest}"
    bin_dir = root / "bin"
    if (root / ".complete").exists():
        return bin_dir
    note(f"making the {peer} virtualenv ({', '.join(requirements)})")
    shutil.rmtree(root, ignore_errors=True)
    uv = _uv()
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(root)], check=True, timeout=300)
    subprocess.run(
        [uv, "pip", "install", "--quiet", "--python", str(bin_dir / "python"), *requirements], check=True, timeout=600
    )
    (root / ".complete").write_text("\n".join(requirements) + "\n")
    return bin_dir


def drain(stack: Stack, run: PeerDrain, jobs: int, timeout: float) -> dict[str, Any]:
    bin_dir = venv(run.peer)
    env = {"BENCH_REDIS_URL": stack.redis_url}
    started = time.perf_counter()
    subprocess.run(
        [str(bin_dir / "python"), "-m", f"bench.peer_jobs.{JOB_MODULES[run.peer]}", "publish", str(jobs)],
        env=clean_env(env),
        cwd=REPO_ROOT,
        check=True,
        timeout=timeout,
    )
    publish_s = time.perf_counter() - started
    command = [str(bin_dir / run.command[0]), *run.command[1:]]
    if run.peer == "rq":
        command += ["--url", stack.redis_url]
    workers = [stack.spawn(f"{run.key}-{i}", command, env) for i in range(run.copies)]
    client = stack.redis()
    wait_until(lambda: client.llen(FINISHED_KEY) > 0, timeout, f"{run.label}'s first job")
    meters = [CpuMeter({"worker": w.process.pid, "redis": stack.redis_pid}) for w in workers]
    deadline = time.monotonic() + timeout
    while client.llen(FINISHED_KEY) < jobs:
        exited = [w for w in workers if w.process.poll() is not None and w.process.returncode != 0]
        if exited:
            raise RuntimeError(f"{exited[0].name} exited: {exited[0].log_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{run.label}: {client.llen(FINISHED_KEY)} of {jobs} jobs after {timeout:.0f}s")
        time.sleep(0.2)
    cpu = [m.ms_per(jobs - 1) for m in meters]
    for worker in workers:
        stack.stop(worker)
    finished = sorted(float(t) for t in client.lrange(FINISHED_KEY, 0, -1))
    return {
        "jobs": jobs,
        "publish_per_s": jobs / publish_s,
        "jobs_per_s": (jobs - 1) / (finished[-1] - finished[0]),
        "seconds": finished[-1] - finished[0],
        "finished_records": len(finished),  # more than jobs: a job ran twice
        "worker_cpu_ms_per_job": sum(c["worker"] for c in cpu),
        "redis_cpu_ms_per_job": cpu[0]["redis"],
    }
