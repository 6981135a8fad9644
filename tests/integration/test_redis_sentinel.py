"""Redis Sentinel, on real local servers: a primary with a password, a replica and one sentinel
with a password of its own. The settings' sentinel options reach every client (the job store's,
the event loop's, the image store's, Celery's broker and result backend), and after a failover
the same client objects write to the new primary, Lua scripts included (the new primary has
none loaded). Then the API and a worker, configured for Sentinel only, run jobs across a
failover."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from kombu import transport as kombu_transports

from offload_core.runtime.celery_app import create_celery_app
from offload_core.runtime.worker_transport import SentinelTransport, use_worker_transport
from offload_core.settings import Settings
from offload_core.store.images import ImageStore
from offload_core.store.jobs import JobStatus, JobStore, async_redis_client, job_key, redis_client
from offload_dev.polling import wait_for
from offload_dev.redis_server import RedisServer, free_port, redis_server_binary
from tests.support import TEST_SETTINGS, Cluster, submit_echo, wait_job

PASSWORD = "primary-secret"
SENTINEL_PASSWORD = "sentinel-secret"
MASTER = "offload-test"


@dataclass
class SentinelSet:
    primary: RedisServer
    replica: RedisServer
    sentinel_port: int
    sentinel: subprocess.Popen[bytes]

    @property
    def env(self) -> dict[str, str]:
        # The URL's host names nothing that exists: the sentinels alone say where the primary is.
        return {
            "OFFLOAD_REDIS_URL": f"redis://:{PASSWORD}@primary.invalid:1/0",
            "OFFLOAD_REDIS_SENTINELS": f"127.0.0.1:{self.sentinel_port}",
            "OFFLOAD_REDIS_SENTINEL_MASTER": MASTER,
            "OFFLOAD_REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD,
        }

    def settings(self) -> Settings:
        return Settings(**{key.removeprefix("OFFLOAD_"): value for key, value in self.env.items()})  # type: ignore[arg-type]

    def sentinel_client(self) -> redis.Redis:
        return redis.Redis(port=self.sentinel_port, password=SENTINEL_PASSWORD, decode_responses=True)

    def primary_port(self) -> int:
        # SENTINEL MASTERS, as clients read it: it names the new primary only once the
        # failover has ended (GET-MASTER-ADDR-BY-NAME does so as soon as it begins).
        masters: dict[str, dict[str, object]] = self.sentinel_client().sentinel_masters()  # type: ignore[assignment]
        return int(str(masters[MASTER]["port"]))

    def fail_over(self) -> int:
        """SENTINEL FAILOVER, then waits until the sentinel names the replica; returns its port."""

        def replica_ready() -> bool:
            replicas = self.sentinel_client().sentinel_slaves(MASTER)
            return any(r["is_slave"] and not (r["is_sdown"] or r["is_disconnected"]) for r in replicas)

        def failover_started() -> bool:
            try:
                self.sentinel_client().sentinel_failover(MASTER)
            except redis.ResponseError as exc:
                # The sentinel refreshes what it knows of the replica every few seconds; until
                # then it may hold it unfit to promote.
                if "NOGOODSLAVE" in str(exc):
                    return False
                raise
            return True

        wait_for(replica_ready, 30, "the sentinel to discover the replica")
        wait_for(failover_started, 30, "the sentinel to accept the failover", interval=0.5)
        wait_for(lambda: self.primary_port() == self.replica.port, 30, "the sentinel to promote the replica")
        promoted = redis.Redis(port=self.replica.port, password=PASSWORD, decode_responses=True)
        wait_for(lambda: promoted.info("replication")["role"] == "master", 30, "the replica to become primary")
        # Until the sentinel turns the old primary into a replica, connections opened before
        # the failover still write there (Sentinel's documented window: those writes are lost).
        demoted = redis.Redis(port=self.primary.port, password=PASSWORD, decode_responses=True)
        wait_for(lambda: demoted.info("replication")["role"] == "slave", 30, "the old primary to become a replica")
        return self.replica.port


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[SentinelSet]:
    primary = RedisServer(free_port(), tmp_path / "primary", password=PASSWORD).start()
    replica = RedisServer(free_port(), tmp_path / "replica", password=PASSWORD).start()
    sentinel: subprocess.Popen[bytes] | None = None
    try:
        to_replica = redis.Redis(port=replica.port, password=PASSWORD)
        to_replica.config_set("masterauth", PASSWORD)
        to_replica.replicaof("127.0.0.1", primary.port)
        wait_for(lambda: to_replica.info("replication").get("master_link_status") == "up", 20, "the replica to sync")
        port = free_port()
        config = tmp_path / "sentinel.conf"  # the sentinel rewrites it: a file of its own
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\nrequirepass {SENTINEL_PASSWORD}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {primary.port} 1\n"
            f"sentinel auth-pass {MASTER} {PASSWORD}\n"
            f"sentinel down-after-milliseconds {MASTER} 1000\n"
            f"sentinel failover-timeout {MASTER} 5000\n"
        )
        log = (tmp_path / "sentinel.log").open("ab")
        sentinel = subprocess.Popen(
            [redis_server_binary(), str(config), "--sentinel"], stdout=log, stderr=subprocess.STDOUT
        )
        found = SentinelSet(primary, replica, port, sentinel)

        def answers() -> bool:
            try:
                return found.primary_port() == primary.port
            except redis.ConnectionError:
                return False

        wait_for(answers, 10, "the sentinel to answer")
        yield found
    finally:
        if sentinel is not None:
            sentinel.terminate()
            sentinel.wait(10)
        replica.stop()
        primary.stop()


@pytest.fixture
def worker_transport() -> Iterator[None]:
    """The worker's own transport for redis://, rediss:// and sentinel:// in this test only."""
    aliases = dict(kombu_transports.TRANSPORT_ALIASES)
    use_worker_transport()
    yield
    kombu_transports.TRANSPORT_ALIASES.clear()
    kombu_transports.TRANSPORT_ALIASES.update(aliases)
    for scheme in ("redis", "rediss", "sentinel"):
        getattr(kombu_transports, "_transport_cache", {}).pop(scheme, None)


@pytest.mark.usefixtures("worker_transport")
def test_every_client_reaches_the_primary_the_sentinel_names_and_follows_a_failover(
    sentinel_set: SentinelSet,
) -> None:
    settings = sentinel_set.settings()
    store = JobStore.from_settings(settings)
    images = ImageStore.from_settings(settings)
    app = create_celery_app(settings)
    assert app.conf.broker_url.startswith("sentinel://")
    assert app.conf.broker_transport_options["master_name"] == MASTER

    def write_everywhere(tag: str) -> int:
        """Writes through every client; returns the port of the server that took the writes."""
        store.create(tag, task="offload.echo", queue="default")
        store.start(tag, task="offload.echo", queue="default", worker="w@test")  # a Lua script
        store.succeed(tag, {"tag": tag})
        images.client.set(f"test:image:{tag}", b"bytes")

        async def through_the_event_loop() -> None:
            client = async_redis_client(settings)
            await client.set(f"test:async:{tag}", tag)
            await client.aclose()

        asyncio.run(through_the_event_loop())
        with app.connection_for_write() as connection:
            assert isinstance(connection.transport, SentinelTransport)
            connection.default_channel.client.lpush(f"test:broker:{tag}", tag)  # type: ignore[attr-defined]
        app.backend.client.set(f"test:backend:{tag}", tag)  # type: ignore[attr-defined]
        return int(redis_client(settings).info("server")["tcp_port"])

    assert write_everywhere("before") == sentinel_set.primary.port
    new_primary = sentinel_set.fail_over()
    # Open connections of the old primary break (or answer READONLY); the next call reconnects.
    assert wait_for(lambda: _retrying(write_everywhere, "after"), 30, "writes after the failover") == new_primary

    on_new_primary = redis.Redis(port=new_primary, password=PASSWORD, decode_responses=True)
    job = store.get("after")
    assert job is not None
    assert job.status is JobStatus.SUCCEEDED
    for key in ("test:image:after", "test:async:after", "test:broker:after", "test:backend:after"):
        assert on_new_primary.exists(key), key
    assert on_new_primary.exists("test:async:before")  # replicated before the failover


def _retrying(write: object, tag: str) -> int | None:
    try:
        return write(tag)  # type: ignore[operator,no-any-return]
    except (redis.ConnectionError, redis.ReadOnlyError, redis.TimeoutError):
        return None


def test_the_api_and_a_worker_on_sentinel_run_jobs_across_a_failover(sentinel_set: SentinelSet, tmp_path: Path) -> None:
    env = {**TEST_SETTINGS, **sentinel_set.env}
    own = Cluster(sentinel_set.primary, env, tmp_path, redis.Redis(port=sentinel_set.primary.port))
    try:  # the servers are the fixture's: only the processes stop here
        worker = own.start_worker("worker")
        own.start_api()
        client = own.client
        before = submit_echo(client, message="before")
        assert wait_job(client, before, {"succeeded", "failed"})["status"] == "succeeded"

        sentinel_set.fail_over()

        def accepted() -> str | None:
            response = client.post("/v1/jobs/echo", json={"message": "after"})
            return str(response.json()["id"]) if response.status_code == 202 else None

        after = wait_for(accepted, 30, "the API to accept jobs on the new primary")
        assert wait_job(client, after, {"succeeded", "failed"}, timeout=60)["status"] == "succeeded", worker.log_tail()
        assert redis.Redis(port=sentinel_set.replica.port, password=PASSWORD).exists(job_key(after))
    finally:
        for http_client in own._clients:
            http_client.close()
        for service in reversed(own.services):
            service.stop()
