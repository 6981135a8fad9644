"""The whole topology on real containers: Redis (append-only), the API, workers, the notifier and
Flower from the project's images on a user-defined network, configured through the environment
variables the Helm chart sets (deploy/helm/offload/templates), with small limits so each scenario
ends in about a minute."""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import httpx
from testcontainers.core.container import DockerContainer
from testcontainers.core.network import Network

from offload_api.compute import percentile
from offload_client import Job, Offload
from offload_dev.polling import wait_for
from tests.support import API_KEY, WEBHOOK_SECRETS

FLOWER_AUTH = ("admin", "flower-test-password")

# The chart's ConfigMap (templates/configmap.yaml), scaled down. The settings' own rule holds:
# visibility timeout (12) > hard time limit (10) + retry backoff cap (0.5).
CONFIG = {
    "OFFLOAD_ENVIRONMENT": "production",
    "OFFLOAD_LOG_LEVEL": "INFO",
    "OFFLOAD_LOG_FORMAT": "json",
    "OFFLOAD_VISIBILITY_TIMEOUT_SECONDS": "12",
    "OFFLOAD_UNACKED_RESTORE_INTERVAL_SECONDS": "1",
    "OFFLOAD_UNACKED_RESTORE_THROTTLE": "1",
    "OFFLOAD_TASK_SOFT_TIME_LIMIT_SECONDS": "8",
    "OFFLOAD_TASK_TIME_LIMIT_SECONDS": "10",
    "OFFLOAD_TASK_MAX_RETRIES": "3",
    "OFFLOAD_RETRY_BACKOFF_SECONDS": "0.1",
    "OFFLOAD_RETRY_BACKOFF_MAX_SECONDS": "0.5",
    # offload.redisEnv (in-cluster Redis without a password here)
    "OFFLOAD_REDIS_URL": "redis://redis:6379/0",
    # Not in the chart (its defaults, 30 and 60, apply there): a shorter sweep for a job whose
    # message Redis lost. The grace must exceed the longest publish, 36 s with the default
    # broker timeouts the chart keeps.
    "OFFLOAD_ORPHAN_SWEEP_INTERVAL_SECONDS": "2",
    "OFFLOAD_ORPHAN_GRACE_SECONDS": "40",
}
# The bound README states for a SIGKILLed worker's job: visibility + restore interval x throttle.
RESTORE_BOUND_SECONDS = 12 + 1 * 1
# The bound README states for a job whose message Redis lost: grace + 2 sweeps, from acceptance.
ORPHAN_RECOVERY_BOUND_SECONDS = 40 + 2 * 2
SOFT_SHUTDOWN_SECONDS = 3
PRE_STOP_SECONDS = 1
# The chart requires the grace period to exceed preStop + soft shutdown + a margin.
GRACE_PERIOD_SECONDS = 15


def worker_env(queues: str, concurrency: int) -> dict[str, str]:
    """templates/workers/worker-deployment.yaml's env."""
    return {
        "OFFLOAD_WORKER_QUEUES": queues,
        "OFFLOAD_WORKER_CONCURRENCY": str(concurrency),
        "OFFLOAD_WORKER_POOL": "prefork",
        "OFFLOAD_WORKER_PREFETCH_MULTIPLIER": "1",
        "OFFLOAD_WORKER_SOFT_SHUTDOWN_TIMEOUT_SECONDS": str(SOFT_SHUTDOWN_SECONDS),
        "OFFLOAD_WORKER_STATE_DIR": "/tmp/offload",
        "OFFLOAD_WORKER_HEARTBEAT_INTERVAL_SECONDS": "1",
        "OFFLOAD_WORKER_METRICS_HOST": "0.0.0.0",
        "OFFLOAD_WORKER_METRICS_PORT": "9808",
        # offload.deliveryEnv with the chart's defaults: no SMTP host or login, one signing
        # secret (the chart generates it), an empty allow-list.
        "OFFLOAD_SMTP_PORT": "587",
        "OFFLOAD_SMTP_SECURITY": "starttls",
        "OFFLOAD_EMAIL_FROM": "Offload <offload@localhost>",
        "OFFLOAD_WEBHOOK_SECRETS": WEBHOOK_SECRETS[0],
        "OFFLOAD_OUTBOUND_ALLOWED_HOSTS": "",
    }


API_ENV = {
    "OFFLOAD_API_HOST": "0.0.0.0",
    "OFFLOAD_API_PORT": "8000",
    "OFFLOAD_API_MAX_BODY_BYTES": "1048576",
    "OFFLOAD_API_METRICS_PORT": "9807",
    "OFFLOAD_API_MAX_CONNECTIONS": "1000",
    "OFFLOAD_API_KEYS": API_KEY,
    # offload.outboundEnv: the API checks webhook URLs against the allow-list at submit.
    "OFFLOAD_OUTBOUND_ALLOWED_HOSTS": "",
}


def _remove(container: DockerContainer) -> None:
    """Removes a container (force); one already gone is fine."""
    import docker.errors  # type: ignore[import-untyped]

    with suppress(docker.errors.NotFound):
        container.get_wrapped_container().remove(force=True, v=True)


def publish_on_loopback(container: DockerContainer, port: int) -> None:
    """Publishes a container port on 127.0.0.1 only, on a port the engine picks (docker-py's
    ports mapping takes the address; with_bind_ports does not); see host_port()."""
    container.ports[f"{port}/tcp"] = ("127.0.0.1", None)  # type: ignore[assignment]


def host_port(container: DockerContainer, port: int) -> int:
    """The host port the engine published a started container's port on."""
    wrapped = container.get_wrapped_container()
    wrapped.reload()
    return int(wrapped.attrs["NetworkSettings"]["Ports"][f"{port}/tcp"][0]["HostPort"])


@dataclass
class Topology:
    images: dict[str, str]
    stack: ExitStack
    network: Network
    redis: DockerContainer | None = None
    api: DockerContainer | None = None
    api_url: str = ""
    flower_url: str = ""
    workers: dict[str, DockerContainer] = field(default_factory=dict)
    # Host directories mounted read-only into every container started after they are added
    # (container path -> host path), as the chart mounts Secrets (a Redis CA bundle).
    mounts: dict[str, str] = field(default_factory=dict)
    _client: httpx.Client | None = None
    _offload: Offload | None = None

    # ---- containers -------------------------------------------------------------------------

    def _container(
        self, image: str, alias: str, env: dict[str, str], read_only: bool = True, **kwargs: Any
    ) -> DockerContainer:
        name = f"{alias}-{uuid.uuid4().hex[:6]}"
        container = (
            DockerContainer(image)
            .with_network(self.network)
            .with_network_aliases(alias)
            .with_name(name)
            .with_kwargs(hostname=name, read_only=read_only, **kwargs)
        )
        for key, value in env.items():
            container.with_env(key, value)
        for path, host_path in self.mounts.items():
            container.with_volume_mapping(host_path, path, "ro")
        if read_only:
            # As in the chart: a read-only root filesystem with a writable /tmp.
            container.with_tmpfs_mount("/tmp", "rw,size=64m")
        return container

    def _enter(self, container: DockerContainer) -> DockerContainer:
        container.start()
        self.stack.callback(_remove, container)
        return container

    def remove_worker(self, name: str) -> None:
        _remove(self.workers.pop(name))

    def start_redis(self) -> DockerContainer:
        redis = self._container(self.images["redis"], "redis", {}, read_only=False).with_command(
            "redis-server --protected-mode no --appendonly yes --appendfsync always --maxmemory-policy noeviction"
        )
        self.redis = self._enter(redis)
        wait_for(lambda: self.redis_cli("ping") == "PONG", 60, "Redis to answer PING", interval=0.2)
        return redis

    def redis_cli(self, *args: str) -> str:
        assert self.redis is not None
        code, out = self.redis.get_wrapped_container().exec_run(["redis-cli", *args])
        return out.decode().strip() if code == 0 else ""

    def start_api(self, env: dict[str, str] | None = None) -> None:
        """The API; env adds to or overrides the chart's configuration."""
        api = self._container(self.images["api"], "api", {**CONFIG, **API_ENV, **(env or {})})
        publish_on_loopback(api, 8000)
        self.api = self._enter(api)
        self.api_url = f"http://127.0.0.1:{host_port(api, 8000)}"

    def start_worker(
        self, role: str = "worker", queues: str = "default,low", concurrency: int = 2, env: dict[str, str] | None = None
    ) -> str:
        """Starts a worker (role "worker") or the notifier; returns its container name. Not
        waited for: see wait_ready(). env adds to or overrides the chart's configuration."""
        image = self.images["notifier" if role == "notifier" else "worker"]
        queues = "high" if role == "notifier" else queues
        env = {**CONFIG, **worker_env(queues, concurrency), **(env or {})}
        worker = self._container(image, role, env)
        self._enter(worker)
        name = str(worker._name)
        self.workers[name] = worker
        return name

    def start_flower(self) -> None:
        # templates/flower/flower-deployment.yaml: the worker image, Offload's app, basic auth.
        flower = self._container(
            self.images["worker"],
            "flower",
            {**CONFIG, "FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH)},
            entrypoint=["python", "-m", "celery", "-A", "offload_core.runtime.flower_app", "flower", "--port=5555"],
        )
        publish_on_loopback(flower, 5555)
        self._enter(flower)
        self.flower_url = f"http://127.0.0.1:{host_port(flower, 5555)}"

    # ---- readiness --------------------------------------------------------------------------

    def worker_ready(self, name: str) -> bool:
        container = self.workers[name].get_wrapped_container()
        container.reload()
        if container.status != "running":
            raise AssertionError(f"{name} is {container.status}:\n{container.logs(tail=40).decode()}")
        code, _ = container.exec_run(["test", "-f", "/tmp/offload/ready"])
        return bool(code == 0)

    def wait_ready(self, *workers: str, timeout: float = 120) -> None:
        """The API's /readyz, Flower's /healthcheck and each worker's ready file (the chart's
        readiness probes). Generous: the machine is shared with other test runs."""
        if self.api is not None:

            def api_ready() -> bool:
                try:
                    return httpx.get(f"{self.api_url}/readyz", timeout=3).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(api_ready, timeout, "the API container to answer /readyz", interval=0.2)
        for name in workers or tuple(self.workers):
            wait_for(lambda n=name: self.worker_ready(n), timeout, f"{name} to write its ready file", interval=0.2)  # type: ignore[misc]
        if self.flower_url:

            def flower_ready() -> bool:
                try:
                    return httpx.get(f"{self.flower_url}/healthcheck", timeout=3).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(flower_ready, timeout, "Flower to answer /healthcheck", interval=0.2)

    # ---- lifecycle, the Kubernetes way -----------------------------------------------------

    def stop_worker(self, name: str, grace: float = GRACE_PERIOD_SECONDS) -> float:
        """preStop (an exec'd sleep, as the chart's hook), then SIGTERM to PID 1 and SIGKILL after
        the grace period (docker stop's timeout). Returns the seconds SIGTERM took to end it."""
        container = self.workers[name].get_wrapped_container()
        container.exec_run(["sleep", str(PRE_STOP_SECONDS)])
        started = time.monotonic()
        # The grace period counts from the start of preStop.
        container.stop(timeout=int(grace - PRE_STOP_SECONDS))
        took = time.monotonic() - started
        container.reload()
        return took

    def kill_worker(self, name: str) -> None:
        self.workers[name].get_wrapped_container().kill(signal="SIGKILL")

    def logs(self, name: str) -> str:
        return str(self.workers[name].get_wrapped_container().logs().decode(errors="replace"))

    # ---- the API ----------------------------------------------------------------------------

    @property
    def client(self) -> httpx.Client:
        """Plain HTTP with the test key, for what tests the wire itself (bad input, raw statuses)."""
        if self._client is None:
            limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
            self._client = self.stack.enter_context(
                httpx.Client(
                    base_url=self.api_url,
                    headers={"Authorization": f"Bearer {API_KEY}"},
                    timeout=30,
                    limits=limits,
                )
            )
        return self._client

    @property
    def offload(self) -> Offload:
        """The project's own client, as a user's service would submit and follow jobs."""
        if self._offload is None:
            self._offload = self.stack.enter_context(Offload(self.api_url, API_KEY, timeout=30))
        return self._offload

    def submit(self, bodies: Iterable[dict[str, Any]], concurrency: int = 16) -> list[str]:
        """Echo jobs through the client with a bounded thread pool; returns the job ids in order.
        A body's `queue` and `priority` are the submission's, the rest is the echo payload."""

        def one(body: dict[str, Any]) -> str:
            payload = {"message": "system", **body}
            queue, priority = payload.pop("queue", None), payload.pop("priority", None)
            return self.offload.submit("offload.echo", payload, queue=queue, priority=priority).id

        with ThreadPoolExecutor(concurrency) as pool:
            return list(pool.map(one, bodies))

    def jobs(self, ids: Iterable[str], concurrency: int = 16) -> dict[str, Job]:
        with ThreadPoolExecutor(concurrency) as pool:
            return {j.id: j for j in pool.map(self.offload.get, list(ids))}

    def wait_terminal(self, ids: list[str], timeout: float, every: float = 1.0, fail: bool = True) -> dict[str, Job]:
        """Polls until every job is terminal (re-reading only those that are not), with a deadline.
        At the deadline: an AssertionError, or (fail=False) every record as it stands."""
        done: dict[str, Job] = {}
        pending = list(ids)
        deadline = time.monotonic() + timeout
        while pending:
            for job_id, record in self.jobs(pending).items():
                if record.finished:
                    done[job_id] = record
            pending = [i for i in pending if i not in done]
            if not pending:
                break
            if time.monotonic() > deadline:
                if not fail:
                    return {**done, **self.jobs(pending)}
                statuses: dict[str, int] = {}
                records = self.jobs(pending)
                for record in records.values():
                    statuses[record.status] = statuses.get(record.status, 0) + 1
                raise AssertionError(
                    f"{len(pending)} of {len(ids)} jobs not terminal after {timeout}s: {statuses}; "
                    f"e.g. {list(records.values())[:3]}"
                )
            time.sleep(every)
        return done

    def queue_depth(self, queue: str) -> int:
        return next(q.depth for q in self.offload.queues() if q.name == queue)


@contextmanager
def topology(images: dict[str, str]) -> Iterator[Topology]:
    with ExitStack() as stack, Network() as network:
        topo = Topology(images, stack, network)
        try:
            yield topo
        finally:
            stack.close()


def start_delay(record: Job) -> float:
    """Seconds from the job's creation (the API) to its first start (a worker)."""
    assert record.started_at is not None, record
    return (record.started_at - record.created_at).total_seconds()


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": round(statistics.median(values) * 1000, 1),
        "p99_ms": round(percentile(sorted(values), 99) * 1000, 1),
        "max_ms": round(max(values) * 1000, 1),
    }


def report(record_property: Callable[[str, object], None], name: str, value: object) -> None:
    """Prints a figure (read with pytest -s) and records it in the JUnit report."""
    record_property(name, value)
    print(f"\n[system] {name}: {value}")
