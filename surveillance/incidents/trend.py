"""Trend reporting (EU MDR Article 88): a significant rise in non-serious incidents.

Article 88 asks manufacturers to report any statistically significant increase
in the frequency or severity of incidents that are *not* serious incidents,
using the method set out in their PMS plan. The method here, written down so
it can go into that plan:

* count the model's non-serious incidents (assessed ``not_reportable``) opened
  in the current period (the last ``period_days``) and in the ``baseline_periods``
  periods before it;
* under "no change" the incidents form one Poisson process, so, given the total
  ``n``, the current count is Binomial(``n``, ``T1 / (T0 + T1)``) where ``T1``
  and ``T0`` are the lengths of the current and baseline spans (the exact
  conditional test for a ratio of Poisson rates);
* flag when the one-sided p-value ``P(K >= current)`` is below ``alpha`` and the
  current count is at least ``min_count`` (two incidents are never a trend).

Incidents still ``assessment_pending`` are not counted (they may be serious);
they are reported beside the flag so nobody mistakes "nothing assessed" for
"no trend".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from surveillance.incidents.vigilance import VigilanceClass
from surveillance.store import Store

NON_SERIOUS = frozenset({VigilanceClass.NOT_REPORTABLE.value})


@dataclass(frozen=True, slots=True)
class TrendResult:
    """One trend test: counts, rates per 30 days, the p-value and the flag."""

    current: int
    baseline: int
    current_days: float
    baseline_days: float
    p_value: float
    alpha: float
    min_count: int
    flagged: bool

    @property
    def current_rate_per_30d(self) -> float:
        return self.current / self.current_days * 30.0 if self.current_days else 0.0

    @property
    def baseline_rate_per_30d(self) -> float:
        return self.baseline / self.baseline_days * 30.0 if self.baseline_days else 0.0


def trend_test(
    current: int,
    baseline: int,
    *,
    current_days: float,
    baseline_days: float,
    alpha: float = 0.05,
    min_count: int = 3,
) -> TrendResult:
    """Is the current incident rate significantly above the baseline rate? (pure)"""
    if current < 0 or baseline < 0:
        raise ValueError(f"counts must be >= 0, got {current!r} and {baseline!r}")
    if current_days <= 0 or baseline_days <= 0:
        raise ValueError("'current_days' and 'baseline_days' must be > 0")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"'alpha' must be in (0, 1), got {alpha!r}")
    total = current + baseline
    share = current_days / (current_days + baseline_days)
    from scipy.stats import binomtest  # imported here: scipy.stats costs ~1 s to import

    p = 1.0 if total == 0 else float(binomtest(current, total, share, alternative="greater").pvalue)
    return TrendResult(
        current=current,
        baseline=baseline,
        current_days=current_days,
        baseline_days=baseline_days,
        p_value=p,
        alpha=alpha,
        min_count=min_count,
        flagged=current >= min_count and p < alpha,
    )


@dataclass(frozen=True, slots=True)
class ModelTrend:
    model: str
    period_start: datetime
    period_end: datetime
    result: TrendResult
    pending_assessment: int


def assess_trends(
    store: Store,
    *,
    now: datetime,
    model: str | None = None,
    period_days: int = 90,
    baseline_periods: int = 4,
    alpha: float = 0.05,
    min_count: int = 3,
) -> list[ModelTrend]:
    """The Article 88 trend test per model over the stored incidents."""
    if period_days < 1 or baseline_periods < 1:
        raise ValueError("'period_days' and 'baseline_periods' must be >= 1")
    start = now - timedelta(days=period_days)
    baseline_start = start - timedelta(days=period_days * baseline_periods)
    incidents = store.incidents.find(status=None, model=model)
    names = sorted({m.name for m in store.registry.models()} if model is None else {model})
    trends = []
    for name in names:
        mine = [i for i in incidents if i.model == name and baseline_start <= i.opened_at < now]
        non_serious = [i for i in mine if i.vigilance_class in NON_SERIOUS]
        current = sum(i.opened_at >= start for i in non_serious)
        result = trend_test(
            current,
            len(non_serious) - current,
            current_days=float(period_days),
            baseline_days=float(period_days * baseline_periods),
            alpha=alpha,
            min_count=min_count,
        )
        pending = sum(
            i.vigilance_class == VigilanceClass.ASSESSMENT_PENDING.value and i.opened_at >= start
            for i in mine
        )
        trends.append(ModelTrend(name, start, now, result, pending))
    return trends


__all__ = ["NON_SERIOUS", "ModelTrend", "TrendResult", "assess_trends", "trend_test"]
