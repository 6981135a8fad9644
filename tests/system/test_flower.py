"""Scenario 6: Flower behind basic auth sees the worker and the notifier with their queues."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from offload_dev.polling import wait_for
from tests.system.harness import FLOWER_AUTH, Topology, report


def test_flower_needs_its_credentials_and_lists_workers_with_their_queues(
    topo: Topology, record_property: Callable[[str, object], None]
) -> None:
    started = time.monotonic()
    topo.start_redis()
    worker = topo.start_worker("worker")
    notifier = topo.start_worker("notifier")
    topo.start_flower()
    topo.wait_ready()
    report(record_property, "flower_topology_start_seconds", round(time.monotonic() - started, 1))

    assert httpx.get(f"{topo.flower_url}/", timeout=10).status_code == 401
    assert httpx.get(f"{topo.flower_url}/api/workers", timeout=10).status_code == 401
    assert httpx.get(f"{topo.flower_url}/", auth=("admin", "wrong-password"), timeout=10).status_code == 401
    assert httpx.get(f"{topo.flower_url}/", auth=FLOWER_AUTH, timeout=10).status_code == 200

    def queues_seen() -> dict[str, set[str]] | None:
        response = httpx.get(f"{topo.flower_url}/api/workers", params={"refresh": "1"}, auth=FLOWER_AUTH, timeout=30)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        seen = {name: {q["name"] for q in info.get("active_queues") or []} for name, info in body.items()}
        wanted = {f"worker@{worker}", f"notifier@{notifier}"}
        return seen if wanted <= seen.keys() and all(seen[w] for w in wanted) else None

    seen = wait_for(queues_seen, 90, "Flower to list the worker and the notifier with their queues", interval=1)
    report(record_property, "flower_workers", {name: sorted(q) for name, q in seen.items()})
    assert seen[f"worker@{worker}"] == {"default", "low"}
    assert seen[f"notifier@{notifier}"] == {"high"}
