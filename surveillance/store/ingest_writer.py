"""Idempotent batch writes of ingested records, in one transaction.

Every insert is ``ON CONFLICT DO NOTHING`` on the record's natural key
(message id + finding, study UID pseudonym, dead-letter position), so a
redelivered batch never duplicates a row. Consumer offsets are upserted in the
same transaction as the rows they cover.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

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
