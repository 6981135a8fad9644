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
