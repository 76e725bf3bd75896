"""Performance decided by the interval, calibrated CBPE and a restarting, time-scaled CUSUM.

The breach case from issue 9: a scanner whose sensitivity fell to 4/11 = 0.36
(95 % Wilson interval 0.15-0.65) against an alert limit of 0.85 was
``insufficient_data`` because ``min_samples`` counted positives. It is a
breach now: the whole interval lies below the limit.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from detectors import wilson_interval
from detectors.cbpe import Calibrator, estimate_performance
from surveillance.analysis.performance import judge, run_performance
from surveillance.core.config import Settings
from surveillance.core.events import DiagnosisEvent, DicomMetadataEvent, PredictionEvent
from surveillance.core.statuses import PerformanceStatus
from surveillance.intake.ingest import Ingestor
from surveillance.intake.pseudonym import Pseudonymizer
from surveillance.store import Store

START = datetime(2026, 3, 2, tzinfo=UTC)


# ------------------------------------------------------------------ judge (pure)


@pytest.mark.parametrize(
    ("successes", "trials", "limit", "expected"),
    [
        pytest.param(4, 11, 0.85, "breach", id="11-positives-interval-below-limit"),
        pytest.param(9, 11, 0.85, "insufficient_data", id="11-positives-interval-straddles"),
        pytest.param(880, 1000, 0.85, "ok", id="narrow-interval-above-limit"),
        pytest.param(845, 1000, 0.85, "warning", id="narrow-interval-straddles-point-below"),
        pytest.param(11, 11, 0.70, "ok", id="small-but-interval-above-limit"),
        pytest.param(790, 1000, 0.85, "breach", id="narrow-interval-below-limit"),
    ],
)
def test_judge_decides_by_the_interval_whatever_the_count(
    successes: int, trials: int, limit: float, expected: str
) -> None:
    lower, upper = wilson_interval(successes, trials, 0.95)
    value = successes / trials
    status = judge(
        "sensitivity",
        value,
        lower,
        upper,
        trials,
        limit,
        min_samples=30,
        max_interval_width=0.25,
    )
    assert status == expected, (value, lower, upper)


def test_issue_figures_interval() -> None:
    lower, upper = wilson_interval(4, 11, 0.95)
    value = 4 / 11
    assert value == pytest.approx(0.36, abs=0.01)
    assert lower == pytest.approx(0.15, abs=0.01) and upper == pytest.approx(0.65, abs=0.01)


def test_lower_is_better_metrics_are_mirrored() -> None:
    assert judge("ece", 0.2, None, None, 100, 0.1, min_samples=30) == "warning"
    assert judge("ece", 0.05, None, None, 10, 0.1, min_samples=30) == "insufficient_data"
    assert judge("ece", 0.05, None, None, 100, 0.1, min_samples=30) == "ok"


# ------------------------------------------------------------------ through the job


def _scanner_events(
    rng: np.random.Generator,
    station: str,
    days: int,
    per_day: float,
    prevalence: float,
    sensitivity: dict[int, float],
) -> list[PredictionEvent | DicomMetadataEvent | DiagnosisEvent]:
    """Studies of one scanner with labels; ``sensitivity[day]`` from that day on."""
    events: list[PredictionEvent | DicomMetadataEvent | DiagnosisEvent] = []
    current = sensitivity[0]
    for day in range(days):
        current = sensitivity.get(day, current)
        for _ in range(rng.poisson(per_day)):
            uid = f"1.2.826.0.9.{uuid.uuid4().int % 10**20}"
            at = START + timedelta(days=day, hours=float(rng.uniform(7, 19)))
            positive = bool(rng.random() < prevalence)
            detected = rng.random() < (current if positive else 0.1)
            score = float(rng.uniform(0.55, 0.99) if detected else rng.uniform(0.01, 0.45))
            events += [
                DicomMetadataEvent(
                    study_instance_uid=uid,
                    station_name=station,
                    institution_name="Harbour Hospital",
                    modality="DX",
                    manufacturer="Agfa",
                    manufacturer_model_name="DX-D 600",
                ),
                PredictionEvent(
                    message_id=uuid.uuid4().hex,
                    model="cxr-pneumothorax",
                    model_version="2.1.0",
                    study_instance_uid=uid,
                    outputs={"pneumothorax": score},
                    predicted_at=at,
                ),
                DiagnosisEvent(
                    message_id=uuid.uuid4().hex,
                    study_instance_uid=uid,
                    finding="pneumothorax",
                    present=positive,
                    source="report",
                    confirmed_at=at + timedelta(days=3),
                ),
            ]
    return events


def test_eleven_positive_drop_is_a_breach_and_undecided_says_what_is_short(
    store: Store, settings: Settings, pseudonymizer: Pseudonymizer
) -> None:
    rng = np.random.default_rng(11)
    events = _scanner_events(rng, "DX-DROP", 28, 4.0, 0.10, {0: 0.36})
    events += _scanner_events(rng, "DX-QUIET", 28, 4.0, 0.10, {0: 0.92})
    Ingestor(store, pseudonymizer, batch_size=5000).ingest_events(events)
    model = store.registry.model("cxr-pneumothorax")
    config = settings.performance.model_copy(
        update={"strata": ["scanner"], "window_days": 28, "maturity_days": 0}
    )
    checks = run_performance(store, model, config, as_of=START + timedelta(days=28))
    sens = {
        c.stratum_value: c for c in checks if c.metric == "sensitivity" and c.window_start == START
    }
    drop = next(
        c for label, c in sens.items() if "#" + pseudonymizer("station", "DX-DROP")[:6] in label
    )
    assert drop.n < config.min_samples  # few positives ...
    assert drop.ci_upper is not None and drop.ci_upper < 0.85
    assert drop.status == PerformanceStatus.BREACH  # ... and still decided
    quiet = next(c for c in sens.values() if c is not drop)
    assert quiet.status in {"ok", "insufficient_data"}
    if quiet.status == "insufficient_data":
        undecided = quiet.details["undecided"]
        assert undecided["short"] == "positives"
        assert undecided["interval_width"] > config.max_interval_width


def test_cusum_restarts_and_a_persistent_alarm_is_a_warning(
    store: Store, settings: Settings, pseudonymizer: Pseudonymizer
) -> None:
    """In control for 150 days, then sensitivity 0.905 -> 0.70: the restarting chart
    re-alarms and the window becomes a warning (or a breach where the interval says so);
    before the change no window carries a persistent alarm."""
    rng = np.random.default_rng(5)
    events = _scanner_events(rng, "DX-A", 180, 30.0, 0.2, {0: 0.905, 150: 0.70})
    Ingestor(store, pseudonymizer, batch_size=5000).ingest_events(events)
    model = store.registry.model("cxr-pneumothorax")
    config = settings.performance.model_copy(
        update={"strata": ["overall"], "window_days": 14, "maturity_days": 0}
    )
    checks = run_performance(store, model, config, as_of=START + timedelta(days=180))
    sens = sorted((c for c in checks if c.metric == "sensitivity"), key=lambda c: c.window_start)
    before = [c for c in sens if c.window_end <= START + timedelta(days=150)]
    after = [c for c in sens if c.window_start >= START + timedelta(days=152)]
    assert before and after
    chart = after[-1].details["cusum"]
    assert chart["restart"] is True and chart["arl0_days"] == 365.0
    assert chart["in_control_arl_cases"] == pytest.approx(chart["cases_per_day"] * 365.0)
    assert not any(c.details["cusum"]["persistent"] for c in before)
    # in control: no breach; a "warning" before the change can only be the interval
    # rule (a narrow interval holding the limit, point just below it), never the chart
    assert all(c.status != "breach" for c in before), [(c.value, c.status) for c in before]
    assert sum(c.status == "warning" for c in before) <= 1, [(c.value, c.status) for c in before]
    assert any(c.details["cusum"]["persistent"] for c in after)
    assert all(c.status in {"warning", "breach"} for c in after)


def test_cusum_restarts_at_rebaselining(
    store: Store, settings: Settings, pseudonymizer: Pseudonymizer
) -> None:
    """Sensitivity falls to 0.70 on day 100 and the chart alarms; on day 120 the
    manufacturer re-baselines (new clearance figure 0.70, limit 0.55): the chart
    restarts there, counts only the cases after it, and stays quiet in control."""
    rng = np.random.default_rng(6)
    events = _scanner_events(rng, "DX-A", 180, 30.0, 0.2, {0: 0.905, 100: 0.70})
    Ingestor(store, pseudonymizer, batch_size=5000).ingest_events(events)
    config = settings.performance.model_copy(
        update={"strata": ["overall"], "window_days": 14, "maturity_days": 0}
    )
    as_of = START + timedelta(days=180)
    model = store.registry.model("cxr-pneumothorax")
    old = run_performance(store, model, config, as_of=as_of)
    old_last = max((c for c in old if c.metric == "sensitivity"), key=lambda c: c.window_end)
    assert old_last.details["cusum"]["alarms_recent"] >= 1  # the old figure: still alarming

    rebaselined_at = START + timedelta(days=120)
    [config_model] = [m for m in settings.models if m.name == "cxr-pneumothorax"]
    baselines = [
        b.model_copy(
            update={"value": 0.70, "ci_lower": None, "ci_upper": None, "alert_limit": 0.55}
        )
        if (b.metric, b.stratum) == ("sensitivity", "overall")
        else b
        for b in config_model.baselines
    ]
    store.registry.register_models(
        [config_model.model_copy(update={"baselines": baselines})], actor="qm", now=rebaselined_at
    )
    model = store.registry.model("cxr-pneumothorax")
    assert model.baseline("pneumothorax", "sensitivity", "overall").rebaselined_at == rebaselined_at
    new = run_performance(store, model, config, as_of=as_of, full=True)
    sens = sorted((c for c in new if c.metric == "sensitivity"), key=lambda c: c.window_start)
    last = sens[-1].details["cusum"]
    assert last["restarted_at_rebaselining"] == rebaselined_at.isoformat()
    assert last["target_error_rate"] == pytest.approx(0.30)
    # only the positives after day 120 are on the chart (~0.2 x 30 a day x 60 days)
    assert 0 < last["n"] < old_last.details["cusum"]["n"] / 2
    after = [c for c in sens if c.window_start >= rebaselined_at]
    assert after and not any(c.details["cusum"]["persistent"] for c in after)


def test_cbpe_is_calibrated_on_the_reference_in_the_job(
    store: Store, settings: Settings, pseudonymizer: Pseudonymizer
) -> None:
    rng = np.random.default_rng(8)
    events = _scanner_events(rng, "DX-A", 70, 20.0, 0.2, {0: 0.9})
    Ingestor(store, pseudonymizer, batch_size=5000).ingest_events(events)
    model = store.registry.model("cxr-pneumothorax")
    config = settings.performance.model_copy(
        update={"strata": ["overall"], "window_days": 14, "maturity_days": 14}
    )
    run_performance(store, model, config, as_of=START + timedelta(days=70))
    estimated = [c for c in store.checks.performance(model.id) if c.estimated]
    assert estimated
    assert all(c.details["calibration"].startswith("isotonic on") for c in estimated)
    # the scores here are far from calibrated (uniform on 0.55-0.99 for detected
    # cases): the calibrated estimate of sensitivity is close to the truth (0.9)
    sens = next(c for c in estimated if c.metric == "sensitivity")
    assert sens.value == pytest.approx(0.9, abs=0.08)


def test_calibrator_fixes_the_estimate_on_miscalibrated_scores() -> None:
    rng = np.random.default_rng(2)
    p = rng.beta(0.8, 3.0, size=20_000)
    labels = rng.random(p.size) < p
    scores = np.sqrt(p)  # monotone but over-confident
    reference, window = slice(0, 10_000), slice(10_000, None)
    truth = float(np.mean(scores[window][labels[window]] >= 0.5))
    raw = estimate_performance(scores[window], 0.5).sensitivity.value
    calibrator = Calibrator().fit(scores[reference], labels[reference])
    calibrated = estimate_performance(scores[window], 0.5, calibrator=calibrator)
    assert abs(calibrated.sensitivity.value - truth) < 0.02
    assert abs(raw - truth) > 3 * abs(calibrated.sensitivity.value - truth)
