"""The store's public face: :class:`Store`, composed of one repository per area.

``store.registry`` (models, baselines, sites, reference sets), ``store.events``
(intake writes, offsets, dead letters), ``store.checks`` (what the checks read
and judged), ``store.incidents``, ``store.ledger`` (job runs), ``store.units``
(check work units any replica claims), ``store.outbox`` (alert deliveries),
``store.embeddings`` (spool claims, embeddings), ``store.reporting`` (period
queries for reports and exports), ``store.audit`` (the hash chain),
``store.bench`` (benchmark SQL) and ``store.partitions`` (monthly partitions on
PostgreSQL: created ahead, dropped by retention). Each method is one
transaction; writes that matter append an audit event in that transaction.
"""

from __future__ import annotations

from sqlalchemy import Engine

from surveillance.store.audit import AuditRepository
from surveillance.store.bench import BenchRepository
from surveillance.store.checks import ChecksRepository
from surveillance.store.embeddings import EmbeddingsRepository
from surveillance.store.engine import SessionFactory, check_connection, make_engine
from surveillance.store.events import EventsRepository
from surveillance.store.incidents import IncidentsRepository
from surveillance.store.ledger import LedgerRepository
from surveillance.store.migrations import ensure_current
from surveillance.store.outbox import OutboxRepository
from surveillance.store.partitions import PartitionsRepository
from surveillance.store.registry import RegistryRepository
from surveillance.store.reporting import ReportingRepository
from surveillance.store.units import UnitsRepository


class Store:
    """All persistence for one database, one repository per area."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessions = SessionFactory(engine)
        self.registry = RegistryRepository(self.sessions)
        self.events = EventsRepository(self.sessions)
        self.checks = ChecksRepository(self.sessions)
        self.incidents = IncidentsRepository(self.sessions)
        self.ledger = LedgerRepository(self.sessions)
        self.units = UnitsRepository(self.sessions)
        self.outbox = OutboxRepository(self.sessions)
        self.embeddings = EmbeddingsRepository(self.sessions)
        self.reporting = ReportingRepository(self.sessions, self.registry)
        self.audit = AuditRepository(self.sessions)
        self.bench = BenchRepository(self.sessions)
        self.partitions = PartitionsRepository(self.sessions)

    @classmethod
    def open(cls, url: str, *, require_current_schema: bool = True) -> Store:
        """Connect (failing early with what to fix) and, by default, refuse an old schema."""
        engine = make_engine(url)
        check_connection(engine)
        if require_current_schema:
            ensure_current(engine)
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()


__all__ = ["Store"]
