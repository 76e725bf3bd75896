"""Rich tables shared by the CLI and the demo summary."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from rich.table import Table

from surveillance.core.statuses import DeadlineStatus
from surveillance.incidents.vigilance import time_left
from surveillance.store import DriftCheck, Incident, PerformanceCheck
from surveillance.store.domain import DeadlineState, VolumeRow
from surveillance.store.incidents import incident_deadlines

STATUS_STYLE = {
    "ok": "green",
    "warning": "yellow",
    "breach": "bold red",
    "drift": "bold red",
    "insufficient_data": "dim",
    "below_tolerance": "yellow",
}


def when(moment: datetime | None) -> str:
    return "-" if moment is None else f"{moment:%Y-%m-%d %H:%M}"


def styled(status: str) -> str:
    style = STATUS_STYLE.get(status, "")
    label = status.replace("_", " ")
    return f"[{style}]{label}[/]" if style else label


def deadline_text(state: DeadlineState, now: datetime) -> str:
    """``2026-12-01 10:00`` plus ``met (reported ...)``, ``MISSED ...`` or the time left."""
    if state.status == DeadlineStatus.NOT_APPLICABLE:
        return "-" if state.due_at is None else f"{when(state.due_at)}\nnot applicable"
    if state.status == DeadlineStatus.MET:
        return f"{when(state.due_at)}\nmet: reported {when(state.reported_at)}"
    if state.status == DeadlineStatus.MISSED:
        late = (
            f"reported {when(state.reported_at)}"
            if state.reported_at is not None
            else time_left(state.due_at, now)
        )
        return f"{when(state.due_at)}\n[bold red]MISSED[/]: {late}"
    return f"{when(state.due_at)}\nopen: {time_left(state.due_at, now)}"


def incidents_table(items: Sequence[Incident], now: datetime) -> Table:
    table = Table(
        "id",
        "status",
        "severity",
        "title",
        "opened",
        "vigilance",
        "EU MDR deadline",
        "FDA deadline",
        title="Incidents",
    )
    for i in items:
        mdr, fda = incident_deadlines(i, now)
        recurrence = f" (recurs #{i.recurrence_of})" if i.recurrence_of else ""
        table.add_row(
            str(i.id),
            i.status,
            i.severity,
            i.title + recurrence,
            when(i.opened_at),
            i.vigilance_class.replace("_", " "),
            deadline_text(mdr, now),
            deadline_text(fda, now),
        )
    return table


def volumes_table(rows: Sequence[VolumeRow]) -> Table:
    table = Table("site", "scanner", "studies", "labelled", "first", "last", title="Volumes")
    for r in rows:
        share = f"{r.labelled / r.studies:.0%}" if r.studies else "-"
        table.add_row(
            r.site,
            r.scanner,
            str(r.studies),
            f"{r.labelled} ({share})",
            when(r.first_at),
            when(r.last_at),
        )
    return table


def drift_table(checks: Sequence[DriftCheck]) -> Table:
    """One row per stratum that drifted: which signals, since when, how strongly."""
    table = Table(
        "stratum",
        "signals drifted",
        "first drifted window",
        "windows drifted",
        "smallest p",
        title="Drift (strata with drift)",
    )
    by_stratum: dict[tuple[str, str], list[DriftCheck]] = {}
    for c in checks:
        if c.status == "drift":
            by_stratum.setdefault((c.stratum_kind, c.stratum_value), []).append(c)
    for (kind, value), hits in sorted(by_stratum.items()):
        first = min(h.window_start for h in hits)
        p = min(h.p_value for h in hits if h.p_value is not None)
        windows = len({h.window_start for h in hits})
        table.add_row(
            f"{kind}: {value}",
            ", ".join(sorted({h.signal for h in hits})),
            f"{first:%Y-%m-%d}",
            str(windows),
            f"{p:.1e}",
        )
    return table


def _cell(check: PerformanceCheck | None) -> str:
    if check is None or check.value is None:
        return "-"
    ci = ""
    if check.ci_lower is not None and check.ci_upper is not None:
        ci = f" ({check.ci_lower:.2f}-{check.ci_upper:.2f})"
    return f"{check.value:.2f}{ci} {styled(check.status)}"


def performance_table(
    checks: Sequence[PerformanceCheck],
    metrics: Sequence[str] = ("sensitivity", "specificity", "auroc"),
) -> Table:
    """The latest judged window per stratum, against the baseline's alert limit."""
    judged = [c for c in checks if not c.estimated]
    if not judged:
        return Table(title="Performance: no matured window yet")
    latest_end = max(c.window_end for c in judged)
    latest = [c for c in judged if c.window_end == latest_end]
    start = latest[0].window_start
    table = Table(
        "stratum",
        "labelled",
        *metrics,
        title=f"Performance vs clearance baseline, {start:%Y-%m-%d}.."
        f"{latest_end:%Y-%m-%d} (95% CI)",
    )
    strata: dict[tuple[str, str], dict[str, PerformanceCheck]] = {}
    for c in latest:
        strata.setdefault((c.stratum_kind, c.stratum_value), {})[c.metric] = c
    order = {"overall": 0, "site": 1, "scanner": 2}
    for (kind, value), by_metric in sorted(
        strata.items(), key=lambda kv: (order.get(kv[0][0], 3), kv[0][1])
    ):
        any_check = next(iter(by_metric.values()))
        labelled = (
            f"{any_check.labelled_fraction:.0%}" if any_check.labelled_fraction is not None else "-"
        )
        table.add_row(f"{kind}: {value}", labelled, *(_cell(by_metric.get(m)) for m in metrics))
    return table


def _value_ci(check: PerformanceCheck) -> str:
    if check.value is None:
        return "-"
    if check.ci_lower is None or check.ci_upper is None:
        return f"{check.value:.3f}"
    return f"{check.value:.3f} ({check.ci_lower:.3f}-{check.ci_upper:.3f})"


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.2g}"


def drift_results_table(checks: Sequence[DriftCheck]) -> Table:
    """Every drift check: one row per (window, stratum, signal, detector)."""
    table = Table(
        "window",
        "stratum",
        "signal",
        "detector",
        "status",
        "statistic",
        "p",
        "p adj.",
        "alpha",
        "effect (tolerance)",
        "n",
        title="Drift results",
    )
    for c in checks:
        effect = "-"
        if c.effect_size is not None:
            effect = f"{c.effect_name or 'effect'} {c.effect_size:.2f}"
            if c.min_effect is not None:
                effect += f" ({c.min_effect:.2f})"
        table.add_row(
            f"{c.window_start:%Y-%m-%d}..{c.window_end:%Y-%m-%d}",
            f"{c.stratum_kind}: {c.stratum_value}",
            c.signal,
            c.detector,
            styled(c.status),
            "-" if c.statistic is None else f"{c.statistic:.3g}",
            _p(c.p_value),
            _p(c.p_adjusted),
            f"{c.threshold:g}",
            effect,
            f"{c.n_window} vs {c.n_reference}",
        )
    return table


def performance_results_table(checks: Sequence[PerformanceCheck]) -> Table:
    """Every performance check: one row per (window, stratum, finding, metric)."""
    table = Table(
        "window",
        "stratum",
        "finding",
        "metric",
        "status",
        "value (95% CI)",
        "alert limit",
        "n",
        "labelled",
        "estimated",
        title="Performance results",
    )
    for c in checks:
        table.add_row(
            f"{c.window_start:%Y-%m-%d}..{c.window_end:%Y-%m-%d}",
            f"{c.stratum_kind}: {c.stratum_value}",
            c.finding,
            c.metric,
            styled(c.status),
            _value_ci(c),
            "-" if c.alert_limit is None else f"{c.alert_limit:.3f}",
            str(c.n),
            "-" if c.labelled_fraction is None else f"{c.labelled_fraction:.0%}",
            "yes" if c.estimated else "no",
        )
    return table


__all__ = [
    "deadline_text",
    "drift_results_table",
    "drift_table",
    "incidents_table",
    "performance_results_table",
    "performance_table",
    "styled",
    "volumes_table",
    "when",
]
