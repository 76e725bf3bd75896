"""PMS / vigilance incidents: opened by the policy, changed by people, with their evidence.

Lifecycle rules kept here (whoever calls):

* one live incident per key (``IncidentSignal.dedup_key``; the policy uses one key
  per root cause: model + narrowest stratum);
* a **closed** incident is never reopened: evidence already on it is ignored,
  and new evidence for the same key opens a *recurrence* (``recurrence_of``)
  with its own awareness date, hence its own vigilance clock;
* acknowledging twice records one acknowledgement (:meth:`IncidentsRepository.ack`);
* vigilance reports are recorded per authority (:meth:`IncidentsRepository.record_report`)
  and every deadline reads as met, missed or open (:meth:`IncidentsRepository.deadlines`,
  :func:`deadline_state`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from surveillance.core.errors import NotFoundError, UsageError
from surveillance.core.statuses import (
    OPEN_INCIDENT_STATUSES,
    DeadlineStatus,
    IncidentStatus,
    ReportAuthority,
    Severity,
    VigilanceClass,
)
from surveillance.store import audit
from surveillance.store.base import Repository
from surveillance.store.convert import drift_check, incident, performance_check, vigilance_report
from surveillance.store.domain import (
    DeadlineState,
    DriftCheck,
    Incident,
    PerformanceCheck,
    VigilanceReport,
)
from surveillance.store.models import (
    DriftCheckRow,
    IncidentEventRow,
    IncidentRow,
    ModelRow,
    PerformanceCheckRow,
    VigilanceReportRow,
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
    #: checks of the strata above (site, overall) that roll up into this root cause
    rollup_drift_check_ids: tuple[int, ...] = ()
    rollup_performance_check_ids: tuple[int, ...] = ()
    #: de-duplication key; default: model, signal and stratum
    key: str | None = None

    @property
    def dedup_key(self) -> str:
        if self.key is not None:
            return self.key
        return (
            f"{self.model_id}|{self.signal_kind}|{self.signal}|"
            f"{self.stratum_kind}={self.stratum_value}"
        )


SEVERITY_RANK = {s.value: n for n, s in enumerate(Severity)}
AUTHORITY_DEADLINE = {
    ReportAuthority.EU_MDR: "mdr_deadline_at",
    ReportAuthority.FDA: "fda_deadline_at",
}


def worst_severity(*values: str) -> str:
    """The most severe of ``values`` (low < medium < high < critical)."""
    return max(values, key=lambda v: SEVERITY_RANK.get(v, -1))


def deadline_state(
    authority: str,
    due_at: datetime | None,
    report: VigilanceReport | None,
    vigilance_class: str,
    now: datetime,
) -> DeadlineState:
    """Met (reported by ``due_at``), missed (late or past due), open, or not applicable."""
    if due_at is None or vigilance_class == VigilanceClass.NOT_REPORTABLE:
        status = DeadlineStatus.NOT_APPLICABLE
    elif report is not None:
        status = DeadlineStatus.MET if report.reported_at <= due_at else DeadlineStatus.MISSED
    else:
        status = DeadlineStatus.MISSED if now > due_at else DeadlineStatus.OPEN
    return DeadlineState(
        authority=authority,
        due_at=due_at,
        reported_at=report.reported_at if report else None,
        reference=report.reference if report else None,
        status=status.value,
    )


def incident_deadlines(incident: Incident, now: datetime) -> list[DeadlineState]:
    """EU MDR then FDA deadline states of ``incident`` (its ``reports`` loaded)."""
    reports = {r.authority: r for r in incident.reports}
    return [
        deadline_state(
            authority.value,
            getattr(incident, AUTHORITY_DEADLINE[authority]),
            reports.get(authority.value),
            incident.vigilance_class,
            now,
        )
        for authority in ReportAuthority
    ]


class IncidentsRepository(Repository):
    """Incidents and their timelines."""

    def raise_(
        self, signal: IncidentSignal, *, actor: str, now: datetime | None = None
    ) -> tuple[Incident, bool]:
        """Open an incident, or add evidence to the live one with the same key.

        Returns the incident and whether it was newly opened. A closed incident
        of the same key is never reopened: checks already in its evidence are
        dropped, and what is left (if anything) opens a recurrence linked to it.
        When nothing is left, the closed incident is returned unchanged
        (``created`` False, status ``closed``).
        """
        with self._sessions.scope() as s:
            key = signal.dedup_key
            row = s.scalar(
                select(IncidentRow).where(
                    IncidentRow.dedup_key == key,
                    IncidentRow.status.in_(OPEN_INCIDENT_STATUSES),
                )
            )
            moment = now or utcnow()
            own_drift, own_perf = signal.drift_check_ids, signal.performance_check_ids
            up_drift, up_perf = signal.rollup_drift_check_ids, signal.rollup_performance_check_ids
            recurrence_of: int | None = None
            if row is None:
                closed = s.scalars(
                    select(IncidentRow)
                    .where(
                        IncidentRow.dedup_key == key, IncidentRow.status == IncidentStatus.CLOSED
                    )
                    .order_by(IncidentRow.closed_at.desc(), IncidentRow.id.desc())
                ).first()
                if closed is not None:
                    seen_drift, seen_perf = self._closed_evidence(s, key)
                    own_drift = tuple(i for i in own_drift if i not in seen_drift)
                    own_perf = tuple(i for i in own_perf if i not in seen_perf)
                    if not own_drift and not own_perf:
                        return self._load_incident(s, closed.id), False
                    up_drift = tuple(i for i in up_drift if i not in seen_drift)
                    up_perf = tuple(i for i in up_perf if i not in seen_perf)
                    recurrence_of = closed.id
            created = row is None
            if row is None:
                row = IncidentRow(
                    dedup_key=key,
                    model_id=signal.model_id,
                    signal_kind=signal.signal_kind,
                    signal=signal.signal,
                    stratum_kind=signal.stratum_kind,
                    stratum_value=signal.stratum_value,
                    severity=signal.severity,
                    status=IncidentStatus.OPEN,
                    title=signal.title,
                    summary=signal.summary,
                    opened_at=moment,
                    aware_at=moment,
                    last_evidence_at=signal.evidence_at,
                    vigilance_class=signal.vigilance_class,
                    mdr_deadline_at=signal.mdr_deadline_at,
                    fda_deadline_at=signal.fda_deadline_at,
                    recurrence_of=recurrence_of,
                )
                s.add(row)
                s.flush()
                note = signal.summary
                if recurrence_of is not None:
                    note = f"recurrence of incident {recurrence_of} (closed): {note}"
                s.add(
                    IncidentEventRow(
                        incident_id=row.id, at=moment, kind="opened", actor=actor, note=note
                    )
                )
                audit.append(
                    s,
                    actor=actor,
                    action="incident.opened",
                    entity="incident",
                    entity_id=row.id,
                    detail={
                        "key": key,
                        "severity": signal.severity,
                        "title": signal.title,
                        "recurrence_of": recurrence_of,
                    },
                )
            else:
                row.last_evidence_at = max(row.last_evidence_at, signal.evidence_at)
                row.summary = signal.summary
                row.title = signal.title
                row.signal_kind = signal.signal_kind
                row.signal = signal.signal
                row.severity = worst_severity(row.severity, signal.severity)
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
            for kind, ids, known_ids, column in (
                ("evidence", own_drift, known_drift, "drift_check_id"),
                ("evidence", own_perf, known_perf, "performance_check_id"),
                ("rollup", up_drift, known_drift, "drift_check_id"),
                ("rollup", up_perf, known_perf, "performance_check_id"),
            ):
                for check_id in ids:
                    if check_id in known_ids:
                        continue
                    known_ids.add(check_id)
                    s.add(
                        IncidentEventRow(
                            incident_id=row.id,
                            at=moment,
                            kind=kind,
                            actor=actor,
                            **{column: check_id},
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

    @staticmethod
    def _closed_evidence(s: Session, key: str) -> tuple[set[int], set[int]]:
        """Check ids already in the evidence of closed incidents with ``key``."""
        closed_ids = select(IncidentRow.id).where(
            IncidentRow.dedup_key == key, IncidentRow.status == IncidentStatus.CLOSED
        )
        pairs = s.execute(
            select(IncidentEventRow.drift_check_id, IncidentEventRow.performance_check_id).where(
                IncidentEventRow.incident_id.in_(closed_ids)
            )
        ).all()
        return {d for d, _ in pairs if d is not None}, {p for _, p in pairs if p is not None}

    def live(self, key: str) -> Incident | None:
        """The incident with this de-duplication key that is not closed, if any."""
        with self._sessions.scope() as s:
            row_id = s.scalar(
                select(IncidentRow.id).where(
                    IncidentRow.dedup_key == key, IncidentRow.status.in_(OPEN_INCIDENT_STATUSES)
                )
            )
            return None if row_id is None else self._load_incident(s, row_id)

    def last_closed(self, key: str) -> Incident | None:
        """The most recently closed incident with this de-duplication key, if any."""
        with self._sessions.scope() as s:
            row_id = s.scalar(
                select(IncidentRow.id)
                .where(IncidentRow.dedup_key == key, IncidentRow.status == IncidentStatus.CLOSED)
                .order_by(IncidentRow.closed_at.desc(), IncidentRow.id.desc())
                .limit(1)
            )
            return None if row_id is None else self._load_incident(s, row_id)

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
        return incident(row, model, events, self._reports(s, [incident_id]).get(incident_id, ()))

    @staticmethod
    def _reports(s: Session, ids: Sequence[int]) -> dict[int, list[VigilanceReport]]:
        found: dict[int, list[VigilanceReport]] = {}
        if not ids:
            return found
        rows = s.scalars(
            select(VigilanceReportRow)
            .where(VigilanceReportRow.incident_id.in_(list(ids)))
            .order_by(VigilanceReportRow.reported_at, VigilanceReportRow.id)
        )
        for r in rows:
            found.setdefault(r.incident_id, []).append(vigilance_report(r))
        return found

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
            reports = self._reports(s, [r.id for r, _ in rows])
            return [incident(r, name, (), reports.get(r.id, ())) for r, name in rows]

    def ack(
        self, incident_id: int, *, actor: str, note: str | None = None, now: datetime | None = None
    ) -> tuple[Incident, bool]:
        """Acknowledge once: a second ack (or an ack after investigating) changes nothing.

        Returns the incident and whether this call acknowledged it.
        """
        with self._sessions.scope() as s:
            row = s.get(IncidentRow, incident_id)
            if row is None:
                raise NotFoundError(
                    f"incident {incident_id} does not exist; "
                    "list them with 'surveillance incidents list'"
                )
            if row.status == IncidentStatus.CLOSED:
                raise UsageError(f"incident {incident_id} is already closed")
            if row.acknowledged_at is not None:
                return self._load_incident(s, incident_id), False
            was_open = row.status == IncidentStatus.OPEN
        moment = now or utcnow()
        changes: dict[str, Any] = {"acknowledged_at": moment, "acknowledged_by": actor}
        if was_open:
            changes["status"] = IncidentStatus.ACKNOWLEDGED
        return self.update(
            incident_id, actor=actor, kind="acknowledged", note=note, **changes
        ), True

    def record_report(
        self,
        incident_id: int,
        *,
        authority: str,
        reference: str,
        reported_at: datetime,
        actor: str,
        now: datetime | None = None,
    ) -> VigilanceReport:
        """Record the vigilance report made to ``authority`` (once per authority).

        ``incident.reported_at`` (read by older readers) is set to the latest report
        once every authority with a deadline has one.
        """
        try:
            which = ReportAuthority(authority)
        except ValueError as exc:
            known = ", ".join(a.value for a in ReportAuthority)
            raise UsageError(f"authority {authority!r} is not one of: {known}") from exc
        if not reference.strip():
            raise UsageError("--reference must not be empty: give the report's reference")
        moment = now or utcnow()
        if reported_at > moment:
            raise UsageError(
                f"--at {reported_at:%Y-%m-%d %H:%M} lies in the future; record a report once made"
            )
        with self._sessions.scope() as s:
            row = s.get(IncidentRow, incident_id)
            if row is None:
                raise NotFoundError(
                    f"incident {incident_id} does not exist; "
                    "list them with 'surveillance incidents list'"
                )
            existing = s.scalar(
                select(VigilanceReportRow).where(
                    VigilanceReportRow.incident_id == incident_id,
                    VigilanceReportRow.authority == which.value,
                )
            )
            if existing is not None:
                raise UsageError(
                    f"incident {incident_id}: the {which.value} report is already recorded "
                    f"(reference {existing.reference}, {existing.reported_at:%Y-%m-%d %H:%M} UTC)"
                )
            report_row = VigilanceReportRow(
                incident_id=incident_id,
                authority=which.value,
                reference=reference.strip(),
                reported_at=reported_at,
                recorded_by=actor,
                recorded_at=moment,
            )
            s.add(report_row)
            s.flush()
            times = {
                r.authority: r.reported_at
                for r in s.scalars(
                    select(VigilanceReportRow).where(VigilanceReportRow.incident_id == incident_id)
                )
            }
            due = [
                a.value for a in ReportAuthority if getattr(row, AUTHORITY_DEADLINE[a]) is not None
            ]
            if due and all(a in times for a in due):
                row.reported_at = max(times[a] for a in due)
            note = (
                f"reported to {which.value}: {reference.strip()} "
                f"at {reported_at:%Y-%m-%d %H:%M} UTC"
            )
            s.add(
                IncidentEventRow(
                    incident_id=incident_id, at=moment, kind="reported", actor=actor, note=note
                )
            )
            audit.append(
                s,
                actor=actor,
                action="incident.reported",
                entity="incident",
                entity_id=incident_id,
                detail={
                    "authority": which.value,
                    "reference": reference.strip(),
                    "reported_at": reported_at.isoformat(),
                },
            )
            s.flush()
            return vigilance_report(report_row)

    def reports(self, incident_id: int) -> list[VigilanceReport]:
        """The vigilance reports recorded for an incident (oldest first)."""
        with self._sessions.scope() as s:
            return self._reports(s, [incident_id]).get(incident_id, [])

    def deadlines(self, incident_id: int, *, now: datetime | None = None) -> list[DeadlineState]:
        """EU MDR and FDA deadline states (met / missed / open / not_applicable)."""
        return incident_deadlines(self.get(incident_id), now or utcnow())

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
