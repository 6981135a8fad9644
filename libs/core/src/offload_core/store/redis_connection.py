"""How every process reaches Redis: one URL, or a Sentinel set that names the primary, with or
without TLS. The job store's clients, the image store, the worker's heartbeat and Celery's broker
and result backend all take their options from here, so they follow the same primary and check
certificates the same way.

With Sentinel, redis-py asks the sentinels for the primary on every new connection; a failover
breaks the open ones (the old primary is gone, or answers READONLY, which redis-py's
sentinel-managed connection turns into a connection error), and the next call reconnects to the
new primary. Lua scripts are loaded per server: the new primary answers NOSCRIPT to the first
EVALSHA of each, and redis-py's ``Script`` (and the API's ScriptBatcher) load it again.
"""

from __future__ import annotations

import ssl
from typing import Any, cast
from urllib.parse import quote, unquote, urlsplit

import redis
import redis.asyncio as aioredis
from redis import sentinel as sync_sentinel
from redis.asyncio import sentinel as async_sentinel

from offload_core.settings import Settings

CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}


def tls_options(settings: Settings) -> dict[str, Any]:
    """redis-py's TLS keywords (also what kombu's ``broker_use_ssl`` and Celery's
    ``redis_backend_use_ssl`` take): certificate checking and the CA bundle."""
    options: dict[str, Any] = {"ssl_cert_reqs": CERT_REQS[settings.REDIS_TLS_CERT_REQS]}
    if settings.REDIS_TLS_CA_FILE is not None:
        options["ssl_ca_certs"] = str(settings.REDIS_TLS_CA_FILE)
    # Without checking the certificate, its host name cannot be checked either.
    options["ssl_check_hostname"] = settings.REDIS_TLS_CERT_REQS == "required"
    return options


def sentinel_addresses(settings: Settings) -> list[tuple[str, int]]:
    addresses = []
    for address in settings.REDIS_SENTINELS:
        host, _, port = address.rpartition(":")
        addresses.append((host.strip("[]"), int(port)))
    return addresses


def sentinel_options(settings: Settings) -> dict[str, Any]:
    """Keywords of the connections to the sentinels themselves."""
    options: dict[str, Any] = {
        "socket_connect_timeout": settings.REDIS_CONNECT_TIMEOUT_SECONDS,
        "socket_timeout": settings.REDIS_SOCKET_TIMEOUT_SECONDS,
    }
    if settings.REDIS_SENTINEL_PASSWORD is not None:
        options["password"] = settings.REDIS_SENTINEL_PASSWORD.get_secret_value()
    if settings.REDIS_SENTINEL_TLS:
        options.update(ssl=True, **tls_options(settings))
    return options


def _primary_options(settings: Settings) -> dict[str, Any]:
    """Password, user and database of the primary, from OFFLOAD_REDIS_URL (its host is unused)."""
    parts = urlsplit(settings.redis_url)
    options: dict[str, Any] = {"db": int(parts.path.strip("/") or 0)}
    if parts.password is not None:
        options["password"] = unquote(parts.password)
    if parts.username:
        options["username"] = unquote(parts.username)
    if settings.redis_tls:
        options.update(ssl=True, **tls_options(settings))
    return options


def sync_client(settings: Settings, **options: Any) -> redis.Redis:
    """A client of the primary; ``options`` are redis-py's (timeouts, decode_responses)."""
    if settings.REDIS_SENTINELS:
        # redis-py's sentinel module is untyped.
        sentinel: Any = cast(Any, sync_sentinel).Sentinel(
            sentinel_addresses(settings), sentinel_kwargs=sentinel_options(settings)
        )
        client: redis.Redis = sentinel.master_for(
            settings.REDIS_SENTINEL_MASTER, redis_class=redis.Redis, **_primary_options(settings), **options
        )
        return client
    if settings.redis_tls:
        options.update(tls_options(settings))
    return redis.Redis.from_url(settings.redis_url, **options)


def async_client(settings: Settings, **options: Any) -> aioredis.Redis:
    """``sync_client`` for the event loop."""
    if settings.REDIS_SENTINELS:
        sentinel: Any = cast(Any, async_sentinel).Sentinel(
            sentinel_addresses(settings), sentinel_kwargs=sentinel_options(settings)
        )
        client: aioredis.Redis = sentinel.master_for(
            settings.REDIS_SENTINEL_MASTER, redis_class=aioredis.Redis, **_primary_options(settings), **options
        )
        return client
    if settings.redis_tls:
        options.update(tls_options(settings))
    return aioredis.Redis.from_url(settings.redis_url, **options)


def celery_connection_config(settings: Settings) -> dict[str, Any]:
    """Celery's broker and result backend settings for this Redis: URLs, TLS and Sentinel.

    With Sentinel the broker URL lists every sentinel (kombu's ``sentinel://`` transport, one
    URL per sentinel joined by ``;``) and carries the primary's password and database; the
    transport options name the primary and hold the sentinels' own password and TLS."""
    parts = urlsplit(settings.redis_url)
    config: dict[str, Any] = {}
    if settings.REDIS_SENTINELS:
        credentials = ""
        if parts.password is not None:
            credentials = f"{parts.username or ''}:{quote(unquote(parts.password), safe='')}@"
        database = parts.path.strip("/") or "0"
        url = ";".join(f"sentinel://{credentials}{address}/{database}" for address in settings.REDIS_SENTINELS)
        sentinel = {"master_name": settings.REDIS_SENTINEL_MASTER, "sentinel_kwargs": sentinel_options(settings)}
        config.update(
            broker_url=url,
            result_backend=url,
            broker_transport_options=sentinel,
            result_backend_transport_options=sentinel,
        )
    else:
        config.update(broker_url=settings.redis_url, result_backend=settings.redis_url)
    if settings.redis_tls:
        # Celery's backend refuses a rediss:// URL without ssl_cert_reqs; both take the CA here.
        config.update(broker_use_ssl=tls_options(settings), redis_backend_use_ssl=tls_options(settings))
    return config
