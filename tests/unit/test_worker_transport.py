"""The worker's transport replaces only kombu's Redis transport class: URLs keep their meaning."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kombu import Connection
from kombu import transport as kombu_transports

from offload_core.runtime import worker_transport


@pytest.fixture
def worker_transport_in_use() -> Iterator[None]:
    saved = dict(kombu_transports.TRANSPORT_ALIASES)
    worker_transport.use_worker_transport()
    try:
        yield
    finally:
        kombu_transports.TRANSPORT_ALIASES.clear()
        kombu_transports.TRANSPORT_ALIASES.update(saved)
        for scheme in ("redis", "rediss"):
            getattr(kombu_transports, "_transport_cache", {}).pop(scheme, None)


@pytest.mark.usefixtures("worker_transport_in_use")
def test_redis_urls_use_the_worker_transport_and_keep_their_parameters() -> None:
    plain = Connection("redis://:secret@redis.example:6390/3", transport_options={"visibility_timeout": 7})
    assert plain.transport_cls == "redis"
    assert type(plain.transport) is worker_transport.Transport
    assert (plain.hostname, plain.port, plain.password, plain.virtual_host) == ("redis.example", 6390, "secret", "3")
    assert plain.transport_options == {"visibility_timeout": 7}
    # rediss:// still means TLS, as with kombu's own class.
    secure = Connection("rediss://redis.example:6390/0")
    assert type(secure.transport) is worker_transport.Transport
    assert secure.ssl
