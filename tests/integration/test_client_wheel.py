"""The client as users get it: the wheel `uv build` makes, installed alone into a fresh virtual
environment, submits, watches and downloads against the real API, with no server code near it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.support import API_KEY, SALES_CSV, Stack, served

# Run inside the fresh environment: what it may import, then a user's first session.
USER_SCRIPT = textwrap.dedent(
    """
    import importlib.util, os, sys
    from pathlib import Path

    present = [m for m in ("celery", "redis", "kombu", "offload_core", "offload_api", "fastapi", "typer")
               if importlib.util.find_spec(m)]
    assert present == [], f"the client wheel pulled in {present}"

    from offload_client import Offload

    with Offload() as offload:  # OFFLOAD_URL and OFFLOAD_API_KEY
        accepted = offload.submit("offload.echo", {"message": "from a clean venv", "sleep_ms": 800})
        percents = [event.percent for event in offload.events(accepted.id)]
        job = offload.wait(accepted.id, timeout=30)
        assert job.status == "succeeded", job
        assert percents[-1] == 100, percents
        report = offload.submit_report(
            {"source_url": os.environ["SOURCE_URL"], "source_format": "csv", "group_by": ["city"]}
        )
        assert offload.wait(report.id, timeout=30).succeeded
        written = offload.download_report(report.id, Path(sys.argv[1]))
        print(job.result["message"], written)
    """
)


def _uv() -> str:
    uv = ROOT / ".tools" / "bin" / "uv"
    found = str(uv) if uv.exists() else shutil.which("uv")
    if found is None:
        pytest.skip("uv is not installed (make install puts it in .tools/bin)")
    return found


def test_the_wheel_alone_in_a_fresh_venv_submits_watches_and_downloads(stack: Stack, tmp_path: Path) -> None:
    uv = _uv()
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    env.pop("VIRTUAL_ENV", None)
    dist = tmp_path / "dist"
    subprocess.run(
        [uv, "build", "--package", "offload-client", "--wheel", "--out-dir", str(dist)],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = dist.glob("offload_client-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([uv, "venv", "--python", sys.executable, str(venv)], env=env, check=True, capture_output=True)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [uv, "pip", "install", "--python", str(python), str(wheel)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr

    with served(SALES_CSV) as source_url:
        user_env = {
            "PATH": os.environ.get("PATH", ""),
            "OFFLOAD_URL": stack.api.extra["url"],
            "OFFLOAD_API_KEY": API_KEY,
            "SOURCE_URL": source_url,
        }
        run = subprocess.run(
            [str(python), "-c", USER_SCRIPT, str(tmp_path)],
            env=user_env,
            cwd=tmp_path,  # not the repository: nothing of it on the path
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    assert run.returncode == 0, run.stderr
    assert "from a clean venv" in run.stdout, run.stdout
    written = Path(run.stdout.split()[-1])
    assert written.read_text().splitlines() == ["city,count", "Lima,1", "Oslo,2"]
    # Without the cli extra the command says what to install instead of a traceback.
    command = subprocess.run([str(venv / "bin" / "offload"), "--help"], capture_output=True, text=True, check=False)
    assert command.returncode != 0
    assert "pip install 'offload-client[cli]'" in command.stderr
