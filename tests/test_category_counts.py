"""Category counts from the database (issue 11): the categorical drift signals are
tested from GROUP BY counts, with exactly the results of the per-case values.

* ``Chi2Detector.fit_counts`` / ``score_counts`` equal ``fit`` / ``score`` on the
  values the counts count (==, not approx), insufficient data included;
* ``store.checks.category_counts`` counts what ``case_table`` loads, with its
  labels and missing-value conventions (SQLite and PostgreSQL);
* every ``metadata:*`` check of the drift job equals the chi-squared test on the
  value arrays of ``case_table`` (the path it replaced), row for row.
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from connectors import synthetic
from detectors import Chi2Detector, DriftResult, InsufficientDataError, NotFittedError
from surveillance.analysis.drift import REFERENCE_SET_NAME, run_drift
from surveillance.analysis.windows import forward_windows, groups
from surveillance.core.config import DriftConfig
from surveillance.core.events import DicomMetadataEvent, PredictionEvent
from surveillance.intake.ingest import Ingestor
from surveillance.intake.pseudonym import Pseudonymizer
from surveillance.store import Store
from surveillance.store.domain import CATEGORICAL_FIELDS, NO_METADATA

START = datetime(2026, 3, 2, tzinfo=UTC)
FINDING = "pneumothorax"


# ---- the detector: counts give the values' result ------------------------------------


def _draw(rng: np.random.Generator, n: int, categories: list[object]) -> list[object]:
    weights = rng.dirichlet(np.ones(len(categories)))
    picks = rng.choice(len(categories), size=n, p=weights)
    return [categories[i] for i in picks]


def _outcome(run: Any) -> DriftResult | str:
    try:
        return run()
    except InsufficientDataError as exc:
        return f"insufficient: {exc}"


@pytest.mark.parametrize("seed", range(12))
def test_counts_give_exactly_the_result_of_the_values(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pool: list[object] = ["PA", "AP", "LL", None, math.nan, 3, "3", b"RAW"]
    ref_categories = pool[: int(rng.integers(1, len(pool)))]
    win_categories = pool[int(rng.integers(0, 3)) :]  # some only in the window
    reference = _draw(rng, int(rng.integers(0, 120)), ref_categories)
    window = _draw(rng, int(rng.integers(0, 120)), win_categories)
    min_samples = int(rng.integers(1, 40))

    def by_values() -> DriftResult:
        return Chi2Detector(alpha=0.05, min_samples=min_samples).fit(reference).score(window)

    def by_counts() -> DriftResult:
        # keyed by the raw values (None and NaN count as "missing"), zero counts included
        ref_counts: dict[object, int] = {"never-seen": 0}
        for value in reference:
            key = None if isinstance(value, float) and math.isnan(value) else value
            ref_counts[key] = ref_counts.get(key, 0) + 1
        win_counts = Counter(window)
        detector = Chi2Detector(alpha=0.05, min_samples=min_samples)
        return detector.fit_counts(ref_counts).score_counts(win_counts)

    expected, got = _outcome(by_values), _outcome(by_counts)
    assert got == expected  # statistic, p-value, effect size, details: ==, not approx
    if isinstance(expected, DriftResult):
        assert expected.details == got.details  # type: ignore[union-attr]


def test_string_categories_from_counts_equal_values() -> None:
    rng = np.random.default_rng(41)
    reference = np.array(_draw(rng, 400, ["a", "b", "c", NO_METADATA]), dtype=object)
    window = np.array(_draw(rng, 300, ["a", "b", "d", NO_METADATA]), dtype=object)
    by_values = Chi2Detector().fit(reference).score(window)
    detector = Chi2Detector().fit_counts(Counter(reference.tolist()))
    by_counts = detector.score_counts(Counter(window.tolist()))
    assert by_counts == by_values
    assert by_counts.details["new_categories"] == ["d"]
    assert by_counts.n_reference == 400 and by_counts.n_window == 300
    # the reference, asked for, is the counted values (in sorted order)
    assert sorted(detector.reference.tolist()) == sorted(reference.tolist())
    # and a value window scored against a counts reference gives the same result
    assert detector.score(window) == by_values


def test_insufficient_and_unfitted_counts_say_what_the_values_say() -> None:
    detector = Chi2Detector(min_samples=5)
    assert not detector.fitted
    with pytest.raises(NotFittedError, match="call fit"):
        detector.score_counts({"a": 10})
    for side in ("reference", "window"):
        values = {"reference": [], "window": ["a"] * 10}
        with pytest.raises(InsufficientDataError) as by_values:
            Chi2Detector(min_samples=5).fit(values["reference"] or ["a"] * 4).score(
                values["window"] if side == "reference" else ["a"] * 4
            )
        counts = {"reference": {}, "window": {"a": 10}}
        with pytest.raises(InsufficientDataError) as by_counts:
            Chi2Detector(min_samples=5).fit_counts(counts["reference"] or {"a": 4}).score_counts(
                counts["window"] if side == "reference" else {"a": 4}
            )
        assert str(by_counts.value) == str(by_values.value)
    empty_values = pytest.raises(InsufficientDataError)
    with empty_values as by_values:
        Chi2Detector().fit([])
    with pytest.raises(InsufficientDataError) as by_counts:
        Chi2Detector().fit_counts({"a": 0})
    assert (
        str(by_counts.value)
        == str(by_values.value)
        == ("reference has 0 values; Chi2Detector needs at least min_samples=30")
    )
    # a failed refit keeps the previous fit
    detector = Chi2Detector(min_samples=5).fit_counts({"a": 6, "b": 6})
    with pytest.raises(InsufficientDataError):
        detector.fit_counts({"a": 1})
    assert detector.score_counts({"a": 6, "b": 6}).p_value == 1.0
    with pytest.raises(ValueError, match="non-negative ints"):
        detector.fit_counts({"a": -1})


# ---- the store: category_counts counts what case_table loads --------------------------


def _deployment(store: Store, pseudonymizer: Pseudonymizer) -> synthetic.SyntheticConfig:
    """21 days of the synthetic feed (two sites labelled, one not), with a software
    update and a new scanner after the reference week, studies whose header lacks
    some fields, and predictions of studies whose header never came."""
    base = synthetic.DEFAULT_SITES
    sites = tuple(dataclasses.replace(site, studies_per_day=10.0) for site in base)
    new_room = dataclasses.replace(
        sites[1].scanners[0],
        station_name="NEW-ROOM",
        manufacturer_model_name="Brand New DR",
        convolution_kernel="SHARP",
    )
    changes = (
        synthetic.ScannerChange(
            at_day=9,
            site=sites[0].name,
            station=sites[0].scanners[0].station_name,
            software_versions="FW99",
            convolution_kernel="EDGE",
        ),
        synthetic.ScannerChange(
            at_day=10,
            site=sites[1].name,
            station="NEW-ROOM",
            kind="new-scanner",
            scanner=new_room,
        ),
    )
    feed = synthetic.SyntheticConfig(days=21, seed=11, start=START, sites=sites, changes=changes)
    for site in sites[:2]:
        store.registry.set_site_label(
            pseudonymizer("institution", site.institution_name), site.name
        )
    events: list[Any] = list(synthetic.events(feed))
    rng = np.random.default_rng(17)
    for i in range(60):  # a half-empty header at a known room; no header at all
        day = int(rng.integers(0, 21))
        at = START + timedelta(days=day, hours=9, minutes=i)
        uid = f"1.2.826.0.99.{i}"
        if i % 3:
            events.append(
                DicomMetadataEvent(
                    study_instance_uid=uid,
                    station_name=sites[2].scanners[0].station_name,
                    institution_name=sites[2].institution_name,
                    manufacturer=sites[2].scanners[0].manufacturer,
                    manufacturer_model_name=sites[2].scanners[0].manufacturer_model_name,
                    view_position="LL" if i % 2 else None,
                    patient_sex="O" if i % 5 == 0 else None,
                )
            )
        events.append(
            PredictionEvent(
                message_id=uuid.uuid4().hex,
                model=feed.model,
                model_version=feed.model_version,
                study_instance_uid=uid,
                outputs={FINDING: float(rng.uniform(0.01, 0.99))},
                predicted_at=at,
            )
        )
    Ingestor(store, pseudonymizer, batch_size=5000).ingest_events(events)
    return feed


def _value_counts(store: Store, model_id: int, start: datetime, end: datetime) -> Counter[Any]:
    cases = store.checks.case_table(model_id, FINDING, start, end)
    counted: Counter[Any] = Counter()
    for field in CATEGORICAL_FIELDS:
        for site, scanner, value in zip(
            cases.site.tolist(),
            cases.scanner.tolist(),
            cases.categorical[field].tolist(),
            strict=True,
        ):
            counted[(site, scanner, field, value)] += 1
    return counted


def test_category_counts_count_the_case_table(store: Store, pseudonymizer: Pseudonymizer) -> None:
    _deployment(store, pseudonymizer)
    (model,) = store.registry.models()
    for start, end in [
        (START, START + timedelta(days=7)),
        (START + timedelta(days=7), START + timedelta(days=21)),
        (START + timedelta(days=30), START + timedelta(days=31)),  # nothing there
    ]:
        rows = store.checks.category_counts(model.id, FINDING, start, end, CATEGORICAL_FIELDS)
        got: Counter[Any] = Counter()
        for site, scanner, field, value, n in rows:
            got[(site, scanner, field, value)] += n
        assert len(got) == len(rows)  # one row per group
        assert got == _value_counts(store, model.id, start, end)
    rows = store.checks.category_counts(model.id, FINDING, START, START + timedelta(days=21))
    keys = {(site, scanner, field, value) for site, scanner, field, value, _ in rows}
    # the conventions the value path used: missing values, sites and scanners
    assert (NO_METADATA, NO_METADATA, "sex", NO_METADATA) in keys
    assert any(f == "view_position" and v == "LL" for _, _, f, v in keys)
    assert any(f == "convolution_kernel" and v == "EDGE" for _, _, f, v in keys)
    only = store.checks.category_counts(model.id, FINDING, START, None, ["sex"])
    assert {field for _, _, field, _, _ in only} == {"sex"}
    assert store.checks.category_counts(model.id, FINDING, START, None, []) == []


# ---- the drift job: metadata checks equal the chi-squared test on the values ----------


def _old_metadata_rows(
    store: Store, model_id: int, settings: DriftConfig, ref: tuple[datetime, datetime], window: Any
) -> list[tuple[Any, ...]]:
    """The metadata rows the value path produced: Chi2Detector on case_table's arrays."""
    reference = store.checks.case_table(model_id, FINDING, *ref)
    cases = store.checks.case_table(model_id, FINDING, window.start, window.end)
    expected = []
    for kind in settings.strata:
        ref_groups = groups(reference.stratum(kind))
        win_groups = groups(cases.stratum(kind))
        for value in sorted(win_groups):
            ref_idx = ref_groups.get(value, np.empty(0, dtype=np.int64))
            win_idx = win_groups[value]
            arrays = {
                f"metadata:{f}": (reference.categorical[f], cases.categorical[f])
                for f in CATEGORICAL_FIELDS
            }
            if kind != "scanner":
                arrays["metadata:scanner"] = (reference.scanner, cases.scanner)
            for signal, (ref_values, win_values) in arrays.items():
                detector = Chi2Detector(alpha=settings.alpha, min_samples=settings.min_samples)
                try:
                    r = detector.fit(ref_values[ref_idx]).score(win_values[win_idx])
                except InsufficientDataError as exc:
                    expected.append(
                        (
                            signal,
                            kind,
                            value,
                            None,
                            None,
                            None,
                            len(ref_idx),
                            len(win_idx),
                            {"reason": str(exc)},
                        )
                    )
                    continue
                expected.append(
                    (
                        signal,
                        kind,
                        value,
                        r.statistic,
                        r.p_value,
                        r.effect_size,
                        r.n_reference,
                        r.n_window,
                        r.details,
                    )
                )
    return expected


def test_metadata_checks_equal_the_value_path(store: Store, pseudonymizer: Pseudonymizer) -> None:
    _deployment(store, pseudonymizer)
    (model,) = store.registry.models()
    settings = DriftConfig(alpha=0.01, window_days=7, reference_days=7, min_samples=20)
    checks = run_drift(store, model, settings, as_of=START + timedelta(days=21))
    (ref_set,) = [
        r for r in store.registry.reference_sets(model.id) if r.name == REFERENCE_SET_NAME
    ]
    reference = (ref_set.period_start, ref_set.period_end)
    windows = forward_windows(reference[1], START + timedelta(days=21), 7)
    assert len(windows) == 2
    statuses: Counter[str] = Counter()
    for window in windows:
        expected = _old_metadata_rows(store, model.id, settings, reference, window)
        got = [
            (
                c.signal,
                c.stratum_kind,
                c.stratum_value,
                c.statistic,
                c.p_value,
                c.effect_size,
                c.n_reference,
                c.n_window,
                {k: v for k, v in c.details.items() if k not in ("correction", "tests_in_window")},
            )
            for c in checks
            if c.window_start == window.start and c.signal.startswith("metadata:")
        ]
        assert got == expected  # the same rows, in the same order, to the last bit
        for c in checks:
            if c.window_start == window.start and c.signal.startswith("metadata:"):
                assert (c.status == "insufficient_data") == (c.p_value is None)
                statuses[c.status] += 1
    # the data exercise every branch: a stratum new in the window (the new room),
    # one too small in the reference, new categories, and tests that flag
    assert statuses["insufficient_data"] > 0 and statuses["ok"] > 0
    assert statuses["drift"] + statuses["below_tolerance"] > 0
    scanner_rows = [c for c in checks if c.signal == "metadata:scanner" and c.p_value is not None]
    assert any(c.details["new_categories"] for c in scanner_rows)
    new_room = [
        c for c in checks if c.stratum_kind == "scanner" and "Brand New DR" in c.stratum_value
    ]
    assert new_room and all(
        c.status == "insufficient_data" for c in new_room if c.signal.startswith("metadata:")
    )
