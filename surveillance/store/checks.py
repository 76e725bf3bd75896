"""Drift and performance checks: what the jobs read (cases, volumes) and what they judged."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, fields
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import psycopg
from sqlalchemy import case, func, literal, or_, select, tuple_, union_all
from sqlalchemy.orm import Session

from surveillance.core.statuses import DriftStatus, PerformanceStatus
from surveillance.store import audit
from surveillance.store.base import Repository
from surveillance.store.convert import drift_check, performance_check
from surveillance.store.domain import (
    CATEGORICAL_FIELDS,
    NO_METADATA,
    NUMERIC_FIELDS,
    CaseTable,
    ChangeEvent,
    ChangeEventDraft,
    DriftCheck,
    DriftCheckDraft,
    PerformanceCheck,
    PerformanceCheckDraft,
    VolumeRow,
)
from surveillance.store.ingest_writer import _insert
from surveillance.store.models import (
    ChangeEventRow,
    DeviceRow,
    DiagnosisRow,
    DriftCheckRow,
    ModelRow,
    PerformanceCheckRow,
    PredictionRow,
    ReferenceSetRow,
    SiteRow,
    StudyRow,
)
from surveillance.store.types import utcnow


class ChecksRepository(Repository):
    """Inputs of the checks and their stored outcomes."""

    def prediction_span(self, model_id: int) -> tuple[datetime, datetime] | None:
        with self._sessions.scope() as s:
            first, last = s.execute(
                select(
                    func.min(PredictionRow.predicted_at), func.max(PredictionRow.predicted_at)
                ).where(PredictionRow.model_id == model_id)
            ).one()
        if first is None or last is None:
            return None
        return first, last

    def case_table(
        self,
        model_id: int,
        finding: str,
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        fields: Sequence[str] | None = None,
        labelled_only: bool = False,
        labels: bool = True,
    ) -> CaseTable:
        """Predictions for one finding in [start, end), with metadata and latest labels.

        ``fields`` limits the header fields loaded (categorical and numeric; all
        when None): the performance job reads the whole labelled history and
        needs none of them, so it keeps ~35 bytes a case. ``labelled_only``:
        only the cases with a (not withdrawn) label, filtered in the database
        (a calibration period needs no other). ``labels=False`` reads no labels
        (every case unlabelled): the drift job has no use for them. Site and scanner
        labels are shared string objects (looked up from their ids), and rows
        are read in chunks, so a case costs no Python row object once loaded.
        """
        wanted = set(CATEGORICAL_FIELDS + NUMERIC_FIELDS) if fields is None else set(fields)
        categorical_fields = [f for f in CATEGORICAL_FIELDS if f in wanted]
        numeric_fields = [f for f in NUMERIC_FIELDS if f in wanted]
        in_range = [PredictionRow.model_id == model_id, PredictionRow.finding == finding]
        if start is not None:
            in_range.append(PredictionRow.predicted_at >= start)
        if end is not None:
            in_range.append(PredictionRow.predicted_at < end)
        stmt = (
            select(
                PredictionRow.study_id,
                PredictionRow.score,
                PredictionRow.predicted_at,
                StudyRow.site_id,
                StudyRow.device_id,
                *(getattr(StudyRow, f) for f in categorical_fields),
                *(getattr(StudyRow, f) for f in numeric_fields),
            )
            .join(StudyRow, StudyRow.id == PredictionRow.study_id)
            .where(*in_range)
            .order_by(PredictionRow.predicted_at)
        )
        if self._sessions.engine.dialect.name == "postgresql":
            return self._pg_case_table(
                model_id,
                finding,
                start,
                end,
                categorical_fields,
                numeric_fields,
                labelled_only=labelled_only,
                labels=labels,
            )
        with self._sessions.scope() as s:
            sites = {i: label for i, label in s.execute(select(SiteRow.id, SiteRow.label))}
            devices = {i: label for i, label in s.execute(select(DeviceRow.id, DeviceRow.label))}
            parts: list[list[Sequence[Any]]] = []
            for chunk in s.execute(stmt.execution_options(yield_per=20_000)).partitions():
                parts.append(list(zip(*chunk, strict=True)))
            found_labels: dict[int, tuple[bool, datetime]] = {}
            dx = (
                ()
                if not labels
                else s.execute(  # only the labels of the studies selected above
                    select(DiagnosisRow.study_id, DiagnosisRow.present, DiagnosisRow.confirmed_at)
                    .where(
                        DiagnosisRow.finding == finding,
                        DiagnosisRow.withdrawn_at.is_(None),  # entered-in-error reports void it
                        DiagnosisRow.study_id.in_(select(PredictionRow.study_id).where(*in_range)),
                    )
                    .order_by(DiagnosisRow.confirmed_at)
                )
            )
            for study_id, present, confirmed_at in dx:
                found_labels[study_id] = (present, confirmed_at)  # the latest confirmation wins

        def column(i: int) -> list[Any]:
            out: list[Any] = []
            for part in parts:
                out.extend(part[i])
            return out

        study_ids = np.asarray(column(0), dtype=np.int64)
        n = int(study_ids.size)
        label = np.full(n, -1, dtype=np.int8)
        confirmed = np.full(n, np.datetime64("NaT"), dtype="datetime64[us]")
        if found_labels:
            for i, study_id in enumerate(study_ids.tolist()):
                found = found_labels.get(study_id)
                if found is not None:
                    label[i] = 1 if found[0] else 0
                    confirmed[i] = np.datetime64(found[1].replace(tzinfo=None), "us")
        interned: dict[Any, str] = {None: NO_METADATA}

        def text(values: Sequence[Any]) -> np.ndarray:
            # one string object per distinct value, not one per case
            out = np.empty(len(values), dtype=object)
            for i, v in enumerate(values):
                got = interned.get(v)
                if got is None:
                    got = interned[v] = str(v)
                out[i] = got
            return out

        def labelled(ids: Sequence[Any], names: dict[int, str]) -> np.ndarray:
            return text([None if i is None else names.get(i) for i in ids])

        categorical = {f: text(column(5 + i)) for i, f in enumerate(categorical_fields)}
        offset = 5 + len(categorical_fields)
        numeric = {
            f: np.array([np.nan if v is None else v for v in column(offset + i)], dtype=float)
            for i, f in enumerate(numeric_fields)
        }
        table = CaseTable(
            score=np.asarray(column(1), dtype=float),
            predicted_at=np.array(
                [t.replace(tzinfo=None) for t in column(2)], dtype="datetime64[us]"
            ),
            site=labelled(column(3), sites),
            scanner=labelled(column(4), devices),
            label=label,
            confirmed_at=confirmed,
            categorical=categorical,
            numeric=numeric,
        )
        return table.select(table.label >= 0) if labelled_only else table

    def _pg_case_table(
        self,
        model_id: int,
        finding: str,
        start: datetime | None,
        end: datetime | None,
        categorical_fields: Sequence[str],
        numeric_fields: Sequence[str],
        *,
        labelled_only: bool = False,
        labels: bool = True,
    ) -> CaseTable:
        """:meth:`case_table` on PostgreSQL: COPY out, parsed by pandas (same result)."""
        where = ["p.model_id = %s", "p.finding = %s"]
        params: list[Any] = [model_id, finding]
        if start is not None:
            where.append("p.predicted_at >= %s")
            params.append(start)
        if end is not None:
            where.append("p.predicted_at < %s")
            params.append(end)
        condition = " AND ".join(where)
        labelled_filter = (
            " AND EXISTS (SELECT 1 FROM diagnosis d WHERE d.study_id = p.study_id "
            "AND d.finding = p.finding AND d.withdrawn_at IS NULL)"
            if labelled_only
            else ""
        )
        epoch_us = "(extract(epoch FROM {}) * 1000000)::bigint"
        columns = [
            "p.study_id",
            "p.score",
            epoch_us.format("p.predicted_at"),
            "coalesce(s.site_id, 0)",  # ids, mapped to labels below: no string per case
            "coalesce(s.device_id, 0)",
            *(f"coalesce(s.{f}, %s)" for f in categorical_fields),
            *(f"s.{f}" for f in numeric_fields),
        ]
        fill = [NO_METADATA] * len(categorical_fields)
        names = ["study_id", "score", "at", "site", "scanner", *categorical_fields]
        names += numeric_fields
        cases_sql = (
            f"SELECT {', '.join(columns)} FROM prediction p "
            "JOIN study s ON s.id = p.study_id "
            f"WHERE {condition}{labelled_filter} ORDER BY p.predicted_at"
        )
        labels_sql = (
            f"SELECT d.study_id, d.present::int, {epoch_us.format('d.confirmed_at')} "
            "FROM diagnosis d WHERE d.finding = %s AND d.withdrawn_at IS NULL "
            f"AND d.study_id IN (SELECT p.study_id FROM prediction p WHERE {condition}) "
            "ORDER BY d.confirmed_at, d.id"
        )

        def read_labels() -> pd.DataFrame:
            with self._sessions.scope() as s:
                columns = ["study_id", "present", "confirmed"]
                return _pg_copy_frame(s, labels_sql, [finding, *params], columns, columns)

        # the labels are read on a second connection while the cases are read and
        # parsed: the server runs one query while this process parses the other's
        # rows. A label committed between the two reads is as if it came just after.
        with ThreadPoolExecutor(max_workers=1) as pool:
            labels_read = pool.submit(read_labels) if labels else None
            with self._sessions.scope() as s:
                sites = {i: label for i, label in s.execute(select(SiteRow.id, SiteRow.label))}
                devices = {
                    i: label for i, label in s.execute(select(DeviceRow.id, DeviceRow.label))
                }
                frame = _pg_copy_frame(
                    s,
                    cases_sql,
                    [*fill, *params],
                    names,
                    ["score", "at", "site", "scanner", *numeric_fields],
                )
            dx = labels_read.result() if labels_read is not None else pd.DataFrame()
        n = len(frame)
        label = np.full(n, -1, dtype=np.int8)
        confirmed = np.full(n, np.datetime64("NaT"), dtype="datetime64[us]")
        if len(dx):
            latest = dx.drop_duplicates("study_id", keep="last")  # the latest confirmation wins
            where_in = pd.Index(latest["study_id"].to_numpy(np.int64)).get_indexer(
                frame["study_id"].to_numpy(np.int64)
            )
            found = where_in >= 0
            label[found] = latest["present"].to_numpy(np.int8)[where_in[found]]
            confirmed[found] = (
                latest["confirmed"].to_numpy(np.int64)[where_in[found]].astype("datetime64[us]")
            )
        interned: dict[str, str] = {}

        def text(name: str) -> np.ndarray:
            values = frame[name].to_numpy(dtype=object)
            return np.array([interned.setdefault(v, v) for v in values.tolist()], dtype=object)

        def labelled(name: str, labels: dict[int, str]) -> np.ndarray:
            ids, codes = np.unique(frame[name].to_numpy(np.int64), return_inverse=True)
            known = np.array([labels.get(int(i)) or NO_METADATA for i in ids], dtype=object)
            return known[codes] if ids.size else np.empty(0, dtype=object)

        return CaseTable(
            score=frame["score"].to_numpy(np.float64),
            predicted_at=frame["at"].to_numpy(np.int64).astype("datetime64[us]"),
            site=labelled("site", sites),
            scanner=labelled("scanner", devices),
            label=label,
            confirmed_at=confirmed,
            categorical={f: text(f) for f in categorical_fields},
            numeric={f: frame[f].to_numpy(np.float64) for f in numeric_fields},
        )

    def change_sightings(
        self,
        model_id: int,
        finding: str,
        field: str,
        start: datetime,
        reference_end: datetime,
        until: datetime,
    ) -> list[tuple[str, str, str | None, datetime, int]]:
        """GROUP BY site, scanner and ``field``'s value over [start, until).

        Rows (site label, scanner label, value, first prediction time, cases in
        [start, reference_end)): what change events are found from, aggregated
        in the database instead of loaded case by case.
        """
        column = getattr(StudyRow, field)
        in_reference = func.sum(case((PredictionRow.predicted_at < reference_end, 1), else_=0))
        stmt = (
            select(
                SiteRow.label,
                DeviceRow.label,
                column,
                func.min(PredictionRow.predicted_at),
                in_reference,
            )
            .join(StudyRow, StudyRow.id == PredictionRow.study_id)
            .outerjoin(SiteRow, SiteRow.id == StudyRow.site_id)
            .outerjoin(DeviceRow, DeviceRow.id == StudyRow.device_id)
            .where(
                PredictionRow.model_id == model_id,
                PredictionRow.finding == finding,
                PredictionRow.predicted_at >= start,
                PredictionRow.predicted_at < until,
            )
            .group_by(SiteRow.label, DeviceRow.label, column)
        )
        with self._sessions.scope() as s:
            return [
                (
                    NO_METADATA if site is None else str(site),
                    NO_METADATA if scanner is None else str(scanner),
                    None if value is None else str(value),
                    first,
                    int(count or 0),
                )
                for site, scanner, value, first, count in s.execute(stmt)
            ]

    def category_counts(
        self,
        model_id: int,
        finding: str,
        start: datetime | None,
        end: datetime | None,
        fields: Sequence[str] = CATEGORICAL_FIELDS,
    ) -> list[tuple[str, str, str, str, int]]:
        """Cases per site, scanner and value of each of ``fields`` in [start, end), by GROUP BY.

        Rows (site label, scanner label, field, value, cases): the counts of the
        value arrays :meth:`case_table` would give for the same predictions, with
        its labels and conventions (a missing value, site or scanner is
        :data:`NO_METADATA`), so the categorical drift tests need no case loaded.
        The cases of a (site, scanner) are the sum of any one field's counts.
        One statement: ``GROUPING SETS`` on PostgreSQL (one scan), a ``UNION
        ALL`` of one GROUP BY per field elsewhere.
        """
        fields = [f for f in CATEGORICAL_FIELDS if f in set(fields)]
        if not fields:
            return []
        in_range = [PredictionRow.model_id == model_id, PredictionRow.finding == finding]
        if start is not None:
            in_range.append(PredictionRow.predicted_at >= start)
        if end is not None:
            in_range.append(PredictionRow.predicted_at < end)
        columns = [getattr(StudyRow, f) for f in fields]
        postgres = self._sessions.engine.dialect.name == "postgresql"
        rows: list[tuple[Any, Any, str, Any, int]] = []
        with self._sessions.scope() as s:
            sites = {i: label for i, label in s.execute(select(SiteRow.id, SiteRow.label))}
            devices = {i: label for i, label in s.execute(select(DeviceRow.id, DeviceRow.label))}
            if postgres:
                # one set per field; GROUPING(column) = 0 names the set a row belongs to
                stmt = (
                    select(
                        StudyRow.site_id,
                        StudyRow.device_id,
                        *columns,
                        *(func.grouping(c) for c in columns),
                        func.count(),
                    )
                    .select_from(PredictionRow)
                    .join(StudyRow, StudyRow.id == PredictionRow.study_id)
                    .where(*in_range)
                    .group_by(
                        func.grouping_sets(
                            *(tuple_(StudyRow.site_id, StudyRow.device_id, c) for c in columns)
                        )
                    )
                )
                k = len(fields)
                for row in s.execute(stmt):
                    j = list(row[2 + k : 2 + 2 * k]).index(0)
                    rows.append((row[0], row[1], fields[j], row[2 + j], int(row[-1])))
            else:
                parts = [
                    select(
                        StudyRow.site_id,
                        StudyRow.device_id,
                        literal(field),
                        column,
                        func.count(),
                    )
                    .select_from(PredictionRow)
                    .join(StudyRow, StudyRow.id == PredictionRow.study_id)
                    .where(*in_range)
                    .group_by(StudyRow.site_id, StudyRow.device_id, column)
                    for field, column in zip(fields, columns, strict=True)
                ]
                rows = [(a, b, str(f), v, int(n)) for a, b, f, v, n in s.execute(union_all(*parts))]

        def label(ident: Any, names: dict[int, str]) -> str:
            # case_table's conventions: PostgreSQL maps an unknown or empty label to
            # NO_METADATA, SQLite a missing one and str()s the rest
            name = None if ident is None else names.get(ident)
            if postgres:
                return name or NO_METADATA
            return NO_METADATA if name is None else str(name)

        return [
            (
                label(site, sites),
                label(device, devices),
                field,
                NO_METADATA if value is None else str(value),
                count,
            )
            for site, device, field, value, count in rows
        ]

    def judged_drift_windows(
        self, model_id: int, reference_set_id: int
    ) -> set[tuple[datetime, datetime]]:
        """(start, end) of the windows already judged against ``reference_set_id``.

        A window counts when it has drift checks of the model compared with that
        reference set and written after the set was created (a newer reference,
        or checks from before it, leave the window to be judged again).
        """
        stmt = (
            select(DriftCheckRow.window_start, DriftCheckRow.window_end)
            .join(ReferenceSetRow, ReferenceSetRow.id == DriftCheckRow.reference_set_id)
            .where(
                DriftCheckRow.model_id == model_id,
                DriftCheckRow.reference_set_id == reference_set_id,
                DriftCheckRow.created_at >= ReferenceSetRow.created_at,
            )
            .distinct()
        )
        with self._sessions.scope() as s:
            return {(start, end) for start, end in s.execute(stmt)}

    def performance_windows_to_judge(
        self,
        model_id: int,
        windows: Sequence[tuple[datetime, datetime]],
        *,
        estimated: bool = False,
    ) -> list[tuple[datetime, datetime]]:
        """The windows of ``windows`` whose performance checks are missing or stale.

        Labelled (``estimated=False``): a window is stale when a diagnosis of one
        of its studies was ingested, or withdrawn, after the window's checks were
        written (labels arrive weeks late). Estimated: when a prediction of the
        window was ingested after its estimates were written, or any diagnosis of
        the model's studies changed since (the estimates are calibrated on them).
        """
        if not windows:
            return []
        table = PerformanceCheckRow
        lo = min(start for start, _ in windows)
        hi = max(end for _, end in windows)
        stmt = (
            select(table.window_start, table.window_end, func.min(table.created_at))
            .where(
                table.model_id == model_id,
                table.estimated == estimated,
                table.window_start >= lo,
                table.window_end <= hi,
            )
            .group_by(table.window_start, table.window_end)
        )
        stale: list[tuple[datetime, datetime]] = []
        with self._sessions.scope() as s:
            judged = {(start, end): at for start, end, at in s.execute(stmt)}
            for start, end in windows:
                at = judged.get((start, end))
                if at is None:
                    stale.append((start, end))
                    continue
                in_window = select(PredictionRow.study_id).where(
                    PredictionRow.model_id == model_id,
                    PredictionRow.predicted_at >= start,
                    PredictionRow.predicted_at < end,
                )
                studies = (
                    select(PredictionRow.study_id).where(PredictionRow.model_id == model_id)
                    if estimated
                    else in_window
                )
                changed = s.scalar(
                    select(DiagnosisRow.id)
                    .where(
                        DiagnosisRow.study_id.in_(studies),
                        or_(DiagnosisRow.ingested_at > at, DiagnosisRow.withdrawn_at > at),
                    )
                    .limit(1)
                )
                if changed is None and estimated:
                    changed = s.scalar(
                        select(PredictionRow.id)
                        .where(
                            PredictionRow.model_id == model_id,
                            PredictionRow.predicted_at >= start,
                            PredictionRow.predicted_at < end,
                            PredictionRow.ingested_at > at,
                        )
                        .limit(1)
                    )
                if changed is not None:
                    stale.append((start, end))
        return stale

    def volumes(self, model_id: int) -> list[VolumeRow]:
        with self._sessions.scope() as s:
            rows = s.execute(
                select(
                    func.coalesce(SiteRow.label, NO_METADATA),
                    func.coalesce(DeviceRow.label, NO_METADATA),
                    func.count(func.distinct(PredictionRow.study_id)),
                    func.count(PredictionRow.id),
                    func.min(PredictionRow.predicted_at),
                    func.max(PredictionRow.predicted_at),
                )
                .join(StudyRow, StudyRow.id == PredictionRow.study_id)
                .outerjoin(SiteRow, SiteRow.id == StudyRow.site_id)
                .outerjoin(DeviceRow, DeviceRow.id == StudyRow.device_id)
                .where(PredictionRow.model_id == model_id)
                .group_by(SiteRow.label, DeviceRow.label)
                .order_by(SiteRow.label, DeviceRow.label)
            ).all()
            labelled = dict(
                s.execute(
                    select(
                        func.coalesce(DeviceRow.label, NO_METADATA),
                        func.count(func.distinct(DiagnosisRow.study_id)),
                    )
                    .join(StudyRow, StudyRow.id == DiagnosisRow.study_id)
                    .outerjoin(DeviceRow, DeviceRow.id == StudyRow.device_id)
                    .where(
                        DiagnosisRow.study_id.in_(
                            select(PredictionRow.study_id).where(PredictionRow.model_id == model_id)
                        )
                    )
                    .group_by(DeviceRow.label)
                ).all()
            )
        return [
            VolumeRow(
                site=site,
                scanner=scanner,
                studies=studies,
                predictions=predictions,
                labelled=int(labelled.get(scanner, 0)),
                first_at=first,
                last_at=last,
            )
            for site, scanner, studies, predictions, first, last in rows
        ]

    def save_drift(
        self, drafts: Sequence[DriftCheckDraft], *, job_run_id: int | None, actor: str
    ) -> list[DriftCheck]:
        """Insert or refresh drift checks (unique per :attr:`DriftCheckDraft.KEY`)."""
        return self._save_checks(
            DriftCheckRow, drafts, DriftCheckDraft.KEY, job_run_id, actor, "drift_check"
        )

    def save_performance(
        self, drafts: Sequence[PerformanceCheckDraft], *, job_run_id: int | None, actor: str
    ) -> list[PerformanceCheck]:
        """Insert or refresh performance checks (unique per :attr:`PerformanceCheckDraft.KEY`)."""
        return self._save_checks(
            PerformanceCheckRow,
            drafts,
            PerformanceCheckDraft.KEY,
            job_run_id,
            actor,
            "performance_check",
        )

    def _save_checks(
        self,
        table: Any,
        drafts: Sequence[DriftCheckDraft] | Sequence[PerformanceCheckDraft],
        key_columns: tuple[str, ...],
        job_run_id: int | None,
        actor: str,
        entity: str,
    ) -> list[Any]:
        if not drafts:
            return []
        now = utcnow()
        with self._sessions.scope() as s:
            names = [f.name for f in fields(drafts[0])]  # shallow: details are JSON already
            values = [
                {
                    **{n: getattr(draft, n) for n in names},
                    "job_run_id": job_run_id,
                    "created_at": now,
                }
                for draft in drafts
            ]
            stmt = _insert(s, table)
            stmt = stmt.on_conflict_do_update(
                index_elements=key_columns,
                set_={k: stmt.excluded[k] for k in values[0] if k not in key_columns},
            )
            # Core executemany of one short statement (psycopg pipelines it); then the
            # rows written by this call, read back in one SELECT (a RETURNING over
            # multi-row VALUES costs more in building the statement than in running it)
            connection = s.connection()
            for start in range(0, len(values), 5000):
                connection.execute(stmt, values[start : start + 5000])
            rows: Sequence[Any] = connection.execute(
                select(*table.__table__.c)
                .where(
                    table.model_id.in_({d.model_id for d in drafts}),
                    table.window_start.in_({d.window_start for d in drafts}),
                    table.created_at == now,
                )
                .order_by(table.id)
            ).all()
            models = dict(s.execute(select(ModelRow.id, ModelRow.name)).all())
            convert = drift_check if table is DriftCheckRow else performance_check
            result = [convert(r, models[r.model_id]) for r in rows]
            flagged = [
                r for r in result if r.status not in ("ok", "insufficient_data", "below_tolerance")
            ]
            audit.append(
                s,
                actor=actor,
                action=f"{entity}.run",
                entity=entity,
                entity_id=f"job_run:{job_run_id}" if job_run_id else "adhoc",
                detail={
                    "checks": len(result),
                    "flagged": len(flagged),
                    "flagged_ids": [r.id for r in flagged][:50],
                },
            )
            return result

    def drift(
        self,
        model_id: int,
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        flagged_series: bool = False,
    ) -> list[DriftCheck]:
        """Drift checks of a model, oldest window first; with a period, those overlapping it.

        ``flagged_series``: only the series (signal and stratum) with at least one
        ``drift`` check in the period, each whole (its ``ok`` windows break runs):
        what the incident policy needs, without the tens of thousands of quiet
        checks of a large deployment.
        """
        series = (DriftCheckRow.signal, DriftCheckRow.stratum_kind, DriftCheckRow.stratum_value)
        flagged = (
            (series, DriftCheckRow.status == DriftStatus.DRIFT.value) if flagged_series else None
        )
        rows = self._checks(DriftCheckRow, model_id, start, end, flagged)
        return [drift_check(r, name) for r, name in rows]

    def drift_of_windows(
        self, model_id: int, windows: Sequence[tuple[datetime, datetime]]
    ) -> list[DriftCheck]:
        """The drift checks of exactly ``windows`` (one row per test: the latest judgment)."""
        if not windows:
            return []
        wanted = set(windows)
        lo = min(start for start, _ in windows)
        hi = max(end for _, end in windows)
        return [c for c in self.drift(model_id, lo, hi) if (c.window_start, c.window_end) in wanted]

    def performance(
        self,
        model_id: int,
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        flagged_series: bool = False,
    ) -> list[PerformanceCheck]:
        """Performance checks of a model; with a period, those whose window overlaps it.

        ``flagged_series``: only the labelled series (finding, metric, stratum)
        with a ``breach`` or ``warning`` in the period, each whole (as for drift).
        """
        table = PerformanceCheckRow
        series = (table.finding, table.metric, table.stratum_kind, table.stratum_value)
        hit = table.status.in_((PerformanceStatus.BREACH.value, PerformanceStatus.WARNING.value))
        flagged = (series, hit & ~table.estimated) if flagged_series else None
        rows = self._checks(table, model_id, start, end, flagged)
        return [performance_check(r, name) for r, name in rows]

    def _checks(
        self,
        table: Any,
        model_id: int,
        start: datetime | None,
        end: datetime | None,
        flagged: tuple[tuple[Any, ...], Any] | None = None,
    ) -> list[tuple[Any, str]]:
        in_period = [table.model_id == model_id]
        if end is not None:
            in_period.append(table.window_start < end)
        if start is not None:
            in_period.append(table.window_end > start)
        stmt = (
            select(table, ModelRow.name)
            .join(ModelRow, ModelRow.id == table.model_id)
            .where(*in_period)
            .order_by(table.window_end, table.id)
        )
        if flagged is not None:
            series, hit = flagged
            stmt = stmt.where(
                tuple_(*series).in_(select(*series).where(*in_period, hit).distinct())
            )
        with self._sessions.scope() as s:
            return [(row, name) for row, name in s.execute(stmt)]

    def record_change_events(
        self, drafts: Sequence[ChangeEventDraft], *, actor: str
    ) -> list[ChangeEvent]:
        """Record change events not known yet (unique per model, stratum, field, new value).

        A value already recorded keeps its first row (the earliest sighting the job
        saw first); returns the rows that are new in this call.
        """
        if not drafts:
            return []
        now = utcnow()
        with self._sessions.scope() as s:
            stmt = _insert(s, ChangeEventRow).on_conflict_do_nothing(
                index_elements=(
                    "model_id",
                    "stratum_kind",
                    "stratum_value",
                    "field",
                    "new_value",
                )
            )
            new_ids: list[int] = []
            for draft in drafts:
                inserted = s.execute(
                    stmt.values(**asdict(draft), created_at=now).returning(ChangeEventRow.id)
                ).scalar_one_or_none()
                if inserted is not None:
                    new_ids.append(int(inserted))
            if not new_ids:
                return []
            rows = s.scalars(
                select(ChangeEventRow)
                .where(ChangeEventRow.id.in_(new_ids))
                .order_by(ChangeEventRow.first_seen_at, ChangeEventRow.id)
            ).all()
            events = [_change_event(r) for r in rows]
            audit.append(
                s,
                actor=actor,
                action="change_event.recorded",
                entity="change_event",
                entity_id=",".join(str(e.id) for e in events)[:128],
                detail={
                    "events": [
                        {
                            "stratum": f"{e.stratum_kind}={e.stratum_value}",
                            "field": e.field,
                            "old": e.old_value,
                            "new": e.new_value,
                            "first_seen_at": e.first_seen_at.isoformat(),
                        }
                        for e in events[:50]
                    ]
                },
            )
            return events

    def change_events(
        self,
        model_id: int,
        *,
        stratum_kind: str | None = None,
        stratum_value: str | None = None,
    ) -> list[ChangeEvent]:
        """Change events of a model (optionally of one stratum), earliest first."""
        stmt = select(ChangeEventRow).where(ChangeEventRow.model_id == model_id)
        if stratum_kind is not None:
            stmt = stmt.where(ChangeEventRow.stratum_kind == stratum_kind)
        if stratum_value is not None:
            stmt = stmt.where(ChangeEventRow.stratum_value == stratum_value)
        with self._sessions.scope() as s:
            rows = s.scalars(stmt.order_by(ChangeEventRow.first_seen_at, ChangeEventRow.id))
            return [_change_event(r) for r in rows]


class _CopyStream(io.RawIOBase):
    """The rows of a ``COPY ... TO STDOUT`` as a readable stream, for pandas to parse
    while they arrive: the CSV text is never held whole (at 1M cases ~50 MB, twice
    that while a growing buffer is copied)."""

    def __init__(self, blocks: Iterator[Any]) -> None:
        super().__init__()
        self._blocks = blocks
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(out):
            if not self._pending:
                block = next(self._blocks, None)
                if block is None:
                    break
                self._pending = memoryview(block).cast("B")
            n = min(len(out) - filled, len(self._pending))
            out[filled : filled + n] = self._pending[:n]
            self._pending = self._pending[n:]
            filled += n
        return filled


def _pg_copy_frame(
    session: Session,
    sql: str,
    params: Sequence[Any],
    names: Sequence[str],
    numeric: Sequence[str] = (),
) -> pd.DataFrame:
    """Run ``sql`` as ``COPY (...) TO STDOUT`` (CSV) and parse it with pandas' C reader.

    Reading a million cases through the ORM's row objects costs ~25 s of
    Python; COPY and pandas take ~1 s. Text columns come NULL-free from the
    SQL (COALESCE), so only the ``numeric`` columns treat an empty field as
    missing. The rows are parsed as they arrive (:class:`_CopyStream`).
    """
    connection = session.connection().connection.driver_connection
    assert isinstance(connection, psycopg.Connection)
    text = [name for name in names if name not in numeric]
    with (
        connection.cursor() as cursor,
        cursor.copy(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv)", params) as copy,
    ):
        stream = io.BufferedReader(_CopyStream(iter(copy)), buffer_size=1 << 20)
        if not stream.peek(1):
            return pd.DataFrame({name: pd.Series(dtype=object) for name in names})
        return pd.read_csv(
            stream,
            header=None,
            names=list(names),
            keep_default_na=False,
            na_values={name: [""] for name in numeric},
            dtype={name: str for name in text},
            float_precision="round_trip",  # the scores exactly as stored
        )


def _change_event(row: ChangeEventRow) -> ChangeEvent:
    return ChangeEvent(
        id=row.id,
        model_id=row.model_id,
        stratum_kind=row.stratum_kind,
        stratum_value=row.stratum_value,
        field=row.field,
        old_value=row.old_value,
        new_value=row.new_value,
        first_seen_at=row.first_seen_at,
    )
