"""Fixtures for the store: a migrated database with the example model registered.

store (db_url: both backends), pg_store (PostgreSQL only), settings (the example
config), pseudonymizer, ingestor; plus the helper ``open_incident``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from surveillance.core.config import EXAMPLE_CONFIG, Settings, load_settings
from surveillance.intake.ingest import Ingestor
from surveillance.intake.pseudonym import Pseudonymizer
from surveillance.store import Store
from surveillance.store.engine import make_engine
from surveillance.store.migrations import upgrade


@pytest.fixture
def settings() -> Settings:
    return load_settings(EXAMPLE_CONFIG, env={})


@pytest.fixture
def store(db_url: str, settings: Settings) -> Iterator[Store]:
    engine = make_engine(db_url)
    upgrade(engine)
    store = Store(engine)
    store.registry.register_models(settings.models, actor="test")
    yield store
    store.close()


@pytest.fixture
def pg_store(pg_url: str, settings: Settings) -> Iterator[Store]:
    """Like ``store``, on PostgreSQL only (tests of PostgreSQL-specific behaviour)."""
    engine = make_engine(pg_url)
    upgrade(engine)
    store = Store(engine)
    store.registry.register_models(settings.models, actor="test")
    yield store
    store.close()


@pytest.fixture
def pseudonymizer() -> Pseudonymizer:
    return Pseudonymizer(b"k" * 32)


@pytest.fixture
def ingestor(store: Store, pseudonymizer: Pseudonymizer) -> Ingestor:
    return Ingestor(store, pseudonymizer, batch_size=50)


def open_incident(
    store: Store,
    *,
    stratum: str = "Northgate",
    signal_kind: str = "drift",
    signal: str = "drift",
    severity: str = "medium",
) -> int:
    """Open (through the store, as the policy would) one site incident; returns its id."""
    from surveillance.incidents.vigilance import VigilanceClass, deadlines
    from surveillance.store import IncidentSignal
    from surveillance.store.types import utcnow

    model = store.registry.model("cxr-pneumothorax")
    mdr, fda = deadlines(VigilanceClass.ASSESSMENT_PENDING, utcnow())
    incident, created = store.incidents.raise_(
        IncidentSignal(
            model_id=model.id,
            signal_kind=signal_kind,
            signal=signal,
            stratum_kind="site",
            stratum_value=stratum,
            severity=severity,
            title=f"{signal} at site {stratum}",
            summary="test",
            evidence_at=utcnow(),
            vigilance_class=VigilanceClass.ASSESSMENT_PENDING.value,
            mdr_deadline_at=mdr,
            fda_deadline_at=fda,
        ),
        actor="test",
    )
    assert created, f"an open incident for {signal} at {stratum} already existed"
    return incident.id
