"""A real S3-compatible server on loopback for the blob store's tests: moto's server mode
(``moto[server]``, ThreadedMotoServer), which speaks the S3 REST API over HTTP, so boto3 in the
test and in the API and worker processes talks to it exactly as to any S3 service."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from moto.server import ThreadedMotoServer

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

REGION = "us-east-1"
# moto accepts any credentials; these only keep boto3 from looking for real ones.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "offload-test", "AWS_SECRET_ACCESS_KEY": "offload-test-secret"}


@dataclass
class S3Server:
    endpoint_url: str

    def client(self) -> S3Client:
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            config=Config(s3={"addressing_style": "path"}),
        )

    def new_bucket(self) -> str:
        name = f"offload-test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def settings_env(self, bucket: str, prefix: str = "tests") -> dict[str, str]:
        """What an API or worker process needs to keep its blobs in ``bucket`` here."""
        return {
            "OFFLOAD_BLOB_BACKEND": "s3",
            "OFFLOAD_BLOB_S3_BUCKET": bucket,
            "OFFLOAD_BLOB_S3_PREFIX": prefix,
            "OFFLOAD_BLOB_S3_ENDPOINT_URL": self.endpoint_url,
            "OFFLOAD_BLOB_S3_REGION": REGION,
            "OFFLOAD_BLOB_S3_PATH_STYLE": "true",
            **CREDENTIALS,
        }

    def keys(self, bucket: str) -> dict[str, int]:
        """Every object in ``bucket`` and its size."""
        listing = self.client().list_objects_v2(Bucket=bucket)
        return {item["Key"]: item["Size"] for item in listing.get("Contents", [])}


@contextlib.contextmanager
def s3_server() -> Iterator[S3Server]:
    """moto's server on a free loopback port (port 0: the system picks it)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server(f"http://{host}:{port}")
    finally:
        server.stop()
