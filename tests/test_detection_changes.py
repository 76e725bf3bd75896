"""Change events, onset of a persistent run, tolerance and the window-wide correction."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from connectors import synthetic
from surveillance.analysis.drift import decide, run_drift, signal_family
from surveillance.analysis.onset import coinciding_change, describe_change, persistent_onset
from surveillance.core.config import DriftConfig
from surveillance.intake.ingest import Ingestor
from surveillance.intake.pseudonym import Pseudonymizer
from surveillance.store import ChangeEvent, DriftCheck, Store
from surveillance.store.domain import DriftCheckDraft
from surveillance.store.ingest_writer import device_label

T0 = datetime(2026, 9, 1, tzinfo=UTC)


def _check(week: int, status: str, signal: str = "score:x") -> DriftCheck:
    start = T0 + timedelta(days=7 * week)
    return DriftCheck(
        id=week,
        model="m",
        detector="ks",
        signal=signal,
        stratum_kind="scanner",
        stratum_value="X",
        window_start=start,
        window_end=start + timedelta(days=7),
        status=status,
        statistic=0.0,
        p_value=0.5,
        threshold=0.01,
        n_reference=100,
        n_window=100,
        details={},
    )


@pytest.mark.parametrize(
    ("statuses", "onset_week"),
    [
        pytest.param(["ok", "drift", "ok", "drift", "drift"], 3, id="isolated-earlier-flag"),
        pytest.param(["drift", "drift", "ok", "drift"], 0, id="latest-persistent-run"),
        pytest.param(["ok", "drift", "ok"], None, id="never-persistent"),
        pytest.param(
            ["drift", "insufficient_data", "drift", "ok"], 0, id="insufficient-does-not-break"
        ),
        pytest.param(["drift", "below_tolerance", "drift"], None, id="below-tolerance-breaks"),
        pytest.param(["ok", "drift", "drift", "drift"], 1, id="run-up-to-now"),
    ],
)
def test_persistent_onset(statuses: list[str], onset_week: int | None) -> None:
    checks = [_check(i, s) for i, s in enumerate(statuses)]
    expected = None if onset_week is None else T0 + timedelta(days=7 * onset_week)
    assert persistent_onset(list(reversed(checks))) == expected


def test_two_detectors_in_one_window_count_once() -> None:
    checks = [_check(0, "drift"), _check(0, "ok"), _check(1, "drift")]
    assert persistent_onset(checks) == T0


def _change(day: float, new: str = "VF12B", old: str | None = "VF11A") -> ChangeEvent:
    return ChangeEvent(
        id=int(day * 10),
        model_id=1,
        stratum_kind="scanner",
        stratum_value="X",
        field="software_versions",
        old_value=old,
        new_value=new,
        first_seen_at=T0 + timedelta(days=day),
    )


def test_coinciding_change_and_its_sentence() -> None:
    onset = T0 + timedelta(days=14)
    far, near = _change(1.0, "VF10"), _change(12.5)
    assert coinciding_change([far, near], onset, 7) == near
    assert coinciding_change([far], onset, 7) is None
    assert coinciding_change([near], None, 7) is None
    assert describe_change(near) == "software VF11A -> VF12B first seen 2026-09-13 at scanner X"
    assert describe_change(_change(2.0, old=None)).startswith("software VF12B (new) first seen")


def _draft(p: float, effect: float, signal: str = "metadata:age_band") -> DriftCheckDraft:
    return DriftCheckDraft(
        model_id=1,
        reference_set_id=None,
        detector="chi2",
        signal=signal,
        stratum_kind="overall",
        stratum_value="all",
        window_start=T0,
        window_end=T0 + timedelta(days=7),
        status="ok",
        statistic=1.0,
        p_value=p,
        threshold=0.01,
        n_reference=5000,
        n_window=5000,
        details={},
        effect_size=effect,
        effect_name="cramers_v",
        min_effect=0.1,
    )


def test_decide_applies_the_correction_and_the_tolerance() -> None:
    settings = DriftConfig(alpha=0.01, correction="holm")
    drafts = [_draft(1e-6, 0.03), _draft(1e-6, 0.4), _draft(0.004, 0.5)]
    drafts += [_draft(0.5, 0.0) for _ in range(5)]
    decided = decide(drafts, settings)
    assert [d.status for d in decided[:3]] == ["below_tolerance", "drift", "ok"]
    # Holm over 8 tests: 0.004 x 6 = 0.024 >= alpha, so the third is not significant
    assert decided[2].p_adjusted == pytest.approx(0.024)
    assert all(d.details["tests_in_window"] == 8 for d in decided)


def test_signal_families() -> None:
    assert signal_family("image:noise") == "image"
    assert signal_family("embedding-pca:conv-ae") == "embedding"
    assert signal_family("embedding:bbsd:m") == "embedding"
    assert signal_family("metadata:age_band") == "metadata"
    assert signal_family("acquisition") == "acquisition"
    assert signal_family("score:pneumothorax") == "score"


def test_drift_job_records_a_software_change_event(
    store: Store, pseudonymizer: Pseudonymizer
) -> None:
    base = synthetic.default_config(days=28, seed=3, change_day=21)
    feed = dataclasses.replace(base, start=T0)
    for site in feed.sites:
        store.registry.set_site_label(
            pseudonymizer("institution", site.institution_name), site.name
        )
    Ingestor(store, pseudonymizer, batch_size=5000).ingest_events(synthetic.events(feed))
    (model,) = store.registry.models()
    config = DriftConfig(window_days=7, reference_days=14)
    checks = run_drift(store, model, config, as_of=T0 + timedelta(days=28))
    assert checks
    truth = synthetic.ground_truth(feed)["changes"][0]
    scanner = next(
        s for site in feed.sites for s in site.scanners if s.station_name == truth["station"]
    )
    label = device_label(
        scanner.manufacturer,
        scanner.manufacturer_model_name,
        pseudonymizer("station", truth["station"]),
        truth["site"],
    )
    events = store.checks.change_events(model.id, stratum_kind="scanner", stratum_value=label)
    software = [e for e in events if e.field == "software_versions"]
    assert len(software) == 1
    (event,) = software
    assert event.old_value == truth["software_before"]
    assert event.new_value == truth["software_after"]
    assert event.first_seen_at.date() == (T0 + timedelta(days=21)).date()
    # the other scanners recorded no software change
    others = [
        e
        for e in store.checks.change_events(model.id, stratum_kind="scanner")
        if e.stratum_value != label and e.field == "software_versions"
    ]
    assert others == []
    # a re-run records nothing new
    before = store.checks.change_events(model.id)
    run_drift(store, model, config, as_of=T0 + timedelta(days=28))
    assert store.checks.change_events(model.id) == before
    # every stored drift check carries an effect size and an adjusted p-value when tested
    tested = [c for c in checks if c.p_value is not None]
    assert tested and all(c.p_adjusted is not None for c in tested)
    assert all(
        c.p_adjusted >= c.p_value
        for c in tested
        if c.p_adjusted is not None and c.p_value is not None
    )
    assert {c.effect_name for c in tested} >= {"ks_d", "cramers_v"}
    assert all(np.isfinite(c.effect_size) for c in tested if c.effect_size is not None)
