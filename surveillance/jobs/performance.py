"""The performance job: live performance against the clearance baseline.

Predictions are joined with clinician-confirmed diagnoses, which arrive late. A
window is judged only once it has matured (its end is at least
``maturity_days`` before now); windows are laid backwards from that point, so
the newest judged window always ends at the maturity horizon.

Per finding, window and stratum: sensitivity, specificity, PPV and NPV at the
model's operating threshold (Wilson intervals), AUROC (DeLong interval) and the
expected calibration error. Against a baseline's alert limit:

* ``breach``  - the upper confidence bound is below the limit (clearly worse);
* ``warning`` - the point estimate is below the limit;
* ``insufficient_data`` - fewer than ``min_samples`` cases in the denominator;
* ``ok`` otherwise (or when no baseline exists for the metric).

For ECE, where lower is better, the comparisons are mirrored.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from detectors import auroc_delong, binary_metrics, expected_calibration_error
from detectors.performance import Proportion
from surveillance.config import PerformanceConfig
from surveillance.jobs.windows import backward_windows, floor_day
from surveillance.store import ModelInfo, PerformanceCheck, Store

LOWER_IS_BETTER = frozenset({"ece"})


def judge(
    metric: str,
    value: float | None,
    lower: float | None,
    upper: float | None,
    n: int,
    alert_limit: float | None,
    min_samples: int,
) -> str:
    """The status of one metric estimate against its alert limit."""
    if n < min_samples or value is None or math.isnan(value):
        return "insufficient_data"
    if alert_limit is None:
        return "ok"
    if metric in LOWER_IS_BETTER:
        if lower is not None and lower > alert_limit:
            return "breach"
        return "warning" if value > alert_limit else "ok"
    if upper is not None and upper < alert_limit:
        return "breach"
    return "warning" if value < alert_limit else "ok"


def _none_if_nan(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def _metric_rows(
    model: ModelInfo,
    finding: str,
    stratum: str,
    labels: np.ndarray,
    scores: np.ndarray,
    settings: PerformanceConfig,
) -> list[dict[str, Any]]:
    threshold = model.findings[finding]
    rows: list[dict[str, Any]] = []

    def add(
        metric: str,
        value: float,
        lower: float | None,
        upper: float | None,
        n: int,
        details: dict[str, Any],
    ) -> None:
        baseline = model.baseline(finding, metric, stratum)
        limit = baseline.alert_limit if baseline else None
        rows.append(
            {
                "metric": metric,
                "value": _none_if_nan(value),
                "ci_lower": lower,
                "ci_upper": upper,
                "n": n,
                "baseline_value": baseline.value if baseline else None,
                "alert_limit": limit,
                "status": judge(metric, value, lower, upper, n, limit, settings.min_samples),
                "details": details,
            }
        )

    if labels.size == 0:
        for name in ("sensitivity", "specificity", "ppv", "npv", "auroc", "ece"):
            add(name, math.nan, None, None, 0, {"threshold": threshold})
        return rows
    m = binary_metrics(labels, scores, threshold, confidence=settings.confidence)
    counts = {
        "tp": m.tp,
        "fp": m.fp,
        "tn": m.tn,
        "fn": m.fn,
        "threshold": threshold,
        "prevalence": _none_if_nan(m.prevalence),
    }
    for name in ("sensitivity", "specificity", "ppv", "npv"):
        p: Proportion = getattr(m, name)
        add(name, p.value, p.lower, p.upper, p.trials, counts)
    both_classes = 0 < m.n_positive < m.n
    auc = auroc_delong(labels, scores, confidence=settings.confidence) if both_classes else None
    add(
        "auroc",
        auc.value if auc else math.nan,
        auc.lower if auc else None,
        auc.upper if auc else None,
        min(m.n_positive, m.n - m.n_positive),
        {"n_positive": m.n_positive, "n_negative": m.n - m.n_positive},
    )
    add("ece", expected_calibration_error(labels, scores), None, None, m.n, {"bins": 10})
    return rows


def run_performance(
    store: Store,
    model: ModelInfo,
    settings: PerformanceConfig,
    *,
    as_of: datetime,
    job_run_id: int | None = None,
) -> list[PerformanceCheck]:
    """Judge every matured window; returns the stored checks."""
    span = store.prediction_span(model.id)
    if span is None:
        return []
    horizon = floor_day(as_of - timedelta(days=settings.maturity_days))
    windows = backward_windows(horizon, floor_day(span[0]), settings.window_days)
    if not windows:
        return []
    rows: list[dict[str, Any]] = []
    for finding in sorted(model.findings):
        cases = store.case_table(model.id, finding, windows[0].start, windows[-1].end)
        for window in windows:
            in_window = window.mask(cases.predicted_at)
            for stratum_kind in settings.strata:
                strata = cases.stratum(stratum_kind)
                for value in sorted(set(strata[in_window])):
                    selected = in_window & (strata == value)
                    labelled = selected & (cases.label >= 0)
                    total = int(selected.sum())
                    fraction = float(labelled.sum()) / total if total else None
                    stratum = "overall" if stratum_kind == "overall" else f"{stratum_kind}={value}"
                    for row in _metric_rows(
                        model,
                        finding,
                        stratum,
                        cases.label[labelled].astype(int),
                        cases.score[labelled],
                        settings,
                    ):
                        rows.append(
                            {
                                **row,
                                "model_id": model.id,
                                "finding": finding,
                                "stratum_kind": stratum_kind,
                                "stratum_value": str(value),
                                "window_start": window.start,
                                "window_end": window.end,
                                "estimated": False,
                                "labelled_fraction": fraction,
                            }
                        )
    return store.save_performance_checks(rows, job_run_id=job_run_id, actor="performance-job")


__all__ = ["judge", "run_performance"]
