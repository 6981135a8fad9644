"""The example plugin's images on real containers: examples/acme-jobs/Dockerfile builds them FROM
the project's images (classic builder), and an API, a worker for the plugin's own queue and Redis
run both of its jobs end to end, configured as the chart would with values-acme.yaml."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from typing import Any

import httpx
import pytest

from tests.conftest import IMAGE_TAG, ROOT
from tests.system.harness import Topology, topology

EXAMPLE = ROOT / "examples" / "acme-jobs"
# What the chart renders into OFFLOAD_QUEUES from the overlay's worker sets.
QUEUES = "default,low,high,acme"


@pytest.fixture
def acme_images(images: dict[str, str]) -> dict[str, str]:
    """The project's images with the API and worker replaced by their acme-jobs extensions."""
    docker = shutil.which("docker")
    assert docker, "the docker command is not on PATH"
    built = dict(images)
    for role in ("api", "worker"):
        tag = f"acme-offload-{role}:{IMAGE_TAG}"
        result = subprocess.run(
            [docker, "build", "--quiet", "--build-arg", f"OFFLOAD_IMAGE={images[role]}", "-t", tag, str(EXAMPLE)],
            env={**os.environ, "DOCKER_BUILDKIT": "0"},
            capture_output=True,
            text=True,
            check=False,
            timeout=900,
        )
        assert result.returncode == 0, f"building {tag} failed:\n{result.stdout}\n{result.stderr}"
        built[role] = tag
    return built


def submit(topo: Topology, job_type: str, payload: dict[str, Any]) -> str:
    accepted = topo.offload.submit(job_type, payload)
    assert accepted.queue == "acme", accepted
    return accepted.id


def test_the_plugin_images_run_both_jobs_on_a_worker_of_the_plugins_queue(acme_images: dict[str, str]) -> None:
    with topology(acme_images) as topo:
        topo.start_redis()
        topo.start_api(env={"OFFLOAD_QUEUES": QUEUES})
        # The fetch job reaches the API container by its network alias, a private address.
        topo.start_worker(queues="acme", env={"OFFLOAD_QUEUES": QUEUES, "OFFLOAD_OUTBOUND_ALLOWED_HOSTS": "api"})
        topo.wait_ready()

        types = {t.name: t for t in topo.offload.job_types()}
        assert {"offload.echo", "acme.primes", "acme.fetch"} <= set(types)
        assert types["acme.primes"].consumed is True
        primes = submit(topo, "acme.primes", {"limit": 1_000_000, "steps": 5})
        fetch = submit(topo, "acme.fetch", {"url": "http://api:8000/livez"})
        done = topo.wait_terminal([primes, fetch], timeout=120)
        livez = httpx.get(f"{topo.api_url}/livez", timeout=10).content

    assert done[primes].status == "succeeded", done[primes]
    assert done[fetch].status == "succeeded", done[fetch]
    assert done[primes].result == {"limit": 1_000_000, "count": 78_498, "largest": 999_983}
    assert done[primes].progress.percent == 100
    fetched = done[fetch].result
    assert (fetched["status"], fetched["bytes"]) == (200, len(livez))
    assert fetched["sha256"] == hashlib.sha256(livez).hexdigest()
