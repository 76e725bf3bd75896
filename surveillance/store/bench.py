"""Benchmark SQL for `surveillance bench ingest`: counts, a plain COPY yardstick, clean-up."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import psycopg
from sqlalchemy import delete, func, select

from surveillance.store.base import Repository
from surveillance.store.models import (
    PredictionRow,
    StudyRow,
)

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


class BenchRepository(Repository):
    """Tables and timings of the ingest benchmark (PostgreSQL only)."""

    def count_predictions(self, message_prefix: str) -> tuple[int, int]:
        """(rows, distinct message ids) of predictions whose message id starts with the prefix."""
        with self._sessions.scope() as s:
            rows, messages = s.execute(
                select(func.count(), func.count(PredictionRow.message_id.distinct())).where(
                    PredictionRow.message_id.startswith(message_prefix, autoescape=True)
                )
            ).one()
            return int(rows), int(messages)

    def time_plain_copy(self, message_prefix: str, scratch_table: str) -> tuple[int, float]:
        """COPY the stored predictions with ``message_prefix`` into a new plain table.

        The scratch table has the prediction columns and no index or constraint:
        what PostgreSQL's bulk path can do on this machine, the yardstick for the
        ingest path. Returns (rows, seconds for COPY + commit); the table is dropped.
        """
        if not scratch_table.isidentifier():
            raise ValueError(f"scratch table name {scratch_table!r} is not an identifier")
        cols = ", ".join(_PREDICTION_COLUMNS)
        with self._sessions.scope() as s:
            rows: list[Any] = [
                tuple(r)
                for r in s.execute(
                    select(*(getattr(PredictionRow, c) for c in _PREDICTION_COLUMNS)).where(
                        PredictionRow.message_id.startswith(message_prefix, autoescape=True)
                    )
                )
            ]
        raw = self._sessions.engine.raw_connection()
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
                with (
                    conn.cursor() as cur,
                    cur.copy(f"COPY {scratch_table} ({cols}) FROM STDIN") as cp,
                ):
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

    def delete_bench_rows(self, message_prefix: str) -> int:
        """Delete the benchmark's predictions and the study skeletons they created."""
        with self._sessions.scope() as s:
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
        self._vacuum(("prediction", "study"))
        return len(study_ids)

    def _vacuum(self, tables: Sequence[str]) -> None:
        """VACUUM ANALYZE after the bench's delete, so repeated runs do not measure bloat."""
        raw = self._sessions.engine.raw_connection()
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
