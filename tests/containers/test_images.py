"""Each image's entrypoint against a Redis container on a user-defined network, configured with
the environment variables the chart sets; stopped the way Kubernetes stops a pod."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
from testcontainers.core.container import DockerContainer

from offload_dev.polling import wait_for
from tests.support import API_KEY, submit_echo, wait_job
from tests.system.harness import host_port, publish_on_loopback

SETTINGS = {
    "OFFLOAD_REDIS_URL": "redis://redis:6379/0",
    "OFFLOAD_API_KEYS": API_KEY,
    "OFFLOAD_WORKER_SOFT_SHUTDOWN_TIMEOUT_SECONDS": "2",
    "OFFLOAD_WORKER_HEARTBEAT_INTERVAL_SECONDS": "1",
    "OFFLOAD_WORKER_CONCURRENCY": "1",
}


def _container(image: str, network: Any, name: str, **env: str) -> DockerContainer:
    container = (
        DockerContainer(image)
        .with_network(network)
        .with_network_aliases(name)
        .with_name(f"{name}-{uuid.uuid4().hex[:6]}")
    )
    for key, value in {**SETTINGS, **env}.items():
        container.with_env(key, value)
    # As in the chart: a read-only root filesystem with a writable /tmp.
    return container.with_kwargs(read_only=True).with_tmpfs_mount("/tmp", "rw,size=64m")


def _ready(container: DockerContainer) -> bool:
    code, _ = container.get_wrapped_container().exec_run(["test", "-f", "/tmp/offload/ready"])
    return bool(code == 0)


def _start_worker(stack: ExitStack, image: str, network: Any, name: str, **env: str) -> DockerContainer:
    worker = stack.enter_context(_container(image, network, name, OFFLOAD_WORKER_NAME=f"{name}@%h", **env))
    wait_for(lambda: _ready(worker), 60, f"{name} to write its ready file", interval=0.2)
    return worker


@pytest.fixture
def api(images: dict[str, str], network: Any) -> Iterator[tuple[httpx.Client, ExitStack]]:
    with ExitStack() as stack:
        redis = DockerContainer(images["redis"]).with_network(network).with_network_aliases("redis")
        stack.enter_context(redis.with_command("redis-server --protected-mode no --appendonly yes"))
        api = _container(images["api"], network, "api")
        publish_on_loopback(api, 8000)
        stack.enter_context(api)
        client = stack.enter_context(
            httpx.Client(
                base_url=f"http://127.0.0.1:{host_port(api, 8000)}",
                headers={"Authorization": f"Bearer {API_KEY}"},
                timeout=10,
            )
        )

        def ready() -> bool:
            try:
                return client.get("/readyz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 60, "the API container to answer /readyz", interval=0.2)
        yield client, stack


def test_images_are_non_root_and_carry_only_their_service(images: dict[str, str]) -> None:
    import docker  # type: ignore[import-untyped]

    engine = docker.from_env()

    def run(image: str, entrypoint: str, *args: str) -> str:
        output: bytes = engine.containers.run(image, list(args), entrypoint=entrypoint, remove=True)
        return output.decode().strip()

    for name in ("api", "worker", "notifier"):
        assert run(images[name], "id", "-u") == "10001"
        assert run(images[name], "sh", "-c", "command -v gcc cc || echo none") == "none"
    modules = ("fastapi", "offload_worker", "offload_worker.report_engine", "offload_notifier", "PIL")
    probe = (
        "import importlib.util as u\n"
        "def found(m):\n"
        "    try:\n"
        "        return u.find_spec(m) is not None\n"
        "    except ModuleNotFoundError:  # a submodule of a package the image lacks\n"
        "        return False\n"
        f"print(*(m for m in {modules} if found(m)))"
    )
    present = {name: run(images[name], "python", "-c", probe) for name in ("api", "worker", "notifier")}
    # Pillow where images are checked (api) and processed (worker), never in the notifier; the
    # report engine in the worker alone; the notification job in the notifier and the worker
    # (which a small setup may let take `high` too).
    assert present == {
        "api": "fastapi PIL",
        "worker": "offload_worker offload_worker.report_engine offload_notifier PIL",
        "notifier": "offload_notifier",
    }
    sizes = {name: engine.images.get(images[name]).attrs["Size"] // 2**20 for name in ("api", "worker", "notifier")}
    print(f"\nimage sizes (MiB): {sizes}")


def test_a_job_flows_through_every_image(images: dict[str, str], network: Any, api) -> None:
    client, stack = api
    _start_worker(stack, images["worker"], network, "worker")
    _start_worker(stack, images["notifier"], network, "notifier")
    for queue, runs_on in [("high", "notifier@"), ("default", "worker@"), ("low", "worker@")]:
        job_id = submit_echo(client, queue=queue, message=queue)
        done = wait_job(client, job_id, {"succeeded", "failed"})
        assert done["status"] == "succeeded", done
        assert done["worker"].startswith(runs_on)
    queues = {q["name"]: q["consumers"] for q in client.get("/v1/queues").json()["queues"]}
    # ...and the API's own in-process queue, with its compute pool (OFFLOAD_COMPUTE_WORKERS=2).
    assert queues == {"high": 1, "default": 1, "low": 1, "in-process": 2}


def test_docker_stop_during_a_long_job_hands_it_to_another_worker(images: dict[str, str], network: Any, api) -> None:
    client, stack = api
    first = _start_worker(stack, images["worker"], network, "first", OFFLOAD_WORKER_QUEUES="default")
    job_id = submit_echo(client, sleep_ms=8000)
    assert wait_job(client, job_id, {"started"})["worker"].startswith("first@")
    _start_worker(stack, images["worker"], network, "second", OFFLOAD_WORKER_QUEUES="default")

    # Kubernetes' lifecycle: SIGTERM to PID 1, SIGKILL once the grace period (here 20 s) ends.
    started = time.monotonic()
    first.get_wrapped_container().stop(timeout=20)
    stopped_after = time.monotonic() - started
    first.get_wrapped_container().reload()
    assert first.get_wrapped_container().attrs["State"]["OOMKilled"] is False
    assert stopped_after < 15, f"the worker needed the SIGKILL ({stopped_after:.1f}s)"
    assert "Restoring 1 unacknowledged message" in first.get_wrapped_container().logs().decode()

    done = wait_job(client, job_id, {"succeeded", "failed"}, timeout=40)
    assert done["status"] == "succeeded", done
    assert done["worker"].startswith("second@")
    assert done["attempts"] == 2
