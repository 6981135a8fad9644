from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from offload_dev.redis_server import RedisServer, free_port
from tests.support import TEST_SETTINGS, Service, api_client, start_api, start_worker


@dataclass
class Stack:
    redis: RedisServer
    env: dict[str, str]
    api: Service
    worker: Service
    notifier: Service
    client: httpx.Client
    log_dir: Path


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Redis, the API, a default+low worker and the notifier, as real processes."""
    base = tmp_path_factory.mktemp("stack")
    redis = RedisServer(free_port(), base / "redis").start()
    env = {**TEST_SETTINGS, "OFFLOAD_REDIS_URL": redis.url}
    services: list[Service] = []
    try:
        services.append(worker := start_worker("worker", env, base))
        services.append(notifier := start_worker("notifier", env, base, module="offload_notifier"))
        services.append(api := start_api(env, base))
        with api_client(api) as client:
            yield Stack(redis, env, api, worker, notifier, client, base)
    finally:
        for service in services:
            service.stop()
        redis.stop()
