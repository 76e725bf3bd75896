"""Persistence: PostgreSQL in production, SQLite for the embedded demo.

:class:`Store` composes one repository per area (see :mod:`surveillance.store.facade`);
callers pass typed drafts and get domain objects (:mod:`surveillance.store.domain`).
"""

from surveillance.store.domain import (
    AuditReport,
    CaseTable,
    ChangeEvent,
    DeadLetter,
    DriftCheck,
    Incident,
    IngestBatch,
    IngestCounts,
    ModelInfo,
    PerformanceCheck,
)
from surveillance.store.facade import Store
from surveillance.store.incidents import IncidentSignal

__all__ = [
    "AuditReport",
    "CaseTable",
    "ChangeEvent",
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
