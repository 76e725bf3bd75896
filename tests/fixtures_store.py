"""Fixtures for the store: a migrated database with the example model registered."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from surveillance.config import EXAMPLE_CONFIG, Settings, load_settings
from surveillance.ingest import Ingestor
from surveillance.pseudonym import Pseudonymizer
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
    store.register_models(settings.models, actor="test")
    yield store
    store.close()


@pytest.fixture
def pseudonymizer() -> Pseudonymizer:
    return Pseudonymizer(b"k" * 32)


@pytest.fixture
def ingestor(store: Store, pseudonymizer: Pseudonymizer) -> Ingestor:
    return Ingestor(store, pseudonymizer, batch_size=50)
