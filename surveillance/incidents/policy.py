"""Turn drift and performance checks into incidents: one per root cause.

Signals (what can open an incident; nothing else ever does):

* a performance ``breach`` (the interval lies below the alert limit) of a
  labelled window; severity ``critical`` overall, ``high`` at a site or scanner;
* a performance ``warning`` whose CUSUM chart alarms in at least
  ``[drift] persistence_windows`` consecutive windows (severity ``medium``);
* drift: a signal whose checks have status exactly ``drift`` in at least
  ``persistence_windows`` consecutive windows (severity ``medium``). Any other
  drift status (``below_tolerance``: significant but small) never counts.

Root cause: every signal is attributed to the **narrowest stratum that explains
it**: a scanner with signals is a root; a site is a root only when none of its
scanners is; overall is a root only when nothing below it is. Signals of the
strata above a root (its site, overall) *roll up* into it as evidence, not as
incidents of their own. Other strata (sex, age band) are roots of their own.
One incident per (model, root): it gathers every signal there, its severity is
the worst signal's, and it pages once (the outbox key is per incident).

Lifecycle: the store keeps one live incident per root key; a closed incident is
never reopened by the evidence it was closed on. Only windows that end after the
close count again, and if they still make a signal (a persistent drift run
needs its windows after the close), they open a *recurrence* linked to the
closed incident, with its own awareness date.

The policy reads the model's stored checks of the last year (:data:`POLICY_HORIZON`;
the drift and performance jobs run on their own schedules, and checks are
incremental), plus those passed in.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from surveillance.analysis.onset import coinciding_change, describe_change, persistent_onset
from surveillance.core.config import DriftConfig
from surveillance.core.metrics import sample_phrase
from surveillance.core.metrics import title as metric_title
from surveillance.core.statuses import DriftStatus, PerformanceStatus, Severity, SignalKind
from surveillance.incidents.alerts.messages import drift_detail, drift_strength
from surveillance.incidents.vigilance import VigilanceClass, deadlines
from surveillance.store import DriftCheck, Incident, ModelInfo, PerformanceCheck, Store
from surveillance.store.incidents import SEVERITY_RANK, IncidentSignal, worst_severity

#: how far back the policy reads stored checks (bounds memory; older windows are history)
POLICY_HORIZON = timedelta(days=366)
#: how specific a stratum kind is (lower = narrower); unknown kinds are their own roots
STRATUM_LEVEL = {"scanner": 0, "site": 1, "overall": 2}


@dataclass(frozen=True, slots=True)
class PolicyOutcome:
    opened: tuple[Incident, ...]
    updated: tuple[Incident, ...]


@dataclass(slots=True)
class Signal:
    """One drift or performance signal at one stratum, with the checks behind it."""

    kind: str  # SignalKind
    name: str  # drift signal name, or finding:metric
    stratum_kind: str
    stratum_value: str
    severity: str
    line: str
    since: datetime
    evidence_at: datetime
    drift_ids: list[int] = field(default_factory=list)
    performance_ids: list[int] = field(default_factory=list)


def _where(kind: str, value: str) -> str:
    return "all sites" if kind == "overall" else f"{kind} {value}"


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def site_of(stratum_kind: str, stratum_value: str) -> str | None:
    """The site a scanner or site stratum belongs to (scanner labels end ``@ site``)."""
    if stratum_kind == "site":
        return stratum_value
    if stratum_kind == "scanner":
        return stratum_value.rpartition(" @ ")[2] or None
    return None


def root_key(model_id: int, stratum_kind: str, stratum_value: str) -> str:
    """The de-duplication key of the incident of one root cause."""
    return f"{model_id}|root|{stratum_kind}={stratum_value}"


def _latest_per_window(checks: Sequence[Any], identity: Any) -> list[Any]:
    """The latest check (highest id) of each identity (a re-judged window counts once)."""
    best: dict[Any, Any] = {}
    for c in checks:
        key = identity(c)
        if key not in best or c.id > best[key].id:
            best[key] = c
    return sorted(best.values(), key=lambda c: (c.window_start, c.id))


def _runs(items: Sequence[Any], hit: Any, persistence: int) -> list[Any]:
    """Items (time-ordered) in runs of >= ``persistence`` consecutive windows that ``hit``."""
    by_window: dict[datetime, list[Any]] = defaultdict(list)
    for item in items:
        by_window[item.window_start].append(item)
    found: list[Any] = []
    run: list[Any] = []
    windows = 0
    for start in sorted(by_window):
        group = by_window[start]
        hits = [c for c in group if hit(c)]
        if hits:
            run.extend(hits)
            windows += 1
            continue
        if all(getattr(c, "status", "") == "insufficient_data" for c in group):
            continue  # an undecidable window neither extends nor breaks a run
        if windows >= persistence:
            found.extend(run)
        run, windows = [], 0
    if windows >= persistence:
        found.extend(run)
    return found


def _performance_signals(
    model: ModelInfo, checks: Sequence[PerformanceCheck], persistence: int
) -> list[Signal]:
    labelled = _latest_per_window(
        [c for c in checks if not c.estimated],  # an estimate never opens an incident
        lambda c: (c.finding, c.metric, c.stratum_kind, c.stratum_value, c.window_start),
    )
    series: dict[tuple[str, str, str, str], list[PerformanceCheck]] = defaultdict(list)
    for c in labelled:
        series[(c.finding, c.metric, c.stratum_kind, c.stratum_value)].append(c)
    signals = []
    for (finding, metric, kind, value), items in sorted(series.items()):
        breaches = [c for c in items if c.status == PerformanceStatus.BREACH]
        severity = Severity.CRITICAL if kind == "overall" else Severity.HIGH
        if not breaches:
            breaches = _runs(
                items,
                lambda c: (
                    c.status == PerformanceStatus.WARNING
                    and bool((c.details.get("cusum") or {}).get("alarm"))
                ),
                persistence,
            )
            severity = Severity.MEDIUM
        if not breaches:
            continue
        latest = max(breaches, key=lambda c: c.window_end)
        baseline = model.baseline(
            finding, metric, "overall" if kind == "overall" else f"{kind}={value}"
        )
        source = f" (source: {baseline.source_document})" if baseline else ""
        state = "below the alert limit" if latest.status == "breach" else "CUSUM alarm"
        line = (
            f"{metric_title(metric)} for {finding} at {_where(kind, value)}: "
            f"{_fmt(latest.value)} (95% CI {_fmt(latest.ci_lower)}-{_fmt(latest.ci_upper)}, "
            f"{sample_phrase(latest.metric, latest.n, latest.details)}) "
            f"in {latest.window_start:%Y-%m-%d}..{latest.window_end:%Y-%m-%d}, "
            f"{state} {_fmt(latest.alert_limit)}; clearance {_fmt(latest.baseline_value)}"
            f"{source}; {len(breaches)} window(s)"
        )
        signals.append(
            Signal(
                kind=SignalKind.PERFORMANCE,
                name=f"{finding}:{metric}",
                stratum_kind=kind,
                stratum_value=value,
                severity=severity,
                line=line,
                since=min(c.window_start for c in breaches),
                evidence_at=latest.window_end,
                performance_ids=[c.id for c in breaches],
            )
        )
    return signals


def _drift_signals(checks: Sequence[DriftCheck], persistence: int) -> list[Signal]:
    latest = _latest_per_window(
        checks,
        lambda c: (c.detector, c.signal, c.stratum_kind, c.stratum_value, c.window_start),
    )
    series: dict[tuple[str, str, str], list[DriftCheck]] = defaultdict(list)
    for c in latest:
        series[(c.signal, c.stratum_kind, c.stratum_value)].append(c)
    signals = []
    for (name, kind, value), items in sorted(series.items()):
        hits = _runs(items, lambda c: c.status == DriftStatus.DRIFT, persistence)
        if not hits:
            continue
        since = persistent_onset(items, persistence) or min(h.window_start for h in hits)
        strongest = min(hits, key=lambda h: h.p_value if h.p_value is not None else 1.0)
        line = (
            f"drift in {name}{drift_detail(strongest)} at {_where(kind, value)} "
            f"since {since:%Y-%m-%d}: {drift_strength(strongest)} ({strongest.n_window} cases vs "
            f"{strongest.n_reference} in the reference), {len(hits)} window(s)"
        )
        signals.append(
            Signal(
                kind=SignalKind.DRIFT,
                name=name,
                stratum_kind=kind,
                stratum_value=value,
                severity=Severity.MEDIUM,
                line=line,
                since=since,
                evidence_at=max(h.window_end for h in hits),
                drift_ids=[h.id for h in hits],
            )
        )
    return signals


def find_roots(signals: Sequence[Signal]) -> dict[tuple[str, str], list[Signal]]:
    """Signals grouped by root stratum; roll-ups (site, overall) are attached to their roots.

    Returns ``{(kind, value): [own signals..., rolled-up signals...]}``; a rolled-up
    signal is recognisable by its stratum differing from the key.
    """
    strata = {(s.stratum_kind, s.stratum_value) for s in signals}
    scanners = {v for k, v in strata if k == "scanner"}
    scanner_sites = {site_of("scanner", v) for v in scanners}
    roots: set[tuple[str, str]] = {("scanner", v) for v in scanners}
    roots |= {("site", v) for k, v in strata if k == "site" and v not in scanner_sites}
    if not roots:  # nothing narrower explains it: the whole deployment is the root
        roots |= {(k, v) for k, v in strata if k == "overall"}
    roots |= {(k, v) for k, v in strata if k not in STRATUM_LEVEL}
    grouped: dict[tuple[str, str], list[Signal]] = {r: [] for r in roots}
    for s in signals:
        here = (s.stratum_kind, s.stratum_value)
        if here in grouped:
            grouped[here].append(s)
    for s in signals:  # roll-ups after the root's own signals
        here = (s.stratum_kind, s.stratum_value)
        if here in grouped:
            continue
        for kind, value in grouped:
            if (s.stratum_kind == "overall" and kind in STRATUM_LEVEL) or (
                s.stratum_kind == "site"
                and kind == "scanner"
                and site_of(kind, value) == s.stratum_value
            ):
                grouped[(kind, value)].append(s)
    return grouped


def _change_line(
    store: Store, model: ModelInfo, kind: str, value: str, since: datetime, window_days: int
) -> str | None:
    changes = store.checks.change_events(model.id, stratum_kind=kind, stratum_value=value)
    change = coinciding_change(changes, since, window_days)
    return describe_change(change) if change is not None else None


def _incident_signal(
    store: Store,
    model: ModelInfo,
    root: tuple[str, str],
    signals: Sequence[Signal],
    settings: DriftConfig,
    now: datetime,
) -> IncidentSignal:
    kind, value = root
    own = [s for s in signals if (s.stratum_kind, s.stratum_value) == root]
    rollups = [s for s in signals if (s.stratum_kind, s.stratum_value) != root]
    severity = worst_severity(*(s.severity for s in signals))
    performance = [s for s in own if s.kind == SignalKind.PERFORMANCE]
    drift = [s for s in own if s.kind == SignalKind.DRIFT]
    lead = sorted(own, key=lambda s: (-SEVERITY_RANK[s.severity], s.kind != "performance"))[0]
    since = min(s.since for s in own)
    change = _change_line(store, model, kind, value, since, settings.window_days)
    parts = []
    if performance:
        names = sorted({metric_title(s.name.partition(":")[2]) for s in performance})
        parts.append(f"{', '.join(names)} below clearance limit")
    if drift:
        names = sorted({s.name for s in drift})
        parts.append("data drift in " + ", ".join(names[:3]) + ("..." if len(names) > 3 else ""))
    title = f"{'; '.join(parts)} at {_where(kind, value)}"
    lines = [f"Root cause stratum: {_where(kind, value)} since {since:%Y-%m-%d}."]
    if change:
        lines.append(f"Coinciding change: {change}.")
    lines += [f"- {s.line}" for s in own]
    if rollups:
        lines.append("Rolled up from the strata above (evidence, not separate incidents):")
        lines += [f"- {s.line}" for s in rollups]
    lines.append(
        "Next: confirm what changed at this stratum (scanner software, protocol, population), "
        "review the missed cases, assess vigilance reportability."
    )
    mdr, fda = deadlines(VigilanceClass.ASSESSMENT_PENDING, now)
    return IncidentSignal(
        model_id=model.id,
        signal_kind=SignalKind.PERFORMANCE if performance else SignalKind.DRIFT,
        signal=lead.name if lead.kind == SignalKind.PERFORMANCE else "drift",
        stratum_kind=kind,
        stratum_value=value,
        severity=severity,
        title=title[:500],
        summary="\n".join(lines),
        evidence_at=max(s.evidence_at for s in signals),
        vigilance_class=VigilanceClass.ASSESSMENT_PENDING.value,
        mdr_deadline_at=mdr,
        fda_deadline_at=fda,
        drift_check_ids=tuple(i for s in own for i in s.drift_ids),
        performance_check_ids=tuple(i for s in own for i in s.performance_ids),
        rollup_drift_check_ids=tuple(i for s in rollups for i in s.drift_ids),
        rollup_performance_check_ids=tuple(i for s in rollups for i in s.performance_ids),
        key=root_key(model.id, kind, value),
    )


def signals_for(
    model: ModelInfo,
    drift_checks: Sequence[DriftCheck],
    performance_checks: Sequence[PerformanceCheck],
    settings: DriftConfig,
) -> list[Signal]:
    """Every drift and performance signal of the checks (see the module docstring)."""
    persistence = settings.persistence_windows
    return _performance_signals(model, performance_checks, persistence) + _drift_signals(
        drift_checks, persistence
    )


def apply_policy(
    store: Store,
    model: ModelInfo,
    drift_checks: Sequence[DriftCheck],
    performance_checks: Sequence[PerformanceCheck],
    settings: DriftConfig,
    *,
    now: datetime,
) -> PolicyOutcome:
    """Open or update one incident per root cause of ``model`` (module docstring)."""
    since = now - POLICY_HORIZON
    # the stored series that flagged in the horizon (whole), and this run's checks
    stored_drift = store.checks.drift(model.id, start=since, flagged_series=True)
    stored_perf = store.checks.performance(model.id, start=since, flagged_series=True)
    # this run's checks are stored already; those before the horizon are history (a
    # caller may pass only the flagged ones, and a series needs its ok windows to break runs)
    drift = {c.id: c for c in stored_drift} | {
        c.id: c for c in drift_checks if c.window_end > since
    }
    perf = {c.id: c for c in stored_perf} | {c.id: c for c in performance_checks}
    roots = find_roots(signals_for(model, list(drift.values()), list(perf.values()), settings))
    opened: list[Incident] = []
    updated: list[Incident] = []
    for root, signals in sorted(roots.items()):
        key = root_key(model.id, *root)
        if store.incidents.live(key) is None:
            closed = store.incidents.last_closed(key)
            if closed is not None and closed.closed_at is not None:
                # only windows after the close count again
                cutoff = closed.closed_at
                again = signals_for(
                    model,
                    [c for c in drift.values() if c.window_end > cutoff],
                    [c for c in perf.values() if c.window_end > cutoff],
                    settings,
                )
                signals = find_roots(again).get(root, [])
                if not signals:
                    continue
        incident, created = store.incidents.raise_(
            _incident_signal(store, model, root, signals, settings, now),
            actor="policy",
            now=now,  # awareness and the deadlines computed from it
        )
        if created:
            opened.append(incident)
        elif incident.status != "closed":
            updated.append(incident)
    return PolicyOutcome(opened=tuple(opened), updated=tuple(updated))


__all__ = ["PolicyOutcome", "Signal", "apply_policy", "find_roots", "root_key", "signals_for"]
