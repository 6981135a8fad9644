"""Chart.yaml carries what Artifact Hub and helm show; the chart's changelog and README match it,
and the README's quick start installs images the chart then runs."""

from __future__ import annotations

import re
import shlex
from typing import Any

import yaml

from tests.chart.render import CHART_DIR, containers, render
from tests.chart.test_manifests import KUBERNETES_VERSIONS

CHART = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
CHANGE_KINDS = {"added", "changed", "deprecated", "removed", "fixed", "security"}


def test_chart_yaml_has_the_metadata_artifact_hub_shows() -> None:
    for key in ("home", "sources", "maintainers", "icon", "keywords", "kubeVersion", "description"):
        assert CHART.get(key), f"Chart.yaml lacks {key}"
    assert CHART["icon"].startswith(("https://", "data:image/svg+xml;base64,"))
    assert all(maintainer["name"] for maintainer in CHART["maintainers"])
    annotations = CHART["annotations"]
    assert annotations["artifacthub.io/license"]
    for link in yaml.safe_load(annotations["artifacthub.io/links"]):
        assert set(link) == {"name", "url"}
    changes = yaml.safe_load(annotations["artifacthub.io/changes"])
    assert changes
    for change in changes:
        assert set(change) == {"kind", "description"}, change
        assert change["kind"] in CHANGE_KINDS, change


def test_kube_version_is_the_oldest_version_the_tests_validate() -> None:
    assert CHART["kubeVersion"] == f">={KUBERNETES_VERSIONS[0]}.0-0"


def test_the_changelog_has_the_chart_version_with_upgrade_notes() -> None:
    changelog = (CHART_DIR / "CHANGELOG.md").read_text()
    sections = re.split(r"^## ", changelog, flags=re.MULTILINE)
    versions = [section.split("\n", 1)[0].strip() for section in sections[1:]]
    assert versions[0] == CHART["version"], "the newest CHANGELOG.md section must be Chart.yaml's version"
    current = sections[1]
    assert "### Upgrading from" in current
    # Artifact Hub's list says the same as the changelog: every entry's first words are there.
    for change in yaml.safe_load(CHART["annotations"]["artifacthub.io/changes"]):
        words = re.findall(r"[\w.]+", change["description"])[:2]
        assert all(word in current for word in words), change


def quick_start() -> str:
    readme = (CHART_DIR / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    assert block, "the chart README lost its quick start"
    return block.group(1).replace("\\\n", " ")


def test_the_quick_start_pushes_the_images_the_chart_then_runs() -> None:
    commands = [shlex.split(line) for line in quick_start().splitlines() if line.strip()]
    (build,) = [c for c in commands if c[:2] == ["make", "images"]]
    tag = dict(arg.split("=", 1) for arg in build[2:])["TAG"]
    assert tag == CHART["appVersion"], "the quick start must build the tag the chart runs by default"
    (loop,) = [c for c in commands if c[0] == "for"]
    images = [word.rstrip(";") for word in loop[loop.index("in") + 1 : loop.index("do")]]
    (install,) = [c for c in commands if c[:3] == ["helm", "install", "offload"]]
    values: dict[str, Any] = {}
    for index, arg in enumerate(install):
        if arg == "--set":
            path, value = install[index + 1].split("=", 1)
            node = values
            *parents, leaf = path.split(".")
            for parent in parents:
                node = node.setdefault(parent, {})
            node[leaf] = value
    registry = values["images"]["registry"]
    pushed = {f"{registry}/{image}:{tag}" for image in images}
    assert any(f'docker push "{registry}/$image:{tag}"' in line for line in quick_start().splitlines())
    rendered = render(values)
    run = {
        container["image"]
        for workload in rendered.kind("Deployment")
        for container in containers(workload)
        if container["image"].startswith(registry)
    }
    assert run == pushed
