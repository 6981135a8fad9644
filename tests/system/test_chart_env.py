"""A worker configured with exactly the environment the chart gives it."""

from __future__ import annotations

from tests.system.harness import Topology


# The chart gives workers OFFLOAD_ENVIRONMENT=production and no API keys: only the API needs them.
def test_a_worker_starts_with_exactly_the_charts_environment(topo: Topology) -> None:
    topo.start_redis()
    name = topo.start_worker("worker")
    topo.wait_ready(name, timeout=60)
