"""The values example in the project README renders, so the documented install works."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.chart.render import pod_spec, render

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_values_example_renders_one_deployment_per_set() -> None:
    block = re.search(r"cat > my-values.yaml <<'YAML'\n(.*?)\nYAML\n", README.read_text(), flags=re.DOTALL)
    assert block, "README lost its my-values.yaml example"
    values = yaml.safe_load(block.group(1))
    rendered = render(values)
    for name in ("default", "low", "high"):
        assert len(rendered.worker_set("Deployment", name)) == 1, name
    workers = [d for name in ("default", "low", "high") for d in rendered.worker_set("Deployment", name)]
    images = {c["image"] for d in workers for c in pod_spec(d)["containers"]}
    assert images == {
        "registry.example.com/team/offload-worker:0.1.0",
        "registry.example.com/team/offload-notifier:0.1.0",
    }


def test_the_readmes_own_queue_overlays_add_the_queue_everywhere() -> None:
    chart_readme = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "offload" / "README.md"
    for readme in (README, chart_readme):
        blocks = [b for b in re.findall(r"```yaml\n(.*?)```", readme.read_text(), flags=re.DOTALL) if "acme" in b]
        assert len(blocks) == 1, f"{readme.name} lost its example of a queue of your own"
        rendered = render(yaml.safe_load(blocks[0]))
        (config,) = [c for c in rendered.kind("ConfigMap") if c["metadata"]["name"].endswith("-config")]
        assert config["data"]["OFFLOAD_QUEUES"].split(",") == ["high", "default", "low", "acme"]
        for kind in ("Deployment", "ScaledObject", "PodDisruptionBudget"):
            assert len(rendered.worker_set(kind, "acme")) == 1, (readme, kind)
