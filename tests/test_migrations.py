"""The schema comes only from Alembic, and it matches the models."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from surveillance.core.errors import SchemaOutOfDateError
from surveillance.store.engine import make_engine
from surveillance.store.migrations import (
    alembic_config,
    current_revision,
    ensure_current,
    head_revision,
    upgrade,
)
from surveillance.store.models import Base


def test_single_head() -> None:
    """Two heads mean two branches of migrations nobody merged: CI must fail."""
    engine = make_engine("sqlite://")
    heads = ScriptDirectory.from_config(alembic_config(engine)).get_heads()
    assert len(heads) == 1, f"alembic has {len(heads)} heads: {heads}; merge them"


def test_upgrade_creates_every_model_table(db_url: str) -> None:
    engine = make_engine(db_url)
    assert upgrade(engine) == head_revision(engine)
    tables = set(inspect(engine).get_table_names())
    expected = {
        name
        for name, table in Base.metadata.tables.items()
        # PostgreSQL-only tables (prediction_key, 0010) do not exist on SQLite
        if table.info.get("backend", engine.dialect.name) == engine.dialect.name
    }
    assert expected <= tables
    engine.dispose()


@pytest.mark.postgres
def test_migrated_postgres_schema_matches_models(pg_url: str) -> None:
    engine = make_engine(pg_url)
    upgrade(engine)
    with engine.connect() as connection:
        # Monthly partitions (0010) are tables to the inspector but not models: the
        # partitioned parent is what the models describe.
        partitions = set(
            connection.exec_driver_sql(
                "SELECT relname FROM pg_class WHERE relispartition AND relkind = 'r'"
            ).scalars()
        )
        context = MigrationContext.configure(
            connection,
            opts={
                "compare_type": True,
                "include_name": lambda name, type_, _: (
                    not (type_ == "table" and name in partitions)
                ),
            },
        )
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert diff == [], f"models and migrations disagree: {diff}"


def test_downgrade_then_upgrade_round_trips(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine)
    command.downgrade(alembic_config(engine), "base")
    assert current_revision(engine) is None
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade(engine)
    assert current_revision(engine) == head_revision(engine)
    engine.dispose()


def test_out_of_date_schema_is_refused_with_the_fix(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    with pytest.raises(SchemaOutOfDateError, match="surveillance db upgrade"):
        ensure_current(engine)
    upgrade(engine)
    ensure_current(engine)
    engine.dispose()


_DASHBOARD_INDEXES = {
    "prediction": {"ix_prediction_ingested_at", "ix_prediction_predicted_at"},
    "dead_letter": {"ix_dead_letter_received_at"},
    "job_run": {"ix_job_run_scheduled_for"},
    "incident_event": {"ix_incident_event_at"},
}


def _indexes(engine: object) -> dict[str, set[str]]:
    inspector = inspect(engine)
    return {
        table: {ix["name"] for ix in inspector.get_indexes(table) if ix["name"]}
        for table in _DASHBOARD_INDEXES
    }


def test_0008_dashboard_indexes_migrate_up_and_down(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine, "0008")
    found = _indexes(engine)
    for table, names in _DASHBOARD_INDEXES.items():
        assert names <= found[table], table
    command.downgrade(alembic_config(engine), "0007")
    found = _indexes(engine)
    for table, names in _DASHBOARD_INDEXES.items():
        assert not names & found[table], table
    upgrade(engine)
    assert current_revision(engine) == head_revision(engine)
    engine.dispose()


@pytest.mark.postgres
def test_0008_keeps_an_index_built_concurrently_beforehand(pg_url: str) -> None:
    """Large installations build the index CONCURRENTLY first; the upgrade then records it."""
    engine = make_engine(pg_url)
    upgrade(engine, "0007")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(
            "CREATE INDEX CONCURRENTLY ix_prediction_ingested_at "
            "ON prediction (ingested_at, predicted_at)"
        )
    upgrade(engine)
    assert "ix_prediction_ingested_at" in _indexes(engine)["prediction"]
    engine.dispose()
