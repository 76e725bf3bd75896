"""Benchmark SQL for ``surveillance bench ...``: synthetic data by COPY, yardsticks, EXPLAIN.

* :meth:`BenchRepository.build_synthetic` writes a multi-site history (sites,
  scanners, studies with their headers, predictions, late diagnoses) straight
  into PostgreSQL with binary COPY: ~1M predictions in well under a minute,
  for ``bench check`` and ``bench panels``.
* :meth:`BenchRepository.time_plain_copy` is the yardstick of the ingest write
  path: the same rows COPYed into a table with no index or constraint.
* :meth:`BenchRepository.explain` runs a query under ``EXPLAIN (ANALYZE, FORMAT JSON)``.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import psycopg
from sqlalchemy import delete, func, select

from surveillance.store.base import Repository
from surveillance.store.models import (
    PredictionKeyRow,
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


_PREDICTION_TYPES = ("text", "int8", "text", "int8", "text", "float8", "timestamptz", "timestamptz")

_MANUFACTURERS = (
    ("SIEMENS", "SOMATOM Force", "B30f"),
    ("GE MEDICAL SYSTEMS", "Revolution CT", "STANDARD"),
    ("Philips", "IQon Spectral CT", "B"),
    ("Canon Medical Systems", "Aquilion ONE", "FC13"),
)


@dataclass(frozen=True, slots=True)
class SyntheticFigures:
    """What :meth:`BenchRepository.build_synthetic` wrote and how long it took."""

    sites: int
    scanners: int
    studies: int
    predictions: int
    diagnoses: int
    first_study_at: datetime
    last_study_at: datetime
    seconds: float


def _hex(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


class BenchRepository(Repository):
    """Tables and timings of the benchmarks (PostgreSQL only)."""

    def _raw(self) -> Any:
        raw = self._sessions.engine.raw_connection()
        conn = raw.driver_connection
        assert isinstance(conn, psycopg.Connection)
        return raw, conn

    def build_synthetic(
        self,
        *,
        model_id: int,
        model_version: str,
        findings: Sequence[str],
        predictions: int,
        scanners: int,
        sites: int,
        days: int,
        end: datetime,
        tag: str,
        seed: int = 11,
        labelled_fraction: float = 0.6,
        kvp_sd: float = 0.0,
        shift_from: datetime | None = None,
        age_band_shift: float = 0.0,
        kvp_shift: float = 0.0,
    ) -> SyntheticFigures:
        """COPY a synthetic history ending at ``end`` into the database.

        ``predictions`` rows over ``predictions / len(findings)`` studies spread
        evenly over ``days`` days, ``scanners`` scanners over ``sites`` sites (a
        few vendors, software versions and kernels each), sex and age band,
        scores from a binormal model, and diagnoses for ``labelled_fraction``
        of the studies older than two weeks, confirmed 7-30 days after the
        study. Message ids and pseudonyms carry ``tag``, so two builds never
        collide. Seeded: the same arguments write the same values.

        ``kvp_sd`` adds measurement noise to the nominal 100/120 kV. From
        ``shift_from`` on, a small change can be injected (the detection
        evidence of issue 9): ``age_band_shift`` of the studies move to the
        70-79 band and ``kvp_shift`` kV is added to every study's kVp.
        """
        rng = np.random.default_rng(seed)
        started = time.perf_counter()
        n_find = len(findings)
        n_studies = max(predictions // n_find, 1)
        raw, conn = self._raw()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT coalesce(max(id), 0) FROM site")
                site0 = int(cur.fetchone()[0])  # type: ignore[index,unused-ignore]
                cur.execute("SELECT coalesce(max(id), 0) FROM device")
                device0 = int(cur.fetchone()[0])  # type: ignore[index,unused-ignore]
                cur.execute("SELECT coalesce(max(id), 0) FROM study")
                study0 = int(cur.fetchone()[0])  # type: ignore[index,unused-ignore]
                site_rows = [
                    (site0 + i + 1, _hex(f"{tag}:site:{i}"), f"bench-{tag} site {i:03d}")
                    for i in range(sites)
                ]
                device_rows = []
                device_site = np.arange(scanners) % sites
                for d in range(scanners):
                    vendor, model_name, _ = _MANUFACTURERS[d % len(_MANUFACTURERS)]
                    label = f"{vendor.split()[0]} {model_name} #{d:04d} @ bench-{tag} site"
                    device_rows.append(
                        (
                            device0 + d + 1,
                            site0 + int(device_site[d]) + 1,
                            _hex(f"{tag}:station:{d}"),
                            vendor,
                            model_name,
                            f"{label} {int(device_site[d]):03d}",
                        )
                    )
                self._copy(cur, "site", ("id", "pseudonym", "label"), None, site_rows)
                self._copy(
                    cur,
                    "device",
                    ("id", "site_id", "station_pseudonym", "manufacturer", "model_name", "label"),
                    None,
                    device_rows,
                )
                span = days * 86400.0
                offsets = np.sort(rng.uniform(0, span, n_studies))
                start = end - timedelta(days=days)
                base = np.datetime64(start.replace(tzinfo=None), "us")
                studied = base + (offsets * 1e6).astype("timedelta64[us]")
                device = rng.integers(0, scanners, n_studies)
                sex = np.where(rng.random(n_studies) < 0.5, "F", "M")
                ages = np.clip(rng.normal(58, 16, n_studies), 18, 99).astype(int)
                kvp = np.where(rng.random(n_studies) < 0.7, 120.0, 100.0)
                kvp = kvp + rng.normal(0.0, kvp_sd, n_studies) if kvp_sd > 0 else kvp
                if shift_from is not None:
                    after = studied >= np.datetime64(
                        shift_from.astimezone(end.tzinfo).replace(tzinfo=None), "us"
                    )
                    moved = after & (rng.random(n_studies) < age_band_shift)
                    ages = np.where(moved, 75, ages)
                    kvp = np.where(after, kvp + kvp_shift, kvp)
                positive = rng.random(n_studies) < 0.15
                study_ids = study0 + 1 + np.arange(n_studies)
                tz = end.tzinfo

                def moment(value: np.datetime64) -> datetime:
                    return value.astype(datetime).replace(tzinfo=tz)

                study_rows = (
                    (
                        int(study_ids[i]),
                        _hex(f"{tag}:study:{i}"),
                        site0 + int(device_site[device[i]]) + 1,
                        device0 + int(device[i]) + 1,
                        moment(studied[i]),
                        "CT",
                        f"VA{40 + device[i] % 3}",
                        _MANUFACTURERS[device[i] % len(_MANUFACTURERS)][2],
                        1.0,
                        float(kvp[i]),
                        0.7,
                        "CHEST",
                        str(sex[i]),
                        f"{min(ages[i], 90) // 10 * 10}-{min(ages[i], 90) // 10 * 10 + 9}"
                        if ages[i] < 90
                        else "90+",
                        True,
                        moment(studied[i]),
                    )
                    for i in range(n_studies)
                )
                self._copy(
                    cur,
                    "study",
                    (
                        "id", "uid_pseudonym", "site_id", "device_id", "studied_at", "modality",
                        "software_versions", "convolution_kernel", "slice_thickness", "kvp",
                        "pixel_spacing", "body_part", "sex", "age_band", "has_metadata",
                        "received_at",
                    ),
                    (
                        "int8", "text", "int8", "int8", "timestamptz", "text", "text", "text",
                        "float8", "float8", "float8", "text", "text", "text", "bool",
                        "timestamptz",
                    ),
                    study_rows,
                )  # fmt: skip
                score_pos = 1 / (1 + np.exp(-rng.normal(1.2, 1.0, (n_studies, n_find))))
                score_neg = 1 / (1 + np.exp(-rng.normal(-1.6, 1.0, (n_studies, n_find))))
                scores = np.where(positive[:, None], score_pos, score_neg)
                lag = (rng.uniform(1, 120, n_studies) * 1e6).astype("timedelta64[us]")
                predicted = studied + lag
                prediction_rows = (
                    (
                        f"bench-{tag}-{i}",
                        model_id,
                        model_version,
                        int(study_ids[i]),
                        findings[f],
                        float(scores[i, f]),
                        moment(predicted[i]),
                        moment(predicted[i]),
                    )
                    for i in range(n_studies)
                    for f in range(n_find)
                )
                # Monthly partitions for the whole history first (0010), so the rows
                # land in them rather than in the DEFAULT partition.
                cur.execute(
                    "SELECT surveillance_ensure_partitions('prediction', %s, %s)",
                    [start, moment(predicted[-1])],
                )
                self._copy(
                    cur, "prediction", _PREDICTION_COLUMNS, _PREDICTION_TYPES, prediction_rows
                )
                self._copy(
                    cur,
                    "prediction_key",
                    ("message_id", "finding", "predicted_at"),
                    ("text", "text", "timestamptz"),
                    (
                        (f"bench-{tag}-{i}", findings[f], moment(predicted[i]))
                        for i in range(n_studies)
                        for f in range(n_find)
                    ),
                )
                cutoff = np.datetime64((end - timedelta(days=14)).replace(tzinfo=None), "us")
                labelled = np.flatnonzero(
                    (studied < cutoff) & (rng.random(n_studies) < labelled_fraction)
                )
                confirm = studied + (rng.uniform(7, 30, n_studies) * 86400e6).astype(
                    "timedelta64[us]"
                )
                last = np.datetime64(end.replace(tzinfo=None), "us")
                diagnosis_rows = (
                    (
                        f"bench-{tag}-dx-{i}-{f}",
                        int(study_ids[i]),
                        findings[f],
                        bool(positive[i]),
                        "report",
                        moment(min(confirm[i], last)),
                        moment(min(confirm[i], last)),
                    )
                    for i in labelled
                    for f in range(n_find)
                )
                self._copy(
                    cur,
                    "diagnosis",
                    (
                        "message_id", "study_id", "finding", "present", "source",
                        "confirmed_at", "ingested_at",
                    ),
                    ("text", "int8", "text", "bool", "text", "timestamptz", "timestamptz"),
                    diagnosis_rows,
                )  # fmt: skip
                for table in ("site", "device", "study"):
                    cur.execute(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"(SELECT max(id) FROM {table}))"
                    )
            conn.commit()
            conn.autocommit = True
            try:
                for table in (
                    "site",
                    "device",
                    "study",
                    "prediction",
                    "prediction_key",
                    "diagnosis",
                ):
                    conn.execute(f"VACUUM (ANALYZE) {table}")
            finally:
                conn.autocommit = False
        finally:
            raw.close()
        return SyntheticFigures(
            sites=sites,
            scanners=scanners,
            studies=n_studies,
            predictions=n_studies * n_find,
            diagnoses=len(labelled) * n_find,
            first_study_at=moment(studied[0]),
            last_study_at=moment(studied[-1]),
            seconds=time.perf_counter() - started,
        )

    @staticmethod
    def _copy(
        cur: Any,
        table: str,
        columns: Sequence[str],
        types: Sequence[str] | None,
        rows: Any,
    ) -> None:
        fmt = " (FORMAT BINARY)" if types is not None else ""
        with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN{fmt}") as copy:
            if types is not None:
                copy.set_types(list(types))
            for row in rows:
                copy.write_row(row)

    def explain(self, sql: str, random_page_cost: float | None = None) -> dict[str, Any]:
        """``EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)`` of ``sql`` in a rolled-back transaction.

        Returns execution and planning time (ms), rows, and whether any
        sequential scan of a table over 10,000 rows remains in the plan.
        ``random_page_cost`` is set for this transaction only when given.
        """
        raw, conn = self._raw()
        try:
            with conn.cursor() as cur:
                if random_page_cost is not None:  # what a role or server setting would give
                    cur.execute(f"SET LOCAL random_page_cost = {float(random_page_cost)!r}")
                cur.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql)
                row = cur.fetchone()
            conn.rollback()
        finally:
            raw.close()
        assert row is not None
        doc = row[0] if isinstance(row[0], list) else json.loads(row[0])
        top = doc[0]
        scans: list[str] = []

        def walk(node: dict[str, Any]) -> None:
            if (
                node.get("Node Type") == "Seq Scan"
                and node.get("Actual Rows", 0) * max(node.get("Actual Loops", 1), 1)
                + node.get("Rows Removed by Filter", 0)
                > 10_000
            ):
                scans.append(str(node.get("Relation Name")))
            for child in node.get("Plans", []):
                walk(child)

        walk(top["Plan"])
        return {
            "execution_ms": round(float(top["Execution Time"]), 2),
            "planning_ms": round(float(top["Planning Time"]), 2),
            "rows": int(top["Plan"].get("Actual Rows", 0)),
            "large_seq_scans": scans,
        }

    def copy_indexed_seconds(self, rows: Sequence[Sequence[Any]], scratch_table: str) -> float:
        """Seconds to binary-COPY ``rows`` into a copy of ``prediction`` with all its indexes.

        Not a goal of its own: it splits the write path's time into what the
        indexes cost (this figure vs :meth:`copy_yardstick`) and what the path
        itself adds (the write path vs this figure). The table is dropped.
        """
        if not scratch_table.isidentifier():
            raise ValueError(f"scratch table name {scratch_table!r} is not an identifier")
        raw, conn = self._raw()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    f"CREATE TABLE {scratch_table} "
                    "(LIKE prediction INCLUDING DEFAULTS INCLUDING INDEXES)"
                )
            conn.commit()
            try:
                started = time.perf_counter()
                with conn.cursor() as cur:
                    self._copy(cur, scratch_table, _PREDICTION_COLUMNS, _PREDICTION_TYPES, rows)
                conn.commit()
                return time.perf_counter() - started
            finally:
                conn.rollback()
                with conn.cursor() as cur:
                    cur.execute(f"DROP TABLE IF EXISTS {scratch_table}")
                conn.commit()
        finally:
            raw.close()

    def stored_rows(self, message_prefix: str) -> list[tuple[Any, ...]]:
        """The prediction columns of the rows whose message id starts with the prefix."""
        with self._sessions.scope() as s:
            return [
                tuple(r)
                for r in s.execute(
                    select(*(getattr(PredictionRow, c) for c in _PREDICTION_COLUMNS)).where(
                        PredictionRow.message_id.startswith(message_prefix, autoescape=True)
                    )
                )
            ]

    def copy_yardstick(self, rows: Sequence[Sequence[Any]], scratch_table: str) -> float:
        """Seconds to COPY ``rows`` (prediction columns) into a new unindexed table.

        The fastest of a binary ``write_row`` COPY and a text COPY from one
        buffer, each into a fresh table, commit included: what PostgreSQL's
        bulk path does on this machine with no index, constraint or
        conflict handling. The tables are dropped.
        """
        if not scratch_table.isidentifier():
            raise ValueError(f"scratch table name {scratch_table!r} is not an identifier")
        cols = ", ".join(_PREDICTION_COLUMNS)
        timings = []
        raw, conn = self._raw()
        try:
            for variant in ("binary", "text"):
                table = f"{scratch_table}_{variant}"
                with conn.cursor() as cur:
                    cur.execute(
                        f"CREATE TABLE {table} AS SELECT {cols} FROM prediction WITH NO DATA"
                    )
                conn.commit()
                try:
                    started = time.perf_counter()
                    with conn.cursor() as cur:
                        if variant == "binary":
                            self._copy(cur, table, _PREDICTION_COLUMNS, _PREDICTION_TYPES, rows)
                        else:
                            buffer = io.StringIO()
                            for r in rows:
                                buffer.write(
                                    "\t".join("\\N" if v is None else str(v) for v in r) + "\n"
                                )
                            with cur.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
                                copy.write(buffer.getvalue())
                    conn.commit()
                    timings.append(time.perf_counter() - started)
                finally:
                    conn.rollback()
                    with conn.cursor() as cur:
                        cur.execute(f"DROP TABLE IF EXISTS {table}")
                    conn.commit()
        finally:
            raw.close()
        return min(timings)

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
        ingest path (see :meth:`copy_yardstick`). Returns (rows, seconds for
        COPY + commit); the table is dropped.
        """
        if not scratch_table.isidentifier():
            raise ValueError(f"scratch table name {scratch_table!r} is not an identifier")
        with self._sessions.scope() as s:
            rows: list[Any] = [
                tuple(r)
                for r in s.execute(
                    select(*(getattr(PredictionRow, c) for c in _PREDICTION_COLUMNS)).where(
                        PredictionRow.message_id.startswith(message_prefix, autoescape=True)
                    )
                )
            ]
        seconds = self.copy_yardstick(rows, scratch_table)
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
            s.execute(
                delete(PredictionKeyRow).where(
                    PredictionKeyRow.message_id.startswith(message_prefix, autoescape=True)
                )
            )
            for start in range(0, len(study_ids), 5000):
                part = study_ids[start : start + 5000]
                s.execute(
                    delete(StudyRow).where(StudyRow.id.in_(part), StudyRow.has_metadata.is_(False))
                )
        self._vacuum(("prediction", "prediction_key", "study"))
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
