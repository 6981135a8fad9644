"""examples/fastapi_payments against the real thing: the user's FastAPI service (its lifespan
and dependency from offload_client.fastapi) submits `acme.charge`, which Offload's API accepts
and a real worker runs from the example's SDK module."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from offload_client import Offload
from offload_client.fastapi import OffloadDep
from tests.conftest import ROOT
from tests.support import API_KEY, TEST_SETTINGS, cluster

EXAMPLE = ROOT / "examples" / "fastapi_payments"


@pytest.fixture(scope="module")
def offload_with_acme_jobs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An API and a worker that load the example's job module, as `make run` would with
    OFFLOAD_JOB_MODULES=acme_payments.jobs; the API's URL."""
    python_path = os.pathsep.join(filter(None, [str(EXAMPLE), os.environ.get("PYTHONPATH")]))
    env = {**TEST_SETTINGS, "OFFLOAD_JOB_MODULES": "acme_payments.jobs", "PYTHONPATH": python_path}
    log_dir = tmp_path_factory.mktemp("payments")
    with cluster(log_dir, env) as own:
        api = own.start_api()
        own.start_worker("worker")
        yield api.extra["url"]


def example_app() -> FastAPI:
    if str(EXAMPLE) not in sys.path:
        sys.path.insert(0, str(EXAMPLE))
    app: FastAPI = importlib.import_module("acme_payments.app").app
    return app


def test_the_payments_route_submits_a_charge_that_a_worker_runs(
    offload_with_acme_jobs: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OFFLOAD_URL", offload_with_acme_jobs)
    monkeypatch.setenv("OFFLOAD_API_KEY", API_KEY)

    with TestClient(example_app()) as service:  # runs the lifespan: one AsyncOffload for the app
        answer = service.post("/payments", json={"order_id": "A-1001", "amount": "19.90", "currency": "EUR"})
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["job_id"]
        assert answer.json()["status_url"] == f"/v1/jobs/{job_id}"

        with Offload(offload_with_acme_jobs, API_KEY) as offload:
            job = offload.wait(job_id, timeout=30)
        assert job.status == "succeeded", job
        assert job.task == "acme.charge"
        assert job.result["order_id"] == "A-1001"
        assert job.result["charged"] == "19.90"
        assert service.get(f"/payments/{job_id}").json()["status"] == "succeeded"

        refused = service.post("/payments", json={"order_id": "A-1002", "amount": "-1", "currency": "EUR"})
        assert refused.status_code == 422  # the service's own validation, before Offload is asked


def test_without_the_lifespan_the_dependency_says_how_to_set_it_up() -> None:
    app = FastAPI()

    @app.get("/")
    async def route(offload: OffloadDep) -> str:
        return "unreachable"

    with TestClient(app, raise_server_exceptions=True) as client, pytest.raises(RuntimeError, match="offload_lifespan"):
        client.get("/")
