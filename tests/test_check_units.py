"""Check work units (issue 11): drift windows queued, claimed by any replica, judged once.

A run queues one unit per window; other replicas' check workers claim units
with ``FOR UPDATE SKIP LOCKED``; the run judges what is left, waits for the
rest and returns every window's checks. A unit whose claimer died is taken
over after the lease.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import psycopg
import pytest
from sqlalchemy import func, select
from test_incremental_checks import MODEL, START, _drift_config, _history

from surveillance.analysis.drift import (
    DRIFT_JOB,
    collect_drift,
    plan_drift,
    queue_drift,
    run_drift,
    work_drift_units,
)
from surveillance.core.config import Settings
from surveillance.intake.ingest import Ingestor
from surveillance.intake.pseudonym import Pseudonymizer
from surveillance.store import Store
from surveillance.store.models import DriftCheckRow
from surveillance.store.units import LEASE


def _loaded(store: Store, pseudonymizer: Pseudonymizer, days: int = 42) -> None:
    events, _ = _history(11, days)
    Ingestor(store, pseudonymizer, batch_size=2000).ingest_events(events)


def _rows_per_window(store: Store) -> dict[object, int]:
    with store.sessions.scope() as s:
        rows = s.execute(
            select(DriftCheckRow.window_start, func.count()).group_by(DriftCheckRow.window_start)
        ).all()
    return {start: int(n) for start, n in rows}


def test_a_replica_takes_a_window_and_the_run_returns_every_window(
    store: Store, settings: Settings, pseudonymizer: Pseudonymizer
) -> None:
    _loaded(store, pseudonymizer)
    model = store.registry.model(MODEL)
    config = _drift_config(settings)
    plan = plan_drift(store, model, config, as_of=START + timedelta(days=42))
    assert plan is not None and len(plan.windows) == 4
    plan_id = queue_drift(store, plan)

    # another replica's worker claims the oldest window first
    theirs = work_drift_units(store, config, max_units=1, worker="replica-b")
    assert {c.window_start for c in theirs} == {plan.windows[0].start}

    checks = collect_drift(store, plan, plan_id, config, worker="replica-a")
    assert {(c.window_start, c.window_end) for c in checks} == {
        (w.start, w.end) for w in plan.windows
    }
    units = store.units.units(plan_id=plan_id)
    assert [u.status for u in units] == ["done"] * 4
    assert [u.attempts for u in units] == [1] * 4
    assert [u.claimed_by for u in units] == ["replica-b"] + ["replica-a"] * 3
    # judged once each: a window's checks are one set, the same size as a lone run's
    per_window = _rows_per_window(store)
    assert len(per_window) == 4
    alone = run_drift(store, model, config, as_of=START + timedelta(days=42), full=True)
    assert len(alone) == sum(per_window.values()) == len(checks)


def test_concurrent_replicas_judge_every_window_exactly_once(
    pg_store: Store, settings: Settings, pseudonymizer: Pseudonymizer
) -> None:
    store = pg_store
    _loaded(store, pseudonymizer, days=70)
    model = store.registry.model(MODEL)
    config = _drift_config(settings)
    stop = threading.Event()
    judged_by_b: list[int] = []

    def replica_b() -> None:
        while not stop.is_set():
            judged_by_b.extend(
                c.id for c in work_drift_units(store, config, max_units=1, worker="replica-b")
            )

    worker = threading.Thread(target=replica_b)
    worker.start()
    try:
        checks = run_drift(store, model, config, as_of=START + timedelta(days=70))
    finally:
        stop.set()
        worker.join(timeout=60)
    windows = {(c.window_start, c.window_end) for c in checks}
    assert len(windows) == 8  # reference 0-14, then 8 weekly windows
    units = store.units.units(model_id=model.id)
    assert len(units) == 8
    assert all(u.status == "done" and u.attempts == 1 for u in units)
    assert len(checks) == len({c.id for c in checks})  # nothing returned twice
    assert len(_rows_per_window(store)) == 8


def test_a_locked_unit_is_skipped_not_waited_for(
    pg_store: Store, pg_url: str, settings: Settings, pseudonymizer: Pseudonymizer
) -> None:
    store = pg_store
    _loaded(store, pseudonymizer, days=35)
    model = store.registry.model(MODEL)
    plan = plan_drift(store, model, _drift_config(settings), as_of=START + timedelta(days=35))
    assert plan is not None
    plan_id = queue_drift(store, plan)
    oldest = store.units.units(plan_id=plan_id)[0]
    dsn = pg_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as other:  # another replica, mid-claim, holds the oldest row
        other.execute("SELECT id FROM check_unit WHERE id = %s FOR UPDATE", (oldest.id,))
        got: list[object] = []
        claimer = threading.Thread(
            target=lambda: got.append(store.units.claim(DRIFT_JOB, plan_id=plan_id))
        )
        claimer.start()
        claimer.join(timeout=30)
        assert not claimer.is_alive(), "the claim waited for the locked row"
        other.rollback()
    unit = got[0]
    assert unit is not None and unit.id != oldest.id  # the next one, not the locked one


def test_a_unit_of_a_dead_replica_is_taken_over_after_the_lease(
    store: Store, settings: Settings, pseudonymizer: Pseudonymizer
) -> None:
    _loaded(store, pseudonymizer, days=28)
    model = store.registry.model(MODEL)
    plan = plan_drift(store, model, _drift_config(settings), as_of=START + timedelta(days=28))
    assert plan is not None and len(plan.windows) == 2
    plan_id = queue_drift(store, plan)
    t0 = START + timedelta(days=28)
    first = store.units.claim(DRIFT_JOB, plan_id=plan_id, worker="dies", now=t0)
    second = store.units.claim(DRIFT_JOB, plan_id=plan_id, worker="lives", now=t0)
    assert first is not None and second is not None and first.id != second.id
    store.units.finish(second.id)
    # within the lease the dead replica's unit is still "running": nobody takes it
    assert store.units.claim(DRIFT_JOB, plan_id=plan_id, now=t0 + LEASE / 2) is None
    again = store.units.claim(
        DRIFT_JOB, plan_id=plan_id, worker="lives", now=t0 + LEASE + timedelta(minutes=1)
    )
    assert again is not None and again.id == first.id and again.attempts == 2


def test_a_failing_window_is_recorded_and_raised(
    store: Store, settings: Settings, pseudonymizer: Pseudonymizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _loaded(store, pseudonymizer, days=28)
    model = store.registry.model(MODEL)
    config = _drift_config(settings)

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("window data unreadable")

    monkeypatch.setattr(store.checks, "case_table", broken)
    with pytest.raises(ValueError, match="unreadable"):
        run_drift(store, model, config, as_of=START + timedelta(days=28))
    failed = [u for u in store.units.units(model_id=model.id) if u.status == "failed"]
    assert len(failed) == 1 and "ValueError: window data unreadable" in (failed[0].error or "")
