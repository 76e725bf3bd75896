"""The whole loop on both backends: synthetic feed -> ingest -> checks -> incidents."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from connectors import synthetic
from surveillance.analysis.windows import floor_day
from surveillance.core.config import Settings
from surveillance.demo import demo_feed
from surveillance.intake.ingest import Ingestor
from surveillance.intake.pseudonym import Pseudonymizer
from surveillance.scheduling.checks import run_checks
from surveillance.store import Store
from surveillance.store.ingest_writer import device_label
from surveillance.store.models import DriftCheckRow, IncidentRow, PerformanceCheckRow
from surveillance.store.types import utcnow


@pytest.mark.slow
def test_scanner_update_is_caught_once_and_rerun_is_idempotent(
    tmp_path: Path, store: Store, settings: Settings, pseudonymizer: Pseudonymizer
) -> None:
    # An hour into today, so that the re-run five minutes later never crosses midnight
    # (a new day adds a new current window: not a re-run of the same windows).
    now = floor_day(utcnow()) + timedelta(hours=1)
    feed = demo_feed(days=120, seed=11, start=floor_day(now) - timedelta(days=120))
    truth = synthetic.ground_truth(feed)
    change = truth["changes"][0]
    for site in feed.sites:
        store.registry.set_site_label(
            pseudonymizer("institution", site.institution_name), site.name
        )
    events = tmp_path / "events.jsonl"
    written = synthetic.write_jsonl(feed, events)
    counts = Ingestor(store, pseudonymizer, batch_size=5000).ingest_jsonl(events)
    assert counts.dead_letters == 0
    assert counts.predictions_new + counts.metadata + counts.diagnoses_new == written

    run_checks(store, settings, as_of=now)
    scanner = next(s for s in truth["scanners"] if s["station"] == change["station"])
    changed = device_label(
        scanner["manufacturer"],
        scanner["manufacturer_model_name"],
        pseudonymizer("station", change["station"]),
        change["site"],
    )
    incidents = store.incidents.find(status="open")
    # one root cause -> one incident at the changed scanner, holding its drift and its
    # performance evidence (the roll-ups at its site and overall are evidence too)
    (breach,) = [i for i in incidents if i.stratum_value == changed]
    assert breach.signal_kind == "performance"
    performance, drift = store.incidents.evidence(breach.id)
    assert "sensitivity" in {c.metric for c in performance if c.stratum_value == changed}
    assert drift
    # no other scanner gets a performance incident
    others = [
        i
        for i in incidents
        if i.stratum_kind == "scanner"
        and i.stratum_value != changed
        and i.signal_kind == "performance"
    ]
    assert others == []
    assert breach.mdr_deadline_at is not None
    assert breach.mdr_deadline_at - breach.aware_at <= timedelta(days=15, seconds=1)
    assert any(e.performance_check_id for e in store.incidents.get(breach.id).events)

    def counts_now() -> tuple[int, int, int]:
        with store.sessions.scope() as s:
            return tuple(  # type: ignore[return-value]
                int(s.scalar(select(func.count()).select_from(t)) or 0)
                for t in (DriftCheckRow, PerformanceCheckRow, IncidentRow)
            )

    before = counts_now()
    # a later run (new scheduled time, same windows) updates rows and incidents in place
    run_checks(store, settings, as_of=now + timedelta(minutes=5))
    assert counts_now() == before
    assert store.audit.verify().ok


@pytest.mark.slow
def test_quiet_deployment_opens_no_incident(
    tmp_path: Path, store: Store, settings: Settings, pseudonymizer: Pseudonymizer
) -> None:
    now = utcnow()
    base = synthetic.default_config(days=120, seed=5)
    feed = synthetic.SyntheticConfig(
        days=120, seed=5, start=floor_day(now) - timedelta(days=120), sites=base.sites, changes=()
    )
    Ingestor(store, pseudonymizer, batch_size=5000).ingest_events(synthetic.events(feed))
    results = run_checks(store, settings, as_of=now)
    assert sum(r.drift_tally.checks for r in results) > 100  # the checks really ran
    perf = [i for i in store.incidents.find(status="open") if i.signal_kind == "performance"]
    assert perf == []
