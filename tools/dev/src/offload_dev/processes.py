"""Offload's processes started for real, the one way the tests, the benchmarks and `make run` do:
the API under uvicorn and the worker entrypoints, each in a session of its own with its output in
a log file, waited for until it answers (the API) or writes its ready file (a worker).

A port free when it was chosen may be taken before the child binds it (another run on the
machine); the child then exits saying so, and it is started again on another port.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from offload_dev.polling import wait_for
from offload_dev.redis_server import RedisServer, free_port

PORT_ATTEMPTS = 5
PORT_TAKEN = ("address already in use", "cannot serve metrics on")


class ServiceExited(RuntimeError):
    """The process ended before it was up; the message holds the end of its log."""


class PortTaken(ServiceExited):
    """The process ended because its port was taken meanwhile."""


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def alive(self) -> bool:
        return self.process.poll() is None

    def terminate(self) -> None:
        """SIGTERM to the main process only, as Kubernetes does with an exec-form entrypoint."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to the whole process group: the worker and its pool processes die at once."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self, timeout: float = 20) -> None:
        """A warm stop (SIGTERM), then SIGKILL to the group for what is left after ``timeout``."""
        self.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout)
        # Pool processes or children the main process left behind.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)


def spawn(name: str, argv: Sequence[str], env: Mapping[str, str], log_dir: Path, *, cwd: Path | None = None) -> Service:
    """Start ``argv`` with exactly ``env``, in a session of its own, its output in log_dir/<name>.log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    process = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdin=subprocess.DEVNULL,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C and signals reach only the caller; it stops the group
    )
    return Service(name, process, log)


def wait_up(service: Service, check: Callable[[], bool], timeout: float, what: str) -> Service:
    """Wait until ``check()``; ServiceExited (PortTaken when its port was taken) if it ended first."""

    def up() -> bool:
        if not service.alive():
            tail = service.log_tail()
            kind = PortTaken if any(reason in tail.lower() for reason in PORT_TAKEN) else ServiceExited
            raise kind(f"{service.name} exited early:\n{tail}")
        return check()

    wait_for(up, timeout, what, interval=0.05)
    return service


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _base(base_env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if base_env is None else base_env


def worker_env(hostname: str, state_dir: Path, metrics_port: int, queues: str | None = None) -> dict[str, str]:
    """What distinguishes one worker process from another on the same machine, as a pod would be."""
    env = {
        "OFFLOAD_WORKER_NAME": hostname,
        "OFFLOAD_WORKER_STATE_DIR": str(state_dir),
        "OFFLOAD_WORKER_METRICS_PORT": str(metrics_port),
    }
    if queues is not None:
        env["OFFLOAD_WORKER_QUEUES"] = queues
    return env


def start_worker(
    name: str,
    env: Mapping[str, str],
    log_dir: Path,
    *,
    module: str = "offload_worker",
    queues: str | None = None,
    host: str = "test",
    base_env: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> Service:
    """`python -m offload_worker` (or offload_notifier) with ``env`` over ``base_env`` (this
    process's environment by default); up once it writes its ready file. ``extra``: state_dir,
    hostname, metrics_url."""
    state_dir = log_dir / f"{name}-state"
    hostname = f"{name}@{host}"
    for attempt in range(PORT_ATTEMPTS):
        metrics_port = int(env.get("OFFLOAD_WORKER_METRICS_PORT") or free_port())  # never the shared default
        service = spawn(
            name,
            [sys.executable, "-m", module],
            {**_base(base_env), **env, **worker_env(hostname, state_dir, metrics_port, queues)},
            log_dir,
        )
        service.extra.update(
            state_dir=state_dir,
            hostname=hostname,
            metrics_url=f"http://127.0.0.1:{metrics_port}/metrics" if metrics_port else None,
        )
        try:
            return wait_up(service, (state_dir / "ready").exists, timeout, f"{name} to write its ready file")
        except PortTaken:
            if attempt == PORT_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def start_api(
    env: Mapping[str, str],
    log_dir: Path,
    *,
    name: str = "api",
    base_env: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> Service:
    """`python -m offload_api` (one uvicorn process, as the image runs it) with ``env`` over
    ``base_env`` on free ports; up once it answers /livez. ``extra``: url (its base URL) and
    metrics_url (its metrics port's /metrics)."""
    for attempt in range(PORT_ATTEMPTS):
        port, metrics_port = free_port(), free_port()
        full_env = {
            **_base(base_env),
            **env,
            "OFFLOAD_API_PORT": str(port),
            "OFFLOAD_API_METRICS_PORT": str(metrics_port),
        }
        service = spawn(name, [sys.executable, "-m", "offload_api"], full_env, log_dir)
        service.extra["url"] = url = f"http://127.0.0.1:{port}"
        service.extra["metrics_url"] = f"http://127.0.0.1:{metrics_port}/metrics"

        def live(url: str = url) -> bool:
            return answers(f"{url}/livez")

        try:
            return wait_up(service, live, timeout, f"{name} to answer /livez")
        except PortTaken:
            if attempt == PORT_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def start_redis(
    data_dir: Path, *, persistent: bool = False, password: str | None = None, maxmemory: str | None = None
) -> RedisServer:
    """A redis-server of its own on a free port (another one if that port was taken meanwhile)."""
    for attempt in range(PORT_ATTEMPTS):
        server = RedisServer(free_port(), data_dir, persistent=persistent, password=password, maxmemory=maxmemory)
        try:
            return server.start()
        except RuntimeError:
            server.stop()
            log = (data_dir / "redis.log").read_text(errors="replace").splitlines()[-5:]
            if attempt == PORT_ATTEMPTS - 1 or not any("address already in use" in line.lower() for line in log):
                raise
    raise AssertionError("unreachable")
