"""The chart's alerts, evaluated by Prometheus's own rule engine: `promtool check rules` on the
rendered PrometheusRule and `promtool test rules` on series that must fire each alert and
series that must not (tests/chart/promtool/). Every alert has a runbook in docs/runbooks/.

promtool comes with Debian's `prometheus` package. CI sets OFFLOAD_REQUIRE_PROMTOOL=1, so a
missing promtool fails there; elsewhere these tests skip, saying how to install it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.render import REPO_ROOT, Rendered, render

PROMTOOL_TESTS = Path(__file__).parent / "promtool" / "offload-alerts.test.yaml"
RUNBOOKS = REPO_ROOT / "docs" / "runbooks"
RULES_ON = {"metrics": {"prometheusRule": {"enabled": True}}}
RUNBOOK_SECTIONS = ("## What it means", "## How to confirm", "## What to do")


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        message = (
            "promtool is not installed: `apt-get install prometheus` (Debian/Ubuntu) provides "
            "/usr/bin/promtool, or put the promtool of a Prometheus release on PATH"
        )
        if os.environ.get("OFFLOAD_REQUIRE_PROMTOOL") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def rule_groups(rendered: Rendered) -> list[dict[str, Any]]:
    (rule,) = rendered.kind("PrometheusRule")
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def alerts(rendered: Rendered) -> list[dict[str, Any]]:
    return [item for group in rule_groups(rendered) for item in group["rules"]]


def write_rules(rendered: Rendered, directory: Path) -> Path:
    """The PrometheusRule's groups as a Prometheus rule file, beside a copy of the tests."""
    rules = directory / "offload-rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": rule_groups(rendered)}, sort_keys=False))
    shutil.copy(PROMTOOL_TESTS, directory / PROMTOOL_TESTS.name)
    return rules


def run(promtool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def test_promtool_accepts_the_rendered_rules(promtool: str, tmp_path: Path) -> None:
    rules = write_rules(render(RULES_ON), tmp_path)
    done = run(promtool, "check", "rules", rules.name, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
    assert "duplicate" not in done.stdout + done.stderr


def test_every_alert_fires_and_stays_silent_where_it_should(promtool: str, tmp_path: Path) -> None:
    write_rules(render(RULES_ON), tmp_path)
    done = run(promtool, "test", "rules", PROMTOOL_TESTS.name, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_a_wrong_expectation_fails_the_promtool_tests(promtool: str, tmp_path: Path) -> None:
    """The tests above would pass vacuously if promtool ignored the expectations."""
    write_rules(render(RULES_ON), tmp_path)
    broken = tmp_path / PROMTOOL_TESTS.name
    broken.write_text(broken.read_text().replace("wait longer than 60s", "wait longer than 61s"))
    done = run(promtool, "test", "rules", broken.name, cwd=tmp_path)
    assert done.returncode != 0
    assert "OffloadQueueOldestJobTooOld" in done.stdout + done.stderr


def test_every_alert_has_series_that_fire_it_and_series_that_must_not() -> None:
    names = {item["alert"] for item in alerts(render(RULES_ON))}
    cases = yaml.safe_load(PROMTOOL_TESTS.read_text())["tests"]
    fired: set[str] = set()
    silent: set[str] = set()
    for case in cases:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else silent).add(check["alertname"])
    assert fired == names
    assert silent == names


def test_every_alert_keeps_namespace_and_release_and_selects_only_its_release() -> None:
    for item in alerts(render(RULES_ON)):
        expr = item["expr"]
        assert "by (namespace, release" in expr, item["alert"]
        selectors = re.findall(r"offload_\w+\{([^}]*)\}", expr)
        assert selectors, expr
        for selector in selectors:
            assert selector.startswith('namespace="offload", release="offload"'), expr


def test_the_series_selector_can_be_replaced() -> None:
    rendered = render({"metrics": {"prometheusRule": {"enabled": True, "seriesSelector": 'job="offload-api"'}}})
    for item in alerts(rendered):
        assert 'release="offload"' not in item["expr"]
        assert '{job="offload-api"' in item["expr"]


def test_every_alert_links_its_runbook_and_each_runbook_says_what_to_do() -> None:
    names = {item["alert"] for item in alerts(render(RULES_ON))}
    for item in alerts(render(RULES_ON)):
        assert item["annotations"]["runbook_url"] == f"docs/runbooks/{item['alert']}.md"
    assert {path.stem for path in RUNBOOKS.glob("Offload*.md")} == names
    for name in names:
        text = (RUNBOOKS / f"{name}.md").read_text()
        assert text.startswith(f"# {name}\n"), name
        positions = [text.find(section) for section in RUNBOOK_SECTIONS]
        assert -1 not in positions, f"{name}.md lacks one of {RUNBOOK_SECTIONS}"
        assert positions == sorted(positions), name
    index = (RUNBOOKS / "README.md").read_text()
    assert all(f"({name}.md)" in index for name in names)


def test_the_runbook_base_url_comes_from_values() -> None:
    base = "https://git.example.com/offload/blob/main/docs/runbooks/"
    rendered = render({"metrics": {"prometheusRule": {"enabled": True, "runbookBaseUrl": base}}})
    for item in alerts(rendered):
        assert item["annotations"]["runbook_url"] == f"{base}{item['alert']}.md"
