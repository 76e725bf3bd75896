"""The database fixtures are real: a PostgreSQL >= 14 server, one database per test."""

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy
from pg_server import PostgresServer
from sqlalchemy import text

# Database names seen by test_each_test_gets_its_own_database, in run order.
_seen_databases: list[str] = []


@contextmanager
def _connect(url: str) -> Iterator[sqlalchemy.Connection]:
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_pg_url_is_a_real_postgresql_server(pg_url: str) -> None:
    assert pg_url.startswith("postgresql+psycopg://postgres@127.0.0.1:")
    with _connect(pg_url) as conn:
        version = conn.execute(text("SELECT version()")).scalar_one()
        server_num = conn.execute(text("SHOW server_version_num")).scalar_one()
        database = conn.execute(text("SELECT current_database()")).scalar_one()
    assert version.startswith("PostgreSQL "), version
    match = re.match(r"PostgreSQL (\d+)", version)
    assert match and int(match.group(1)) >= 14, version
    assert int(server_num) >= 140000
    assert pg_url.endswith(f"/{database}")


@pytest.mark.postgres
@pytest.mark.parametrize("round_", [1, 2])
def test_each_test_gets_its_own_database(pg_url: str, round_: int) -> None:
    """Runs twice: the second run sees another database, without the first's table."""
    with _connect(pg_url) as conn:
        database = conn.execute(text("SELECT current_database()")).scalar_one()
        leftover = conn.execute(text("SELECT to_regclass('public.isolation_probe')")).scalar()
        assert leftover is None, "a table created in another test's database is visible here"
        assert not conn.execute(
            text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        ).scalar_one(), "a fresh database must have no tables"
        conn.execute(text("CREATE TABLE isolation_probe (id integer PRIMARY KEY)"))
        conn.execute(text("INSERT INTO isolation_probe VALUES (:round)"), {"round": round_})
    assert database not in _seen_databases
    _seen_databases.append(database)


@pytest.mark.postgres
def test_databases_of_finished_tests_are_dropped(postgres_server: PostgresServer) -> None:
    existing = set(postgres_server.list_databases())
    assert not existing.intersection(_seen_databases)
    assert {"postgres", "template0", "template1"} <= existing


@pytest.mark.postgres
def test_drop_database_terminates_open_connections(postgres_server: PostgresServer) -> None:
    postgres_server.create_database("infra_drop_probe")
    engine = sqlalchemy.create_engine(postgres_server.url("infra_drop_probe"))
    try:
        conn = engine.connect()
        assert conn.execute(text("SELECT 1")).scalar_one() == 1
        # The connection is still open: dropping must not hang or fail.
        postgres_server.drop_database("infra_drop_probe")
        assert "infra_drop_probe" not in postgres_server.list_databases()
        with pytest.raises(sqlalchemy.exc.OperationalError):
            conn.execute(text("SELECT 1"))
        conn.close()
    finally:
        engine.dispose()
        postgres_server.drop_database("infra_drop_probe")


def test_sqlite_url_is_a_file_in_tmp_path(sqlite_url: str, tmp_path: Path) -> None:
    assert sqlite_url == f"sqlite:///{tmp_path}/surveillance.db"
    with _connect(sqlite_url) as conn:
        conn.execute(text("CREATE TABLE probe (id INTEGER PRIMARY KEY)"))
        conn.execute(text("INSERT INTO probe VALUES (1)"))
    with _connect(sqlite_url) as conn:
        assert conn.execute(text("SELECT count(*) FROM probe")).scalar_one() == 1
    assert (tmp_path / "surveillance.db").is_file()


def test_db_url_round_trip(db_url: str, request: pytest.FixtureRequest) -> None:
    backend = request.node.callspec.id
    assert backend in {"sqlite", "postgres"}
    assert db_url.startswith("sqlite:///" if backend == "sqlite" else "postgresql+psycopg://")
    assert (backend == "postgres") == (request.node.get_closest_marker("postgres") is not None)
    with _connect(db_url) as conn:
        conn.execute(text("CREATE TABLE probe (id INTEGER PRIMARY KEY, label VARCHAR(20))"))
        conn.execute(text("INSERT INTO probe VALUES (1, 'ünïcode')"))
        assert conn.execute(text("SELECT label FROM probe")).scalar_one() == "ünïcode"


@pytest.mark.postgres
def test_postgres_server_context_manager(postgres_server: PostgresServer) -> None:
    """A second, independent server starts, serves and cleans up after itself."""
    with PostgresServer() as server:
        directory = server.directory
        assert server.port != postgres_server.port
        assert server.url("x") == f"postgresql+psycopg://postgres@127.0.0.1:{server.port}/x"
        with _connect(server.url()) as conn:
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
    assert not directory.exists()
    assert not server.running
    server.stop()  # idempotent
