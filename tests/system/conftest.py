"""System tests: the whole topology on real containers. The `images` fixture (tests/conftest.py)
skips them, saying why, without a container engine; a failure instead when
OFFLOAD_REQUIRE_DOCKER=1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.system.harness import Topology, topology


@pytest.fixture
def topo(images: dict[str, str]) -> Iterator[Topology]:
    with topology(images) as t:
        yield t
