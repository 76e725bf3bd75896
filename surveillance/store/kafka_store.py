"""Queries of the Kafka intake: stored consumer offsets, dead letters to replay.

Functions take a :class:`~surveillance.store.Store` and return domain
dataclasses; ORM rows never leave this module.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy import delete, func, select, update

from surveillance.errors import NotFoundError
from surveillance.store import audit
from surveillance.store.domain import IngestBatch, IngestCounts
from surveillance.store.ingest_writer import read_offsets, write_batch
from surveillance.store.models import ConsumerOffsetRow, DeadLetterRow, PredictionRow, StudyRow
from surveillance.store.repository import Store
from surveillance.store.types import utcnow


@dataclass(frozen=True, slots=True)
class DeadLetterEntry:
    """One dead letter with its source position split out (for replay)."""

    id: int
    source: str
    locator: str
    partition: int | None
    offset: int | None
    kind: str | None
    reason: str
    payload: str | None
    replayed_at: datetime | None


def stored_offsets(
    store: Store, consumer_group: str, keys: Collection[tuple[str, int]] | None = None
) -> dict[tuple[str, int], int]:
    """Next offset per (topic, partition) stored for ``consumer_group`` (only ``keys``)."""
    with store.sessions.scope() as s:
        offsets = read_offsets(s, consumer_group)
    if keys is None:
        return offsets
    wanted = set(keys)
    return {k: v for k, v in offsets.items() if k in wanted}


def consumer_groups(store: Store) -> list[str]:
    with store.sessions.scope() as s:
        return sorted(s.scalars(select(ConsumerOffsetRow.consumer_group).distinct()))


def forget_offsets(store: Store, consumer_group: str) -> int:
    """Delete every stored offset of ``consumer_group`` (bench clean-up); returns rows gone."""
    with store.sessions.scope() as s:
        result = s.execute(
            delete(ConsumerOffsetRow).where(ConsumerOffsetRow.consumer_group == consumer_group)
        )
        return int(getattr(result, "rowcount", 0) or 0)


def _entry(r: DeadLetterRow) -> DeadLetterEntry:
    return DeadLetterEntry(
        id=r.id,
        source=r.source,
        locator=r.locator,
        partition=None if r.partition < 0 else r.partition,
        offset=None if r.offset < 0 else r.offset,
        kind=r.kind,
        reason=r.reason,
        payload=r.payload,
        replayed_at=r.replayed_at,
    )


def dead_letters_by_id(store: Store, ids: Sequence[int]) -> list[DeadLetterEntry]:
    """The dead letters ``ids`` in that order; raises NotFoundError naming missing ones."""
    with store.sessions.scope() as s:
        found = s.scalars(select(DeadLetterRow).where(DeadLetterRow.id.in_(ids)))
        rows = {r.id: _entry(r) for r in found}
    missing = [i for i in ids if i not in rows]
    if missing:
        raise NotFoundError(
            f"no dead letter with id {', '.join(map(str, missing))} "
            "(see 'surveillance deadletters list --all')"
        )
    return [rows[i] for i in ids]


def pending_dead_letters(store: Store, limit: int = 100_000) -> list[DeadLetterEntry]:
    """Dead letters not replayed yet, oldest first."""
    with store.sessions.scope() as s:
        return [
            _entry(r)
            for r in s.scalars(
                select(DeadLetterRow)
                .where(DeadLetterRow.replayed_at.is_(None))
                .order_by(DeadLetterRow.id)
                .limit(limit)
            )
        ]


def replay_dead_letter(
    store: Store, dead_letter_id: int, batch: IngestBatch, *, actor: str
) -> IngestCounts:
    """Write ``batch`` (the dead letter, now valid) and mark it replayed, atomically.

    The audit log records who replayed which dead letter and what it wrote.
    """
    with store.sessions.scope() as s:
        counts = write_batch(s, batch)
        now = utcnow()
        s.execute(
            update(DeadLetterRow).where(DeadLetterRow.id == dead_letter_id).values(replayed_at=now)
        )
        audit.append(
            s,
            actor=actor,
            action="deadletter.replay",
            entity="dead_letter",
            entity_id=dead_letter_id,
            detail={
                "predictions_new": counts.predictions_new,
                "predictions_duplicate": counts.predictions_duplicate,
                "metadata": counts.metadata,
                "diagnoses_new": counts.diagnoses_new,
                "diagnoses_duplicate": counts.diagnoses_duplicate,
            },
        )
    return counts


# ---- ingest benchmark (surveillance bench ingest) ------------------------------------

_PREDICTION_COLUMNS = (
    "message_id",
    "model_id",
    "model_version",
    "study_id",
    "finding",
    "score",
    "predicted_at",
    "ingested_at",
)


def count_predictions(store: Store, message_prefix: str) -> tuple[int, int]:
    """(rows, distinct message ids) of predictions whose message id starts with the prefix."""
    with store.sessions.scope() as s:
        rows, messages = s.execute(
            select(func.count(), func.count(PredictionRow.message_id.distinct())).where(
                PredictionRow.message_id.startswith(message_prefix, autoescape=True)
            )
        ).one()
        return int(rows), int(messages)


def time_plain_copy(store: Store, message_prefix: str, scratch_table: str) -> tuple[int, float]:
    """COPY the stored predictions with ``message_prefix`` into a new plain table.

    The scratch table has the prediction columns and no index or constraint:
    what PostgreSQL's bulk path can do on this machine, the yardstick for the
    ingest path. Returns (rows, seconds for COPY + commit); the table is dropped.
    """
    if not scratch_table.isidentifier():
        raise ValueError(f"scratch table name {scratch_table!r} is not an identifier")
    cols = ", ".join(_PREDICTION_COLUMNS)
    with store.sessions.scope() as s:
        rows: list[Any] = [
            tuple(r)
            for r in s.execute(
                select(*(getattr(PredictionRow, c) for c in _PREDICTION_COLUMNS)).where(
                    PredictionRow.message_id.startswith(message_prefix, autoescape=True)
                )
            )
        ]
    raw = store.engine.raw_connection()
    try:
        conn = raw.driver_connection
        assert isinstance(conn, psycopg.Connection)
        with conn.cursor() as cur:
            cur.execute(
                f"CREATE TABLE {scratch_table} AS SELECT {cols} FROM prediction WITH NO DATA"
            )
        conn.commit()
        try:
            started = time.perf_counter()
            with conn.cursor() as cur, cur.copy(f"COPY {scratch_table} ({cols}) FROM STDIN") as cp:
                for row in rows:
                    cp.write_row(row)
            conn.commit()
            seconds = time.perf_counter() - started
        finally:
            conn.rollback()
            with conn.cursor() as cur:
                cur.execute(f"DROP TABLE IF EXISTS {scratch_table}")
            conn.commit()
    finally:
        raw.close()
    return len(rows), seconds


def delete_bench_rows(store: Store, message_prefix: str) -> int:
    """Delete the benchmark's predictions and the study skeletons they created."""
    with store.sessions.scope() as s:
        study_ids = list(
            s.scalars(
                delete(PredictionRow)
                .where(PredictionRow.message_id.startswith(message_prefix, autoescape=True))
                .returning(PredictionRow.study_id)
            )
        )
        for start in range(0, len(study_ids), 5000):
            part = study_ids[start : start + 5000]
            s.execute(
                delete(StudyRow).where(StudyRow.id.in_(part), StudyRow.has_metadata.is_(False))
            )
    _vacuum(store, ("prediction", "study"))
    return len(study_ids)


def _vacuum(store: Store, tables: Sequence[str]) -> None:
    """VACUUM ANALYZE after the bench's delete, so repeated runs do not measure bloat."""
    raw = store.engine.raw_connection()
    try:
        conn = raw.driver_connection
        assert isinstance(conn, psycopg.Connection)
        conn.rollback()
        conn.autocommit = True
        try:
            for table in tables:
                conn.execute(f"VACUUM (ANALYZE) {table}")
        except psycopg.Error:
            pass  # not the table owner: the figures of the next run may include bloat
        finally:
            conn.autocommit = False
    finally:
        raw.close()


__all__ = [
    "DeadLetterEntry",
    "consumer_groups",
    "count_predictions",
    "dead_letters_by_id",
    "delete_bench_rows",
    "forget_offsets",
    "pending_dead_letters",
    "replay_dead_letter",
    "stored_offsets",
    "time_plain_copy",
]
