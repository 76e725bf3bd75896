"""Shared test infrastructure: database fixtures.

Fixtures
--------
postgres_server (session)  the one throwaway PostgreSQL server of this test run
                           (tests/pg_server.py), started on first use, stopped at the end.
                           If it cannot start, tests that need it fail when
                           SURVEILLANCE_REQUIRE_PG=1 (``make test`` and CI set it) and
                           are skipped otherwise.
pg_url                     SQLAlchemy URL of a fresh, empty PostgreSQL database that exists
                           only for this test (dropped afterwards).
sqlite_url                 SQLAlchemy URL of a SQLite file in the test's tmp_path.
db_url                     parametrised over both backends (ids ``sqlite``, ``postgres``);
                           the postgres case carries the ``postgres`` marker, so
                           ``-m "not postgres"`` runs without a server.

Tests that use ``pg_url`` or ``postgres_server`` directly should carry
``@pytest.mark.postgres`` themselves. Dispose of every SQLAlchemy engine you create
(``engine.dispose()``): the suite turns warnings into errors, and a connection left
open when its database is dropped ends in a ResourceWarning.
"""

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# tests/ has no __init__.py, so pytest puts it on sys.path ("rootdir" conftest).
from pg_server import PostgresServer

_BACKEND_FIXTURES = {"sqlite": "sqlite_url", "postgres": "pg_url"}


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
    except (RuntimeError, OSError) as exc:
        reason = f"could not start the test PostgreSQL server: {exc}"
        if os.environ.get("SURVEILLANCE_REQUIRE_PG") == "1":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    try:
        yield server
    finally:
        server.stop()


def _database_name(test_name: str) -> str:
    """Readable, unique, valid identifier (<= 63 bytes): t_<test name>_<random>."""
    slug = re.sub(r"[^a-z0-9]+", "_", test_name.lower()).strip("_")[:40]
    return f"t_{slug}_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def pg_url(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    name = _database_name(request.node.name)
    postgres_server.create_database(name)
    try:
        yield postgres_server.url(name)
    finally:
        # Terminates connections the test left open (pg_terminate_backend), then drops.
        postgres_server.drop_database(name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'surveillance.db'}"


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def db_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(_BACKEND_FIXTURES[request.param])
    return url


# ---------------------------------------------------------------------------
# Project fixtures do not go here. Keep this file to the database infrastructure
# above; put fixtures for one area in that area's own module (e.g.
# tests/fixtures_kafka.py) and list the module in `pytest_plugins` below: test
# modules then just name the fixture as an argument (no imports, no noqa).
# ---------------------------------------------------------------------------
pytest_plugins: list[str] = [
    "fixtures_store",
    "fixtures_kafka",
    "fixtures_dicom",
    "fixtures_embed",
    "fixtures_ops",
    "fixtures_reports",
]
