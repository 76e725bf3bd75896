"""The quarterly post-market surveillance (PMS) report, HTML and PDF.

``write_pms_report(store, "cxr-pneumothorax", "2026Q3", out_dir)`` writes::

    out_dir/pms-<model>-<period>.html     self-contained (figures embedded)
    out_dir/pms-<model>-<period>.pdf      the same content on A4 pages
    out_dir/figures/*.png                 each figure on its own
    out_dir/evidently-data-drift.html     when the optional ``reports`` extra is installed

Both files are rendered from one :class:`~surveillance.outputs.reports.document.Document`,
so they always say the same thing. The report reads only: the figures are the
stored check results (the same the incidents were opened from); nothing is
recomputed except counts, label coverage and the evidently attachment. Writing
a report appends one ``report.pms`` audit event with the SHA-256 of each file.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from surveillance.core.config import Settings
from surveillance.core.errors import UsageError
from surveillance.incidents.vigilance import time_left
from surveillance.outputs.reports import plots
from surveillance.outputs.reports.document import (
    BlankField,
    Block,
    Document,
    FigureBlock,
    KeyValues,
    Paragraph,
    Section,
    TableBlock,
)
from surveillance.outputs.reports.pdf import write_pdf
from surveillance.store import DriftCheck, ModelInfo, PerformanceCheck, Store
from surveillance.store import reporting as rs
from surveillance.store.domain import JobRun, ReferenceSet
from surveillance.store.types import utcnow

STRATUM_ORDER = {"overall": 0, "site": 1, "scanner": 2}
SEVERITY = {"ok": 0, "insufficient_data": 0, "warning": 1, "breach": 2}
EVIDENTLY_NAME = "evidently-data-drift.html"
EVIDENTLY_MAX_ROWS = 5000


# ---- periods --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Period:
    """A half-open UTC interval ``[start, end)`` with the label people use for it."""

    label: str
    start: datetime
    end: datetime

    @property
    def last_day(self) -> date:
        return (self.end - timedelta(microseconds=1)).date()

    def describe(self) -> str:
        return f"{self.label} ({self.start:%Y-%m-%d} to {self.last_day:%Y-%m-%d}, UTC)"


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def quarter(year: int, q: int) -> Period:
    if q not in (1, 2, 3, 4):
        raise UsageError(f"quarter must be 1-4, got {q}")
    start = datetime(year, 3 * q - 2, 1, tzinfo=UTC)
    end = datetime(year + (q == 4), 1 if q == 4 else 3 * q + 1, 1, tzinfo=UTC)
    return Period(f"{year}Q{q}", start, end)


def date_range(first: date, last: date) -> Period:
    """Inclusive calendar dates ``first``..``last`` (UTC)."""
    if last < first:
        raise UsageError(f"period end {last} is before its start {first}")
    return Period(
        f"{first:%Y-%m-%d}..{last:%Y-%m-%d}", _midnight(first), _midnight(last) + timedelta(days=1)
    )


def parse_period(text: str) -> Period:
    """``2026Q3`` (a calendar quarter) or ``2026-07-01..2026-09-30`` (inclusive dates)."""
    value = text.strip()
    match = re.fullmatch(r"(\d{4})-?Q([1-4])", value, flags=re.IGNORECASE)
    if match:
        return quarter(int(match.group(1)), int(match.group(2)))
    if ".." in value:
        first, _, last = value.partition("..")
        try:
            return date_range(date.fromisoformat(first.strip()), date.fromisoformat(last.strip()))
        except ValueError as exc:
            raise UsageError(f"--period {text!r}: {exc}; expected YYYY-MM-DD..YYYY-MM-DD") from exc
    raise UsageError(
        f"--period {text!r} is not a period: expected a quarter such as 2026Q3 "
        "or inclusive dates such as 2026-07-01..2026-09-30"
    )


def previous_quarter(now: datetime) -> Period:
    """The last calendar quarter that ended before ``now``."""
    q = (now.month - 1) // 3 + 1
    return quarter(now.year - 1, 4) if q == 1 else quarter(now.year, q - 1)


# ---- results ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReportFiles:
    html: Path
    pdf: Path
    figures: tuple[Path, ...]
    evidently: Path | None
    evidently_note: str

    @property
    def all(self) -> list[Path]:
        return [self.html, self.pdf, *self.figures, *([self.evidently] if self.evidently else [])]


# ---- formatting helpers --------------------------------------------------------------


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else f"{moment:%Y-%m-%d %H:%M}"


def _day(moment: datetime | None) -> str:
    return "-" if moment is None else f"{moment:%Y-%m-%d}"


def _ci(lower: float | None, upper: float | None) -> str:
    return "" if lower is None or upper is None else f" ({lower:.3f}-{upper:.3f})"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _stratum(kind: str, value: str) -> str:
    return "overall" if kind == "overall" else f"{kind}: {value}"


def _stratum_key(kind: str, value: str) -> tuple[int, str]:
    return STRATUM_ORDER.get(kind, 3), value


def deadline_status(
    deadline: datetime | None,
    *,
    reported_at: datetime | None,
    vigilance_class: str,
    now: datetime,
) -> tuple[str, str]:
    """(text, status) for one reporting deadline: met, missed, open or not applicable."""
    if vigilance_class == "not_reportable":
        return "not applicable: assessed not reportable", "ok"
    if deadline is None:
        return "not applicable", ""
    if reported_at is not None:
        if reported_at <= deadline:
            return f"met: reported {_when(reported_at)}", "ok"
        return (
            f"MISSED: reported {_when(reported_at)}, {time_left(deadline, reported_at)}",
            "missed",
        )
    if now > deadline:
        return f"MISSED: not reported, {time_left(deadline, now)}", "missed"
    return f"open: {time_left(deadline, now)}", "warning"


# ---- the sections ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Inputs:
    model: ModelInfo
    period: Period
    studies: list[rs.StudyInPeriod]
    coverage: list[rs.CoverageRow]
    weekly: list[rs.WeeklyCount]
    drift: list[DriftCheck]
    performance: list[PerformanceCheck]
    incidents: list[rs.IncidentRecord]
    dead_letters: dict[str, int]
    job_runs: list[JobRun]
    references: list[ReferenceSet]


def _baseline_section(model: ModelInfo) -> Section:
    rows = tuple(
        (
            b.finding,
            b.metric,
            b.stratum,
            f"{b.value:.3f}{_ci(b.ci_lower, b.ci_upper)}",
            f"{b.alert_limit:.3f}",
            b.source_document,
        )
        for b in model.baselines
    )
    return Section(
        "baseline",
        "1. Intended use and clearance baseline",
        [
            KeyValues(
                (
                    ("Model", f"{model.name} {model.version}"),
                    ("Manufacturer", model.manufacturer or "-"),
                    ("Intended use", " ".join(model.intended_use.split())),
                    (
                        "Findings (operating threshold)",
                        ", ".join(f"{k} ({v:g})" for k, v in model.findings.items()),
                    ),
                )
            ),
            TableBlock(
                ("finding", "metric", "stratum", "cleared value (95% CI)", "alert limit", "source"),
                rows,
                caption="Clearance baseline: live performance breaches when its upper 95% "
                "confidence bound falls below the alert limit.",
                widths=(1.2, 1, 0.8, 1.4, 0.8, 3.2),
            ),
        ],
    )


def _latest_judged(checks: Sequence[PerformanceCheck]) -> list[PerformanceCheck]:
    judged = [c for c in checks if not c.estimated]
    if not judged:
        return []
    end = max(c.window_end for c in judged)
    return [c for c in judged if c.window_end == end]


def _drift_strata(checks: Sequence[DriftCheck]) -> dict[tuple[str, str], list[DriftCheck]]:
    by_stratum: dict[tuple[str, str], list[DriftCheck]] = {}
    for c in checks:
        if c.status == "drift":
            by_stratum.setdefault((c.stratum_kind, c.stratum_value), []).append(c)
    return by_stratum


def _summary_section(data: _Inputs, now: datetime) -> Section:
    labelled = data.coverage[0] if data.coverage else None
    latest = _latest_judged(data.performance)
    breaches = [c for c in latest if c.status == "breach"]
    warnings_ = [c for c in latest if c.status == "warning"]
    drifted = _drift_strata(data.drift)
    open_incidents = [r for r in data.incidents if r.incident.status != "closed"]
    missed = []
    for r in data.incidents:
        i = r.incident
        for deadline in (i.mdr_deadline_at, i.fda_deadline_at):
            _, status = deadline_status(
                deadline, reported_at=r.reported_at, vigilance_class=i.vigilance_class, now=now
            )
            if status == "missed":
                missed.append(i.id)
    items = (
        (
            "Studies scored",
            f"{len(data.studies)} at {len({s.site for s in data.studies})} "
            f"site(s), {len({s.scanner for s in data.studies})} scanner(s)",
        ),
        (
            "Labelled (confirmed diagnosis)",
            "-" if labelled is None else f"{labelled.labelled} ({_pct(labelled.fraction)})",
        ),
        (
            "Drift checks",
            f"{len(data.drift)} in {len({c.window_start for c in data.drift})} "
            f"window(s); {sum(c.status == 'drift' for c in data.drift)} drifted, in "
            f"{len(drifted)} stratum/strata",
        ),
        (
            "Performance checks",
            f"{len(data.performance)}; latest judged window: "
            f"{len(breaches)} breach(es), {len(warnings_)} warning(s)",
        ),
        (
            "Incidents",
            f"{len(data.incidents)} in the period, {len(open_incidents)} still open; "
            f"{len(set(missed))} with a missed reporting deadline",
        ),
        ("Rejected records (dead letters)", str(sum(data.dead_letters.values()))),
    )
    blocks: list[Block] = [KeyValues(items)]
    for c in sorted(breaches, key=lambda c: _stratum_key(c.stratum_kind, c.stratum_value)):
        blocks.append(
            Paragraph(
                f"Performance breach: {c.finding} {c.metric} at "
                f"{_stratum(c.stratum_kind, c.stratum_value)} was {c.value:.3f}"
                f"{_ci(c.ci_lower, c.ci_upper)} in {_day(c.window_start)}..{_day(c.window_end)}, "
                f"below the alert limit {c.alert_limit:.3f} "
                f"(cleared {c.baseline_value:.3f}).",
                "warning",
            )
        )
    for (kind, value), hits in sorted(drifted.items(), key=lambda kv: _stratum_key(*kv[0])):
        if kind == "scanner" or kind == "overall":
            blocks.append(
                Paragraph(
                    f"Drift at {_stratum(kind, value)}: "
                    f"{', '.join(sorted({h.signal for h in hits}))} "
                    f"from {_day(min(h.window_start for h in hits))}, "
                    f"{len({h.window_start for h in hits})} window(s).",
                    "text",
                )
            )
    if not breaches and not drifted:
        blocks.append(Paragraph("No performance breach and no drift in this period.", "text"))
    for incident_id in sorted(set(missed)):
        blocks.append(Paragraph(f"Incident #{incident_id} missed a reporting deadline.", "warning"))
    return Section("summary", "2. At a glance", blocks)


def _volume_section(data: _Inputs, fig_dir: Path) -> Section:
    total = max(len(data.studies), 1)
    groups: dict[tuple[str, str], list[rs.StudyInPeriod]] = {}
    for s in data.studies:
        groups.setdefault((s.site, s.scanner), []).append(s)
    rows = tuple(
        (
            site,
            scanner,
            str(len(items)),
            f"{len(items) / total:.0%}",
            _when(items[0].predicted_at),
            _when(items[-1].predicted_at),
        )
        for (site, scanner), items in sorted(groups.items())
    )
    blocks: list[Block] = []
    if data.weekly:
        blocks.append(
            FigureBlock(
                plots.weekly_volumes(data.weekly, fig_dir / "volumes.png"),
                "Figure 1. Studies scored per week and site. A drop can mean a site stopped "
                "sending predictions, not that it stopped imaging.",
            )
        )
    blocks.append(
        TableBlock(
            ("site", "scanner", "studies", "share", "first", "last"),
            rows,
            caption="Volumes per site and scanner in the period.",
            widths=(1, 2.6, 0.7, 0.6, 1.2, 1.2),
        )
    )
    return Section("volumes", "3. Volumes per site and scanner", blocks)


def _cell(check: PerformanceCheck | None) -> str:
    if check is None or check.value is None:
        return "-"
    return (
        f"{check.value:.3f}{_ci(check.ci_lower, check.ci_upper)} {check.status.replace('_', ' ')}"
    )


def _performance_section(data: _Inputs, fig_dir: Path) -> Section:
    model = data.model
    overall_baselines = [b for b in model.baselines if b.stratum == "overall"]
    metrics = [b.metric for b in overall_baselines]
    blocks: list[Block] = [
        Paragraph(
            "Each window's predictions are joined with the confirmed diagnoses that arrived "
            "since; a window is judged once it is old enough for most labels to have arrived. "
            "Breach: the upper 95% confidence bound is below the alert limit (clearly worse "
            "than cleared). Warning: only the point estimate is below it. Insufficient data: "
            "too few labelled cases in the stratum to judge.",
            "note",
        )
    ]
    judged = [c for c in data.performance if not c.estimated]
    if not judged:
        blocks.append(
            Paragraph(
                "No window of this period is mature yet: performance will be judged in a later "
                "report once the confirmed diagnoses have arrived.",
                "warning",
            )
        )
        return Section("performance", "4. Performance against the clearance baseline", blocks)
    blocks.append(
        FigureBlock(
            plots.performance_over_time(
                judged, overall_baselines, fig_dir / "performance_time.png"
            ),
            "Figure 2. Performance over time: overall with 95% CI (black), per site (coloured), "
            "clearance value and its CI (grey), alert limit (red dashed).",
        )
    )
    blocks.append(
        FigureBlock(
            plots.performance_forest(
                judged, overall_baselines, fig_dir / "performance_subgroups.png"
            ),
            "Figure 3. Performance per subgroup in the latest judged window.",
        )
    )
    latest = _latest_judged(judged)
    strata: dict[tuple[str, str], dict[str, PerformanceCheck]] = {}
    for c in latest:
        strata.setdefault((c.stratum_kind, c.stratum_value), {})[c.metric] = c
    rows = []
    status = []
    for (kind, value), by_metric in sorted(strata.items(), key=lambda kv: _stratum_key(*kv[0])):
        any_check = next(iter(by_metric.values()))
        rows.append(
            (
                _stratum(kind, value),
                f"{_pct(any_check.labelled_fraction)}",
                *(_cell(by_metric.get(m)) for m in metrics),
            )
        )
        worst = max(
            (SEVERITY.get(by_metric[m].status, 0) for m in metrics if m in by_metric), default=0
        )
        status.append({0: "", 1: "warning", 2: "breach"}[worst])
    start, end = latest[0].window_start, latest[0].window_end
    blocks.append(
        TableBlock(
            ("stratum", "labelled", *metrics),
            tuple(rows),
            caption=f"Latest judged window {_day(start)}..{_day(end)}: value (95% CI) and status "
            "per subgroup.",
            row_status=tuple(status),
            widths=(2.4, 0.7, *(1.6 for _ in metrics)),
        )
    )
    windows = sorted({(c.window_start, c.window_end) for c in judged})
    overall_rows = []
    overall_status = []
    for ws, we in windows:
        by_metric = {
            c.metric: c for c in judged if c.window_start == ws and c.stratum_kind == "overall"
        }
        first_check = next(iter(by_metric.values()), None)
        overall_rows.append(
            (
                f"{_day(ws)}..{_day(we)}",
                str(first_check.n if first_check else "-"),
                _pct(first_check.labelled_fraction if first_check else None),
                *(_cell(by_metric.get(m)) for m in metrics),
            )
        )
        worst = max(
            (SEVERITY.get(by_metric[m].status, 0) for m in metrics if m in by_metric), default=0
        )
        overall_status.append({0: "", 1: "warning", 2: "breach"}[worst])
    blocks.append(
        TableBlock(
            ("window", "n", "labelled", *metrics),
            tuple(overall_rows),
            caption="Overall performance per window (n: cases in the denominator of the first "
            "metric).",
            row_status=tuple(overall_status),
            widths=(1.6, 0.5, 0.7, *(1.6 for _ in metrics)),
        )
    )
    return Section("performance", "4. Performance against the clearance baseline", blocks)


def _drift_section(data: _Inputs, fig_dir: Path, settings: Settings | None) -> Section:
    blocks: list[Block] = []
    reference = data.references[0] if data.references else None
    method = (
        "Each window is compared with the frozen reference"
        + (
            f" '{reference.name}' ({_day(reference.period_start)}..{_day(reference.period_end)})"
            if reference
            else ""
        )
        + ", overall, per site and per scanner: KS on the model's scores and on numeric "
        "acquisition fields (Bonferroni), chi-squared on categorical header fields. A stratum "
        "with too few cases is 'insufficient data', never drift."
    )
    if settings is not None:
        method += (
            f" Settings: alpha {settings.drift.alpha}, windows of {settings.drift.window_days} "
            f"day(s), an incident after {settings.drift.persistence_windows} consecutive "
            "drifted window(s)."
        )
    blocks.append(Paragraph(method, "note"))
    if not data.drift:
        blocks.append(Paragraph("No drift check ran in this period.", "warning"))
        return Section("drift", "5. Data drift", blocks)
    blocks.append(
        FigureBlock(
            plots.drift_strata(data.drift, fig_dir / "drift_strata.png"),
            "Figure 4. Number of drifted signals per stratum and window.",
        )
    )
    drifted = _drift_strata(data.drift)
    if drifted:
        focus = max(
            drifted,
            key=lambda s: (s[0] == "scanner", len(drifted[s])),
        )
        blocks.append(
            FigureBlock(
                plots.drift_signals(data.drift, focus, fig_dir / "drift_signals.png"),
                f"Figure 5. Drift tests per signal at the most affected stratum, "
                f"{_stratum(*focus)}.",
            )
        )
    rows = []
    for (kind, value), hits in sorted(drifted.items(), key=lambda kv: _stratum_key(*kv[0])):
        ps = [h.p_value for h in hits if h.p_value is not None]
        rows.append(
            (
                _stratum(kind, value),
                ", ".join(sorted({h.signal for h in hits})),
                _day(min(h.window_start for h in hits)),
                _day(max(h.window_end for h in hits)),
                str(len({h.window_start for h in hits})),
                f"{min(ps):.1e}" if ps else "-",
            )
        )
    blocks.append(
        TableBlock(
            (
                "stratum",
                "signals drifted",
                "first window",
                "last window end",
                "windows",
                "smallest p",
            ),
            tuple(rows) or (("-", "no drift in this period", "-", "-", "-", "-"),),
            caption="Strata with drift.",
            row_status=tuple("drift" for _ in rows),
            widths=(2.2, 2.6, 0.9, 0.9, 0.6, 0.7),
        )
    )
    signals = sorted({c.signal for c in data.drift})
    per_signal = []
    for signal in signals:
        mine = [c for c in data.drift if c.signal == signal]
        per_signal.append(
            (
                signal,
                mine[0].detector,
                str(len(mine)),
                str(sum(c.status == "drift" for c in mine)),
                str(sum(c.status == "insufficient_data" for c in mine)),
            )
        )
    blocks.append(
        TableBlock(
            ("signal", "detector", "checks", "drifted", "insufficient data"),
            tuple(per_signal),
            caption="Drift checks per signal (all strata and windows of the period).",
            widths=(2.2, 0.8, 0.8, 0.8, 1.0),
        )
    )
    return Section("drift", "5. Data drift", blocks)


def _coverage_section(data: _Inputs, fig_dir: Path) -> Section:
    blocks: list[Block] = []
    if data.weekly:
        blocks.append(
            FigureBlock(
                plots.label_coverage(data.weekly, fig_dir / "label_coverage.png"),
                "Figure 6. Share of studies with a confirmed diagnosis by week of prediction. "
                "Recent weeks are low because diagnoses arrive weeks later.",
            )
        )
    rows = tuple(
        (
            r.site,
            r.scanner,
            str(r.studies),
            str(r.labelled),
            _pct(r.fraction),
            "-" if r.median_days_to_label is None else f"{r.median_days_to_label:.1f}",
        )
        for r in data.coverage
    )
    blocks.append(
        TableBlock(
            ("site", "scanner", "studies", "labelled", "fraction", "median days to label"),
            rows,
            caption="Label coverage: studies of the period with a confirmed diagnosis by the "
            "time of this report.",
            widths=(1, 2.6, 0.7, 0.7, 0.7, 1.0),
        )
    )
    return Section("labels", "6. Label coverage", blocks)


def _incident_section(data: _Inputs, now: datetime) -> Section:
    blocks: list[Block] = [
        Paragraph(
            "Deadlines: EU MDR Art. 87 (15 days from awareness for a serious incident; 2 days "
            "for a serious public health threat; 10 days for death or serious deterioration) "
            "and FDA 21 CFR 803 (30 calendar days; 5 work days with remedial action). Until a "
            "person assesses an incident its clock runs with the conservative 15 days.",
            "note",
        )
    ]
    if not data.incidents:
        blocks.append(Paragraph("No incident in this period.", "text"))
        return Section("incidents", "7. Incidents and vigilance", blocks)
    rows = []
    status = []
    for r in data.incidents:
        i = r.incident
        mdr, mdr_status = deadline_status(
            i.mdr_deadline_at, reported_at=r.reported_at, vigilance_class=i.vigilance_class, now=now
        )
        fda, fda_status = deadline_status(
            i.fda_deadline_at, reported_at=r.reported_at, vigilance_class=i.vigilance_class, now=now
        )
        rows.append(
            (
                f"#{i.id}",
                i.title,
                f"{i.severity} / {i.status}",
                i.vigilance_class.replace("_", " "),
                f"{_when(i.mdr_deadline_at)}\n{mdr}",
                f"{_when(i.fda_deadline_at)}\n{fda}",
                i.capa_reference or "none recorded",
            )
        )
        status.append("missed" if "missed" in (mdr_status, fda_status) else "")
    blocks.append(
        TableBlock(
            (
                "id",
                "incident",
                "severity / status",
                "vigilance",
                "EU MDR deadline",
                "FDA deadline",
                "CAPA",
            ),
            tuple(rows),
            caption=f"Incidents open during the period or with evidence in it (deadline status as "
            f"of {_when(now)} UTC).",
            row_status=tuple(status),
            widths=(0.4, 3.0, 0.9, 1.0, 1.4, 1.4, 0.9),
        )
    )
    for r in data.incidents:
        i = r.incident
        evidence = [e for e in i.events if e.kind == "evidence"]
        others = [e for e in i.events if e.kind != "evidence"]
        timeline = [(_when(e.at), e.kind, e.actor, e.note or "") for e in others]
        if evidence:
            timeline.append(
                (
                    _when(min(e.at for e in evidence)),
                    "evidence",
                    ", ".join(sorted({e.actor for e in evidence})),
                    f"{len(evidence)} check result(s) attached as evidence",
                )
            )
        timeline.sort(key=lambda row: row[0])
        blocks.append(
            KeyValues(
                (
                    ("Incident", f"#{i.id} {i.title}"),
                    ("Summary", i.summary),
                    ("Opened / aware", f"{_when(i.opened_at)} / {_when(i.aware_at)}"),
                    (
                        "Acknowledged",
                        f"{_when(i.acknowledged_at)} by {i.acknowledged_by}"
                        if i.acknowledged_at
                        else "not yet",
                    ),
                    (
                        "Closed",
                        f"{_when(i.closed_at)}: {i.resolution or ''}" if i.closed_at else "open",
                    ),
                    (
                        "Reported to authority",
                        _when(r.reported_at) if r.reported_at else "not reported",
                    ),
                    ("Remedial action", "yes" if r.remedial_action else "no"),
                    ("CAPA", i.capa_reference or "none recorded"),
                )
            )
        )
        blocks.append(
            TableBlock(
                ("when (UTC)", "event", "by", "note"),
                tuple(timeline),
                caption=f"Timeline of incident #{i.id}.",
                widths=(1.1, 0.8, 0.8, 5.0),
            )
        )
    return Section("incidents", "7. Incidents and vigilance", blocks)


def _operations_section(data: _Inputs, evidently_note: str) -> Section:
    runs = data.job_runs
    failed = [r for r in runs if r.status == "failed"]
    blocks: list[Block] = [
        KeyValues(
            (
                ("Check runs", f"{len(runs)} ({len(failed)} failed)"),
                (
                    "Rejected records",
                    ", ".join(f"{k}: {v}" for k, v in sorted(data.dead_letters.items())) or "none",
                ),
                ("Metadata drift report (evidently)", evidently_note),
            )
        )
    ]
    if failed:
        blocks.append(
            TableBlock(
                ("job", "scheduled", "error"),
                tuple((r.job_id, _when(r.scheduled_for), r.error or "") for r in failed[:20]),
                caption="Failed check runs.",
                widths=(1.5, 1.2, 4),
            )
        )
    return Section("operations", "8. Data quality and attachments", blocks)


def _conclusions_section() -> Section:
    return Section(
        "conclusions",
        "9. Conclusions (to be completed by the quality manager)",
        [
            Paragraph(
                "This section is left blank on purpose: the assessment is a person's, not the "
                "software's.",
                "note",
            ),
            BlankField("Benefit-risk assessment: does the device still perform as cleared?", 5),
            BlankField(
                "Actions decided (CAPA, field safety corrective action, label change, "
                "retraining, none) and their owners",
                5,
            ),
            BlankField("Changes to the PMS plan, indicators or thresholds", 3),
            BlankField("Name, role, date and signature", 2),
        ],
    )


# ---- evidently attachment ---------------------------------------------------------------


def evidently_available() -> bool:
    """Installed? Looked up without importing it (its import is slow and warns)."""
    return importlib.util.find_spec("evidently") is not None


def _metadata_frame(store: Store, model: ModelInfo, start: datetime, end: datetime) -> Any:
    import numpy as np
    import pandas as pd

    finding = next(iter(model.findings))
    cases = store.checks.case_table(model.id, finding, start, end)
    columns: dict[str, object] = {
        f"score:{finding}": cases.score,
        "site": cases.site,
        "scanner": cases.scanner,
    }
    columns.update(cases.categorical)
    columns.update(cases.numeric)
    frame = pd.DataFrame(columns)
    if len(frame) > EVIDENTLY_MAX_ROWS:
        rng = np.random.default_rng(0)
        frame = frame.iloc[np.sort(rng.choice(len(frame), EVIDENTLY_MAX_ROWS, replace=False))]
    return frame


def write_evidently(
    store: Store, model: ModelInfo, period: Period, reference: ReferenceSet | None, path: Path
) -> tuple[Path | None, str]:
    """The period's metadata versus the drift reference as an evidently DataDrift report."""
    if not evidently_available():
        return None, (
            "not installed (pip install 'surveillance[reports]' to attach an evidently "
            "data-drift report)"
        )
    if reference is None:
        return None, "no reference set frozen yet: run the drift checks first"
    os.environ.setdefault("DO_NOT_TRACK", "1")  # evidently's usage telemetry stays off
    with warnings.catch_warnings():
        # third-party code: its deprecation warnings are not ours to fail on
        warnings.simplefilter("ignore")
        from evidently import Report
        from evidently.presets import DataDriftPreset

        current: Any = _metadata_frame(store, model, period.start, period.end)
        ref: Any = _metadata_frame(store, model, reference.period_start, reference.period_end)
        if len(current) == 0 or len(ref) == 0:
            return None, "no data in the period or the reference"
        # evidently refuses a column that is empty on either side (e.g. slice thickness,
        # which radiographs do not have)
        keep = [c for c in current.columns if current[c].notna().any() and ref[c].notna().any()]
        try:
            snapshot = Report([DataDriftPreset()]).run(
                current_data=current[keep], reference_data=ref[keep]
            )
            snapshot.save_html(str(path))
        except Exception as exc:  # an optional attachment must not sink the report
            return (
                None,
                f"evidently failed ({type(exc).__name__}: {exc}); report written without it",
            )
    return path, (
        f"attached as {path.name}: the period's metadata and scores versus the reference "
        f"'{reference.name}' ({_day(reference.period_start)}..{_day(reference.period_end)})"
    )


# ---- putting it together ---------------------------------------------------------------


def _gather(store: Store, model: ModelInfo, period: Period) -> _Inputs:
    studies = store.reporting.studies_in_period(model.id, period.start, period.end)
    return _Inputs(
        model=model,
        period=period,
        studies=studies,
        coverage=rs.label_coverage(studies),
        weekly=rs.weekly_counts(studies),
        drift=store.checks.drift(model.id, period.start, period.end),
        performance=store.checks.performance(model.id, period.start, period.end),
        incidents=store.reporting.incidents_in_period(model.id, period.start, period.end),
        dead_letters=store.reporting.dead_letter_count(period.start, period.end),
        job_runs=store.reporting.job_runs_in_period(model.name, period.start, period.end),
        references=store.registry.reference_sets(model.id),
    )


def build_document(
    data: _Inputs,
    fig_dir: Path,
    *,
    now: datetime,
    settings: Settings | None,
    evidently_note: str,
    audit_head: str,
) -> Document:
    model, period = data.model, data.period
    return Document(
        title=f"Post-market surveillance report: {model.name} {model.version}",
        subtitle=f"Period {period.describe()}",
        meta=(
            ("Manufacturer", model.manufacturer or "-"),
            ("Generated", f"{_when(now)} UTC by surveillance"),
            ("Audit chain at generation", audit_head),
            ("Status", "DRAFT until section 9 is completed and signed"),
        ),
        sections=[
            _baseline_section(model),
            _summary_section(data, now),
            _volume_section(data, fig_dir),
            _performance_section(data, fig_dir),
            _drift_section(data, fig_dir, settings),
            _coverage_section(data, fig_dir),
            _incident_section(data, now),
            _operations_section(data, evidently_note),
            _conclusions_section(),
        ],
    )


def render_html(document: Document) -> str:
    env = Environment(
        loader=PackageLoader("surveillance.outputs.reports", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    images = {}
    for section in document.sections:
        for block in section.blocks:
            if isinstance(block, FigureBlock):
                encoded = base64.b64encode(block.path.read_bytes()).decode("ascii")
                images[block.path.name] = f"data:image/png;base64,{encoded}"
    return env.get_template("pms.html").render(doc=document, images=images)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_pms_report(
    store: Store,
    model_name: str,
    period: Period | str,
    out_dir: Path,
    *,
    settings: Settings | None = None,
    now: datetime | None = None,
    attach_evidently: bool = True,
    actor: str = "report",
) -> ReportFiles:
    """Write the PMS report of ``model_name`` for ``period`` into ``out_dir``."""
    if isinstance(period, str):
        period = parse_period(period)
    now = now or utcnow()
    model = store.registry.model(model_name)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    data = _gather(store, model, period)
    audit = store.audit.verify()
    audit_head = (
        f"{'intact' if audit.ok else 'BROKEN (' + str(len(audit.problems)) + ' problem(s))'}, "
        f"{audit.events} events, head {audit.head_hash or '-'}"
    )
    evidently_path: Path | None = None
    if attach_evidently:
        evidently_path, evidently_note = write_evidently(
            store,
            model,
            period,
            data.references[0] if data.references else None,
            out_dir / EVIDENTLY_NAME,
        )
    else:
        evidently_note = "not requested"
    document = build_document(
        data,
        fig_dir,
        now=now,
        settings=settings,
        evidently_note=evidently_note,
        audit_head=audit_head,
    )
    stem = f"pms-{model.name}-{re.sub(r'[^A-Za-z0-9-]+', '_', period.label)}"
    html = out_dir / f"{stem}.html"
    html.write_text(render_html(document), encoding="utf-8")
    pdf = write_pdf(document, out_dir / f"{stem}.pdf", footer=f"{document.title} · {period.label}")
    figures = tuple(
        block.path
        for section in document.sections
        for block in section.blocks
        if isinstance(block, FigureBlock)
    )
    files = ReportFiles(html, pdf, figures, evidently_path, evidently_note)
    store.audit.record(
        actor=actor,
        action="report.pms",
        entity="model",
        entity_id=model.name,
        detail={
            "period": period.label,
            "files": {p.name: _sha256(p) for p in (html, pdf, evidently_path) if p is not None},
        },
    )
    return files


def write_quarterly(
    store: Store,
    settings: Settings,
    out_root: Path,
    *,
    now: datetime | None = None,
) -> list[ReportFiles]:
    """Reports of the previous quarter for every registered model (for the scheduler).

    Each lands in ``out_root/<model>/<period>/``; an existing report is rewritten,
    so a re-run after a crash is harmless.
    """
    now = now or utcnow()
    period = previous_quarter(now)
    return [
        write_pms_report(
            store,
            model.name,
            period,
            out_root / model.name / period.label,
            settings=settings,
            now=now,
            actor="scheduler",
        )
        for model in store.registry.models()
    ]


__all__ = [
    "Period",
    "ReportFiles",
    "date_range",
    "deadline_status",
    "parse_period",
    "previous_quarter",
    "quarter",
    "write_pms_report",
    "write_quarterly",
]
