"""Label-free estimation (CBPE), the CUSUM chart, and what the performance job stores."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pytest
from scipy.special import logit
from sklearn.linear_model import LogisticRegression

from connectors import synthetic
from detectors.cbpe import ASSUMPTION, estimate_performance
from detectors.cusum import average_run_length, bernoulli_reference, cusum, decision_interval
from surveillance.analysis.performance import run_performance
from surveillance.analysis.windows import floor_day
from surveillance.core.config import Settings
from surveillance.intake.ingest import Ingestor
from surveillance.intake.pseudonym import Pseudonymizer
from surveillance.store import Store
from surveillance.store.types import utcnow

# ---------------------------------------------------------------- CBPE


def _calibrated(n: int, seed: int) -> tuple[np.ndarray, np.random.Generator]:
    rng = np.random.default_rng(seed)
    return rng.beta(0.6, 2.5, size=n), rng


def _realised(scores: np.ndarray, labels: np.ndarray, t: float) -> dict[str, float]:
    flagged = scores >= t
    tp = np.sum(flagged & labels)
    fp = np.sum(flagged & ~labels)
    tn = np.sum(~flagged & ~labels)
    fn = np.sum(~flagged & labels)
    return {
        "sensitivity": tp / (tp + fn),
        "specificity": tn / (tn + fp),
        "ppv": tp / (tp + fp),
        "npv": tn / (tn + fn),
    }


def test_cbpe_equals_the_expected_performance_on_calibrated_scores() -> None:
    scores, rng = _calibrated(4000, seed=1)
    estimate = estimate_performance(scores, 0.4)
    draws = [
        _realised(scores, rng.random(scores.size) < scores, 0.4) for _ in range(400)
    ]  # labels drawn exactly as the assumption says
    for name in ("sensitivity", "specificity", "ppv", "npv"):
        realised = np.array([d[name] for d in draws])
        metric = getattr(estimate, name)
        assert metric.value == pytest.approx(realised.mean(), abs=0.003), name
        inside = np.mean((realised >= metric.lower) & (realised <= metric.upper))
        assert 0.90 <= inside <= 0.99, f"{name}: interval covers {inside:.2%}"
    assert estimate.expected_tp + estimate.expected_fn == pytest.approx(scores.sum())
    assert estimate.n == scores.size
    assert "calibrated" in estimate.assumption and estimate.assumption == ASSUMPTION


def test_cbpe_hand_computed() -> None:
    est = estimate_performance([0.9, 0.6, 0.3, 0.1], 0.5)
    # E[TP] = 0.9 + 0.6, E[FN] = 0.3 + 0.1, E[FP] = 0.1 + 0.4, E[TN] = 0.7 + 0.9
    assert est.sensitivity.value == pytest.approx(1.5 / 1.9)
    assert est.specificity.value == pytest.approx(1.6 / 2.1)
    assert est.ppv.value == pytest.approx(1.5 / 2)
    assert est.npv.value == pytest.approx(1.6 / 2)
    assert est.expected_prevalence == pytest.approx(1.9 / 4)


def test_cbpe_is_blind_to_concept_shift() -> None:
    """The documented limitation: labels no longer follow the scores -> wrong estimate."""
    scores, rng = _calibrated(4000, seed=2)
    shifted = rng.random(scores.size) < np.clip(scores * 0.5, 0, 1)  # model over-confident
    estimate = estimate_performance(scores, 0.4)
    truth = _realised(scores, shifted, 0.4)
    assert abs(estimate.ppv.value - truth["ppv"]) > 0.1


def test_cbpe_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="finite"):
        estimate_performance([0.1, math.nan], 0.5)
    with pytest.raises(ValueError, match="calibrated probabilities"):
        estimate_performance([0.1, 0.2], 0.5, calibrate=lambda s: s * 6)


# ---------------------------------------------------------------- CUSUM


def test_cusum_hand_computed() -> None:
    result = cusum([1, 0, 1, 1, 0], target=0.1, k=0.2, h=1.0)
    # increments x - 0.3: 0.7, -0.3, 0.7, 0.7, -0.3 -> S: 0.7, 0.4, 1.1 (> h), 1.8, 1.5
    assert result.path == pytest.approx((0.7, 0.4, 1.1, 1.8, 1.5))
    assert result.alarm_index == 2
    assert result.statistic == pytest.approx(1.5)
    assert result.max_statistic == pytest.approx(1.8)
    assert cusum([], target=0.1, k=0.2, h=1.0).alarm_index is None


def test_cusum_alarms_after_a_shift_and_not_before() -> None:
    rng = np.random.default_rng(0)
    before = rng.random(500) < 0.10  # miss rate at the clearance value
    after = rng.random(400) < 0.30  # after the scanner update
    k = bernoulli_reference(0.10, 0.20)
    h = decision_interval(0.10, k, 10_000.0)
    result = cusum(np.r_[before, after].astype(float), target=0.10, k=k, h=h)
    assert result.alarm_index is not None
    assert 500 <= result.alarm_index < 500 + 100
    assert not cusum(before.astype(float), target=0.10, k=k, h=h).alarmed


def test_cusum_design_matches_simulated_run_lengths() -> None:
    k = bernoulli_reference(0.10, 0.20)
    h = decision_interval(0.10, k, 200.0)
    assert average_run_length(0.10, 0.10, k, h) >= 200.0
    rng = np.random.default_rng(3)
    lengths = []
    for _ in range(300):
        s, t = 0.0, 0
        while s <= h:
            t += 1
            s = max(0.0, s + float(rng.random() < 0.10) - 0.10 - k)
        lengths.append(t)
    assert np.mean(lengths) == pytest.approx(average_run_length(0.10, 0.10, k, h), rel=0.2)
    # out of control it signals much sooner
    assert average_run_length(0.30, 0.10, k, h) < 20


def test_cusum_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="'h'"):
        cusum([0, 1], target=0.1, k=0.1, h=0.0)
    with pytest.raises(ValueError, match="p0 < p1"):
        bernoulli_reference(0.2, 0.1)


# ---------------------------------------------------------------- the job


def test_performance_job_stores_calibration_cusum_and_estimates(
    store: Store, settings: Settings, pseudonymizer: Pseudonymizer
) -> None:
    now = utcnow()
    base = synthetic.default_config(days=60, seed=4)
    feed = synthetic.SyntheticConfig(
        days=60, seed=4, start=floor_day(now) - timedelta(days=60), sites=base.sites, changes=()
    )
    Ingestor(store, pseudonymizer, batch_size=5000).ingest_events(synthetic.events(feed))
    model = store.registry.model("cxr-pneumothorax")
    config = settings.performance.model_copy(update={"strata": ["overall", "sex", "age_band"]})
    returned = run_performance(store, model, config, as_of=now)
    assert returned and not any(c.estimated for c in returned)
    stored = store.checks.performance(model.id)
    kinds = {c.stratum_kind for c in returned}
    assert kinds == {"overall", "sex", "age_band"}
    assert {c.stratum_value for c in returned if c.stratum_kind == "sex"} >= {"F", "M"}

    # calibration slope and intercept of the overall labelled window, against sklearn
    ece = next(c for c in returned if c.metric == "ece" and c.stratum_kind == "overall")
    cases = store.checks.case_table(model.id, "pneumothorax", ece.window_start, ece.window_end)
    labelled = cases.label >= 0
    x = logit(np.clip(cases.score[labelled], 1e-6, 1 - 1e-6)).reshape(-1, 1)
    fit = LogisticRegression(C=math.inf, tol=1e-10, max_iter=1000).fit(x, cases.label[labelled])
    assert ece.details["calibration_slope"] == pytest.approx(fit.coef_[0][0], rel=1e-4)
    assert ece.details["calibration_intercept"] == pytest.approx(fit.intercept_[0], abs=1e-4)

    sens = next(c for c in returned if c.metric == "sensitivity" and c.stratum_kind == "overall")
    chart = sens.details["cusum"]
    assert chart["n"] > 0 and chart["target_error_rate"] == pytest.approx(1 - 0.905)
    assert chart["alarm"] is False  # a quiet deployment

    estimates = [c for c in stored if c.estimated]
    assert {c.metric for c in estimates} == {"sensitivity", "specificity", "ppv", "npv"}
    overall = [c for c in estimates if c.stratum_kind == "overall"]
    assert overall[0].window_end == floor_day(now)
    assert overall[0].details["method"] == "CBPE"
    assert "calibrated" in overall[0].details["assumption"]
    assert 0.0 <= (overall[0].labelled_fraction or 0.0) < 1.0
