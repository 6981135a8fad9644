"""Offload refuses to load its worker transport and message builder on a Celery or kombu minor
version other than the one whose internals they use, saying what to install."""

from __future__ import annotations

import subprocess
import sys

import pytest

from offload_core.runtime.celery_versions import unsupported_versions


def test_the_installed_versions_are_the_supported_ones() -> None:
    import celery
    import kombu

    installed = {"celery": celery.__version__, "kombu": kombu.__version__}  # type: ignore[attr-defined]
    assert unsupported_versions(installed) is None


@pytest.mark.parametrize(
    ("installed", "named"),
    [
        ({"celery": "5.6.2", "kombu": "5.7.0"}, "celery 5.6.2 is installed, Offload needs celery 5.7.x"),
        ({"celery": "5.7.1", "kombu": "5.8.0"}, "kombu 5.8.0 is installed, Offload needs kombu 5.7.x"),
        ({"celery": "6.0.0rc1", "kombu": "5.7.0"}, "celery 6.0.0rc1 is installed"),
    ],
)
def test_another_minor_version_is_refused_naming_it(installed: dict[str, str], named: str) -> None:
    problem = unsupported_versions(installed)
    assert problem is not None
    assert named in problem
    assert "uv sync --frozen" in problem


@pytest.mark.parametrize("module", ["offload_core.runtime.task_message", "offload_core.runtime.worker_transport"])
def test_importing_on_another_version_fails_with_the_reason(module: str) -> None:
    code = f"import kombu; kombu.__version__ = '5.8.0'; import {module}"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode != 0
    assert "ImportError: kombu 5.8.0 is installed, Offload needs kombu 5.7.x" in result.stderr
