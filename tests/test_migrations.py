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
    assert set(Base.metadata.tables) <= tables
    engine.dispose()


@pytest.mark.postgres
def test_migrated_postgres_schema_matches_models(pg_url: str) -> None:
    engine = make_engine(pg_url)
    upgrade(engine)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
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
