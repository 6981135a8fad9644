"""The example plugin (examples/acme-jobs) as a user deploys it: installed as a package, found
through its `offload.jobs` entry point, its jobs submitted through the real API and run by a real
worker consuming the plugin's own queue. The plugin is installed the way `make run PLUGINS=...`
does it (offload_dev.plugins), into a directory the API and worker get on PYTHONPATH."""

from __future__ import annotations

import functools
import hashlib
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from offload_dev.plugins import install_plugins, plugin_queues
from tests.support import TEST_SETTINGS, Cluster, cluster, wait_job

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "acme-jobs"
README = ROOT / "README.md"
QUEUES = "high,default,low,acme"


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("plugins") / "site"
    install_plugins([EXAMPLE], target)
    return target


@pytest.fixture(scope="module")
def acme(plugin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """An API and a worker for the acme queue, both with the plugin installed."""
    log_dir = tmp_path_factory.mktemp("acme")
    env = {**TEST_SETTINGS, "PYTHONPATH": str(plugin_dir), "OFFLOAD_QUEUES": QUEUES}
    with cluster(log_dir, env) as own:
        own.start_api()
        own.start_worker("acme", queues="acme")
        yield own


def test_make_run_finds_the_plugins_own_queue(plugin_dir: Path) -> None:
    assert plugin_queues(plugin_dir) == ["acme"]


def test_job_types_lists_the_built_ins_and_the_plugins_jobs(acme: Cluster) -> None:
    client = acme.client

    response = client.get("/v1/job-types")

    assert response.status_code == 200, response.text
    types = {t["name"]: t for t in response.json()["job_types"]}
    assert "offload.echo" in types
    for name in ("acme.primes", "acme.fetch"):
        assert (types[name]["queue"], types[name]["queues"], types[name]["consumed"]) == ("acme", ["acme"], True)
    assert types["acme.primes"]["request_schema"]["required"] == ["limit"]
    assert types["acme.fetch"]["max_retries"] == 3


def test_the_cpu_job_runs_on_the_acme_worker_and_reports_progress(acme: Cluster) -> None:
    client = acme.client

    response = client.post("/v1/jobs/acme.primes", json={"payload": {"limit": 2_000_000, "steps": 4}})

    assert response.status_code == 202, response.text
    assert response.json()["queue"] == "acme"
    done = wait_job(client, response.json()["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done
    assert done["result"] == {"limit": 2_000_000, "count": 148_933, "largest": 1_999_993}
    assert done["progress"] == {"percent": 100, "message": "2,000,000 of 2,000,000 checked, 148,933 primes"}
    assert done["worker"] == "acme@test"


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[str]:
    """A plain HTTP file server on loopback (allowed by TEST_SETTINGS' outbound list) serving tmp_path."""
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_io_job_fetches_through_the_outbound_client(acme: Cluster, file_server: str, tmp_path: Path) -> None:
    client = acme.client
    body = os.urandom(300_000)
    (tmp_path / "data.bin").write_bytes(body)

    response = client.post("/v1/jobs/acme.fetch", json={"payload": {"url": f"{file_server}/data.bin"}})

    assert response.status_code == 202, response.text
    done = wait_job(client, response.json()["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done
    assert done["result"] == {
        "url": f"{file_server}/data.bin",
        "status": 200,
        "bytes": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "content_type": "application/octet-stream",
    }


def test_a_missing_file_is_a_result_not_a_failure(acme: Cluster, file_server: str) -> None:
    client = acme.client

    response = client.post("/v1/jobs/acme.fetch", json={"payload": {"url": f"{file_server}/missing"}})

    done = wait_job(client, response.json()["id"], {"succeeded", "failed"})
    assert (done["status"], done["result"]["status"]) == ("succeeded", 404), done


def test_a_private_address_fails_the_fetch_at_once(acme: Cluster) -> None:
    client = acme.client

    response = client.post("/v1/jobs/acme.fetch", json={"payload": {"url": "http://10.255.255.1/secret"}})

    done = wait_job(client, response.json()["id"], {"succeeded", "failed"})
    assert (done["status"], done["attempts"]) == ("failed", 1), done
    assert "10.255.255.1" in done["error"]


def test_a_bad_payload_is_a_422_naming_the_field(acme: Cluster) -> None:
    client = acme.client

    response = client.post("/v1/jobs/acme.primes", json={"payload": {"limit": 1}})

    assert response.status_code == 422, response.text
    assert "body.payload.limit" in [error["field"] for error in response.json()["errors"]]


def test_without_its_queue_in_offload_queues_the_api_refuses_to_start_naming_plugin_and_fix(
    plugin_dir: Path,
) -> None:
    env = {**os.environ, **TEST_SETTINGS, "PYTHONPATH": str(plugin_dir)}
    env.pop("OFFLOAD_QUEUES", None)

    result = subprocess.run(
        [sys.executable, "-m", "offload_api"], env=env, capture_output=True, text=True, timeout=60, check=False
    )

    assert result.returncode != 0
    assert "entry point 'acme' = acme_jobs.jobs of acme-jobs 1.0.0" in result.stderr, result.stderr
    assert "names the queue(s) acme" in result.stderr
    assert "OFFLOAD_QUEUES" in result.stderr


def test_the_readmes_first_job_runs_as_written(tmp_path: Path) -> None:
    """README, "Write your own job": the two files it writes make a plugin whose job runs."""
    text = README.read_text()
    project = tmp_path / "my-jobs"
    assert "touch ../my-jobs/src/my_jobs/__init__.py" in text
    (project / "src" / "my_jobs").mkdir(parents=True)
    (project / "src" / "my_jobs" / "__init__.py").touch()
    for path, tag in (("pyproject.toml", "TOML"), ("src/my_jobs/jobs.py", "PY")):
        block = re.search(rf"cat > \.\./my-jobs/{re.escape(path)} <<'{tag}'\n(.*?)\n{tag}\n", text, flags=re.DOTALL)
        assert block, f"README lost its {path} example"
        (project / path).write_text(block.group(1) + "\n")
    target = tmp_path / "site"
    install_plugins([project], target)
    assert plugin_queues(target) == ["default"]

    env = {**TEST_SETTINGS, "PYTHONPATH": str(target)}
    with cluster(tmp_path / "logs", env) as own:
        own.start_api()
        own.start_worker("worker")
        response = own.client.post("/v1/jobs/my.greet", json={"payload": {"name": "Ada"}})
        assert response.status_code == 202, response.text
        done = wait_job(own.client, response.json()["id"], {"succeeded", "failed"})

    assert done["status"] == "succeeded", done
    assert done["result"] == {"greeting": "Hello, Ada!"}
