"""Idempotent batch writes of ingested records, in one transaction.

Every insert is idempotent on the record's natural key (message id + finding,
study UID pseudonym, dead-letter position), so a redelivered batch never
duplicates a row. Consumer offsets are upserted in the same transaction as the
rows they cover.

Conflicts: a prediction or diagnosis whose message id is already stored (or
came earlier in the same batch) with the *same* content is a redelivery and
skipped (``*_duplicate``). With *different* content (another score, study,
time...) it is not "already stored": the whole record is left unwritten, the
stored row is never overwritten, and the record becomes a dead letter at its
source position with the reason ``conflict: prediction message_id '...' is
already stored with a different score, ...`` (counted in ``IngestCounts.conflicts``).

On PostgreSQL the high-volume tables avoid SQLAlchemy's multi-row INSERT
(building a 2,000-row statement costs more than PostgreSQL takes to run it):
study skeletons go through a binary COPY into a session temporary table and
one ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``; predictions and
diagnoses, which are new unless redelivered, are COPYed straight into their
table inside a savepoint and take the staging path (COPY into the temp table,
one join against the stored rows to find conflicts, ``INSERT ... SELECT ... ON
CONFLICT DO NOTHING``) only when the COPY hits a stored key. SQLite runs the
same steps with plain multi-row INSERTs. Rows are written in key order so
that concurrent consumers inserting overlapping keys do not deadlock.

``prediction`` is partitioned by month on PostgreSQL (revision 0010), so it
cannot hold a unique (message_id, finding) index; that key lives in the
unpartitioned ``prediction_key`` table. The straight path COPYs the key rows
into it and then the rows into ``prediction``, in the same savepoint (a stored
key fails the first COPY); the staging path claims the keys with ``INSERT ...
ON CONFLICT DO NOTHING RETURNING`` and inserts exactly the rows it claimed, in
one statement; conflicts are found through the key table, whose
``predicted_at`` names the stored row's partition.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from surveillance.core.errors import (
    IntegrityViolation,
    StoreError,
    StoreUnavailable,
)
from surveillance.core.events import SourcePosition
from surveillance.store.domain import (
    DeadLetterRecord,
    DiagnosisRecord,
    IngestBatch,
    IngestCounts,
    OffsetRecord,
    PredictionRecord,
    SpoolRecord,
    StudyMetadataRecord,
)
from surveillance.store.models import (
    ConsumerOffsetRow,
    DeadLetterRow,
    DeviceRow,
    DiagnosisRow,
    ImageSpoolRow,
    PredictionRow,
    SiteRow,
    StudyRow,
)
from surveillance.store.types import utcnow

CHUNK = 2000  # rows per INSERT statement (keeps SQLite under its variable limit)


def _insert(session: Session, table: Any) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def _chunks(rows: Sequence[dict[str, Any]]) -> Iterable[Sequence[dict[str, Any]]]:
    for start in range(0, len(rows), CHUNK):
        yield rows[start : start + CHUNK]


def _is_postgres(session: Session) -> bool:
    return bool(session.get_bind().dialect.name == "postgresql")


@contextmanager
def _driver_errors() -> Iterator[None]:
    """Map psycopg errors raised on the raw connection like ``SessionFactory.scope`` does."""
    try:
        yield
    except psycopg.IntegrityError as exc:
        raise IntegrityViolation(f"database constraint violated: {exc}") from exc
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(f"database unavailable: {exc}") from exc
    except psycopg.Error as exc:
        raise StoreError(f"database error: {exc}") from exc


def _pg_copy_insert(
    session: Session,
    table: str,
    columns: Sequence[tuple[str, str]],
    rows: Iterable[Sequence[Any]],
    order_by: str,
    returning: str = "",
    found: dict[Any, Any] | None = None,
) -> int:
    """COPY ``rows`` into a temp table shaped like ``table``, then insert the new ones.

    With ``returning`` ("key, value" columns), the inserted rows' pairs are added
    to ``found``.

    ``columns`` are (name, PostgreSQL type) pairs: binary COPY needs the types
    and is about five times cheaper to encode than text. The temp table lives
    as long as the pooled connection and is emptied at every commit (``ON
    COMMIT DELETE ROWS``), so it costs one catalog lookup per batch. Runs in
    the session's transaction; returns how many rows were inserted
    (conflicting rows are skipped).
    """
    conn = session.connection().connection.driver_connection
    assert isinstance(conn, psycopg.Connection)
    temp = f"_ingest_{table}"
    cols = ", ".join(name for name, _ in columns)
    with _driver_errors(), conn.cursor() as cur:
        cur.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {temp} ON COMMIT DELETE ROWS AS "
            f"SELECT {cols} FROM {table} WITH NO DATA"
        )
        cur.execute(f"DELETE FROM {temp}")  # in case of an earlier batch in this transaction
        with cur.copy(f"COPY {temp} ({cols}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types([pg_type for _, pg_type in columns])
            for row in rows:
                copy.write_row(row)
        cur.execute(
            f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {temp} ORDER BY {order_by} "
            "ON CONFLICT DO NOTHING" + (f" RETURNING {returning}" if returning else "")
        )
        if returning and found is not None:
            found.update((key, value) for key, value in cur)
        return max(cur.rowcount, 0)


def _pg_study_ids(session: Session, uids: Iterable[str]) -> dict[str, int]:
    """Ids of the studies ``uids`` staged by ``_pg_copy_insert`` that were stored already."""
    conn = session.connection().connection.driver_connection
    assert isinstance(conn, psycopg.Connection)
    with _driver_errors(), conn.cursor() as cur:
        cur.execute(
            "SELECT id, uid_pseudonym FROM study WHERE uid_pseudonym = ANY(%s)", [list(uids)]
        )
        return {uid: study_id for study_id, uid in cur}


def site_label(pseudonym: str) -> str:
    return f"site-{pseudonym[:8]}"


def _ensure_sites(session: Session, pseudonyms: set[str]) -> dict[str, int]:
    if not pseudonyms:
        return {}
    rows = [{"pseudonym": p, "label": site_label(p)} for p in sorted(pseudonyms)]
    session.execute(_insert(session, SiteRow).values(rows).on_conflict_do_nothing())
    found = session.execute(
        select(SiteRow.pseudonym, SiteRow.id).where(SiteRow.pseudonym.in_(pseudonyms))
    )
    return {p: i for p, i in found}


def device_label(manufacturer: str, model_name: str, station_pseudonym: str, site: str) -> str:
    """A scanner's display name: vendor, model, short station pseudonym and site.

    The short pseudonym tells two rooms with the same model apart without
    revealing the station name.
    """
    vendor = manufacturer.split()[0] if manufacturer.strip() else manufacturer
    return f"{vendor} {model_name} #{station_pseudonym[:6]} @ {site}"


def _ensure_devices(
    session: Session, keys: set[tuple[int, str, str, str]], site_labels: dict[int, str]
) -> dict[tuple[int, str, str, str], int]:
    if not keys:
        return {}
    rows = [
        {
            "site_id": site_id,
            "station_pseudonym": station,
            "manufacturer": manufacturer,
            "model_name": model_name,
            "label": device_label(manufacturer, model_name, station, site_labels[site_id]),
        }
        for site_id, station, manufacturer, model_name in sorted(keys)
    ]
    session.execute(_insert(session, DeviceRow).values(rows).on_conflict_do_nothing())
    site_ids = {k[0] for k in keys}
    found = session.execute(
        select(
            DeviceRow.site_id,
            DeviceRow.station_pseudonym,
            DeviceRow.manufacturer,
            DeviceRow.model_name,
            DeviceRow.id,
        ).where(DeviceRow.site_id.in_(site_ids))
    )
    return {(s, st, m, mn): i for s, st, m, mn, i in found}


def _ensure_studies(session: Session, first_seen: dict[str, datetime]) -> dict[str, int]:
    """Skeleton study rows for studies named by predictions/diagnoses before metadata."""
    if not first_seen:
        return {}
    now = utcnow()
    ids: dict[str, int] = {}
    if _is_postgres(session):
        _pg_copy_insert(
            session,
            "study",
            (
                ("uid_pseudonym", "text"),
                ("studied_at", "timestamptz"),
                ("received_at", "timestamptz"),
                ("has_metadata", "bool"),
            ),
            ((uid, at, now, False) for uid, at in first_seen.items()),
            order_by="uid_pseudonym",
            returning="uid_pseudonym, id",
            found=ids,
        )
        # New studies came back from RETURNING; look up only the ones already stored.
        missing = [uid for uid in first_seen if uid not in ids]
        if missing:
            ids.update(_pg_study_ids(session, missing))
        return ids
    rows = [
        {"uid_pseudonym": uid, "studied_at": at, "received_at": now, "has_metadata": False}
        for uid, at in first_seen.items()
    ]
    for chunk in _chunks(rows):
        session.execute(_insert(session, StudyRow).values(list(chunk)).on_conflict_do_nothing())
    uids = list(first_seen)
    for start in range(0, len(uids), CHUNK):
        part = uids[start : start + CHUNK]
        found = session.execute(
            select(StudyRow.uid_pseudonym, StudyRow.id).where(StudyRow.uid_pseudonym.in_(part))
        )
        ids.update((uid, i) for uid, i in found)
    return ids


def _write_metadata(session: Session, records: list[StudyMetadataRecord]) -> int:
    if not records:
        return 0
    # One row per study: PostgreSQL refuses to update the same row twice in one statement.
    records = list({r.uid_pseudonym: r for r in records}.values())
    sites = _ensure_sites(session, {r.site_pseudonym for r in records})
    labels = dict(
        session.execute(
            select(SiteRow.id, SiteRow.label).where(SiteRow.id.in_(sites.values()))
        ).all()
    )
    device_keys = {
        (sites[r.site_pseudonym], r.station_pseudonym, r.manufacturer, r.model_name)
        for r in records
    }
    devices = _ensure_devices(session, device_keys, labels)
    now = utcnow()
    rows = []
    for r in records:
        site_id = sites[r.site_pseudonym]
        rows.append(
            {
                "uid_pseudonym": r.uid_pseudonym,
                "patient_pseudonym": r.patient_pseudonym,
                "accession_pseudonym": r.accession_pseudonym,
                "site_id": site_id,
                "device_id": devices[(site_id, r.station_pseudonym, r.manufacturer, r.model_name)],
                "studied_at": r.studied_at,
                "modality": r.modality,
                "software_versions": r.software_versions,
                "convolution_kernel": r.convolution_kernel,
                "slice_thickness": r.slice_thickness,
                "kvp": r.kvp,
                "pixel_spacing": r.pixel_spacing,
                "magnetic_field_strength": r.magnetic_field_strength,
                "body_part": r.body_part,
                "view_position": r.view_position,
                "sex": r.sex,
                "age_band": r.age_band,
                "has_metadata": True,
                "received_at": now,
            }
        )
    updatable = [k for k in rows[0] if k not in ("uid_pseudonym", "received_at", "studied_at")]
    if _is_postgres(session):
        _pg_upsert_studies(session, rows, updatable)
        return len(rows)
    for chunk in _chunks(rows):
        stmt = _insert(session, StudyRow).values(list(chunk))
        excluded = stmt.excluded
        stmt = stmt.on_conflict_do_update(
            index_elements=["uid_pseudonym"],
            set_={
                **{k: excluded[k] for k in updatable},
                "studied_at": func.coalesce(excluded.studied_at, StudyRow.studied_at),
            },
        )
        session.execute(stmt)
    return len(rows)


_STUDY_TYPES = {
    "uid_pseudonym": "text",
    "patient_pseudonym": "text",
    "accession_pseudonym": "text",
    "site_id": "int8",
    "device_id": "int8",
    "studied_at": "timestamptz",
    "modality": "text",
    "software_versions": "text",
    "convolution_kernel": "text",
    "slice_thickness": "float8",
    "kvp": "float8",
    "pixel_spacing": "float8",
    "magnetic_field_strength": "float8",
    "body_part": "text",
    "view_position": "text",
    "sex": "text",
    "age_band": "text",
    "has_metadata": "bool",
    "received_at": "timestamptz",
}


def _pg_upsert_studies(session: Session, rows: list[dict[str, Any]], updatable: list[str]) -> None:
    """The headers' study rows: binary COPY into a temp table, one INSERT ... ON CONFLICT
    (uid_pseudonym) DO UPDATE. Same effect as the multi-row upsert on SQLite, without
    compiling a 5,000-row statement (which cost more CPU than everything else)."""
    conn = session.connection().connection.driver_connection
    assert isinstance(conn, psycopg.Connection)
    names = list(rows[0])
    cols = ", ".join(names)
    sets = ", ".join(f"{k} = excluded.{k}" for k in updatable)
    rows = sorted(rows, key=lambda r: str(r["uid_pseudonym"]))
    with _driver_errors(), conn.cursor() as cur:
        cur.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS _ingest_study_meta ON COMMIT DELETE ROWS AS "
            f"SELECT {cols} FROM study WITH NO DATA"
        )
        cur.execute("DELETE FROM _ingest_study_meta")
        with cur.copy(f"COPY _ingest_study_meta ({cols}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types([_STUDY_TYPES[n] for n in names])
            for row in rows:
                copy.write_row([row[n] for n in names])
        cur.execute(
            f"INSERT INTO study AS s ({cols}) SELECT {cols} FROM _ingest_study_meta "
            f"ON CONFLICT (uid_pseudonym) DO UPDATE SET {sets}, "
            "studied_at = coalesce(excluded.studied_at, s.studied_at)"
        )


def _insert_returning_count(session: Session, table: Any, rows: list[dict[str, Any]]) -> int:
    inserted = 0
    for chunk in _chunks(rows):
        stmt = _insert(session, table).values(list(chunk)).on_conflict_do_nothing()
        inserted += len(session.execute(stmt.returning(table.id)).all())
    return inserted


# ---- predictions and diagnoses: idempotent on the message id, conflicts dead-lettered --


@dataclass(frozen=True, slots=True)
class _Keyed:
    """A table whose rows are keyed by the message id (plus finding for predictions).

    ``columns`` are (name, PostgreSQL type) pairs: the key columns first, then
    the content compared for conflicts, then ``ingested_at`` (never compared).
    """

    table: str
    orm: Any
    columns: tuple[tuple[str, str], ...]
    n_key: int
    #: PostgreSQL: the unpartitioned table that holds the key (+ ``partition_column``)
    #: of a partitioned ``table``; None when ``table`` has its own unique key.
    key_table: str | None = None
    partition_column: str | None = None

    @property
    def content_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.columns[self.n_key : -1])

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.columns[: self.n_key])

    def key_columns(self) -> tuple[tuple[str, str], ...]:
        """(name, type) of the key table's columns: the key, then the partition column."""
        wanted = (*self.key_names, self.partition_column)
        types = dict(self.columns)
        return tuple((name, types[name]) for name in wanted if name is not None)

    def key_positions(self) -> tuple[int, ...]:
        names = [name for name, _ in self.columns]
        return tuple(names.index(name) for name, _ in self.key_columns())


_PREDICTION = _Keyed(
    "prediction",
    PredictionRow,
    (
        ("message_id", "text"),
        ("finding", "text"),
        ("model_id", "int8"),
        ("model_version", "text"),
        ("study_id", "int8"),
        ("score", "float8"),
        ("predicted_at", "timestamptz"),
        ("ingested_at", "timestamptz"),
    ),
    2,
    key_table="prediction_key",  # prediction is partitioned by month on PostgreSQL (0010)
    partition_column="predicted_at",
)
_DIAGNOSIS = _Keyed(
    "diagnosis",
    DiagnosisRow,
    (
        ("message_id", "text"),
        ("study_id", "int8"),
        ("finding", "text"),
        ("present", "bool"),
        ("source", "text"),
        ("confirmed_at", "timestamptz"),
        ("ingested_at", "timestamptz"),
    ),
    1,
)

#: One delivered record: its message id and source position (rows of one
#: prediction message share it). A conflict rejects the whole record.
Unit = tuple[str, SourcePosition | None]


@dataclass(slots=True)
class _KeyedResult:
    inserted: int = 0
    conflict_rows: int = 0
    #: record -> names of the columns that differ from what is stored
    conflicts: dict[Unit, list[str]] = field(default_factory=dict)


def _differing(spec: _Keyed, stored: Sequence[Any], new: Sequence[Any]) -> list[str]:
    names = [n for n, a, b in zip(spec.content_names, stored, new, strict=True) if a != b]
    return [n.removesuffix("_id") if n == "study_id" else n for n in names]


def _stored_content(
    session: Session, spec: _Keyed, rows: Sequence[tuple[Any, ...]]
) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    """Key -> stored content of the rows of ``spec`` that share a key with ``rows``.

    On PostgreSQL ``rows`` have been COPYed into the temp table already (joined);
    on SQLite they are looked up by message id in chunks.
    """
    n = spec.n_key
    if _is_postgres(session):
        conn = session.connection().connection.driver_connection
        assert isinstance(conn, psycopg.Connection)
        keys = spec.key_names
        cols = ", ".join(f"p.{name}" for name, _ in spec.columns[:-1])
        on = " AND ".join(f"p.{k} = t.{k}" for k in keys)
        if spec.key_table is not None:
            # Partitioned: the key table says which partition holds the stored row.
            part = spec.partition_column
            on_key = " AND ".join(f"k.{k} = t.{k}" for k in keys)
            on_row = " AND ".join(f"p.{k} = k.{k}" for k in (*keys, part))
            sql = (
                f"SELECT DISTINCT {cols} FROM _ingest_{spec.table} t "
                f"JOIN {spec.key_table} k ON {on_key} JOIN {spec.table} p ON {on_row}"
            )
        else:
            sql = f"SELECT DISTINCT {cols} FROM {spec.table} p JOIN _ingest_{spec.table} t ON {on}"
        with _driver_errors(), conn.cursor() as cur:
            cur.execute(sql)
            return {tuple(r[:n]): tuple(r[n:]) for r in cur}
    orm = spec.orm
    columns = [getattr(orm, name) for name, _ in spec.columns[:-1]]
    ids = sorted({row[0] for row in rows})
    stored: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for start in range(0, len(ids), CHUNK):
        found = session.execute(
            select(*columns).where(orm.message_id.in_(ids[start : start + CHUNK]))
        )
        stored.update((tuple(r[:n]), tuple(r[n:])) for r in found)
    return stored


def _write_keyed(
    session: Session, spec: _Keyed, rows: list[tuple[Any, ...]], units: list[Unit]
) -> _KeyedResult:
    """Insert the new rows; skip exact redeliveries; reject records that conflict.

    A row whose key (message id, + finding) is already stored, or was seen earlier
    in this batch, with the same content is a redelivery and skipped. With
    different content it is a *conflict*: its whole record is not written
    (the stored row is never overwritten) and is reported in ``conflicts``.
    """
    result = _KeyedResult()
    if not rows:
        return result
    n = spec.n_key
    seen: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    kept: list[int] = []
    for i, row in enumerate(rows):
        key, content = row[:n], row[n:-1]
        previous = seen.get(key)
        if previous is None:
            seen[key] = content
            kept.append(i)
        elif previous != content:
            result.conflicts.setdefault(units[i], _differing(spec, previous, content))
    candidates = [i for i in kept if units[i] not in result.conflicts]
    if _is_postgres(session):
        candidates.sort(key=lambda i: rows[i][:n])
        if _pg_copy_straight(session, spec, [rows[i] for i in candidates]):
            result.inserted = len(candidates)
        else:
            result.inserted = _pg_staged_insert(session, spec, rows, units, candidates, result)
    else:
        _find_stored_conflicts(session, spec, rows, units, candidates, result)
        candidates = [i for i in candidates if units[i] not in result.conflicts]
        names = [name for name, _ in spec.columns]
        result.inserted = _insert_returning_count(
            session, spec.orm, [dict(zip(names, rows[i], strict=True)) for i in candidates]
        )
    result.conflict_rows = sum(1 for u in units if u in result.conflicts)
    return result


def _pg_staged_insert(
    session: Session,
    spec: _Keyed,
    rows: list[tuple[Any, ...]],
    units: list[Unit],
    candidates: list[int],
    result: _KeyedResult,
) -> int:
    """The staging path: stage, drop the records that conflict, insert; returns rows inserted.

    A concurrent writer may hold one of these keys uncommitted while the stored
    content is looked up: the lookup does not see it, and ``ON CONFLICT`` then
    waits for that writer and skips the key once it commits. So the keys the
    insert did not take are looked up again afterwards (a new statement sees the
    commit); if one of them now holds different content, its record conflicts,
    and the insert is rolled back to its savepoint and redone without that
    record, so that a conflicting record is never partly written and never
    counted as a redelivery.
    """
    n = spec.n_key
    conn = session.connection().connection.driver_connection
    assert isinstance(conn, psycopg.Connection)
    while True:
        _pg_copy_temp(session, spec, [rows[i] for i in candidates])
        before = len(result.conflicts)
        _find_stored_conflicts(session, spec, rows, units, candidates, result)
        if len(result.conflicts) != before:
            candidates = [i for i in candidates if units[i] not in result.conflicts]
            _pg_copy_temp(session, spec, [rows[i] for i in candidates])
        with _driver_errors(), conn.cursor() as cur:
            cur.execute("SAVEPOINT ingest_staged")
        claimed = _pg_insert_from_temp(session, spec)
        skipped = [i for i in candidates if rows[i][:n] not in claimed]
        before = len(result.conflicts)
        _find_stored_conflicts(session, spec, rows, units, skipped, result)
        with _driver_errors(), conn.cursor() as cur:
            if len(result.conflicts) == before:
                cur.execute("RELEASE SAVEPOINT ingest_staged")
                return len(claimed)
            cur.execute("ROLLBACK TO SAVEPOINT ingest_staged")
            cur.execute("RELEASE SAVEPOINT ingest_staged")
        candidates = [i for i in candidates if units[i] not in result.conflicts]


def _find_stored_conflicts(
    session: Session,
    spec: _Keyed,
    rows: list[tuple[Any, ...]],
    units: list[Unit],
    candidates: list[int],
    result: _KeyedResult,
) -> None:
    n = spec.n_key
    stored = _stored_content(session, spec, [rows[i] for i in candidates])
    for i in candidates:
        existing = stored.get(rows[i][:n])
        if existing is not None and existing != rows[i][n:-1]:
            result.conflicts.setdefault(units[i], _differing(spec, existing, rows[i][n:-1]))


def _pg_copy_straight(session: Session, spec: _Keyed, rows: list[tuple[Any, ...]]) -> bool:
    """Binary COPY ``rows`` straight into the table inside a savepoint.

    The cheapest way into an indexed table, and the normal case: message ids
    are new unless redelivered. Returns False (savepoint rolled back, nothing
    written) when a row's key is already stored. A partitioned table's key
    rows are COPYed into its key table first, in the same savepoint: the key
    table's primary key is what detects the stored key.
    """
    conn = session.connection().connection.driver_connection
    assert isinstance(conn, psycopg.Connection)
    cols = ", ".join(name for name, _ in spec.columns)
    with _driver_errors(), conn.cursor() as cur:
        cur.execute("SAVEPOINT ingest_copy")
        try:
            if spec.key_table is not None:
                key_columns = spec.key_columns()
                positions = spec.key_positions()
                key_cols = ", ".join(name for name, _ in key_columns)
                with cur.copy(
                    f"COPY {spec.key_table} ({key_cols}) FROM STDIN (FORMAT BINARY)"
                ) as copy:
                    copy.set_types([pg_type for _, pg_type in key_columns])
                    for row in rows:
                        copy.write_row([row[i] for i in positions])
            with cur.copy(f"COPY {spec.table} ({cols}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types([pg_type for _, pg_type in spec.columns])
                for row in rows:
                    copy.write_row(row)
        except psycopg.errors.UniqueViolation:
            cur.execute("ROLLBACK TO SAVEPOINT ingest_copy")
            return False
        cur.execute("RELEASE SAVEPOINT ingest_copy")
        return True


def _pg_copy_temp(session: Session, spec: _Keyed, rows: list[tuple[Any, ...]]) -> None:
    """(Re)fill the session's temp staging table for ``spec`` with ``rows``."""
    conn = session.connection().connection.driver_connection
    assert isinstance(conn, psycopg.Connection)
    temp = f"_ingest_{spec.table}"
    cols = ", ".join(name for name, _ in spec.columns)
    with _driver_errors(), conn.cursor() as cur:
        cur.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {temp} ON COMMIT DELETE ROWS AS "
            f"SELECT {cols} FROM {spec.table} WITH NO DATA"
        )
        cur.execute(f"DELETE FROM {temp}")
        with cur.copy(f"COPY {temp} ({cols}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types([pg_type for _, pg_type in spec.columns])
            for row in rows:
                copy.write_row(row)


def _pg_insert_from_temp(session: Session, spec: _Keyed) -> set[tuple[Any, ...]]:
    """Insert the staged rows whose key is free; returns the keys inserted."""
    conn = session.connection().connection.driver_connection
    assert isinstance(conn, psycopg.Connection)
    cols = ", ".join(name for name, _ in spec.columns)
    order = ", ".join(spec.key_names)
    temp = f"_ingest_{spec.table}"
    if spec.key_table is not None:
        # Claim the keys first (ON CONFLICT: a concurrent writer's or a stored key),
        # then insert exactly the rows whose key this statement claimed.
        key_cols = ", ".join(name for name, _ in spec.key_columns())
        using = " AND ".join(f"t.{k} = k.{k}" for k in spec.key_names)
        t_cols = ", ".join(f"t.{name}" for name, _ in spec.columns)
        sql = (
            f"WITH k AS (INSERT INTO {spec.key_table} ({key_cols}) SELECT {key_cols} "
            f"FROM {temp} ORDER BY {order} ON CONFLICT DO NOTHING RETURNING {order}) "
            f"INSERT INTO {spec.table} ({cols}) SELECT {t_cols} FROM {temp} t JOIN k ON {using} "
            f"RETURNING {order}"
        )
    else:
        sql = (
            f"INSERT INTO {spec.table} ({cols}) SELECT {cols} FROM {temp} "
            f"ORDER BY {order} ON CONFLICT DO NOTHING RETURNING {order}"
        )
    with _driver_errors(), conn.cursor() as cur:
        cur.execute(sql)
        return {tuple(row) for row in cur}


def _conflict_letter(
    kind: str, unit: Unit, differing: list[str], payload: dict[str, Any]
) -> DeadLetterRecord:
    message_id, position = unit
    shown_id = message_id if len(message_id) <= 80 else message_id[:77] + "..."
    reason = (
        f"conflict: {kind} message_id {shown_id!r} is already stored with a different "
        f"{', '.join(differing) or 'content'}; the stored record is kept, this one is not written"
    )
    text = json.dumps({"kind": kind, **payload}, separators=(",", ":"), default=str)
    data = text.encode()
    if position is None:
        source, locator, partition, offset = "synthetic", f"conflict:{kind}:{message_id}", -1, -1
    else:
        source, locator = position.source, position.locator
        partition = -1 if position.partition is None else position.partition
        offset = -1 if position.offset is None else position.offset
    return DeadLetterRecord(
        source=source,
        locator=locator[:1024],
        partition=partition,
        offset=offset,
        kind=kind,
        reason=reason,
        payload=text,
        payload_sha256=hashlib.sha256(data).hexdigest(),
        payload_bytes=len(data),
    )


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _write_predictions(
    session: Session, records: list[PredictionRecord], studies: dict[str, int]
) -> tuple[int, int, list[DeadLetterRecord]]:
    """(rows inserted, rows of conflicting records, their dead letters)."""
    now = utcnow()
    rows = [
        (
            r.message_id,
            r.finding,
            r.model_id,
            r.model_version,
            studies[r.study_uid_pseudonym],
            r.score,
            r.predicted_at,
            now,
        )
        for r in records
    ]
    units: list[Unit] = [(r.message_id, r.position) for r in records]
    result = _write_keyed(session, _PREDICTION, rows, units)
    by_unit: dict[Unit, list[PredictionRecord]] = {}
    if result.conflicts:  # grouped once: a file of conflicts must not be quadratic
        for r, u in zip(records, units, strict=True):
            by_unit.setdefault(u, []).append(r)
    letters = []
    for unit, differing in result.conflicts.items():
        mine = by_unit[unit]
        first = mine[0]
        letters.append(
            _conflict_letter(
                "prediction",
                unit,
                differing,
                {
                    "message_id": first.message_id,
                    "model_id": first.model_id,
                    "model_version": first.model_version,
                    "study_instance_uid": "pseudonym:" + first.study_uid_pseudonym,
                    "outputs": {r.finding: r.score for r in mine},
                    "predicted_at": _iso(first.predicted_at),
                },
            )
        )
    return result.inserted, result.conflict_rows, letters


def _write_diagnoses(
    session: Session, records: list[DiagnosisRecord], studies: dict[str, int]
) -> tuple[int, int, list[DeadLetterRecord]]:
    """(rows inserted, rows of conflicting records, their dead letters)."""
    now = utcnow()
    rows = [
        (
            r.message_id,
            studies[r.study_uid_pseudonym],
            r.finding,
            r.present,
            r.source,
            r.confirmed_at,
            now,
        )
        for r in records
    ]
    units: list[Unit] = [(r.message_id, r.position) for r in records]
    result = _write_keyed(session, _DIAGNOSIS, rows, units)
    first_of: dict[Unit, DiagnosisRecord] = {}
    if result.conflicts:
        for r, u in zip(records, units, strict=True):
            first_of.setdefault(u, r)
    letters = []
    for unit, differing in result.conflicts.items():
        r = first_of[unit]
        letters.append(
            _conflict_letter(
                "diagnosis",
                unit,
                differing,
                {
                    "message_id": r.message_id,
                    "study_instance_uid": "pseudonym:" + r.study_uid_pseudonym,
                    "finding": r.finding,
                    "present": r.present,
                    "source": r.source,
                    "confirmed_at": _iso(r.confirmed_at),
                },
            )
        )
    return result.inserted, result.conflict_rows, letters


def _write_spool(session: Session, records: list[SpoolRecord], studies: dict[str, int]) -> int:
    now = utcnow()
    rows = [
        {
            "study_id": studies[r.study_uid_pseudonym],
            "sop_instance_pseudonym": r.sop_instance_pseudonym,
            "file_name": r.file_name,
            "size_bytes": r.size_bytes,
            "transfer_syntax": r.transfer_syntax,
            "received_at": now,
        }
        for r in records
    ]
    return _insert_returning_count(session, ImageSpoolRow, rows)


def _write_dead_letters(session: Session, records: list[DeadLetterRecord]) -> int:
    if not records:
        return 0
    now = utcnow()
    rows = [{**asdict(r), "received_at": now} for r in records]
    return _insert_returning_count(session, DeadLetterRow, rows)


def _write_offsets(session: Session, offsets: list[OffsetRecord]) -> None:
    for o in offsets:
        stmt = _insert(session, ConsumerOffsetRow).values(
            consumer_group=o.consumer_group,
            topic=o.topic,
            partition=o.partition,
            next_offset=o.next_offset,
            updated_at=utcnow(),
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["consumer_group", "topic", "partition"],
            set_={"next_offset": stmt.excluded.next_offset, "updated_at": stmt.excluded.updated_at},
        )
        session.execute(stmt)


def write_batch(session: Session, batch: IngestBatch) -> IngestCounts:
    """Write everything in ``batch`` in the caller's transaction."""
    metadata = _write_metadata(session, batch.metadata)
    first_seen: dict[str, datetime] = {}
    for p in batch.predictions:
        seen = first_seen.get(p.study_uid_pseudonym)
        if seen is None or p.predicted_at < seen:
            first_seen[p.study_uid_pseudonym] = p.predicted_at
    for d in batch.diagnoses:
        first_seen.setdefault(d.study_uid_pseudonym, d.confirmed_at)
    now = utcnow()
    for sp in batch.spool:  # normally the header in this batch created the study already
        first_seen.setdefault(sp.study_uid_pseudonym, now)
    studies = _ensure_studies(session, first_seen)
    new_predictions, conflicting_predictions, letters = _write_predictions(
        session, batch.predictions, studies
    )
    new_diagnoses, conflicting_diagnoses, diagnosis_letters = _write_diagnoses(
        session, batch.diagnoses, studies
    )
    letters += diagnosis_letters
    spooled = _write_spool(session, batch.spool, studies)
    dead = _write_dead_letters(session, [*batch.dead_letters, *letters])
    _write_offsets(session, batch.offsets)
    return IngestCounts(
        predictions_new=new_predictions,
        predictions_duplicate=len(batch.predictions) - new_predictions - conflicting_predictions,
        metadata=metadata,
        diagnoses_new=new_diagnoses,
        diagnoses_duplicate=len(batch.diagnoses) - new_diagnoses - conflicting_diagnoses,
        dead_letters=dead,
        spooled_new=spooled,
        spooled_duplicate=len(batch.spool) - spooled,
        conflicts=len(letters),
    )


def read_offsets(session: Session, consumer_group: str) -> dict[tuple[str, int], int]:
    rows = session.execute(
        select(
            ConsumerOffsetRow.topic, ConsumerOffsetRow.partition, ConsumerOffsetRow.next_offset
        ).where(ConsumerOffsetRow.consumer_group == consumer_group)
    )
    return {(t, p): o for t, p, o in rows}


__all__ = ["device_label", "read_offsets", "site_label", "write_batch"]
