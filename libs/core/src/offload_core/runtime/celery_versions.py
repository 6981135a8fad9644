"""The Celery and kombu minor versions whose internals Offload relies on, checked at import.

The worker transport (offload_core.runtime.worker_transport) subclasses kombu's Redis channel and QoS and
calls their private methods; the message builder (offload_core.runtime.task_message) writes Celery's
task protocol 2 and kombu's envelope by hand; the orphan sweep reads kombu's unacked hash. Another
minor version may change any of these without notice, so a module that relies on them refuses to
load there, saying what to do, instead of losing or mangling messages at run time. Moving to a new
minor version: run the tests that compare the hand-built message with Celery's and the transport
tests, then change SUPPORTED and the pins in libs/core/pyproject.toml together.
"""

from __future__ import annotations

from collections.abc import Mapping

import celery
import kombu

SUPPORTED: Mapping[str, tuple[int, int]] = {"celery": (5, 7), "kombu": (5, 7)}


def _minor(version: str) -> tuple[int, int] | None:
    parts = version.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def unsupported_versions(installed: Mapping[str, str]) -> str | None:
    """Why these installed versions cannot be used, or None when they can."""
    problems = [
        f"{name} {installed[name]} is installed, Offload needs {name} {major}.{minor}.x"
        for name, (major, minor) in SUPPORTED.items()
        if _minor(installed[name]) != (major, minor)
    ]
    if not problems:
        return None
    return (
        "; ".join(problems)
        + ": its worker transport and message builder use internals of exactly these minor versions. "
        "Install the versions libs/core/pyproject.toml pins (uv sync --frozen)."
    )


def require_supported_versions() -> None:
    installed = {"celery": celery.__version__, "kombu": kombu.__version__}  # type: ignore[attr-defined]
    problem = unsupported_versions(installed)
    if problem is not None:
        raise ImportError(problem)
