"""Turn drift and performance checks into incidents.

* A performance ``breach`` (the upper confidence bound below the alert limit)
  opens an incident for (model, stratum, finding:metric) at once.
* Drift opens an incident for (model, stratum) when a signal drifts in at least
  ``persistence_windows`` consecutive windows. When a scanner drifts, the same
  signal at its site and overall is not raised separately: the scanner incident
  carries the evidence and the on-call engineer gets one page, not three.

Incidents are de-duplicated by the store: new evidence updates the open
incident of the same key. Every incident starts ``assessment_pending`` with
the conservative vigilance deadlines of :mod:`surveillance.incidents.vigilance`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from surveillance.core.config import DriftConfig
from surveillance.core.metrics import title as metric_title
from surveillance.incidents.vigilance import VigilanceClass, deadlines
from surveillance.store import DriftCheck, Incident, ModelInfo, PerformanceCheck, Store
from surveillance.store.incidents import IncidentSignal

STRATUM_ORDER = {"scanner": 0, "site": 1, "sex": 1, "age_band": 1, "overall": 2}

@dataclass(frozen=True, slots=True)
class PolicyOutcome:
    opened: tuple[Incident, ...]
    updated: tuple[Incident, ...]


def _where(kind: str, value: str) -> str:
    return "all sites" if kind == "overall" else f"{kind} {value}"


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _performance_signals(
    model: ModelInfo, checks: Sequence[PerformanceCheck], now: datetime
) -> list[IncidentSignal]:
    groups: dict[tuple[str, str, str, str], list[PerformanceCheck]] = defaultdict(list)
    for c in checks:
        if c.status == "breach" and not c.estimated:  # an estimate never opens an incident
            groups[(c.finding, c.metric, c.stratum_kind, c.stratum_value)].append(c)
    signals = []
    mdr, fda = deadlines(VigilanceClass.ASSESSMENT_PENDING, now)
    for (finding, metric, kind, value), breaches in sorted(groups.items()):
        latest = max(breaches, key=lambda c: c.window_end)
        name = metric_title(metric)
        baseline = model.baseline(
            finding, metric, "overall" if kind == "overall" else f"{kind}={value}"
        )
        source = f" (source: {baseline.source_document})" if baseline else ""
        labelled = (
            f"{latest.labelled_fraction:.0%} of studies labelled"
            if latest.labelled_fraction is not None
            else "labelled fraction unknown"
        )
        summary = (
            f"{name} for {finding} at {_where(kind, value)} was {_fmt(latest.value)} "
            f"(95% CI {_fmt(latest.ci_lower)}-{_fmt(latest.ci_upper)}, n={latest.n}) in "
            f"{latest.window_start:%Y-%m-%d}..{latest.window_end:%Y-%m-%d}, clearly below the "
            f"alert limit {_fmt(latest.alert_limit)}; clearance value {_fmt(latest.baseline_value)}"
            f"{source}. {labelled}. {len(breaches)} window(s) in breach. Next: check the scanner "
            "and protocol changes at this stratum, review the missed cases, assess vigilance "
            "reportability."
        )
        severity = "critical" if kind == "overall" else "high"
        signals.append(
            IncidentSignal(
                model_id=model.id,
                signal_kind="performance",
                signal=f"{finding}:{metric}",
                stratum_kind=kind,
                stratum_value=value,
                severity=severity,
                title=f"{name} for {finding} below clearance limit at {_where(kind, value)}",
                summary=summary,
                evidence_at=latest.window_end,
                vigilance_class=VigilanceClass.ASSESSMENT_PENDING.value,
                mdr_deadline_at=mdr,
                fda_deadline_at=fda,
                performance_check_ids=tuple(c.id for c in breaches),
            )
        )
    return signals


def _persistent_runs(series: Sequence[DriftCheck], persistence: int) -> list[DriftCheck]:
    """The checks that belong to a run of >= ``persistence`` consecutive drifted windows."""
    hits: list[DriftCheck] = []
    run: list[DriftCheck] = []
    for check in sorted(series, key=lambda c: c.window_start):
        if check.status == "drift":
            run.append(check)
        else:
            if len(run) >= persistence:
                hits.extend(run)
            run = []
    if len(run) >= persistence:
        hits.extend(run)
    return hits


def _drift_signals(
    model: ModelInfo, checks: Sequence[DriftCheck], settings: DriftConfig, now: datetime
) -> list[IncidentSignal]:
    series: dict[tuple[str, str, str], list[DriftCheck]] = defaultdict(list)
    for c in checks:
        series[(c.signal, c.stratum_kind, c.stratum_value)].append(c)
    persistent: dict[tuple[str, str], list[DriftCheck]] = defaultdict(list)
    explained: set[str] = set()  # signals already raised at a more specific stratum
    for (signal, kind, value), items in sorted(
        series.items(), key=lambda kv: (STRATUM_ORDER.get(kv[0][1], 1), kv[0])
    ):
        hits = _persistent_runs(items, settings.persistence_windows)
        if not hits:
            continue
        if kind != "scanner" and signal in explained:
            continue
        if kind == "scanner":
            explained.add(signal)
        persistent[(kind, value)].extend(hits)
    mdr, fda = deadlines(VigilanceClass.ASSESSMENT_PENDING, now)
    signals = []
    for (kind, value), hits in sorted(persistent.items()):
        drifted = sorted({h.signal for h in hits})
        first = min(h.window_start for h in hits)
        latest = max(hits, key=lambda h: h.window_end)
        strongest = min(hits, key=lambda h: h.p_value if h.p_value is not None else 1.0)
        detail = strongest.details.get("new_categories") or strongest.details.get("feature")
        extra = f" (e.g. {strongest.signal}: {detail})" if detail else ""
        summary = (
            f"Distribution shift at {_where(kind, value)} since {first:%Y-%m-%d} in "
            f"{', '.join(drifted)}{extra}; strongest p={strongest.p_value:.2g} vs alpha "
            f"{strongest.threshold} ({strongest.n_window} cases vs {strongest.n_reference} in "
            f"the reference), persisting {len(hits)} window-signal(s). Next: confirm what "
            "changed (scanner software, protocol, population) and watch performance at this "
            "stratum."
        )
        signals.append(
            IncidentSignal(
                model_id=model.id,
                signal_kind="drift",
                signal="drift",
                stratum_kind=kind,
                stratum_value=value,
                severity="medium",
                title=f"Data drift at {_where(kind, value)}: {', '.join(drifted[:3])}"
                + ("..." if len(drifted) > 3 else ""),
                summary=summary,
                evidence_at=latest.window_end,
                vigilance_class=VigilanceClass.ASSESSMENT_PENDING.value,
                mdr_deadline_at=mdr,
                fda_deadline_at=fda,
                drift_check_ids=tuple(h.id for h in hits),
            )
        )
    return signals


def apply_policy(
    store: Store,
    model: ModelInfo,
    drift_checks: Sequence[DriftCheck],
    performance_checks: Sequence[PerformanceCheck],
    settings: DriftConfig,
    *,
    now: datetime,
) -> PolicyOutcome:
    opened: list[Incident] = []
    updated: list[Incident] = []
    signals = _performance_signals(model, performance_checks, now) + _drift_signals(
        model, drift_checks, settings, now
    )
    for signal in signals:
        incident, created = store.incidents.raise_(signal, actor="policy")
        (opened if created else updated).append(incident)
    return PolicyOutcome(opened=tuple(opened), updated=tuple(updated))


__all__ = ["PolicyOutcome", "apply_policy"]
