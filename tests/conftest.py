from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from offload_dev.redis_server import RedisServer, free_port
from tests.receivers import ScriptedSmtpHandler, WebhookReceiver, smtp_server
from tests.support import TEST_SETTINGS, Service, api_client, start_api, start_worker

# The reaper image cannot be pulled without a registry; container fixtures clean up themselves.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

ROOT = Path(__file__).resolve().parents[1]
IMAGE_TAG = "test"


def _engine_problem() -> str | None:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env().ping()
    except Exception as exc:
        return f"no container engine answers ({type(exc).__name__}: {exc})"
    return None


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    """The three images built from the working tree (cached layers make repeats quick), for
    tests/containers and tests/system. Skipped, saying why, where no container engine answers;
    a failure instead when OFFLOAD_REQUIRE_DOCKER=1 (CI sets it)."""
    problem = _engine_problem()
    if problem:
        if os.environ.get("OFFLOAD_REQUIRE_DOCKER") == "1":
            pytest.fail(f"OFFLOAD_REQUIRE_DOCKER=1 but {problem}")
        pytest.skip(f"container tests skipped: {problem}")
    result = subprocess.run(
        [str(ROOT / "scripts" / "build-images.sh")],
        cwd=ROOT,
        env={**os.environ, "TAG": IMAGE_TAG},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"building the images failed:\n{result.stdout}\n{result.stderr}"
    redis_image = result.stdout.strip().splitlines()[-1].split("redis=")[-1]
    return {
        "api": f"offload-api:{IMAGE_TAG}",
        "worker": f"offload-worker:{IMAGE_TAG}",
        "notifier": f"offload-notifier:{IMAGE_TAG}",
        "redis": redis_image,
    }


@dataclass
class Stack:
    redis: RedisServer
    env: dict[str, str]
    api: Service
    worker: Service
    notifier: Service
    client: httpx.Client
    log_dir: Path
    smtp: ScriptedSmtpHandler
    webhooks: WebhookReceiver


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Redis, the API, a default+low worker and the notifier, as real processes, with a real
    SMTP server and webhook receiver on loopback for them to deliver to."""
    base = tmp_path_factory.mktemp("stack")
    with smtp_server() as (smtp, smtp_port):
        webhooks = WebhookReceiver().start()
        try:
            yield from _stack(base, smtp, smtp_port, webhooks)
        finally:
            webhooks.stop()


def _stack(base: Path, smtp: ScriptedSmtpHandler, smtp_port: int, webhooks: WebhookReceiver) -> Iterator[Stack]:
    redis = RedisServer(free_port(), base / "redis").start()
    env = {**TEST_SETTINGS, "OFFLOAD_REDIS_URL": redis.url, "OFFLOAD_SMTP_PORT": str(smtp_port)}
    services: list[Service] = []
    try:
        services.append(worker := start_worker("worker", env, base))
        services.append(notifier := start_worker("notifier", env, base, module="offload_notifier"))
        services.append(api := start_api(env, base))
        with api_client(api) as client:
            yield Stack(redis, env, api, worker, notifier, client, base, smtp, webhooks)
    finally:
        for service in services:
            service.stop()
        redis.stop()
