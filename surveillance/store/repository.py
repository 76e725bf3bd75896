"""The store's public face: :class:`Store`.

Every method opens one transaction through :class:`SessionFactory`, works on
ORM rows inside it, and returns domain objects. Writes that matter append a
hash-chained audit event in the same transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from surveillance.config import ModelConfig
from surveillance.errors import NotFoundError, UsageError
from surveillance.store import audit
from surveillance.store.domain import (
    AuditReport,
    Baseline,
    CaseTable,
    DeadLetter,
    DriftCheck,
    Incident,
    IncidentEvent,
    IngestBatch,
    IngestCounts,
    ModelInfo,
    PerformanceCheck,
    VolumeRow,
)
from surveillance.store.engine import SessionFactory, check_connection, make_engine
from surveillance.store.ingest_writer import _insert, read_offsets, write_batch
from surveillance.store.migrations import ensure_current
from surveillance.store.models import (
    OPEN_INCIDENT_STATUSES,
    BaselineRow,
    DeadLetterRow,
    DeviceRow,
    DiagnosisRow,
    DriftCheckRow,
    IncidentEventRow,
    IncidentRow,
    JobRunRow,
    ModelRow,
    PerformanceCheckRow,
    PredictionRow,
    ReferenceSetRow,
    SiteRow,
    StudyRow,
)
from surveillance.store.types import utcnow

NO_METADATA = "(no metadata yet)"
CATEGORICAL_FIELDS = ("software_versions", "convolution_kernel", "sex", "age_band", "view_position")
NUMERIC_FIELDS = ("kvp", "pixel_spacing", "slice_thickness")


@dataclass(frozen=True, slots=True)
class IncidentSignal:
    """What the policy asks the store to open or update."""

    model_id: int
    signal_kind: str
    signal: str
    stratum_kind: str
    stratum_value: str
    severity: str
    title: str
    summary: str
    evidence_at: datetime
    vigilance_class: str
    mdr_deadline_at: datetime | None
    fda_deadline_at: datetime | None
    drift_check_ids: tuple[int, ...] = ()
    performance_check_ids: tuple[int, ...] = ()

    @property
    def dedup_key(self) -> str:
        return (
            f"{self.model_id}|{self.signal_kind}|{self.signal}|"
            f"{self.stratum_kind}={self.stratum_value}"
        )


def _model_info(row: ModelRow, baselines: Iterable[BaselineRow]) -> ModelInfo:
    return ModelInfo(
        id=row.id,
        name=row.name,
        version=row.version,
        manufacturer=row.manufacturer,
        intended_use=row.intended_use,
        findings={k: float(v) for k, v in row.findings.items()},
        baselines=tuple(
            Baseline(
                finding=b.finding,
                metric=b.metric,
                stratum=b.stratum,
                value=b.value,
                ci_lower=b.ci_lower,
                ci_upper=b.ci_upper,
                alert_limit=b.alert_limit,
                source_document=b.source_document,
            )
            for b in baselines
        ),
    )


def _drift(row: DriftCheckRow, model: str) -> DriftCheck:
    return DriftCheck(
        id=row.id,
        model=model,
        detector=row.detector,
        signal=row.signal,
        stratum_kind=row.stratum_kind,
        stratum_value=row.stratum_value,
        window_start=row.window_start,
        window_end=row.window_end,
        status=row.status,
        statistic=row.statistic,
        p_value=row.p_value,
        threshold=row.threshold,
        n_reference=row.n_reference,
        n_window=row.n_window,
        details=dict(row.details),
    )


def _performance(row: PerformanceCheckRow, model: str) -> PerformanceCheck:
    return PerformanceCheck(
        id=row.id,
        model=model,
        finding=row.finding,
        metric=row.metric,
        stratum_kind=row.stratum_kind,
        stratum_value=row.stratum_value,
        window_start=row.window_start,
        window_end=row.window_end,
        estimated=row.estimated,
        status=row.status,
        value=row.value,
        ci_lower=row.ci_lower,
        ci_upper=row.ci_upper,
        n=row.n,
        labelled_fraction=row.labelled_fraction,
        baseline_value=row.baseline_value,
        alert_limit=row.alert_limit,
        details=dict(row.details),
    )


def _incident(row: IncidentRow, model: str, events: Sequence[IncidentEventRow] = ()) -> Incident:
    return Incident(
        id=row.id,
        model=model,
        signal_kind=row.signal_kind,
        signal=row.signal,
        stratum_kind=row.stratum_kind,
        stratum_value=row.stratum_value,
        severity=row.severity,
        status=row.status,
        title=row.title,
        summary=row.summary,
        opened_at=row.opened_at,
        aware_at=row.aware_at,
        last_evidence_at=row.last_evidence_at,
        acknowledged_at=row.acknowledged_at,
        acknowledged_by=row.acknowledged_by,
        closed_at=row.closed_at,
        resolution=row.resolution,
        capa_reference=row.capa_reference,
        vigilance_class=row.vigilance_class,
        mdr_deadline_at=row.mdr_deadline_at,
        fda_deadline_at=row.fda_deadline_at,
        events=tuple(
            IncidentEvent(
                at=e.at,
                kind=e.kind,
                actor=e.actor,
                note=e.note,
                drift_check_id=e.drift_check_id,
                performance_check_id=e.performance_check_id,
            )
            for e in events
        ),
    )


class Store:
    """All persistence for one database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessions = SessionFactory(engine)

    @classmethod
    def open(cls, url: str, *, require_current_schema: bool = True) -> Store:
        engine = make_engine(url)
        check_connection(engine)
        if require_current_schema:
            ensure_current(engine)
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    # ---- models and baselines -------------------------------------------------

    def register_models(self, configs: Sequence[ModelConfig], *, actor: str) -> list[ModelInfo]:
        """Create or update models and their baselines; audits every change."""
        with self.sessions.scope() as s:
            for config in configs:
                self._register_model(s, config, actor)
        return [self.model(c.name) for c in configs]

    def _register_model(self, s: Session, config: ModelConfig, actor: str) -> None:
        row = s.scalar(select(ModelRow).where(ModelRow.name == config.name))
        fields = {
            "version": config.version,
            "manufacturer": config.manufacturer,
            "intended_use": config.intended_use,
            "findings": dict(config.findings),
        }
        if row is None:
            row = ModelRow(name=config.name, registered_at=utcnow(), **fields)
            s.add(row)
            s.flush()
            audit.append(
                s,
                actor=actor,
                action="model.registered",
                entity="model",
                entity_id=config.name,
                detail=fields,
            )
        else:
            changed = {k: v for k, v in fields.items() if getattr(row, k) != v}
            if changed:
                for key, value in changed.items():
                    setattr(row, key, value)
                audit.append(
                    s,
                    actor=actor,
                    action="model.updated",
                    entity="model",
                    entity_id=config.name,
                    detail=changed,
                )
        existing = {
            (b.finding, b.metric, b.stratum): b
            for b in s.scalars(select(BaselineRow).where(BaselineRow.model_id == row.id))
        }
        wanted: set[tuple[str, str, str]] = set()
        for b in config.baselines:
            baseline_key = (b.finding, b.metric, b.stratum)
            wanted.add(baseline_key)
            values = b.model_dump(exclude={"finding", "metric", "stratum"})
            current = existing.get(baseline_key)
            if current is None:
                s.add(
                    BaselineRow(
                        model_id=row.id,
                        finding=b.finding,
                        metric=b.metric,
                        stratum=b.stratum,
                        updated_at=utcnow(),
                        **values,
                    )
                )
            elif all(getattr(current, k) == v for k, v in values.items()):
                continue
            else:
                before = {k: getattr(current, k) for k in values}
                for k, v in values.items():
                    setattr(current, k, v)
                current.updated_at = utcnow()
                values = {"before": before, "after": values}
            audit.append(
                s,
                actor=actor,
                action="baseline.changed",
                entity="clearance_baseline",
                entity_id=f"{config.name}/{b.finding}/{b.metric}/{b.stratum}",
                detail=values,
            )
        for stale_key, stale in existing.items():
            if stale_key not in wanted:
                s.delete(stale)
                audit.append(
                    s,
                    actor=actor,
                    action="baseline.removed",
                    entity="clearance_baseline",
                    entity_id=f"{config.name}/{'/'.join(stale_key)}",
                    detail={},
                )

    def models(self) -> list[ModelInfo]:
        with self.sessions.scope() as s:
            rows = s.scalars(select(ModelRow).order_by(ModelRow.name)).all()
            baselines = s.scalars(select(BaselineRow)).all()
            return [_model_info(r, [b for b in baselines if b.model_id == r.id]) for r in rows]

    def model(self, name: str) -> ModelInfo:
        for info in self.models():
            if info.name == name:
                return info
        known = ", ".join(m.name for m in self.models()) or "none"
        raise NotFoundError(
            f"model {name!r} is not registered (registered: {known}); "
            "register it with 'surveillance models load CONFIG.toml'"
        )

    def set_site_label(self, pseudonym: str, label: str) -> None:
        with self.sessions.scope() as s:
            stmt = _insert(s, SiteRow).values(pseudonym=pseudonym, label=label)
            s.execute(
                stmt.on_conflict_do_update(index_elements=["pseudonym"], set_={"label": label})
            )
            site_id = s.scalar(select(SiteRow.id).where(SiteRow.pseudonym == pseudonym))
            for device in s.scalars(select(DeviceRow).where(DeviceRow.site_id == site_id)):
                device.label = device.label.rsplit(" @ ", 1)[0] + f" @ {label}"

    # ---- ingest -------------------------------------------------------------------

    def write_batch(self, batch: IngestBatch) -> IngestCounts:
        with self.sessions.scope() as s:
            return write_batch(s, batch)

    def consumer_offsets(self, consumer_group: str) -> dict[tuple[str, int], int]:
        with self.sessions.scope() as s:
            return read_offsets(s, consumer_group)

    # ---- what the jobs read ---------------------------------------------------------

    def prediction_span(self, model_id: int) -> tuple[datetime, datetime] | None:
        with self.sessions.scope() as s:
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
        with self.sessions.scope() as s:
            rows = s.execute(stmt).all()
            labels: dict[int, tuple[bool, datetime]] = {}
            dx = s.execute(  # only the labels of the studies selected above
                select(DiagnosisRow.study_id, DiagnosisRow.present, DiagnosisRow.confirmed_at)
                .where(
                    DiagnosisRow.finding == finding,
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

    def volumes(self, model_id: int) -> list[VolumeRow]:
        with self.sessions.scope() as s:
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

    def ensure_reference_set(
        self, model_id: int, name: str, kind: str, start: datetime, end: datetime, *, actor: str
    ) -> int:
        """The id of reference set ``name``; created (and audited) on first use, then frozen."""
        with self.sessions.scope() as s:
            existing = s.scalar(
                select(ReferenceSetRow).where(
                    ReferenceSetRow.model_id == model_id, ReferenceSetRow.name == name
                )
            )
            if existing is not None:
                return existing.id
            row = ReferenceSetRow(
                model_id=model_id,
                name=name,
                kind=kind,
                period_start=start,
                period_end=end,
                frozen=True,
                created_at=utcnow(),
            )
            s.add(row)
            s.flush()
            audit.append(
                s,
                actor=actor,
                action="reference_set.created",
                entity="reference_set",
                entity_id=row.id,
                detail={
                    "name": name,
                    "kind": kind,
                    "start": start.isoformat(),
                    "end": end.isoformat(),
                },
            )
            return row.id

    def reference_period(self, reference_set_id: int) -> tuple[datetime, datetime]:
        with self.sessions.scope() as s:
            row = s.get(ReferenceSetRow, reference_set_id)
            if row is None:
                raise NotFoundError(f"reference set {reference_set_id} does not exist")
            return row.period_start, row.period_end

    # ---- job runs ---------------------------------------------------------------

    def start_job_run(self, job_id: str, scheduled_for: datetime) -> int | None:
        """Record a run; ``None`` if this (job, scheduled time) already ran or runs."""
        with self.sessions.scope() as s:
            stmt = (
                _insert(s, JobRunRow)
                .values(
                    job_id=job_id,
                    scheduled_for=scheduled_for,
                    started_at=utcnow(),
                    status="running",
                )
                .on_conflict_do_nothing()
                .returning(JobRunRow.id)
            )
            return s.execute(stmt).scalar_one_or_none()

    def finish_job_run(self, run_id: int, *, error: str | None = None) -> None:
        with self.sessions.scope() as s:
            row = s.get(JobRunRow, run_id)
            if row is None:
                raise NotFoundError(f"job run {run_id} does not exist")
            row.finished_at = utcnow()
            row.status = "failed" if error else "succeeded"
            row.error = error

    # ---- checks -----------------------------------------------------------------

    def save_drift_checks(
        self, rows: Sequence[dict[str, Any]], *, job_run_id: int | None, actor: str
    ) -> list[DriftCheck]:
        """Insert or refresh drift checks (unique per model/detector/signal/stratum/window)."""
        return self._save_checks(DriftCheckRow, rows, job_run_id, actor, "drift_check")

    def save_performance_checks(
        self, rows: Sequence[dict[str, Any]], *, job_run_id: int | None, actor: str
    ) -> list[PerformanceCheck]:
        return self._save_checks(PerformanceCheckRow, rows, job_run_id, actor, "performance_check")

    def _save_checks(
        self,
        table: Any,
        rows: Sequence[dict[str, Any]],
        job_run_id: int | None,
        actor: str,
        entity: str,
    ) -> list[Any]:
        if not rows:
            return []
        unique = next(
            c
            for c in table.__table__.constraints
            if c.name and str(c.name).startswith("uq_") and hasattr(c, "columns")
        )
        key_columns = [c.name for c in unique.columns]
        now = utcnow()
        with self.sessions.scope() as s:
            values = [{**row, "job_run_id": job_run_id, "created_at": now} for row in rows]
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
            convert = _drift if table is DriftCheckRow else _performance
            result = [convert(by_id[i], models[by_id[i].model_id]) for i in ids]
            flagged = [r for r in result if r.status not in ("ok", "insufficient_data")]
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

    def drift_checks(
        self, model_id: int, start: datetime | None = None, end: datetime | None = None
    ) -> list[DriftCheck]:
        """Drift checks of a model, oldest window first; with a period, those overlapping it."""
        rows = self._checks(DriftCheckRow, model_id, start, end)
        return [_drift(r, name) for r, name in rows]

    def performance_checks(
        self, model_id: int, start: datetime | None = None, end: datetime | None = None
    ) -> list[PerformanceCheck]:
        """Performance checks of a model; with a period, those whose window overlaps it."""
        rows = self._checks(PerformanceCheckRow, model_id, start, end)
        return [_performance(r, name) for r, name in rows]

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
        with self.sessions.scope() as s:
            return [(row, name) for row, name in s.execute(stmt)]

    # ---- incidents ---------------------------------------------------------------

    def raise_incident(self, signal: IncidentSignal, *, actor: str) -> tuple[Incident, bool]:
        """Open an incident, or add evidence to the open one with the same key.

        Returns the incident and whether it was newly opened.
        """
        with self.sessions.scope() as s:
            row = s.scalar(
                select(IncidentRow).where(
                    IncidentRow.dedup_key == signal.dedup_key,
                    IncidentRow.status.in_(OPEN_INCIDENT_STATUSES),
                )
            )
            created = row is None
            now = utcnow()
            if row is None:
                row = IncidentRow(
                    dedup_key=signal.dedup_key,
                    model_id=signal.model_id,
                    signal_kind=signal.signal_kind,
                    signal=signal.signal,
                    stratum_kind=signal.stratum_kind,
                    stratum_value=signal.stratum_value,
                    severity=signal.severity,
                    status="open",
                    title=signal.title,
                    summary=signal.summary,
                    opened_at=now,
                    aware_at=now,
                    last_evidence_at=signal.evidence_at,
                    vigilance_class=signal.vigilance_class,
                    mdr_deadline_at=signal.mdr_deadline_at,
                    fda_deadline_at=signal.fda_deadline_at,
                )
                s.add(row)
                s.flush()
                s.add(
                    IncidentEventRow(
                        incident_id=row.id, at=now, kind="opened", actor=actor, note=signal.summary
                    )
                )
                audit.append(
                    s,
                    actor=actor,
                    action="incident.opened",
                    entity="incident",
                    entity_id=row.id,
                    detail={
                        "key": signal.dedup_key,
                        "severity": signal.severity,
                        "title": signal.title,
                    },
                )
            else:
                row.last_evidence_at = max(row.last_evidence_at, signal.evidence_at)
                row.summary = signal.summary
            known = set(
                s.execute(
                    select(
                        IncidentEventRow.drift_check_id, IncidentEventRow.performance_check_id
                    ).where(IncidentEventRow.incident_id == row.id)
                )
            )
            known_drift = {d for d, _ in known if d is not None}
            known_perf = {p for _, p in known if p is not None}
            new_evidence = 0
            for check_id in signal.drift_check_ids:
                if check_id not in known_drift:
                    s.add(
                        IncidentEventRow(
                            incident_id=row.id,
                            at=now,
                            kind="evidence",
                            actor=actor,
                            drift_check_id=check_id,
                        )
                    )
                    new_evidence += 1
            for check_id in signal.performance_check_ids:
                if check_id not in known_perf:
                    s.add(
                        IncidentEventRow(
                            incident_id=row.id,
                            at=now,
                            kind="evidence",
                            actor=actor,
                            performance_check_id=check_id,
                        )
                    )
                    new_evidence += 1
            if new_evidence and not created:
                audit.append(
                    s,
                    actor=actor,
                    action="incident.evidence",
                    entity="incident",
                    entity_id=row.id,
                    detail={"new_evidence": new_evidence},
                )
            s.flush()
            return self._load_incident(s, row.id), created

    def _load_incident(self, s: Session, incident_id: int) -> Incident:
        row = s.get(IncidentRow, incident_id)
        if row is None:
            raise NotFoundError(
                f"incident {incident_id} does not exist; "
                "list them with 'surveillance incidents list'"
            )
        model = s.scalar(select(ModelRow.name).where(ModelRow.id == row.model_id)) or "?"
        events = s.scalars(
            select(IncidentEventRow)
            .where(IncidentEventRow.incident_id == incident_id)
            .order_by(IncidentEventRow.at, IncidentEventRow.id)
        ).all()
        return _incident(row, model, events)

    def incident(self, incident_id: int) -> Incident:
        with self.sessions.scope() as s:
            return self._load_incident(s, incident_id)

    def incidents(self, *, status: str | None = None, model: str | None = None) -> list[Incident]:
        stmt = select(IncidentRow, ModelRow.name).join(
            ModelRow, ModelRow.id == IncidentRow.model_id
        )
        if status == "open":
            stmt = stmt.where(IncidentRow.status.in_(OPEN_INCIDENT_STATUSES))
        elif status is not None:
            stmt = stmt.where(IncidentRow.status == status)
        if model is not None:
            stmt = stmt.where(ModelRow.name == model)
        with self.sessions.scope() as s:
            rows = s.execute(stmt.order_by(IncidentRow.opened_at, IncidentRow.id)).all()
            return [_incident(r, name) for r, name in rows]

    def update_incident(
        self,
        incident_id: int,
        *,
        actor: str,
        kind: str,
        note: str | None = None,
        **changes: Any,
    ) -> Incident:
        """Apply a status change (ack, investigate, close) and record it on the timeline."""
        with self.sessions.scope() as s:
            row = s.get(IncidentRow, incident_id)
            if row is None:
                raise NotFoundError(
                    f"incident {incident_id} does not exist; "
                    "list them with 'surveillance incidents list'"
                )
            if row.status == "closed":
                raise UsageError(f"incident {incident_id} is already closed")
            for key, value in changes.items():
                setattr(row, key, value)
            s.add(
                IncidentEventRow(incident_id=row.id, at=utcnow(), kind=kind, actor=actor, note=note)
            )
            audit.append(
                s,
                actor=actor,
                action=f"incident.{kind}",
                entity="incident",
                entity_id=incident_id,
                detail={"note": note, **{k: str(v) for k, v in changes.items()}},
            )
            s.flush()
            return self._load_incident(s, incident_id)

    # ---- dead letters and audit ---------------------------------------------------

    def dead_letters(self, *, include_replayed: bool = False, limit: int = 100) -> list[DeadLetter]:
        stmt = select(DeadLetterRow).order_by(DeadLetterRow.id).limit(limit)
        if not include_replayed:
            stmt = stmt.where(DeadLetterRow.replayed_at.is_(None))
        with self.sessions.scope() as s:
            return [
                DeadLetter(
                    id=r.id,
                    source=r.source,
                    position=" ".join(
                        [r.source, r.locator]
                        + ([f"partition {r.partition}"] if r.partition >= 0 else [])
                        + (
                            [f"{'offset' if r.source == 'kafka' else 'line'} {r.offset}"]
                            if r.offset >= 0
                            else []
                        )
                    ),
                    kind=r.kind,
                    reason=r.reason,
                    payload=r.payload,
                    received_at=r.received_at,
                    replayed_at=r.replayed_at,
                )
                for r in s.scalars(stmt)
            ]

    def record_audit(
        self,
        *,
        actor: str,
        action: str,
        entity: str,
        entity_id: str | int,
        detail: dict[str, Any] | None = None,
    ) -> str:
        with self.sessions.scope() as s:
            return audit.append(
                s, actor=actor, action=action, entity=entity, entity_id=entity_id, detail=detail
            )

    def verify_audit(self) -> AuditReport:
        with self.sessions.scope() as s:
            return audit.verify(s)


__all__ = ["IncidentSignal", "Store"]
