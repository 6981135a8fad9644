"""The project's images on a real container engine. Skipped, saying why, where no engine runs;
a failure instead when OFFLOAD_REQUIRE_DOCKER=1 (CI sets it)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

# The reaper image cannot be pulled without a registry; fixtures clean up themselves.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

ROOT = Path(__file__).resolve().parents[2]
TAG = "test"


def _engine_problem() -> str | None:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env().ping()
    except Exception as exc:
        return f"no container engine answers ({type(exc).__name__}: {exc})"
    return None


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    """Builds the three images from the working tree (cached layers make repeats quick)."""
    problem = _engine_problem()
    if problem:
        if os.environ.get("OFFLOAD_REQUIRE_DOCKER") == "1":
            pytest.fail(f"OFFLOAD_REQUIRE_DOCKER=1 but {problem}")
        pytest.skip(f"container tests skipped: {problem}")
    result = subprocess.run(
        [str(ROOT / "scripts" / "build-images.sh")],
        cwd=ROOT,
        env={**os.environ, "TAG": TAG},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"building the images failed:\n{result.stdout}\n{result.stderr}"
    redis_image = result.stdout.strip().splitlines()[-1].split("redis=")[-1]
    return {
        "api": f"offload-api:{TAG}",
        "worker": f"offload-worker:{TAG}",
        "notifier": f"offload-notifier:{TAG}",
        "redis": redis_image,
    }


@pytest.fixture
def network(images: dict[str, str]) -> Iterator[object]:
    from testcontainers.core.network import Network

    with Network() as net:
        yield net
