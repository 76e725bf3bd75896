"""Idempotent batch writes of ingested records, in one transaction.

Every insert is ``ON CONFLICT DO NOTHING`` on the record's natural key
(message id + finding, study UID pseudonym, dead-letter position), so a
redelivered batch never duplicates a row. Consumer offsets are upserted in the
same transaction as the rows they cover.

On PostgreSQL the high-volume tables avoid SQLAlchemy's multi-row INSERT
(building a 2,000-row statement costs more than PostgreSQL takes to run it):
study skeletons go through a binary COPY into a session temporary table and
one ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``; predictions and
diagnoses, which are new unless redelivered, are COPYed straight into their
table inside a savepoint and take that conflict-tolerant path only when the
COPY hits a duplicate. Same semantics as on SQLite, several times faster.
Rows are written in key order so that concurrent consumers inserting
overlapping keys do not deadlock.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
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
) -> int:
    """COPY ``rows`` into a temp table shaped like ``table``, then insert the new ones.

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
            "ON CONFLICT DO NOTHING"
        )
        return max(cur.rowcount, 0)


def _pg_copy_new_rows(
    session: Session,
    table: str,
    columns: Sequence[tuple[str, str]],
    rows: list[tuple[Any, ...]],
    order_by: str,
) -> int:
    """Insert ``rows`` that are normally all new (message ids); returns rows inserted.

    Optimistic: a binary COPY straight into ``table`` inside a savepoint, the
    cheapest way into an indexed table. A redelivered row makes the COPY fail
    with a unique violation; then the savepoint is rolled back and the batch
    goes through :func:`_pg_copy_insert` (``ON CONFLICT DO NOTHING``). Rows are
    sorted by their key first, so concurrent writers take index locks in the
    same order.
    """
    rows.sort(key=lambda row: row[:2])
    conn = session.connection().connection.driver_connection
    assert isinstance(conn, psycopg.Connection)
    cols = ", ".join(name for name, _ in columns)
    with _driver_errors(), conn.cursor() as cur:
        cur.execute("SAVEPOINT ingest_copy")
        try:
            with cur.copy(f"COPY {table} ({cols}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types([pg_type for _, pg_type in columns])
                for row in rows:
                    copy.write_row(row)
        except psycopg.errors.UniqueViolation:
            cur.execute("ROLLBACK TO SAVEPOINT ingest_copy")
        else:
            cur.execute("RELEASE SAVEPOINT ingest_copy")
            return len(rows)
    return _pg_copy_insert(session, table, columns, rows, order_by)


def _pg_study_ids(session: Session) -> dict[str, int]:
    """Ids of the studies just staged by ``_pg_copy_insert`` (new or already stored)."""
    conn = session.connection().connection.driver_connection
    assert isinstance(conn, psycopg.Connection)
    with _driver_errors(), conn.cursor() as cur:
        cur.execute(
            "SELECT s.uid_pseudonym, s.id FROM study s "
            "JOIN _ingest_study t ON t.uid_pseudonym = s.uid_pseudonym"
        )
        return {uid: study_id for uid, study_id in cur}


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
        )
        return _pg_study_ids(session)
    rows = [
        {"uid_pseudonym": uid, "studied_at": at, "received_at": now, "has_metadata": False}
        for uid, at in first_seen.items()
    ]
    for chunk in _chunks(rows):
        session.execute(_insert(session, StudyRow).values(list(chunk)).on_conflict_do_nothing())
    ids: dict[str, int] = {}
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


def _insert_returning_count(session: Session, table: Any, rows: list[dict[str, Any]]) -> int:
    inserted = 0
    for chunk in _chunks(rows):
        stmt = _insert(session, table).values(list(chunk)).on_conflict_do_nothing()
        inserted += len(session.execute(stmt.returning(table.id)).all())
    return inserted


def _write_predictions(
    session: Session, records: list[PredictionRecord], studies: dict[str, int]
) -> int:
    now = utcnow()
    if _is_postgres(session) and records:
        return _pg_copy_new_rows(
            session,
            "prediction",
            (
                ("message_id", "text"),
                ("model_id", "int8"),
                ("model_version", "text"),
                ("study_id", "int8"),
                ("finding", "text"),
                ("score", "float8"),
                ("predicted_at", "timestamptz"),
                ("ingested_at", "timestamptz"),
            ),
            [
                (
                    r.message_id,
                    r.model_id,
                    r.model_version,
                    studies[r.study_uid_pseudonym],
                    r.finding,
                    r.score,
                    r.predicted_at,
                    now,
                )
                for r in records
            ],
            order_by="message_id, finding",
        )
    rows = [
        {
            "message_id": r.message_id,
            "model_id": r.model_id,
            "model_version": r.model_version,
            "study_id": studies[r.study_uid_pseudonym],
            "finding": r.finding,
            "score": r.score,
            "predicted_at": r.predicted_at,
            "ingested_at": now,
        }
        for r in records
    ]
    return _insert_returning_count(session, PredictionRow, rows)


def _write_diagnoses(
    session: Session, records: list[DiagnosisRecord], studies: dict[str, int]
) -> int:
    now = utcnow()
    if _is_postgres(session) and records:
        return _pg_copy_new_rows(
            session,
            "diagnosis",
            (
                ("message_id", "text"),
                ("study_id", "int8"),
                ("finding", "text"),
                ("present", "bool"),
                ("source", "text"),
                ("confirmed_at", "timestamptz"),
                ("ingested_at", "timestamptz"),
            ),
            [
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
            ],
            order_by="message_id",
        )
    rows = [
        {
            "message_id": r.message_id,
            "study_id": studies[r.study_uid_pseudonym],
            "finding": r.finding,
            "present": r.present,
            "source": r.source,
            "confirmed_at": r.confirmed_at,
            "ingested_at": now,
        }
        for r in records
    ]
    return _insert_returning_count(session, DiagnosisRow, rows)


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
    new_predictions = _write_predictions(session, batch.predictions, studies)
    new_diagnoses = _write_diagnoses(session, batch.diagnoses, studies)
    spooled = _write_spool(session, batch.spool, studies)
    dead = _write_dead_letters(session, batch.dead_letters)
    _write_offsets(session, batch.offsets)
    return IngestCounts(
        predictions_new=new_predictions,
        predictions_duplicate=len(batch.predictions) - new_predictions,
        metadata=metadata,
        diagnoses_new=new_diagnoses,
        diagnoses_duplicate=len(batch.diagnoses) - new_diagnoses,
        dead_letters=dead,
        spooled_new=spooled,
        spooled_duplicate=len(batch.spool) - spooled,
    )


def read_offsets(session: Session, consumer_group: str) -> dict[tuple[str, int], int]:
    rows = session.execute(
        select(
            ConsumerOffsetRow.topic, ConsumerOffsetRow.partition, ConsumerOffsetRow.next_offset
        ).where(ConsumerOffsetRow.consumer_group == consumer_group)
    )
    return {(t, p): o for t, p, o in rows}


__all__ = ["device_label", "read_offsets", "site_label", "write_batch"]
