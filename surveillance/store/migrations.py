"""Alembic, driven from code: ``surveillance db upgrade`` and the start-up check."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from surveillance.core.errors import SchemaOutOfDateError

ALEMBIC_DIR = Path(__file__).resolve().parents[2] / "alembic"


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    config.attributes["engine"] = engine
    return config


def head_revision(engine: Engine) -> str:
    heads = ScriptDirectory.from_config(alembic_config(engine)).get_heads()
    if len(heads) != 1:
        raise SchemaOutOfDateError(f"the migrations have {len(heads)} heads {heads}; merge them")
    return heads[0]


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> str:
    """Apply migrations up to ``revision``; returns the revision now current."""
    command.upgrade(alembic_config(engine), revision)
    return current_revision(engine) or "base"


def ensure_current(engine: Engine) -> None:
    """Refuse to run on a schema that is not at head, saying how to fix it."""
    current, head = current_revision(engine), head_revision(engine)
    if current != head:
        url = engine.url.render_as_string(hide_password=True)
        state = "empty (no tables yet)" if current is None else f"at revision {current}"
        raise SchemaOutOfDateError(
            f"the database {url} is {state} but this version needs {head}; run:\n"
            f"  SURVEILLANCE_DB_URL='{url}' surveillance db upgrade"
        )


__all__ = ["current_revision", "ensure_current", "head_revision", "upgrade"]
