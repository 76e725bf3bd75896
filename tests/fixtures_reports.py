"""Fixtures for reports, exports and dashboards: the demo's data on real PostgreSQL.

report_demo (session)     builds, once per test run, a template database holding the
                          demo deployment (120 days, 3 sites, 6 scanners, the severe
                          scanner update, two broken records) after ingest and checks.
report_demo_url (session) a working copy of it that tests only read (and may append audit
                          events to).
report_demo_clone         a fresh copy for one test that changes or breaks things
                          (CREATE DATABASE ... TEMPLATE: a file copy, well under a second).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg
import pytest
from pg_server import PostgresServer
from psycopg import sql

from connectors import synthetic
from surveillance.analysis.windows import floor_day
from surveillance.core.config import EXAMPLE_CONFIG, Settings, load_settings
from surveillance.demo import broken_lines, demo_feed
from surveillance.intake.ingest import Ingestor
from surveillance.intake.pseudonym import Pseudonymizer
from surveillance.scheduling.checks import run_checks
from surveillance.store import Store
from surveillance.store.engine import make_engine
from surveillance.store.migrations import upgrade
from surveillance.store.types import utcnow

MODEL = "cxr-pneumothorax"
# Each test module that imports these fixtures gets its own copy of the session fixture
# (pytest registers fixtures per defining module), so the demo database is built once and
# shared through this cache, keyed by server.
_BUILT: dict[str, ReportDemo] = {}


@dataclass(frozen=True)
class ReportDemo:
    server: PostgresServer
    template: str
    settings: Settings
    now: datetime  # the as-of time of the checks
    first_prediction: datetime

    def clone(self, name: str) -> str:
        with psycopg.connect(self.server.conninfo(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(self.template)
                )
            )
        return self.server.url(name)


@pytest.fixture(scope="session")
def report_demo(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ReportDemo]:
    cached = _BUILT.get(postgres_server.url())
    if cached is not None:
        yield cached  # built by another module's copy of this fixture, which drops it
        return
    name = f"reports_demo_{uuid.uuid4().hex[:10]}"
    postgres_server.create_database(name)
    settings = load_settings(EXAMPLE_CONFIG, env={})
    pseudonymizer = Pseudonymizer(b"k" * 32)
    now = utcnow()
    feed = demo_feed(days=120, seed=7, start=floor_day(now) - timedelta(days=120))
    engine = make_engine(postgres_server.url(name))
    try:
        upgrade(engine)
        store = Store(engine)
        store.registry.register_models(settings.models, actor="test")
        for site in feed.sites:
            store.registry.set_site_label(
                pseudonymizer("institution", site.institution_name), site.name
            )
        events = tmp_path_factory.mktemp("report_demo") / "events.jsonl"
        synthetic.write_jsonl(feed, events)
        with events.open("a") as handle:
            handle.write("\n".join(broken_lines(feed.start + timedelta(hours=10))) + "\n")
        Ingestor(store, pseudonymizer, batch_size=5000).ingest_jsonl(events)
        run_checks(store, settings, as_of=now)
        span = store.checks.prediction_span(store.registry.model(MODEL).id)
        assert span is not None
    finally:
        engine.dispose()  # a template database must have no open connections
    demo = ReportDemo(postgres_server, name, settings, now, span[0])
    _BUILT[postgres_server.url()] = demo
    try:
        yield demo
    finally:
        _BUILT.pop(postgres_server.url(), None)
        postgres_server.drop_database(name)


@pytest.fixture(scope="session")
def report_demo_url(report_demo: ReportDemo) -> Iterator[str]:
    name = f"reports_copy_{uuid.uuid4().hex[:10]}"
    url = report_demo.clone(name)
    try:
        yield url
    finally:
        report_demo.server.drop_database(name)


@pytest.fixture
def report_demo_clone(report_demo: ReportDemo) -> Iterator[str]:
    name = f"reports_clone_{uuid.uuid4().hex[:10]}"
    url = report_demo.clone(name)
    try:
        yield url
    finally:
        report_demo.server.drop_database(name)


@pytest.fixture
def report_store(report_demo_url: str) -> Iterator[Store]:
    store = Store.open(report_demo_url)
    try:
        yield store
    finally:
        store.close()
