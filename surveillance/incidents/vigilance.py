"""Vigilance classes and regulatory reporting deadlines.

EU MDR Article 87(3)-(5): report a serious incident no later than 15 days after
the manufacturer became aware of it; 2 days for a serious public health threat;
10 days for a death or an unanticipated serious deterioration in health.
FDA 21 CFR 803.50 / 803.53: 30 calendar days; 5 work days when remedial action
is needed to prevent an unreasonable risk of substantial harm to public health.

Until a person assesses an incident it is ``assessment_pending``: its clock runs
from awareness with the longest MDR deadline a serious incident could have (15
days), so the deadline is never shown later than the law allows.

Reports made to an authority are recorded with ``surveillance incidents report``
(``store.incidents.record_report``); :func:`incident_deadlines` (also
``store.incidents.deadlines(id)``) reads each deadline as met, missed, open or
not applicable (:func:`deadline_state`).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from surveillance.core.statuses import VigilanceClass
from surveillance.store.incidents import deadline_state, incident_deadlines

MDR_DAYS = {
    VigilanceClass.ASSESSMENT_PENDING: 15,
    VigilanceClass.SERIOUS_INCIDENT: 15,
    VigilanceClass.SERIOUS_PUBLIC_HEALTH_THREAT: 2,
    VigilanceClass.DEATH_OR_SERIOUS_DETERIORATION: 10,
}
FDA_CALENDAR_DAYS = 30
FDA_REMEDIAL_WORK_DAYS = 5


def add_work_days(start: datetime, days: int) -> datetime:
    """``start`` plus ``days`` Monday-to-Friday days (public holidays not modelled)."""
    current = start
    remaining = days
    while remaining > 0:
        current += timedelta(days=1)
        if current.weekday() < 5:
            remaining -= 1
    return current


def deadlines(
    vigilance_class: VigilanceClass | str, aware_at: datetime, *, remedial_action: bool = False
) -> tuple[datetime | None, datetime | None]:
    """(EU MDR deadline, FDA deadline) for an incident, or None where not reportable."""
    cls = VigilanceClass(vigilance_class)
    if cls is VigilanceClass.NOT_REPORTABLE:
        return None, None
    mdr = aware_at + timedelta(days=MDR_DAYS[cls])
    if remedial_action:
        fda = add_work_days(aware_at, FDA_REMEDIAL_WORK_DAYS)
    else:
        fda = aware_at + timedelta(days=FDA_CALENDAR_DAYS)
    return mdr, fda


def time_left(deadline: datetime | None, now: datetime) -> str:
    """'3d 4h left', 'overdue by 2d 1h' or '-' for a person reading a table."""
    if deadline is None:
        return "-"
    delta = deadline - now
    seconds = abs(int(delta.total_seconds()))
    text = f"{seconds // 86400}d {(seconds % 86400) // 3600}h"
    return f"{text} left" if delta.total_seconds() >= 0 else f"overdue by {text}"


__all__ = [
    "VigilanceClass",
    "add_work_days",
    "deadline_state",
    "deadlines",
    "incident_deadlines",
    "time_left",
]
