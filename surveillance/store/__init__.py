"""Persistence: PostgreSQL in production, SQLite for the embedded demo."""

from surveillance.store.domain import (
    AuditReport,
    CaseTable,
    DeadLetter,
    DriftCheck,
    Incident,
    IngestBatch,
    IngestCounts,
    ModelInfo,
    PerformanceCheck,
)
from surveillance.store.repository import IncidentSignal, Store

__all__ = [
    "AuditReport",
    "CaseTable",
    "DeadLetter",
    "DriftCheck",
    "Incident",
    "IncidentSignal",
    "IngestBatch",
    "IngestCounts",
    "ModelInfo",
    "PerformanceCheck",
    "Store",
]
