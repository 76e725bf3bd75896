"""PMS / vigilance incidents: opened by the policy, changed by people, with their evidence."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from surveillance.core.errors import NotFoundError, UsageError
from surveillance.core.statuses import OPEN_INCIDENT_STATUSES, IncidentStatus
from surveillance.store import audit
from surveillance.store.base import Repository
from surveillance.store.convert import drift_check, incident, performance_check
from surveillance.store.domain import (
    DriftCheck,
    Incident,
    PerformanceCheck,
)
from surveillance.store.models import (
    DriftCheckRow,
    IncidentEventRow,
    IncidentRow,
    ModelRow,
    PerformanceCheckRow,
)
from surveillance.store.types import utcnow


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


class IncidentsRepository(Repository):
    """Incidents and their timelines."""

    def raise_(self, signal: IncidentSignal, *, actor: str) -> tuple[Incident, bool]:
        """Open an incident, or add evidence to the open one with the same key.

        Returns the incident and whether it was newly opened.
        """
        with self._sessions.scope() as s:
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
                    status=IncidentStatus.OPEN,
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
        return incident(row, model, events)

    def get(self, incident_id: int) -> Incident:
        with self._sessions.scope() as s:
            return self._load_incident(s, incident_id)

    def find(self, *, status: str | None = None, model: str | None = None) -> list[Incident]:
        stmt = select(IncidentRow, ModelRow.name).join(
            ModelRow, ModelRow.id == IncidentRow.model_id
        )
        if status == "open":
            stmt = stmt.where(IncidentRow.status.in_(OPEN_INCIDENT_STATUSES))
        elif status is not None:
            stmt = stmt.where(IncidentRow.status == status)
        if model is not None:
            stmt = stmt.where(ModelRow.name == model)
        with self._sessions.scope() as s:
            rows = s.execute(stmt.order_by(IncidentRow.opened_at, IncidentRow.id)).all()
            return [incident(r, name) for r, name in rows]

    def update(
        self,
        incident_id: int,
        *,
        actor: str,
        kind: str,
        note: str | None = None,
        **changes: Any,
    ) -> Incident:
        """Apply a status change (ack, investigate, close) and record it on the timeline."""
        with self._sessions.scope() as s:
            row = s.get(IncidentRow, incident_id)
            if row is None:
                raise NotFoundError(
                    f"incident {incident_id} does not exist; "
                    "list them with 'surveillance incidents list'"
                )
            if row.status == IncidentStatus.CLOSED:
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

    def evidence(self, incident_id: int) -> tuple[list[PerformanceCheck], list[DriftCheck]]:
        """The checks linked to an incident's timeline (oldest window first)."""
        with self._sessions.scope() as s:
            model = s.scalar(
                select(ModelRow.name)
                .join(IncidentRow, IncidentRow.model_id == ModelRow.id)
                .where(IncidentRow.id == incident_id)
            )
            if model is None:
                raise NotFoundError(f"incident {incident_id} does not exist")
            mine = IncidentEventRow.incident_id == incident_id
            perf_ids = select(IncidentEventRow.performance_check_id).where(mine)
            drift_ids = select(IncidentEventRow.drift_check_id).where(mine)
            perf = s.scalars(
                select(PerformanceCheckRow)
                .where(PerformanceCheckRow.id.in_(perf_ids))
                .order_by(PerformanceCheckRow.window_end, PerformanceCheckRow.id)
            ).all()
            drift = s.scalars(
                select(DriftCheckRow)
                .where(DriftCheckRow.id.in_(drift_ids))
                .order_by(DriftCheckRow.window_end, DriftCheckRow.id)
            ).all()
            return [performance_check(r, model) for r in perf], [
                drift_check(r, model) for r in drift
            ]

    def remedial_action(self, incident_id: int) -> bool:
        with self._sessions.scope() as s:
            value = s.scalar(
                select(IncidentRow.remedial_action).where(IncidentRow.id == incident_id)
            )
            if value is None:
                raise NotFoundError(f"incident {incident_id} does not exist")
            return bool(value)
