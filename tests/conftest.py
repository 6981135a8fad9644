from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.receivers import ScriptedSmtpHandler, WebhookReceiver, smtp_server
from tests.support import TEST_SETTINGS, Stack, cluster

# The reaper image cannot be pulled without a registry; container fixtures clean up themselves.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

ROOT = Path(__file__).resolve().parents[1]
# One tag per checkout: two checkouts testing on one engine must not run each other's images.
IMAGE_TAG = "test-" + hashlib.sha256(str(ROOT).encode()).hexdigest()[:8]


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
    with cluster(base, {**TEST_SETTINGS, "OFFLOAD_SMTP_PORT": str(smtp_port)}) as started:
        worker = started.start_worker("worker")
        notifier = started.start_worker("notifier", module="offload_notifier")
        api = started.start_api()
        yield Stack(started.server, started.env, api, worker, notifier, started.client, base, smtp, webhooks)
