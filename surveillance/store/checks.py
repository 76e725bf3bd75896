"""Drift and performance checks: what the jobs read (cases, volumes) and what they judged."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import func, or_, select

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
    ) -> CaseTable:
        """Predictions for one finding in [start, end), with metadata and latest labels."""
        stmt = (
            select(
                PredictionRow.study_id,
                PredictionRow.score,
                PredictionRow.predicted_at,
                SiteRow.label,
                DeviceRow.label,
                *(getattr(StudyRow, f) for f in CATEGORICAL_FIELDS),
                *(getattr(StudyRow, f) for f in NUMERIC_FIELDS),
            )
            .join(StudyRow, StudyRow.id == PredictionRow.study_id)
            .outerjoin(SiteRow, SiteRow.id == StudyRow.site_id)
            .outerjoin(DeviceRow, DeviceRow.id == StudyRow.device_id)
            .where(PredictionRow.model_id == model_id, PredictionRow.finding == finding)
            .order_by(PredictionRow.predicted_at)
        )
        in_range = [PredictionRow.model_id == model_id, PredictionRow.finding == finding]
        if start is not None:
            in_range.append(PredictionRow.predicted_at >= start)
        if end is not None:
            in_range.append(PredictionRow.predicted_at < end)
        stmt = stmt.where(*in_range)
        with self._sessions.scope() as s:
            rows = s.execute(stmt).all()
            labels: dict[int, tuple[bool, datetime]] = {}
            dx = s.execute(  # only the labels of the studies selected above
                select(DiagnosisRow.study_id, DiagnosisRow.present, DiagnosisRow.confirmed_at)
                .where(
                    DiagnosisRow.finding == finding,
                    DiagnosisRow.withdrawn_at.is_(None),  # entered-in-error reports void it
                    DiagnosisRow.study_id.in_(select(PredictionRow.study_id).where(*in_range)),
                )
                .order_by(DiagnosisRow.confirmed_at)
            )
            for study_id, present, confirmed_at in dx:
                labels[study_id] = (present, confirmed_at)  # the latest confirmation wins
        n = len(rows)
        columns = (
            list(zip(*rows, strict=True))
            if rows
            else [()] * (5 + len(CATEGORICAL_FIELDS) + len(NUMERIC_FIELDS))
        )
        study_ids = columns[0]
        label = np.full(n, -1, dtype=np.int8)
        confirmed = np.full(n, np.datetime64("NaT"), dtype="datetime64[us]")
        for i, study_id in enumerate(study_ids):
            found = labels.get(study_id)
            if found is not None:
                label[i] = 1 if found[0] else 0
                confirmed[i] = np.datetime64(found[1].replace(tzinfo=None), "us")

        def text(values: Sequence[Any]) -> np.ndarray:
            return np.array([NO_METADATA if v is None else str(v) for v in values], dtype=object)

        offset = 5
        categorical = {f: text(columns[offset + i]) for i, f in enumerate(CATEGORICAL_FIELDS)}
        offset += len(CATEGORICAL_FIELDS)
        numeric = {
            f: np.array(
                [np.nan if v is None else float(v) for v in columns[offset + i]], dtype=float
            )
            for i, f in enumerate(NUMERIC_FIELDS)
        }
        return CaseTable(
            score=np.asarray(columns[1], dtype=float),
            predicted_at=np.array(
                [np.datetime64(t.replace(tzinfo=None), "us") for t in columns[2]],
                dtype="datetime64[us]",
            ),
            site=text(columns[3]),
            scanner=text(columns[4]),
            label=label,
            confirmed_at=confirmed,
            categorical=categorical,
            numeric=numeric,
        )

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
            values = [
                {**asdict(draft), "job_run_id": job_run_id, "created_at": now} for draft in drafts
            ]
            stmt = _insert(s, table)
            stmt = stmt.on_conflict_do_update(
                index_elements=key_columns,
                set_={k: stmt.excluded[k] for k in values[0] if k not in key_columns},
            ).returning(table.id, sort_by_parameter_order=True)
            ids: list[int] = []
            for start in range(0, len(values), 1000):  # one multi-row upsert per chunk
                ids.extend(s.execute(stmt, values[start : start + 1000]).scalars())
            models = dict(s.execute(select(ModelRow.id, ModelRow.name)).all())
            by_id = {}
            for start in range(0, len(ids), 1000):
                chunk = ids[start : start + 1000]
                by_id.update({r.id: r for r in s.scalars(select(table).where(table.id.in_(chunk)))})
            convert = drift_check if table is DriftCheckRow else performance_check
            result = [convert(by_id[i], models[by_id[i].model_id]) for i in ids]
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
        self, model_id: int, start: datetime | None = None, end: datetime | None = None
    ) -> list[DriftCheck]:
        """Drift checks of a model, oldest window first; with a period, those overlapping it."""
        rows = self._checks(DriftCheckRow, model_id, start, end)
        return [drift_check(r, name) for r, name in rows]

    def performance(
        self, model_id: int, start: datetime | None = None, end: datetime | None = None
    ) -> list[PerformanceCheck]:
        """Performance checks of a model; with a period, those whose window overlaps it."""
        rows = self._checks(PerformanceCheckRow, model_id, start, end)
        return [performance_check(r, name) for r, name in rows]

    def _checks(
        self, table: Any, model_id: int, start: datetime | None, end: datetime | None
    ) -> list[tuple[Any, str]]:
        stmt = (
            select(table, ModelRow.name)
            .join(ModelRow, ModelRow.id == table.model_id)
            .where(table.model_id == model_id)
            .order_by(table.window_end, table.id)
        )
        if end is not None:
            stmt = stmt.where(table.window_start < end)
        if start is not None:
            stmt = stmt.where(table.window_end > start)
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
