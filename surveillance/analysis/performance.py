"""The performance job: live performance against the clearance baseline.

Predictions are joined with clinician-confirmed diagnoses, which arrive late. A
window is judged only once it has matured (its end is at least
``maturity_days`` before now). Windows sit on a fixed grid of ``window_days``
from the first day of deployment (like the drift windows), so a window keeps
its key from one day to the next: the newest judged window is the last one
that ends at or before the maturity horizon, and the days after it are seen
in the current window's estimates until that window matures.

Per finding, window and stratum: sensitivity, specificity, PPV and NPV at the
model's operating threshold (Wilson intervals), AUROC (DeLong interval) and the
expected calibration error. Against a baseline's alert limit, decided by the
interval, whatever the number of cases:

* ``breach``  - the whole interval lies below the limit (the upper bound is
  below it): clearly worse, even with 11 positives (sensitivity 0.36, 95 % CI
  0.15-0.65 against a limit of 0.80 is a breach);
* ``ok`` - the whole interval lies at or above the limit;
* the interval contains the limit: ``insufficient_data`` when it is wider
  than ``[performance] max_interval_width`` (it cannot decide; the details'
  ``undecided`` entry says which cases are short: positives for sensitivity,
  negatives for specificity, predicted positives/negatives for PPV/NPV, and
  how many), otherwise ``warning`` when the point estimate is below the limit
  and ``ok`` when it is not;
* a metric without an interval (ECE) keeps the count rule: fewer than
  ``min_samples`` cases is ``insufficient_data``; ``ok`` when no baseline
  exists for the metric (with enough cases).

For ECE, where lower is better, the comparisons are mirrored. The ECE row's
details also carry the calibration slope and intercept (logistic regression of
the label on logit(score); 1 and 0 when calibrated).

Early warning between windows: a one-sided CUSUM (:mod:`detectors.cusum`, as
the FDA's AIM-CU tool does) runs over the labelled cases of each stratum in
time order, on the per-case error of sensitivity (a missed positive) and of
specificity (a false alarm on a negative), from the clearance value's error
rate towards the alert limit's. The chart restarts after each alarm, and its
false-alarm rate is set in time: the decision interval gives an in-control
average run length of ``[performance] cusum_arl0_days`` (a year) of the
stratum's volume of that class (positives a day for sensitivity, measured over
the labelled history), not a fixed number of cases, which at a busy site
alarmed on almost every in-control history. Its state at each window's end
sits in the ``cusum`` entry of the sensitivity and specificity rows' details;
a *persistent* alarm (at least two alarms, i.e. a fresh one after a restart,
within the window and the one before it) turns an ``ok`` row into a
``warning`` (``details.cusum.persistent``): the policy's warning level.

Incremental runs: a matured window is judged again only when it has no
labelled checks yet, or when a diagnosis of one of its studies was ingested or
withdrawn after its checks were written (labels arrive weeks late); the current
window's estimates are recomputed when a prediction of it or any label of the
model changed since they were written. A second run the same day with no new
data judges nothing. The CUSUM state at a window's end is computed from the
stratum's whole labelled series up to that end, so a window judged alone gets
the same chart as in a full run. ``full=True`` (``surveillance check --full``)
re-judges every window. On the fixed grid, the next day's run judges a
matured window only when one has just matured or its labels changed, and
re-estimates the current window.

Before labels arrive: for the current, not yet matured window the job stores
*estimated* rows (``estimated=True``) of sensitivity, specificity, PPV and NPV
from the scores alone (:mod:`detectors.cbpe`, confidence-based performance
estimation), judged the same way. The scores are first recalibrated on the stratum's
matured, labelled cases of the last ``calibration_days`` before the maturity
horizon (isotonic :class:`detectors.cbpe.Calibrator`; the
overall stratum's calibration when the stratum has fewer than ``min_samples``
labelled cases or one class only, raw scores when nothing is labelled yet:
``details.calibration`` says which). The estimates are blind to concept shift
and are never evidence for an incident: :func:`run_performance` stores them
but returns only the labelled checks, which the policy judges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import numpy as np

from detectors import (
    auroc_delong,
    binary_metrics,
    calibration_slope_intercept,
    expected_calibration_error,
)
from detectors.cbpe import Calibrator, estimate_performance
from detectors.cusum import bernoulli_reference, cusum, decision_interval_for_time
from detectors.performance import Proportion
from surveillance.analysis.windows import Window, floor_day, forward_windows, groups
from surveillance.core.config import PerformanceConfig
from surveillance.core.metrics import metric as metric_info
from surveillance.core.metrics import metric_keys
from surveillance.core.statuses import PerformanceStatus
from surveillance.store import CaseTable, ModelInfo, PerformanceCheck, Store
from surveillance.store.domain import CATEGORICAL_FIELDS, PerformanceCheckDraft

ESTIMATED_METRICS = tuple(k for k in metric_keys() if metric_info(k).estimable)
#: What each metric's denominator counts, for "which cases are short".
DENOMINATOR = {
    "sensitivity": "positives",
    "specificity": "negatives",
    "ppv": "predicted positives",
    "npv": "predicted negatives",
    "auroc": "cases of the rarer class",
    "ece": "labelled cases",
}
#: CUSUM alarms within the window and the one before it that make it persistent.
CUSUM_PERSISTENT_ALARMS = 2


def judge(
    metric: str,
    value: float | None,
    lower: float | None,
    upper: float | None,
    n: int,
    alert_limit: float | None,
    min_samples: int,
    max_interval_width: float = 0.25,
) -> str:
    """The status of one metric estimate against its alert limit (module docstring)."""
    insufficient = PerformanceStatus.INSUFFICIENT_DATA.value
    if n <= 0 or value is None or math.isnan(value):
        return insufficient
    has_interval = lower is not None and upper is not None
    if alert_limit is None or not has_interval:
        if n < min_samples:
            return insufficient
        if alert_limit is None:
            return PerformanceStatus.OK.value
    higher = metric_info(metric).higher_is_better
    worse = (value < alert_limit) if higher else (value > alert_limit)
    if not has_interval:
        return (PerformanceStatus.WARNING if worse else PerformanceStatus.OK).value
    assert lower is not None and upper is not None
    if (upper < alert_limit) if higher else (lower > alert_limit):
        return PerformanceStatus.BREACH.value
    if (lower >= alert_limit) if higher else (upper <= alert_limit):
        return PerformanceStatus.OK.value
    if upper - lower > max_interval_width:
        return insufficient
    return (PerformanceStatus.WARNING if worse else PerformanceStatus.OK).value


def undecided(
    metric: str, lower: float | None, upper: float | None, n: int, settings: PerformanceConfig
) -> dict[str, Any]:
    """Why an ``insufficient_data`` row could not decide: which cases are short, and how many."""
    why: dict[str, Any] = {"short": DENOMINATOR.get(metric, "cases"), "n": n}
    if lower is not None and upper is not None:
        why["interval_width"] = upper - lower
        why["max_interval_width"] = settings.max_interval_width
    else:
        why["min_samples"] = settings.min_samples
    return why


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
        status = judge(
            metric,
            value,
            lower,
            upper,
            n,
            limit,
            settings.min_samples,
            settings.max_interval_width,
        )
        if status == PerformanceStatus.INSUFFICIENT_DATA:
            details = {**details, "undecided": undecided(metric, lower, upper, n, settings)}
        rows.append(
            {
                "metric": metric,
                "value": _none_if_nan(value),
                "ci_lower": lower,
                "ci_upper": upper,
                "n": n,
                "baseline_value": baseline.value if baseline else None,
                "alert_limit": limit,
                "status": status,
                "details": details,
            }
        )

    if labels.size == 0:
        for name in metric_keys():
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
    slope, intercept = calibration_slope_intercept(labels, scores)
    add(
        "ece",
        expected_calibration_error(labels, scores),
        None,
        None,
        m.n,
        {
            "bins": 10,
            "calibration_slope": _none_if_nan(slope),
            "calibration_intercept": _none_if_nan(intercept),
        },
    )
    return rows


@lru_cache(maxsize=256)
def _cusum_design(
    p0: float, p1: float, cases_per_day: float, arl0_days: float
) -> tuple[float, float]:
    k = bernoulli_reference(p0, p1)
    return k, decision_interval_for_time(p0, p1, cases_per_day, arl0_days)


def _per_day(times: np.ndarray) -> float:
    """Cases a day over the span of ``times`` (at least one day)."""
    if times.size == 0:
        return 0.0
    span = (times[-1] - times[0]) / np.timedelta64(1, "D")
    return float(times.size) / max(float(span), 1.0)


def _moment(at: datetime) -> np.datetime64:
    return np.datetime64(at.astimezone(UTC).replace(tzinfo=None), "us")


@dataclass(frozen=True, slots=True)
class _Chart:
    """One restarting CUSUM pass over a stratum's whole series of one error kind.

    Computed once per stratum and metric; :meth:`state` reads the chart as it
    stood at a window's end (the cases before it), which is what the chart run
    on those cases alone gives, since a CUSUM only looks back.
    """

    design: dict[str, Any]
    times: np.ndarray
    path: np.ndarray
    alarms: np.ndarray  # case positions of the alarms

    def state(self, window: Window) -> dict[str, Any]:
        until = _moment(window.end)
        since = _moment(window.start - (window.end - window.start))
        upto = int(np.searchsorted(self.times, until, side="left"))
        before = self.alarms[self.alarms < upto]
        alarm_times = self.times[before]
        recent = alarm_times[alarm_times >= since]
        statistic = 0.0
        if upto > 0 and not (before.size and before[-1] == upto - 1):
            statistic = float(self.path[upto - 1])  # a restarting chart is 0 just after an alarm
        return {
            **self.design,
            "n": upto,
            "statistic": statistic,
            "alarm": bool(recent.size),
            "alarms_total": int(before.size),
            "alarms_recent": int(recent.size),
            "alarm_at": str(np.datetime_as_string(recent[-1], unit="s")) + "Z"
            if recent.size
            else None,
            "persistent": int(recent.size) >= CUSUM_PERSISTENT_ALARMS,
        }


def _chart(
    model: ModelInfo,
    finding: str,
    stratum: str,
    metric: str,
    errors: np.ndarray,
    times: np.ndarray,
    settings: PerformanceConfig,
) -> _Chart | None:
    """Restarting CUSUM of ``errors`` (time-ordered) over the stratum's labelled cases.

    The chart looks for the error rate moving from the clearance value's
    (``1 - baseline``) to the alert limit's (``1 - alert_limit``); ``h`` gives
    one false alarm per ``cusum_arl0_days`` at the stratum's volume. It starts
    at the baseline's re-baselining, when there was one: cases judged against
    the old clearance figures say nothing about the new ones. None when there
    is no design (no baseline, or too few cases of the class).
    """
    baseline = model.baseline(finding, metric, stratum)
    if baseline is None:
        return None
    restarted_at = baseline.rebaselined_at
    if restarted_at is not None:
        keep = times >= _moment(restarted_at)
        errors, times = errors[keep], times[keep]
    p0, p1 = 1.0 - baseline.value, 1.0 - baseline.alert_limit
    per_day = _per_day(times)
    if not 0.0 < p0 < p1 < 1.0 or per_day * settings.cusum_arl0_days <= 1.0:
        return None
    # the volume to two significant figures: strata of like volume share one design
    # (solving for h is the costly step), and ARL0 in days is approximate anyway
    k, h = _cusum_design(
        round(p0, 6), round(p1, 6), float(f"{per_day:.2g}"), float(settings.cusum_arl0_days)
    )
    result = cusum(errors, target=p0, k=k, h=h, restart=True)
    design = {
        "error": "missed positive" if metric == "sensitivity" else "false alarm on a negative",
        "target_error_rate": p0,
        "shift_to_detect": p1,
        "k": k,
        "h": h,
        "arl0_days": settings.cusum_arl0_days,
        "cases_per_day": per_day,
        "in_control_arl_cases": per_day * settings.cusum_arl0_days,
        "restart": True,
        "restarted_at_rebaselining": None if restarted_at is None else restarted_at.isoformat(),
    }
    return _Chart(
        design,
        times,
        np.asarray(result.path, dtype=np.float64),
        np.asarray(result.alarm_indices, dtype=np.int64),
    )


def _charts(
    model: ModelInfo,
    finding: str,
    stratum: str,
    cases: CaseTable,
    members: np.ndarray,
    settings: PerformanceConfig,
) -> dict[str, _Chart]:
    """The sensitivity and specificity charts of one stratum (``members``: time-ordered)."""
    threshold = model.findings[finding]
    labelled = members[cases.label[members] >= 0]
    label = cases.label[labelled]
    flagged = cases.score[labelled] >= threshold
    times = cases.predicted_at[labelled]
    positives, negatives = label == 1, label == 0
    series = {
        "sensitivity": ((~flagged[positives]).astype(float), times[positives]),
        "specificity": (flagged[negatives].astype(float), times[negatives]),
    }
    charts = {}
    for metric, (errors, at) in series.items():
        chart = _chart(model, finding, stratum, metric, errors, at, settings)
        if chart is not None:
            charts[metric] = chart
    return charts


def _estimated_rows(
    model: ModelInfo,
    finding: str,
    stratum: str,
    scores: np.ndarray,
    settings: PerformanceConfig,
    calibration: tuple[Calibrator | None, str],
) -> list[dict[str, Any]]:
    """CBPE rows for a window whose labels have not matured (see detectors.cbpe)."""
    threshold = model.findings[finding]
    if scores.size == 0:
        return []
    calibrator, calibrated_on = calibration
    estimate = estimate_performance(
        scores, threshold, confidence=settings.confidence, calibrator=calibrator
    )
    details = {
        "method": "CBPE",
        "calibration": calibrated_on,
        "assumption": estimate.assumption,
        "threshold": threshold,
        "expected_tp": estimate.expected_tp,
        "expected_fp": estimate.expected_fp,
        "expected_tn": estimate.expected_tn,
        "expected_fn": estimate.expected_fn,
        "expected_prevalence": _none_if_nan(estimate.expected_prevalence),
        "n_cases": estimate.n,
    }
    rows = []
    for name in ESTIMATED_METRICS:
        metric = getattr(estimate, name)
        n = round(metric.expected_denominator)
        baseline = model.baseline(finding, name, stratum)
        limit = baseline.alert_limit if baseline else None
        rows.append(
            {
                "metric": name,
                "value": _none_if_nan(metric.value),
                "ci_lower": metric.lower,
                "ci_upper": metric.upper,
                "n": n,
                "baseline_value": baseline.value if baseline else None,
                "alert_limit": limit,
                "status": judge(
                    name,
                    metric.value,
                    metric.lower,
                    metric.upper,
                    n,
                    limit,
                    settings.min_samples,
                    settings.max_interval_width,
                ),
                "details": dict(details),
            }
        )
    return rows


def _calibration(
    cases: CaseTable,
    selected: np.ndarray,
    settings: PerformanceConfig,
    stratum: str,
    fallback: tuple[Calibrator | None, str] | None,
) -> tuple[Calibrator | None, str]:
    """Isotonic calibrator on the labelled cases at ``selected`` (module docstring)."""
    labelled = selected[cases.label[selected] >= 0]
    labels = cases.label[labelled]
    if labelled.size >= settings.min_samples and 0 < int(labels.sum()) < labels.size:
        calibrator = Calibrator().fit(cases.score[labelled], labels.astype(int))
        return calibrator, f"isotonic on {labelled.size} labelled cases ({stratum})"
    if fallback is not None:
        return fallback
    return None, "none: raw scores taken as calibrated (no labelled reference yet)"


def _current_window(as_of: datetime, horizon: datetime, days: int) -> Window | None:
    """The newest window, still maturing: ``days`` ending today (None if all matured)."""
    today = floor_day(as_of)
    if today <= horizon:
        return None
    return Window(today - timedelta(days=days), today)


def run_performance(
    store: Store,
    model: ModelInfo,
    settings: PerformanceConfig,
    *,
    as_of: datetime,
    job_run_id: int | None = None,
    full: bool = False,
) -> list[PerformanceCheck]:
    """Judge the matured windows that need it and estimate the current one.

    Stores both; returns the labelled (not estimated) checks written by this
    run, the only ones the incident policy may act on. Read the estimates with
    ``store.performance_checks`` (``estimated=True``). Incremental unless
    ``full`` (module docstring, "Incremental runs").

    Memory: the labelled history is read without header fields (score, time,
    label, site, scanner: ~35 bytes a case), since the CUSUM charts run over
    all of it; each stratum is a list of positions, never a mask of the history.
    """
    span = store.checks.prediction_span(model.id)
    if span is None:
        return []
    horizon = floor_day(as_of - timedelta(days=settings.maturity_days))
    windows = forward_windows(floor_day(span[0]), horizon, settings.window_days)
    current = _current_window(as_of, horizon, settings.window_days)
    # the cases (CUSUM series, volumes, calibration) end where a full run's would
    ends = [w.end for w in windows] + ([current.end] if current is not None else [])
    last = max(ends, default=horizon)
    if not full:
        stale = set(
            store.checks.performance_windows_to_judge(model.id, [(w.start, w.end) for w in windows])
        )
        windows = [w for w in windows if (w.start, w.end) in stale]
        if current is not None and not store.checks.performance_windows_to_judge(
            model.id, [(current.start, current.end)], estimated=True
        ):
            current = None
    if not windows and current is None:
        return []
    judged: list[tuple[Window, bool]] = [(w, False) for w in windows]
    if current is not None:
        judged.append((current, True))
    first = _moment(min(w.start for w, _ in judged))
    fields = [kind for kind in settings.strata if kind in CATEGORICAL_FIELDS]
    rows: list[PerformanceCheckDraft] = []
    for finding in sorted(model.findings):
        # labelled windows need the whole labelled history (their CUSUM charts run
        # over it); re-estimating the current window alone needs the calibration
        # period and the window, not the maturity gap between them
        since = horizon - timedelta(days=settings.calibration_days)
        if windows:
            cases = store.checks.case_table(model.id, finding, None, last, fields=fields)
        else:
            assert current is not None
            cases = CaseTable.concat(  # the calibration period: only its labelled cases count
                store.checks.case_table(
                    model.id, finding, since, horizon, fields=fields, labelled_only=True
                ),
                store.checks.case_table(
                    model.id, finding, max(horizon, current.start), last, fields=fields
                ),
            )
        matured = int(np.searchsorted(cases.predicted_at, _moment(horizon), side="left"))
        calibrated_from = int(np.searchsorted(cases.predicted_at, _moment(since), side="left"))
        overall_calibration = _calibration(
            cases, np.arange(calibrated_from, matured), settings, "overall", None
        )
        for stratum_kind in settings.strata:
            by_value = groups(cases.stratum(stratum_kind))
            for value in sorted(by_value):
                members = by_value[value]  # positions in time order
                times = cases.predicted_at[members]
                if times[-1] < first:
                    continue  # nothing of this stratum in the windows being judged
                stratum = "overall" if stratum_kind == "overall" else f"{stratum_kind}={value}"
                # the CUSUM is about labelled cases: estimated rows carry no chart, and a
                # run that only re-estimates the current window draws none
                charts = (
                    _charts(model, finding, stratum, cases, members, settings) if windows else {}
                )
                calibration = (
                    _calibration(
                        cases,
                        members[(members >= calibrated_from) & (members < matured)],
                        settings,
                        stratum,
                        overall_calibration,
                    )
                    if current is not None
                    else overall_calibration
                )
                for window, estimated in judged:
                    selected = members[window.slice(times)]
                    if selected.size == 0:
                        continue
                    labelled = selected[cases.label[selected] >= 0]
                    fraction = labelled.size / selected.size
                    if estimated:
                        metric_rows = _estimated_rows(
                            model, finding, stratum, cases.score[selected], settings, calibration
                        )
                    else:
                        metric_rows = _metric_rows(
                            model,
                            finding,
                            stratum,
                            cases.label[labelled].astype(int),
                            cases.score[labelled],
                            settings,
                        )
                    for row in metric_rows:
                        chart = None if estimated else charts.get(row["metric"])
                        if chart is not None:
                            state = chart.state(window)
                            row["details"] = {**row["details"], "cusum": state}
                            if (
                                not estimated
                                and state["persistent"]
                                and row["status"] == PerformanceStatus.OK
                            ):
                                row["status"] = PerformanceStatus.WARNING.value
                        rows.append(
                            PerformanceCheckDraft(
                                **row,
                                model_id=model.id,
                                finding=finding,
                                stratum_kind=stratum_kind,
                                stratum_value=str(value),
                                window_start=window.start,
                                window_end=window.end,
                                estimated=estimated,
                                labelled_fraction=fraction,
                            )
                        )
    stored = store.checks.save_performance(rows, job_run_id=job_run_id, actor="performance-job")
    return [c for c in stored if not c.estimated]


__all__ = ["CUSUM_PERSISTENT_ALARMS", "DENOMINATOR", "judge", "run_performance", "undecided"]
