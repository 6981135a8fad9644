"""The chart's worker sets agree with the queue topology declared in offload_core.topology."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from offload_core.topology import NOTIFIER_QUEUES, WORKER_QUEUES, Queue
from tests.chart.render import CHART_DIR, Rendered, default_values, env_of, pod_spec


def merged_sets(values: dict[str, Any]) -> list[dict[str, Any]]:
    defaults = values["workers"]["defaults"]
    return [{**defaults, **entry} for entry in values["workers"]["sets"]]


def test_every_queue_is_consumed_by_exactly_one_default_set() -> None:
    consumed = Counter(queue for worker_set in merged_sets(default_values()) for queue in worker_set["queues"])
    assert consumed == Counter({queue.value: 1 for queue in Queue})


def test_high_only_on_the_notifier_and_the_notifier_only_high() -> None:
    for worker_set in merged_sets(default_values()):
        queues = {Queue(queue) for queue in worker_set["queues"]}
        if worker_set["image"] == "notifier":
            assert queues == set(NOTIFIER_QUEUES), worker_set["name"]
        else:
            assert queues <= set(WORKER_QUEUES), worker_set["name"]
        if Queue.HIGH in queues:
            assert worker_set["image"] == "notifier"
            assert worker_set["minReplicas"] >= 1


def test_rendered_deployments_consume_what_the_values_say(rendered_defaults: Rendered) -> None:
    consumed: Counter[str] = Counter()
    for worker_set in merged_sets(default_values()):
        (deployment,) = rendered_defaults.worker_set("Deployment", worker_set["name"])
        (container,) = pod_spec(deployment)["containers"]
        queues = env_of(container)["OFFLOAD_WORKER_QUEUES"]["value"].split(",")
        consumed.update(queues)
        image = container["image"].split("/")[-1].split(":")[0].split("@")[0]
        assert image == ("offload-notifier" if worker_set["image"] == "notifier" else "offload-worker")
        if image == "offload-notifier":
            assert queues == [queue.value for queue in NOTIFIER_QUEUES]
    assert set(consumed) == {queue.value for queue in Queue}


def test_schema_and_guards_know_exactly_the_topology_queues() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    queue_enum = schema["definitions"]["workerSetFields"]["properties"]["queues"]["items"]["enum"]
    assert sorted(queue_enum) == sorted(queue.value for queue in Queue)
    check_config = (CHART_DIR / "templates" / "_checkConfig.tpl").read_text()
    known = 'toJson (list "high" "default" "low")'
    assert known in check_config
    assert sorted(["high", "default", "low"]) == sorted(q.value for q in Queue)
