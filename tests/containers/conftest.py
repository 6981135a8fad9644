"""The project's images on a real container engine. The `images` fixture (tests/conftest.py)
skips these tests, saying why, where no engine runs; a failure instead when
OFFLOAD_REQUIRE_DOCKER=1 (CI sets it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture
def network(images: dict[str, str]) -> Iterator[object]:
    from testcontainers.core.network import Network

    with Network() as net:
        yield net
