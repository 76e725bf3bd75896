"""Every status and kind that is stored, as a StrEnum.

The store's CHECK constraints are built from these enums
(:func:`check_in`), so a value the code does not know can never be written,
and the code never compares with a misspelt string literal.
"""

from __future__ import annotations

from enum import StrEnum


class IncidentStatus(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    INVESTIGATING = "investigating"
    CLOSED = "closed"


#: Incident statuses in which an incident is still live (pages, deadlines run).
OPEN_INCIDENT_STATUSES: tuple[str, ...] = (
    IncidentStatus.OPEN,
    IncidentStatus.ACKNOWLEDGED,
    IncidentStatus.INVESTIGATING,
)


class Severity(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class SignalKind(StrEnum):
    DRIFT = "drift"
    PERFORMANCE = "performance"
    INTAKE = "intake"  # the data feed itself failed (e.g. Kafka offsets out of range)


class DriftStatus(StrEnum):
    """Outcome of one drift check.

    ``drift``: significant after the window's multiple-testing control *and* the
    effect size reaches ``[drift] min_effect``; ``below_tolerance``: significant
    but smaller than the tolerance (shown, never an incident).
    """

    OK = "ok"
    DRIFT = "drift"
    BELOW_TOLERANCE = "below_tolerance"
    INSUFFICIENT_DATA = "insufficient_data"


class PerformanceStatus(StrEnum):
    OK = "ok"
    WARNING = "warning"
    BREACH = "breach"
    INSUFFICIENT_DATA = "insufficient_data"


class JobRunStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ABANDONED = "abandoned"


class CheckUnitStatus(StrEnum):
    """A drift window queued for judging (``check_unit``), claimed by any replica."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"


class DeliveryKind(StrEnum):
    OPEN = "open"
    RESOLVE = "resolve"
    #: an Alertmanager silence posted when on-call acknowledges the incident
    SILENCE = "silence"


class ReportAuthority(StrEnum):
    """Authorities a vigilance report is made to (``incidents report --authority``)."""

    EU_MDR = "eu-mdr"
    FDA = "fda"


class DeadlineStatus(StrEnum):
    """A reporting deadline as shown to people: reported in time, too late, or still running."""

    MET = "met"
    MISSED = "missed"
    OPEN = "open"
    NOT_APPLICABLE = "not_applicable"


class ReferenceKind(StrEnum):
    CLEARANCE = "clearance"
    ROLLING = "rolling"


class VigilanceClass(StrEnum):
    """MDR Art. 87 / 21 CFR 803 classification of an incident (drives the deadlines)."""

    ASSESSMENT_PENDING = "assessment_pending"
    NOT_REPORTABLE = "not_reportable"
    SERIOUS_INCIDENT = "serious_incident"
    SERIOUS_PUBLIC_HEALTH_THREAT = "serious_public_health_threat"
    DEATH_OR_SERIOUS_DETERIORATION = "death_or_serious_deterioration"


class DiagnosisSource(StrEnum):
    PATHOLOGY = "pathology"
    CONSENSUS = "consensus"
    REPORT = "report"
    FOLLOW_UP = "follow-up"


class FscaStatus(StrEnum):
    """A field safety corrective action (MDR Art. 83/89) as the QMS tracks it."""

    OPEN = "open"
    CLOSED = "closed"


def check_in(column: str, enum: type[StrEnum]) -> str:
    """SQL for a CHECK constraint: ``column IN ('a', 'b', ...)`` over the enum's values."""
    values = ", ".join(f"'{member.value}'" for member in enum)
    return f"{column} IN ({values})"


__all__ = [
    "OPEN_INCIDENT_STATUSES",
    "DeadlineStatus",
    "DeliveryKind",
    "DeliveryStatus",
    "DiagnosisSource",
    "DriftStatus",
    "FscaStatus",
    "IncidentStatus",
    "JobRunStatus",
    "PerformanceStatus",
    "ReferenceKind",
    "ReportAuthority",
    "Severity",
    "SignalKind",
    "VigilanceClass",
    "check_in",
]
