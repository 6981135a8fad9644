"""An API process of its own (with its own Redis, no workers) for tests that change its settings,
break its Redis or stop it, without touching the shared stack."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from offload_dev.polling import wait_for
from offload_dev.processes import Service
from tests.support import TEST_SETTINGS, cluster


@dataclass
class StandaloneApi:
    api: Service
    client: httpx.Client
    redis: redis.Redis

    def log(self) -> str:
        return self.api.log.read_text(errors="replace")

    def stop_and_wait(self, timeout: float) -> None:
        """SIGTERM, as Kubernetes sends it, then wait for the process to exit."""
        self.client.close()  # an idle keep-alive connection would only delay uvicorn's shutdown
        self.api.terminate()
        wait_for(lambda: not self.api.alive(), timeout, "the API to exit after SIGTERM")


@contextlib.contextmanager
def standalone_api(log_dir: Path, **settings: str) -> Iterator[StandaloneApi]:
    """``settings`` are OFFLOAD_* names without the prefix, e.g. COMPUTE_WORKERS="1"."""
    with cluster(log_dir, {**TEST_SETTINGS, **{f"OFFLOAD_{k}": v for k, v in settings.items()}}) as own:
        api = own.start_api()
        yield StandaloneApi(api, own.client, own.redis)


def pool_processes(parent_pid: int) -> list[int]:
    """The multiprocessing children (spawned pool processes) of a process, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        parent = int(stat.rsplit(")", 1)[1].split()[1])  # after "pid (comm) state"
        if parent == parent_pid and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    """SIGSTOP a process (its computation then takes as long as the test needs), SIGCONT after."""
    import os

    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
