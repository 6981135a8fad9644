"""The settings of Sentinel and TLS, as every client receives them."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from pydantic import ValidationError

from offload_core.runtime.celery_app import celery_config
from offload_core.settings import Settings
from offload_core.store.redis_connection import celery_connection_config, sentinel_options, tls_options


def test_a_rediss_url_gives_broker_and_backend_the_ca_and_required_verification(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    settings = Settings(REDIS_URL="rediss://:pw@redis.example:6380/2", REDIS_TLS_CA_FILE=ca)
    expected = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": str(ca), "ssl_check_hostname": True}
    assert tls_options(settings) == expected
    config = celery_config(settings)
    assert config["broker_url"] == config["result_backend"] == "rediss://:pw@redis.example:6380/2"
    # Celery's backend refuses rediss:// without ssl_cert_reqs: both get the options.
    assert config["broker_use_ssl"] == config["redis_backend_use_ssl"] == expected


def test_a_plain_url_has_no_tls_options() -> None:
    assert "broker_use_ssl" not in celery_connection_config(Settings(REDIS_URL="redis://redis:6379/0"))


def test_sentinels_become_one_sentinel_url_each_with_the_primary_password_and_database() -> None:
    settings = Settings(
        REDIS_URL="rediss://:p%40ss@unused:1/3",
        REDIS_SENTINELS=["s-0:26379", "s-1:26380"],
        REDIS_SENTINEL_MASTER="offload",
        REDIS_SENTINEL_PASSWORD="sentinel-pw",
        REDIS_SENTINEL_TLS=True,
        REDIS_TLS_CERT_REQS="none",
    )
    config = celery_config(settings)
    assert config["broker_url"] == "sentinel://:p%40ss@s-0:26379/3;sentinel://:p%40ss@s-1:26380/3"
    assert config["broker_transport_options"]["master_name"] == "offload"
    # The transport's own options stay beside the sentinel's.
    assert config["broker_transport_options"]["visibility_timeout"] == settings.VISIBILITY_TIMEOUT_SECONDS
    assert config["result_backend_transport_options"]["master_name"] == "offload"
    sentinel = sentinel_options(settings)
    assert (sentinel["password"], sentinel["ssl"], sentinel["ssl_cert_reqs"]) == ("sentinel-pw", True, ssl.CERT_NONE)
    assert sentinel["ssl_check_hostname"] is False  # nothing to check a host name against
    assert "s-0:26379" in settings.redis_location


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"REDIS_SENTINELS": ["sentinel-0"]}, "not host:port"),
        ({"REDIS_SENTINELS": ["sentinel-0:port"]}, "not host:port"),
        ({"REDIS_TLS_CA_FILE": "/nonexistent/ca.crt"}, "OFFLOAD_REDIS_TLS_CA_FILE: no file"),
        ({"REDIS_SENTINELS": ["s:26379"], "REDIS_URL": "unix:///run/redis.sock"}, "unix://"),
        ({"REDIS_TLS_CERT_REQS": "maybe"}, "REDIS_TLS_CERT_REQS"),
    ],
)
def test_unusable_redis_settings_are_refused_naming_the_variable(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**overrides)  # type: ignore[arg-type]
