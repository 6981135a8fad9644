"""Job plugins for a local run (`make run PLUGINS=path ...`): each plugin project is installed,
entry points included, into a directory of its own that the services get on PYTHONPATH, so the
jobs are found exactly as in an image, and the shared .venv (which the tests use) stays as it is.

Dependencies are not installed: Offload's are in .venv already; a plugin needing more installs
them into .venv itself (see README, "Write your own job").
"""

from __future__ import annotations

import importlib
import importlib.metadata
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from offload_core.contract.registry import ENTRY_POINT_GROUP, job_types_in

UV = Path(__file__).resolve().parents[4] / ".tools" / "bin" / "uv"


def install_plugins(projects: Sequence[Path], target: Path, *, uv: Path = UV) -> None:
    """Install the plugin projects (directories with a pyproject.toml) into target, replacing
    whatever an earlier run put there, so edits to a plugin's code count from the next start."""
    for project in projects:
        if not (project / "pyproject.toml").is_file():
            raise SystemExit(f"PLUGINS: {project} is not a Python project (no pyproject.toml there)")
    shutil.rmtree(target, ignore_errors=True)
    command = [str(uv), "pip", "install", "--quiet", "--no-deps", "--python", sys.executable, "--target", str(target)]
    result = subprocess.run([*command, *map(str, projects)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"PLUGINS: installing {', '.join(map(str, projects))} failed:\n{result.stderr.strip()}")


def plugin_queues(target: Path) -> list[str]:
    """The queues the job types installed in target use, in the order first named. The caller's
    import path is left as it was: only the services get target on theirs."""
    saved = list(sys.path)
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    queues: list[str] = []
    try:
        for dist in importlib.metadata.distributions(path=[str(target)]):
            for entry_point in dist.entry_points.select(group=ENTRY_POINT_GROUP):
                for job_type in job_types_in(entry_point.load()):
                    for queue in (job_type.queue, *sorted(job_type.allowed_queues)):
                        if queue not in queues:
                            queues.append(queue)
    finally:
        sys.path[:] = saved
        importlib.invalidate_caches()
    return queues
