"""Monthly RANGE partitions of ``prediction`` and ``embedding`` on PostgreSQL; SQLite: no-op.

What changes (PostgreSQL only):

* ``prediction`` becomes a table partitioned by RANGE on ``predicted_at`` and
  ``embedding`` one partitioned on ``created_at``: one partition per calendar
  month (UTC), named ``<table>_yYYYYmMM``, plus a ``<table>_default`` partition
  that catches anything outside them (a producer with a wrong clock). Columns,
  comments, CHECK constraints, foreign keys, the id sequence and every index
  (the 0008 dashboard indexes included) are kept; the primary key becomes
  ``(id, <partition column>)`` because PostgreSQL requires the partition key in
  every unique index of a partitioned table.
* That same rule makes the tables' unique keys impossible on the partitioned
  tables (``uq_prediction_message_finding``, ``uq_embedding_key``). Each moves
  to a new unpartitioned key table, written in the same transaction as the row
  it keys: ``prediction_key (message_id, finding) PRIMARY KEY, predicted_at``
  (see ``surveillance/store/ingest_writer.py``: a redelivered message is still
  skipped and a conflicting one still dead-lettered, whatever its
  ``predicted_at``) and ``embedding_key (study_id, extractor,
  extractor_version) PRIMARY KEY, created_at`` (``surveillance/store/
  embeddings.py``). The partition column in the key table finds the stored
  row's partition. ``embedding`` gets ``ix_embedding_study_extractor`` for the
  lookups the unique index used to serve.
* Two ``SECURITY DEFINER`` functions do partition maintenance, so the daemon's
  role (which does not own the tables) can run it:
  ``surveillance_ensure_partitions(parent, from, until)`` creates the missing
  monthly partitions of [from, until] and adopts any month that has rows in
  the DEFAULT partition (those rows, and only those, are moved into the new
  partition in the same transaction); ``surveillance_drop_partitions(parent,
  before)`` detaches and drops every monthly partition that ends on or before
  ``before`` and deletes the key rows of those months (retention: whole
  partitions, never a row-by-row delete of the partitioned table). Both refuse
  any table but ``prediction`` and ``embedding``. EXECUTE is revoked from
  PUBLIC and granted to ``surveillance_daemon`` when that role exists.

Existing rows are converted in this transaction: the old table is renamed,
partitions are created for every month that holds data plus the previous,
current and next three months, rows and keys are copied (``INSERT ...
SELECT``), the sequence is handed over, grants are copied, and the old table
is dropped. Indexes are built after the copy. Budget about the time of one
full copy of the tables plus their index builds (deploy/OPERATIONS.md has a
measured figure); the tables are locked meanwhile, so run it in a maintenance
window.

Not partitioned, on purpose:

* ``study``: ``uid_pseudonym`` is the key every event joins on and must stay
  unique (a partitioned table could only enforce it per partition, or through
  one more key table on the hottest write path); ``studied_at`` is nullable and
  not known when a prediction creates the skeleton; and ``study.id`` is the
  target of foreign keys from prediction, diagnosis, embedding and image_spool,
  which would all have to carry the partition key. A study row is one per
  study (a fraction of the prediction rows), so it stays a plain table.
* ``drift_check`` / ``performance_check``: tens of thousands of rows a quarter,
  kept as regulatory evidence (no retention), and the targets of
  ``incident_event``'s foreign keys. Partitioning them would cost composite
  foreign keys and buy nothing.

SQLite: ``upgrade`` and ``downgrade`` do nothing. The embedded default keeps
plain tables, including ``uq_prediction_message_finding`` and
``uq_embedding_key``, and has no key tables (the ORM marks them
PostgreSQL-only with ``info["backend"]``).

Downgrade (PostgreSQL) makes both tables plain again with every row kept,
restores their unique constraints and one-column primary keys, and drops the
key tables, the partitions and the functions.

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Months created ahead of the current one at upgrade (maintenance keeps it so).
AHEAD = 3


@dataclass(frozen=True)
class _Table:
    """What converting one table needs: its columns, key and the objects to rebuild."""

    name: str
    column: str  # partition key
    columns: tuple[str, ...]
    key: tuple[str, ...]  # the unique key that moves to the key table
    unique: str  # its constraint name on the plain table
    #: (name, type, comment) of the key table's columns, partition column last
    key_columns: tuple[tuple[str, Any, str], ...]
    comment: str
    key_comment: str
    #: (index name, columns) on both layouts, as in 0001 and 0008
    indexes: tuple[tuple[str, str], ...]
    #: (index name, columns) only on the partitioned layout (lookups the unique
    #: constraint's index used to serve)
    partitioned_indexes: tuple[tuple[str, str], ...]
    foreign_keys: tuple[tuple[str, str, str], ...]  # (name, column, referred table)

    @property
    def key_table(self) -> str:
        return f"{self.name}_key"


_PREDICTION = _Table(
    name="prediction",
    column="predicted_at",
    columns=(
        "id", "message_id", "model_id", "model_version", "study_id", "finding", "score",
        "predicted_at", "ingested_at",
    ),
    key=("message_id", "finding"),
    unique="uq_prediction_message_finding",
    key_columns=(
        ("message_id", sa.String(length=256), "Producer's message id: the idempotency key"),
        ("finding", sa.String(length=128),
         "Finding name as registered with the model, e.g. pneumothorax"),
        ("predicted_at", sa.DateTime(timezone=True),
         "predicted_at of the stored prediction row (finds its partition)"),
    ),
    comment="One score for one finding of one study; partitioned by month of predicted_at (UTC)",
    key_comment="Idempotency key of prediction (unique across its partitions)",
    indexes=(
        ("ix_prediction_model_time", "model_id, predicted_at"),
        ("ix_prediction_study_id", "study_id"),
        ("ix_prediction_ingested_at", "ingested_at, predicted_at"),
        ("ix_prediction_predicted_at", "predicted_at, study_id"),
    ),
    partitioned_indexes=(),
    foreign_keys=(
        ("fk_prediction_model_id_model", "model_id", "model"),
        ("fk_prediction_study_id_study", "study_id", "study"),
    ),
)  # fmt: skip

_EMBEDDING = _Table(
    name="embedding",
    column="created_at",
    columns=("id", "study_id", "extractor", "extractor_version", "dim", "vector", "created_at"),
    key=("study_id", "extractor", "extractor_version"),
    unique="uq_embedding_key",
    key_columns=(
        ("study_id", sa.BigInteger(),
         "The study (study.id); its identifiers exist only as pseudonyms"),
        ("extractor", sa.String(length=64), "Extractor key, e.g. conv-ae"),
        ("extractor_version", sa.String(length=32), "Extractor version (weights or seed)"),
        ("created_at", sa.DateTime(timezone=True),
         "created_at of the stored embedding row (finds its partition)"),
    ),
    comment="One image embedding per study and extractor version; "
    "partitioned by month of created_at (UTC)",
    key_comment="Unique key of embedding (one per study and extractor version)",
    indexes=(),
    partitioned_indexes=(
        ("ix_embedding_study_extractor", "study_id, extractor, extractor_version"),
    ),
    foreign_keys=(("fk_embedding_study_id_study", "study_id", "study"),),
)  # fmt: skip

_TABLES = (_PREDICTION, _EMBEDDING)

_ENSURE = r"""
CREATE OR REPLACE FUNCTION surveillance_ensure_partitions(
    parent text, from_ts timestamptz, until_ts timestamptz
) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $fn$
-- Monthly (UTC) RANGE partitions of `parent` for every month in [from_ts, until_ts]
-- that has none, plus every month that has rows in the DEFAULT partition (moved
-- into their new partition). Returns how many partitions were created.
DECLARE
    col text;
    dflt text := parent || '_default';
    month timestamptz;
    months timestamptz[] := '{}';
    found timestamptz[];
    part text;
    created integer := 0;
    moved bigint;
BEGIN
    IF parent = 'prediction' THEN col := 'predicted_at';
    ELSIF parent = 'embedding' THEN col := 'created_at';
    ELSE RAISE EXCEPTION 'surveillance_ensure_partitions: % is not a partitioned table of '
        'surveillance (known: embedding, prediction)', parent;
    END IF;
    IF until_ts - from_ts > interval '20 years' THEN
        RAISE EXCEPTION 'surveillance_ensure_partitions: % .. % spans more than 20 years',
            from_ts, until_ts;
    END IF;
    month := date_trunc('month', from_ts, 'UTC');
    WHILE month <= until_ts LOOP
        months := months || month;
        month := (month AT TIME ZONE 'UTC' + interval '1 month') AT TIME ZONE 'UTC';
    END LOOP;
    IF to_regclass(dflt) IS NOT NULL THEN
        EXECUTE format('SELECT coalesce(array_agg(DISTINCT date_trunc(''month'', %I, ''UTC'')), '
                       '''{}'') FROM %I', col, dflt)
            INTO found;
        months := months || found;
    END IF;
    FOR month IN SELECT DISTINCT m FROM unnest(months) AS m ORDER BY m LOOP
        part := parent || to_char(month AT TIME ZONE 'UTC', '"_y"YYYY"m"MM');
        CONTINUE WHEN to_regclass(part) IS NOT NULL;
        EXECUTE format('LOCK TABLE %I IN SHARE ROW EXCLUSIVE MODE', parent);
        moved := 0;
        IF to_regclass(dflt) IS NOT NULL THEN
            EXECUTE format('SELECT count(*) FROM %I WHERE %I >= $1 AND %I < $2', dflt, col, col)
                INTO moved USING month,
                (month AT TIME ZONE 'UTC' + interval '1 month') AT TIME ZONE 'UTC';
        END IF;
        IF moved = 0 THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                part, parent, month,
                (month AT TIME ZONE 'UTC' + interval '1 month') AT TIME ZONE 'UTC');
        ELSE
            EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                part, parent);
            EXECUTE format('WITH moved AS (DELETE FROM %I WHERE %I >= $1 AND %I < $2 '
                           'RETURNING *) INSERT INTO %I SELECT * FROM moved',
                           dflt, col, col, part)
                USING month, (month AT TIME ZONE 'UTC' + interval '1 month') AT TIME ZONE 'UTC';
            EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                parent, part, month,
                (month AT TIME ZONE 'UTC' + interval '1 month') AT TIME ZONE 'UTC');
        END IF;
        EXECUTE format('COMMENT ON TABLE %I IS %L', part,
            format('Monthly partition of %s: %s from %s (UTC)', parent, col,
                   to_char(month AT TIME ZONE 'UTC', 'YYYY-MM')));
        created := created + 1;
    END LOOP;
    RETURN created;
END
$fn$;
"""

_DROP = r"""
CREATE OR REPLACE FUNCTION surveillance_drop_partitions(parent text, before_ts timestamptz)
RETURNS text[]
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $fn$
-- Detach and drop every monthly partition of `parent` that ends on or before
-- before_ts (whole partitions only), deleting the key rows of those months.
-- Returns the names of the dropped partitions, oldest first.
DECLARE
    col text;
    key_table text;
    part record;
    lo timestamptz;
    hi timestamptz;
    dropped text[] := '{}';
BEGIN
    IF parent = 'prediction' THEN col := 'predicted_at'; key_table := 'prediction_key';
    ELSIF parent = 'embedding' THEN col := 'created_at'; key_table := 'embedding_key';
    ELSE RAISE EXCEPTION 'surveillance_drop_partitions: % is not a partitioned table of '
        'surveillance (known: embedding, prediction)', parent;
    END IF;
    FOR part IN
        SELECT c.relname FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = parent::regclass
          AND c.relname ~ ('^' || parent || '_y[0-9]{4}m[0-9]{2}$')
        ORDER BY c.relname
    LOOP
        lo := make_timestamptz(substr(part.relname, length(parent) + 3, 4)::int,
                               substr(part.relname, length(parent) + 8, 2)::int, 1, 0, 0, 0,
                               'UTC');
        hi := (lo AT TIME ZONE 'UTC' + interval '1 month') AT TIME ZONE 'UTC';
        CONTINUE WHEN hi > before_ts;
        EXECUTE format('ALTER TABLE %I DETACH PARTITION %I', parent, part.relname);
        EXECUTE format('DROP TABLE %I', part.relname);
        EXECUTE format('DELETE FROM %I WHERE %I >= $1 AND %I < $2', key_table, col, col)
            USING lo, hi;
        dropped := dropped || part.relname::text;
    END LOOP;
    RETURN dropped;
END
$fn$;
"""

_FUNCTIONS = (
    "surveillance_ensure_partitions(text, timestamptz, timestamptz)",
    "surveillance_drop_partitions(text, timestamptz)",
)


def _sql(statement: str, **params: object) -> sa.CursorResult[sa.Any]:
    return op.get_bind().execute(sa.text(statement), params)


def _copy_grants(source: str, target: str) -> None:
    """Re-issue the table privileges ``source`` had (readonly_role.sql, roles.sql) on ``target``."""
    rows = _sql(
        "SELECT a.privilege_type, r.rolname FROM pg_class c "
        "CROSS JOIN LATERAL aclexplode(c.relacl) a JOIN pg_roles r ON r.oid = a.grantee "
        "WHERE c.oid = CAST(:t AS regclass) AND a.grantee <> c.relowner",
        t=source,
    ).all()
    for privilege, role in rows:
        op.execute(f'GRANT {privilege} ON {target} TO "{role}"')


def _drop_index_names(t: _Table, table: str) -> None:
    """Free the schema-wide names of ``table``'s indexes before the new table takes them."""
    for name in (f"pk_{t.name}", t.unique):
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name}")
    for name, _ in (*t.indexes, *t.partitioned_indexes):
        op.execute(f"DROP INDEX IF EXISTS {name}")


def _finish(t: _Table, primary_key: str, indexes: Sequence[tuple[str, str]]) -> None:
    op.execute(f"ALTER TABLE {t.name} ADD CONSTRAINT pk_{t.name} PRIMARY KEY ({primary_key})")
    for name, column, target in t.foreign_keys:
        op.execute(
            f"ALTER TABLE {t.name} ADD CONSTRAINT {name} "
            f"FOREIGN KEY ({column}) REFERENCES {target} (id)"
        )
    for name, columns in indexes:
        op.execute(f"CREATE INDEX {name} ON {t.name} ({columns})")


def _partition(t: _Table, now: datetime) -> None:
    """Make ``t`` a partitioned table with its key table; every row and grant kept."""
    old = f"{t.name}_old"
    cols = ", ".join(t.columns)
    key_cols = ", ".join(name for name, _, _ in t.key_columns)
    sequence = _sql("SELECT pg_get_serial_sequence(:t, 'id')", t=t.name).scalar_one()
    op.execute(f"ALTER TABLE {t.name} RENAME TO {old}")
    op.execute(f"ALTER SEQUENCE {sequence} OWNED BY NONE")
    _drop_index_names(t, old)
    op.execute(
        f"CREATE TABLE {t.name} (LIKE {old} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
        f"INCLUDING COMMENTS) PARTITION BY RANGE ({t.column})"
    )
    _sql(f"COMMENT ON TABLE {t.name} IS {_literal(t.comment)}")
    op.execute(f"ALTER SEQUENCE {sequence} OWNED BY {t.name}.id")
    op.execute(f"CREATE TABLE {t.name}_default PARTITION OF {t.name} DEFAULT")
    _sql(
        f"COMMENT ON TABLE {t.name}_default IS "
        + _literal(f"Default partition of {t.name}: rows outside every monthly partition")
    )
    months = _sql(f"SELECT DISTINCT date_trunc('month', {t.column}, 'UTC') FROM {old}").scalars()
    for month in list(months):
        _sql("SELECT surveillance_ensure_partitions(:t, :m, :m)", t=t.name, m=month)
    _sql(
        "SELECT surveillance_ensure_partitions(:t, CAST(:now AS timestamptz) - interval "
        "'1 month', CAST(:now AS timestamptz) + make_interval(months => :ahead))",
        t=t.name,
        now=now,
        ahead=AHEAD,
    )
    op.create_table(
        t.key_table,
        *(sa.Column(n, type_, nullable=False, comment=c) for n, type_, c in t.key_columns),
        sa.PrimaryKeyConstraint(*t.key, name=f"pk_{t.key_table}"),
        comment=t.key_comment,
    )
    op.execute(f"INSERT INTO {t.name} ({cols}) SELECT {cols} FROM {old}")
    op.execute(f"INSERT INTO {t.key_table} ({key_cols}) SELECT {key_cols} FROM {old}")
    _finish(t, f"id, {t.column}", (*t.indexes, *t.partitioned_indexes))
    _copy_grants(old, t.name)
    _copy_grants(old, t.key_table)
    op.execute(f"DROP TABLE {old}")
    op.execute(f"ANALYZE {t.name}")
    op.execute(f"ANALYZE {t.key_table}")


def _unpartition(t: _Table) -> None:
    """Make ``t`` a plain table again (every row kept) with its unique key; drop the key table."""
    part = f"{t.name}_part"
    cols = ", ".join(t.columns)
    sequence = _sql("SELECT pg_get_serial_sequence(:t, 'id')", t=t.name).scalar_one()
    op.execute(f"ALTER TABLE {t.name} RENAME TO {part}")
    op.execute(f"ALTER SEQUENCE {sequence} OWNED BY NONE")
    _drop_index_names(t, part)
    op.execute(
        f"CREATE TABLE {t.name} (LIKE {part} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
        "INCLUDING COMMENTS)"
    )
    op.execute(f"COMMENT ON TABLE {t.name} IS NULL")
    op.execute(f"ALTER SEQUENCE {sequence} OWNED BY {t.name}.id")
    op.execute(f"INSERT INTO {t.name} ({cols}) SELECT {cols} FROM {part} ORDER BY id")
    _finish(t, "id", t.indexes)
    op.execute(f"ALTER TABLE {t.name} ADD CONSTRAINT {t.unique} UNIQUE ({', '.join(t.key)})")
    _copy_grants(part, t.name)
    op.execute(f"DROP TABLE {part}")  # and its partitions
    op.drop_table(t.key_table)
    op.execute(f"ANALYZE {t.name}")


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite: plain tables (see the docstring)
    op.execute(_ENSURE)
    op.execute(_DROP)
    now = datetime.now(UTC)
    for table in _TABLES:
        _partition(table, now)
    for function in _FUNCTIONS:
        op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")
    op.execute(
        "DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'surveillance_daemon') "
        "THEN GRANT EXECUTE ON FUNCTION "
        + ", ".join(_FUNCTIONS)
        + " TO surveillance_daemon; END IF; END $$"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite: nothing was changed
    for table in reversed(_TABLES):
        _unpartition(table)
    for function in _FUNCTIONS:
        op.execute(f"DROP FUNCTION {function}")
