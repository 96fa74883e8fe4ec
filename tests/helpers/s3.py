"""An S3-compatible server for tests: moto's, over HTTP on loopback, and a bucket per test.

The ``s3_endpoint`` (one server per session) and ``s3`` (a fresh bucket, credentials in the
environment under test-only names) fixtures in tests/conftest.py are built from these.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from loglake.core.config import S3Config
from storage.root import DataRoot
from tests.helpers.processes import free_port

KEY_ENV, SECRET_ENV = "LL_TEST_S3_KEY", "LL_TEST_S3_SECRET"
PREFIX = "lake"


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 server on a free loopback port; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    werkzeug.setLevel(logging.ERROR)          # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        werkzeug.setLevel(level)


@dataclass
class S3:
    endpoint: str
    bucket: str
    client: Any                  # a boto3 S3 client: the test's own view of the bucket, behind loglake's back
    config: S3Config

    def url(self, prefix: str = PREFIX) -> str:
        return f"s3://{self.bucket}/{prefix}"

    def root(self, prefix: str = PREFIX) -> DataRoot:
        return DataRoot(self.url(prefix), self.config)

    def keys(self) -> list[str]:
        """Every object key in the bucket (directory markers, ending in '/', included)."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def object_keys(self, prefix: str = PREFIX) -> set[str]:
        """Keys under ``prefix/`` that are objects proper (not directory markers), relative to it."""
        return {k[len(prefix) + 1:] for k in self.keys() if k.startswith(prefix + "/") and not k.endswith("/")}

    def put(self, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=body)

    def remove(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def size(self, key: str) -> int:
        return int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])


def new_bucket(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> S3:
    """A fresh bucket on the server at ``endpoint``, with credentials in the environment."""
    import boto3

    monkeypatch.setenv(KEY_ENV, "test-key")
    monkeypatch.setenv(SECRET_ENV, "test-secret")
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test-key",
                          aws_secret_access_key="test-secret", region_name="us-east-1")
    bucket = f"ll-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=bucket)
    return S3(endpoint, bucket, client,
              S3Config(endpoint_url=endpoint, region="us-east-1", access_key_id_env=KEY_ENV,
                       secret_access_key_env=SECRET_ENV, path_style=True))
