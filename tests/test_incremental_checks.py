"""Incremental checks (issue 11): a run judges only the windows that need it.

* drift: complete windows without checks against the current reference set;
* performance: matured windows without checks, or whose labels changed since
  they were judged (labels arrive weeks late);
* a second run the same day judges nothing; ``full=True`` re-judges all.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from cli_runner import run_cli
from sqlalchemy import func, select, update

from surveillance.analysis.drift import run_drift
from surveillance.analysis.performance import run_performance
from surveillance.core.config import EXAMPLE_CONFIG, DriftConfig, PerformanceConfig, Settings
from surveillance.core.events import DiagnosisEvent, DicomMetadataEvent, PredictionEvent
from surveillance.intake.ingest import Ingestor
from surveillance.intake.pseudonym import Pseudonymizer
from surveillance.scheduling.checks import run_checks
from surveillance.store import DriftCheck, PerformanceCheck, Store
from surveillance.store.models import (
    DiagnosisRow,
    DriftCheckRow,
    PerformanceCheckRow,
    PredictionRow,
    ReferenceSetRow,
)

START = datetime(2026, 1, 5, tzinfo=UTC)
MODEL = "cxr-pneumothorax"
Event = PredictionEvent | DicomMetadataEvent | DiagnosisEvent


def _history(
    seed: int, days: int, per_day: int = 12, unlabelled: tuple[int, int] | None = None
) -> tuple[list[Event], list[DiagnosisEvent]]:
    """Studies of two scanners for ``days`` days; the labels of the days in
    ``unlabelled`` ([first, last) day) are returned apart, to be ingested late."""
    rng = np.random.default_rng(seed)
    events: list[Event] = []
    late: list[DiagnosisEvent] = []
    for day in range(days):
        for i in range(per_day):
            uid = f"1.2.826.0.11.{seed}.{day}.{i}"
            at = START + timedelta(days=day, hours=8 + i * 0.5)
            positive = bool(rng.random() < 0.3)
            detected = rng.random() < (0.9 if positive else 0.1)
            score = float(rng.uniform(0.55, 0.99) if detected else rng.uniform(0.01, 0.45))
            events += [
                DicomMetadataEvent(
                    study_instance_uid=uid,
                    station_name=f"DX-{i % 2}",
                    institution_name="Harbour Hospital",
                    modality="DX",
                    manufacturer="Agfa",
                    manufacturer_model_name="DX-D 600",
                    kvp=float(rng.normal(110, 3)),
                ),
                PredictionEvent(
                    message_id=uuid.uuid4().hex,
                    model=MODEL,
                    model_version="2.1.0",
                    study_instance_uid=uid,
                    outputs={"pneumothorax": score},
                    predicted_at=at,
                ),
            ]
            diagnosis = DiagnosisEvent(
                message_id=uuid.uuid4().hex,
                study_instance_uid=uid,
                finding="pneumothorax",
                present=positive,
                source="report",
                confirmed_at=at + timedelta(days=2),
            )
            if unlabelled is not None and unlabelled[0] <= day < unlabelled[1]:
                late.append(diagnosis)
            else:
                events.append(diagnosis)
    return events, late


def _drift_config(settings: Settings) -> DriftConfig:
    return settings.drift.model_copy(
        update={"strata": ["overall", "scanner"], "window_days": 7, "reference_days": 14}
    )


def _perf_config(settings: Settings) -> PerformanceConfig:
    return settings.performance.model_copy(
        update={"strata": ["overall", "scanner"], "window_days": 7, "maturity_days": 0}
    )


def _windows(checks: Sequence[DriftCheck | PerformanceCheck]) -> set[tuple[datetime, datetime]]:
    return {(c.window_start, c.window_end) for c in checks}


def _drift_rows(store: Store) -> int:
    with store.sessions.scope() as s:
        return int(s.scalar(select(func.count()).select_from(DriftCheckRow)) or 0)


def test_drift_judges_each_window_once_and_full_rejudges_all(
    store: Store, settings: Settings, pseudonymizer: Pseudonymizer
) -> None:
    events, _ = _history(1, 42)
    Ingestor(store, pseudonymizer, batch_size=2000).ingest_events(events)
    model = store.registry.model(MODEL)
    config = _drift_config(settings)
    day35 = START + timedelta(days=35)

    first = run_drift(store, model, config, as_of=day35)
    # reference 0-14, complete windows 14-21, 21-28, 28-35
    assert len(_windows(first)) == 3
    rows = _drift_rows(store)
    assert rows == len(first)

    again = run_drift(store, model, config, as_of=day35 + timedelta(hours=9))
    assert again == []  # same day, no new data: nothing judged
    assert _drift_rows(store) == rows

    later = run_drift(store, model, config, as_of=START + timedelta(days=42, hours=1))
    assert _windows(later) == {(START + timedelta(days=35), START + timedelta(days=42))}

    full = run_drift(store, model, config, as_of=START + timedelta(days=42, hours=2), full=True)
    assert len(_windows(full)) == 4
    # the incremental windows are the ones a full run writes, statistic for statistic
    by_key = {(c.window_start, c.signal, c.stratum_kind, c.stratum_value): c for c in full}
    for c in first + later:
        twin = by_key[(c.window_start, c.signal, c.stratum_kind, c.stratum_value)]
        assert (twin.p_value, twin.p_adjusted, twin.status) == (c.p_value, c.p_adjusted, c.status)


def test_a_new_reference_rejudges_every_window(
    store: Store, settings: Settings, pseudonymizer: Pseudonymizer
) -> None:
    events, _ = _history(2, 35)
    Ingestor(store, pseudonymizer, batch_size=2000).ingest_events(events)
    model = store.registry.model(MODEL)
    config = _drift_config(settings)
    as_of = START + timedelta(days=35)
    first = run_drift(store, model, config, as_of=as_of)
    assert len(_windows(first)) == 3
    with store.sessions.scope() as s:
        reference_set_id = s.scalar(select(func.max(DriftCheckRow.reference_set_id)))
    assert run_drift(store, model, config, as_of=as_of + timedelta(hours=1)) == []

    # the checks were judged against another reference set (an earlier one)
    with store.sessions.scope() as s:
        row = s.get(ReferenceSetRow, reference_set_id)
        assert row is not None
        earlier = ReferenceSetRow(
            model_id=model.id,
            name="earlier",
            kind="rolling",
            period_start=row.period_start,
            period_end=row.period_end,
            frozen=True,
            created_at=row.created_at,
        )
        s.add(earlier)
        s.flush()
        s.execute(update(DriftCheckRow).values(reference_set_id=earlier.id))
    rejudged = run_drift(store, model, config, as_of=as_of + timedelta(hours=2))
    assert len(_windows(rejudged)) == 3
    with store.sessions.scope() as s:
        assert set(s.scalars(select(DriftCheckRow.reference_set_id).distinct())) == {
            reference_set_id
        }

    # the reference set was (re)created after the checks were written
    with store.sessions.scope() as s:
        s.execute(
            update(ReferenceSetRow)
            .where(ReferenceSetRow.id == reference_set_id)
            .values(created_at=datetime.now(UTC) + timedelta(minutes=5))
        )
    assert len(_windows(run_drift(store, model, config, as_of=as_of + timedelta(hours=3)))) == 3


def test_late_labels_rejudge_exactly_their_window(
    store: Store, settings: Settings, pseudonymizer: Pseudonymizer
) -> None:
    # the labels of days 14-16 (window 14-21) arrive late
    events, late = _history(3, 35, unlabelled=(14, 17))
    ingestor = Ingestor(store, pseudonymizer, batch_size=2000)
    ingestor.ingest_events(events)
    model = store.registry.model(MODEL)
    config = _perf_config(settings)
    as_of = START + timedelta(days=35)

    first = run_performance(store, model, config, as_of=as_of)
    assert len(_windows(first)) == 5  # 0-7 ... 28-35
    before = {
        (c.window_start, c.metric, c.stratum_kind, c.stratum_value): c.n
        for c in first
        if c.metric == "sensitivity"
    }
    assert run_performance(store, model, config, as_of=as_of + timedelta(hours=3)) == []
    with store.sessions.scope() as s:
        rows = int(s.scalar(select(func.count()).select_from(PerformanceCheckRow)) or 0)
        written = s.scalar(select(func.max(PerformanceCheckRow.created_at)))

    ingestor.ingest_events(list(late))
    rejudged = run_performance(store, model, config, as_of=as_of + timedelta(hours=4))
    window = (START + timedelta(days=14), START + timedelta(days=21))
    assert _windows(rejudged) == {window}
    after = next(
        c
        for c in rejudged
        if c.metric == "sensitivity" and c.stratum_kind == "overall" and c.window_start == window[0]
    )
    assert after.n > before[(window[0], "sensitivity", "overall", "all")]
    # re-judged in place: no new rows, and the other windows' rows are untouched
    with store.sessions.scope() as s:
        assert int(s.scalar(select(func.count()).select_from(PerformanceCheckRow)) or 0) == rows
        untouched = s.scalar(
            select(func.count())
            .select_from(PerformanceCheckRow)
            .where(
                PerformanceCheckRow.window_start != window[0],
                PerformanceCheckRow.created_at > written,
            )
        )
        assert untouched == 0
    # the CUSUM state of the window judged alone is the one a full run computes
    full = run_performance(store, model, config, as_of=as_of + timedelta(hours=5), full=True)
    assert len(_windows(full)) == 5
    twin = next(
        c
        for c in full
        if c.metric == "sensitivity" and c.stratum_kind == "overall" and c.window_start == window[0]
    )
    assert twin.details.get("cusum") == after.details.get("cusum")
    assert (twin.value, twin.n, twin.status) == (after.value, after.n, after.status)


def test_a_withdrawn_label_rejudges_its_window(
    store: Store, settings: Settings, pseudonymizer: Pseudonymizer
) -> None:
    events, _ = _history(4, 21)
    Ingestor(store, pseudonymizer, batch_size=2000).ingest_events(events)
    model = store.registry.model(MODEL)
    config = _perf_config(settings)
    as_of = START + timedelta(days=21)
    assert len(_windows(run_performance(store, model, config, as_of=as_of))) == 3
    with store.sessions.scope() as s:
        study = s.scalar(
            select(PredictionRow.study_id).where(
                PredictionRow.predicted_at >= START + timedelta(days=8),
                PredictionRow.predicted_at < START + timedelta(days=9),
            )
        )
        s.execute(
            update(DiagnosisRow)
            .where(DiagnosisRow.study_id == study)
            .values(withdrawn_at=datetime.now(UTC) + timedelta(seconds=1))
        )
    rejudged = run_performance(store, model, config, as_of=as_of + timedelta(hours=1))
    assert _windows(rejudged) == {(START + timedelta(days=7), START + timedelta(days=14))}


def test_the_maturing_window_is_estimated_once_a_day(
    store: Store, settings: Settings, pseudonymizer: Pseudonymizer
) -> None:
    events, _ = _history(5, 28)
    Ingestor(store, pseudonymizer, batch_size=2000).ingest_events(events)
    model = store.registry.model(MODEL)
    config = settings.performance.model_copy(
        update={"strata": ["overall"], "window_days": 7, "maturity_days": 14}
    )
    as_of = START + timedelta(days=28)
    run_performance(store, model, config, as_of=as_of)
    with store.sessions.scope() as s:
        estimated_at = s.scalar(
            select(func.max(PerformanceCheckRow.created_at)).where(PerformanceCheckRow.estimated)
        )
    assert estimated_at is not None
    assert run_performance(store, model, config, as_of=as_of + timedelta(hours=2)) == []
    with store.sessions.scope() as s:
        assert (
            s.scalar(
                select(func.max(PerformanceCheckRow.created_at)).where(
                    PerformanceCheckRow.estimated
                )
            )
            == estimated_at
        )


def test_run_checks_same_day_rerun_judges_nothing(
    store: Store, settings: Settings, pseudonymizer: Pseudonymizer
) -> None:
    events, _ = _history(6, 42)
    Ingestor(store, pseudonymizer, batch_size=2000).ingest_events(events)
    tuned = settings.model_copy(
        update={"drift": _drift_config(settings), "performance": _perf_config(settings)}
    )
    as_of = START + timedelta(days=42)
    [first] = run_checks(store, tuned, as_of=as_of, model_name=MODEL)
    assert first.windows_judged == {"drift": 4, "performance": 6}
    [again] = run_checks(store, tuned, as_of=as_of + timedelta(hours=6), model_name=MODEL)
    assert again.windows_judged == {"drift": 0, "performance": 0}
    assert again.drift == () and again.performance == ()
    [full] = run_checks(store, tuned, as_of=as_of + timedelta(hours=7), model_name=MODEL, full=True)
    assert full.windows_judged == {"drift": 4, "performance": 6}


@pytest.mark.slow
def test_check_cli_reports_windows_judged_and_full(sqlite_url: str, tmp_path: Path) -> None:
    run = lambda *a: run_cli(*a, cwd=tmp_path, db_url=sqlite_url, key_hex="ab" * 32)  # noqa: E731
    assert run("db", "upgrade").returncode == 0
    loaded = run("models", "load", str(EXAMPLE_CONFIG))
    assert loaded.returncode == 0, loaded.stderr
    store = Store.open(sqlite_url)
    try:
        events, _ = _history(7, 70, per_day=6)  # example config: 28-day windows
        Ingestor(store, Pseudonymizer(b"k" * 32), batch_size=2000).ingest_events(events)
    finally:
        store.close()
    as_of = (START + timedelta(days=70)).strftime("%Y-%m-%dT%H:%M:%S")
    first = run("check", "--json", "--model", MODEL, "--as-of", as_of)
    assert first.returncode == 0, first.stderr
    judged = json.loads(first.stdout)[0]["windows_judged"]
    assert judged["drift"] > 0 and judged["performance"] > 0
    later = (START + timedelta(days=70, hours=5)).strftime("%Y-%m-%dT%H:%M:%S")
    again = run("check", "--json", "--model", MODEL, "--as-of", later)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)[0]["windows_judged"] == {"drift": 0, "performance": 0}
    latest = (START + timedelta(days=70, hours=6)).strftime("%Y-%m-%dT%H:%M:%S")
    full = run("check", "--json", "--full", "--model", MODEL, "--as-of", latest)
    assert full.returncode == 0, full.stderr
    assert json.loads(full.stdout)[0]["windows_judged"] == judged


def test_an_estimate_only_run_estimates_as_a_full_run_does(
    store: Store, settings: Settings, pseudonymizer: Pseudonymizer
) -> None:
    """The day after a run nothing matures: the run reads only the labelled cases of the
    calibration period and the current window, and must estimate exactly what a full run
    (which reads the whole history) estimates."""
    events, _ = _history(5, 35)
    Ingestor(store, pseudonymizer, batch_size=2000).ingest_events(events)
    model = store.registry.model(MODEL)
    config = settings.performance.model_copy(
        update={
            "strata": ["overall", "site"],
            "window_days": 7,
            "maturity_days": 14,
            "calibration_days": 10,
            "min_samples": 5,
        }
    )
    run_performance(store, model, config, as_of=START + timedelta(days=28))
    next_day = START + timedelta(days=29)

    def estimates() -> dict[tuple[str, str, str], tuple[object, ...]]:
        return {
            (c.stratum_kind, c.stratum_value, c.metric): (
                c.window_start,
                c.value,
                c.ci_lower,
                c.ci_upper,
                c.n,
                c.labelled_fraction,
                c.details["calibration"],
            )
            for c in store.checks.performance(model.id, start=next_day - timedelta(days=7))
            if c.estimated and c.window_end == next_day
        }

    assert run_performance(store, model, config, as_of=next_day) == []  # nothing matured
    incremental = estimates()
    assert len(incremental) > 3  # overall and sites, several metrics
    assert any("isotonic" in str(v[-1]) for v in incremental.values())  # really calibrated
    run_performance(store, model, config, as_of=next_day + timedelta(hours=1), full=True)
    assert estimates() == incremental


def test_a_drift_run_with_a_tally_counts_every_check_and_holds_the_flagged(
    store: Store, settings: Settings, pseudonymizer: Pseudonymizer
) -> None:
    """What `surveillance check` and the daemon hold: counts of all, objects of the flagged."""
    from collections import Counter

    from surveillance.analysis.drift import DriftTally

    events, _ = _history(1, 42)
    Ingestor(store, pseudonymizer, batch_size=2000).ingest_events(events)
    model = store.registry.model(MODEL)
    config = _drift_config(settings).model_copy(update={"alpha": 0.5})  # some flag
    tally = DriftTally()
    held = run_drift(store, model, config, as_of=START + timedelta(days=35), tally=tally)
    stored = store.checks.drift(model.id)
    assert tally.checks == len(stored) > 0
    assert tally.by_status == Counter(c.status for c in stored)
    assert tally.windows == _windows(stored) and len(tally.windows) == 3
    flagged = {c.id for c in stored if c.status != "ok"}
    assert flagged and len(flagged) < len(stored)  # the test means something
    assert {c.id for c in held} == flagged
