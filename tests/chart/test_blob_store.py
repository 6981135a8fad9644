"""The blob store's values: the shared volume of the filesystem backend (API and worker-image
pods only), the S3 settings and credentials from an existing Secret, and what the processes
read from them."""

from __future__ import annotations

from tests.chart.render import Manifest, Rendered, env_of, pod_spec, render
from tests.chart.test_topology import settings_of


def _workloads(rendered: Rendered) -> dict[str, Manifest]:
    return {d["metadata"]["name"]: d for d in rendered.kind("Deployment") if d["metadata"]["name"] != "offload-flower"}


def test_the_default_is_a_shared_claim_mounted_by_the_api_and_the_worker_sets_not_the_notifier() -> None:
    rendered = render()
    (claim,) = rendered.kind("PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    for name, workload in _workloads(rendered).items():
        spec = pod_spec(workload)
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
        if name == "offload-worker-high":  # the notifier never touches blobs
            assert "blobs" not in volumes
            assert "blobs" not in mounts
            continue
        assert volumes["blobs"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"], name
        assert mounts["blobs"] == "/var/lib/offload/blobs"
        settings = settings_of(rendered, workload)
        assert (settings.BLOB_BACKEND, str(settings.BLOB_DIR)) == ("filesystem", "/var/lib/offload/blobs")


def test_an_existing_claim_is_mounted_and_none_is_made() -> None:
    rendered = render({"blobStore": {"filesystem": {"existingClaim": "shared-rwx", "path": "/data/blobs"}}})
    assert rendered.kind("PersistentVolumeClaim") == []
    api = rendered.named("Deployment", "offload-api")
    (blobs,) = [v for v in pod_spec(api)["volumes"] if v["name"] == "blobs"]
    assert blobs["persistentVolumeClaim"]["claimName"] == "shared-rwx"
    assert str(settings_of(rendered, api).BLOB_DIR) == "/data/blobs"


def test_s3_settings_and_credentials_come_from_values_and_an_existing_secret() -> None:
    values = {
        "blobStore": {
            "backend": "s3",
            "quotaBytes": 5_000_000,
            "quotaOverrides": [{"keyId": "reports-bot", "bytes": 10_000_000_000}],
            "s3": {
                "bucket": "offload-blobs",
                "prefix": "prod",
                "endpointUrl": "https://minio.storage.svc:9000",
                "region": "eu-central-1",
                "pathStyle": True,
                "existingSecret": "offload-s3",
            },
        }
    }
    rendered = render(values)
    assert rendered.kind("PersistentVolumeClaim") == []
    for name, workload in _workloads(rendered).items():
        spec = pod_spec(workload)
        env = env_of(spec["containers"][0])
        assert all(v["name"] != "blobs" for v in spec["volumes"]), name
        if name == "offload-worker-high":
            assert "AWS_ACCESS_KEY_ID" not in env
            continue
        assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
            "name": "offload-s3",
            "key": "AWS_ACCESS_KEY_ID",
        }
        assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
            "name": "offload-s3",
            "key": "AWS_SECRET_ACCESS_KEY",
        }
        settings = settings_of(rendered, workload)
        assert (settings.BLOB_BACKEND, settings.BLOB_S3_BUCKET, settings.BLOB_S3_PREFIX) == (
            "s3",
            "offload-blobs",
            "prod",
        )
        assert (settings.BLOB_S3_ENDPOINT_URL, settings.BLOB_S3_REGION) == (
            "https://minio.storage.svc:9000",
            "eu-central-1",
        )
        assert settings.BLOB_S3_PATH_STYLE is True
        assert settings.BLOB_QUOTA_BYTES == 5_000_000
        assert settings.blob_quota_overrides == {"reports-bot": 10_000_000_000}


def test_s3_without_a_secret_uses_the_pods_own_identity() -> None:
    rendered = render({"blobStore": {"backend": "s3", "s3": {"bucket": "offload-blobs"}}})
    api = rendered.named("Deployment", "offload-api")
    assert "AWS_ACCESS_KEY_ID" not in env_of(pod_spec(api)["containers"][0])
