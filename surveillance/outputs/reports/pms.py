"""The periodic post-market surveillance report (PSUR structure), HTML and PDF.

``write_pms_report(store, "cxr-pneumothorax", "2026Q3", out_dir)`` writes::

    out_dir/pms-<model>-<period>.html     self-contained (figures embedded)
    out_dir/pms-<model>-<period>.pdf      the same content on A4 pages
    out_dir/figures/*.png                 each figure on its own
    out_dir/evidently-data-drift.html     evidently's data-drift report (linked from the drift part)

The sections follow the PSUR of MDCG 2022-21 Annex I where the data exists
(executive summary, device identification, previous conclusions, volume of use
and population, serious and non-serious incidents with vigilance reports, the
Art. 88 trend test, FSCAs, complaints, performance realised and estimated, data
drift, PMCF and literature, benefit-risk and CAPA with the evidence pre-filled);
what only a person can supply is a clearly marked box "to be completed".

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
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from surveillance.analysis.performance import DENOMINATOR
from surveillance.core.config import Settings
from surveillance.core.errors import UsageError
from surveillance.incidents.trend import ModelTrend, assess_trends
from surveillance.incidents.vigilance import time_left
from surveillance.outputs.reports import plots
from surveillance.outputs.reports.document import (
    BlankField,
    Block,
    Document,
    FigureBlock,
    KeyValues,
    Link,
    Paragraph,
    Section,
    TableBlock,
)
from surveillance.outputs.reports.pdf import write_pdf
from surveillance.outputs.rules import DRIFT_RULE
from surveillance.store import DriftCheck, ModelInfo, PerformanceCheck, Store
from surveillance.store import reporting as rs
from surveillance.store.domain import JobRun, ReferenceSet
from surveillance.store.types import utcnow

STRATUM_ORDER = {"overall": 0, "site": 1, "scanner": 2}
SEVERITY = {"ok": 0, "insufficient_data": 0, "warning": 1, "breach": 2}
EVIDENTLY_NAME = "evidently-data-drift.html"
EVIDENTLY_MAX_ROWS = 5000
BELOW_TOLERANCE_ROWS = 40  # the report lists at most this many below-tolerance checks


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

SERIOUS_CLASSES = frozenset(
    {
        "serious_incident",
        "serious_public_health_threat",
        "death_or_serious_deterioration",
    }
)
TO_COMPLETE = "TO BE COMPLETED"


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
    fscas: list[rs.Fsca] = field(default_factory=list)
    complaints: list[rs.Complaint] = field(default_factory=list)
    previous: rs.Signoff | None = None
    trend: ModelTrend | None = None
    persistence_windows: int = 2


@dataclass(frozen=True, slots=True)
class DriftEpisode:
    """Drift at one stratum: the persistent run of drifted windows and earlier isolated flags.

    The onset is the first window of the *latest* run of at least
    ``persistence_windows`` consecutive drifted windows (the same rule that opens
    an incident), so a stray flag weeks before a change does not date it.
    """

    stratum: tuple[str, str]
    signals: tuple[str, ...]
    onset: datetime | None  # None: no persistent run, only isolated flags
    last_end: datetime
    windows: int
    isolated: tuple[datetime, ...]
    min_p: float | None
    #: the largest effect among the episode's drifted checks, its measure and tolerance
    max_effect: float | None = None
    effect_name: str | None = None
    tolerance: float | None = None
    #: the smallest p-value after the window's multiple-testing control
    min_p_adjusted: float | None = None


def _largest_effect(checks: Sequence[DriftCheck]) -> DriftCheck | None:
    """The check whose effect went furthest relative to its tolerance (effect / tolerance;
    the raw effect where no tolerance was stored), so that effects on different scales
    (KS D, Cramér's V) compare; None when no check has an effect size."""
    sized = [c for c in checks if c.effect_size is not None]
    if not sized:
        return None
    return max(sized, key=lambda c: _relative_effect(c))


def _relative_effect(check: DriftCheck) -> float:
    effect = check.effect_size or 0.0
    return effect / check.min_effect if check.min_effect else effect


def _effect_text(check: DriftCheck | None, digits: int = 2) -> str:
    """``0.31 ks_d``: a check's effect size and its measure; ``-`` when none was stored."""
    if check is None or check.effect_size is None:
        return "-"
    return f"{check.effect_size:.{digits}f} {check.effect_name or ''}".rstrip()


def _p_text(value: float | None) -> str:
    return f"{value:.1e}" if value is not None else "-"


def drift_episodes(
    checks: Sequence[DriftCheck], persistence_windows: int = 2
) -> dict[tuple[str, str], DriftEpisode]:
    """Per stratum with any drift: its episode (see :class:`DriftEpisode`)."""
    by_stratum: dict[tuple[str, str], list[DriftCheck]] = {}
    for c in checks:
        by_stratum.setdefault((c.stratum_kind, c.stratum_value), []).append(c)
    episodes = {}
    for stratum, mine in by_stratum.items():
        windows = sorted({c.window_start for c in mine})
        drifted = {c.window_start for c in mine if c.status == "drift"}
        if not drifted:
            continue
        runs: list[list[datetime]] = []
        for w in windows:
            if w in drifted:
                if runs and runs[-1][-1] == windows[windows.index(w) - 1]:
                    runs[-1].append(w)
                else:
                    runs.append([w])
        persistent = [r for r in runs if len(r) >= persistence_windows]
        episode = persistent[-1] if persistent else []
        isolated = tuple(sorted(w for w in drifted if w not in episode))
        hits = [c for c in mine if c.status == "drift" and c.window_start in set(episode)]
        if not hits:
            hits = [c for c in mine if c.status == "drift"]
        ps = [h.p_value for h in hits if h.p_value is not None]
        adjusted = [h.p_adjusted for h in hits if h.p_adjusted is not None]
        largest = _largest_effect(hits)
        episodes[stratum] = DriftEpisode(
            stratum=stratum,
            signals=tuple(sorted({h.signal for h in hits})),
            onset=episode[0] if episode else None,
            last_end=max(h.window_end for h in hits),
            windows=len(episode) if episode else len(drifted),
            isolated=isolated,
            min_p=min(ps) if ps else None,
            max_effect=largest.effect_size if largest else None,
            effect_name=largest.effect_name if largest else None,
            tolerance=largest.min_effect if largest else None,
            min_p_adjusted=min(adjusted) if adjusted else None,
        )
    return episodes


def _filled(value: str | None, key: str) -> str:
    return value if value else f"{TO_COMPLETE} (set '{key}' in the model config)"


def _psur_reference(model: ModelInfo, period: Period) -> str:
    return f"PSUR-{model.name}-{period.label}"


def _device_section(data: _Inputs, now: datetime) -> Section:
    model, period = data.model, data.period
    previous = data.previous
    return Section(
        "device",
        "Device identification and intended use",
        [
            KeyValues(
                (
                    ("Device (model, version)", f"{model.name} {model.version}"),
                    ("Manufacturer", model.manufacturer or f"{TO_COMPLETE} ('manufacturer')"),
                    ("Basic UDI-DI", _filled(model.basic_udi_di, "basic_udi_di")),
                    ("UDI-DI", _filled(model.udi_di, "udi_di")),
                    ("Risk class", _filled(model.device_class, "device_class")),
                    ("Notified body", _filled(model.notified_body, "notified_body")),
                    ("Certificate", _filled(model.certificate, "certificate")),
                    (
                        "PSUR reference and version",
                        f"{_psur_reference(model, period)}, version 1 (draft of {_day(now)})",
                    ),
                    ("Data collection period", period.describe()),
                    (
                        "Previous PSUR",
                        f"{previous.psur_reference or previous.period_label}, signed off by "
                        f"{previous.signed_by} on {_day(previous.signed_at)}"
                        if previous
                        else "none signed off in this system (first report)",
                    ),
                    ("Intended use", " ".join(model.intended_use.split())),
                    (
                        "Findings (operating threshold)",
                        ", ".join(f"{k} ({v:g})" for k, v in model.findings.items()),
                    ),
                )
            ),
            _baseline_table(model),
        ],
    )


def _baseline_table(model: ModelInfo) -> TableBlock:
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
    return TableBlock(
        ("finding", "metric", "stratum", "cleared value (95% CI)", "alert limit", "source"),
        rows,
        caption="Clearance baseline: live performance breaches when its upper 95% "
        "confidence bound falls below the alert limit.",
        widths=(1.2, 1, 0.8, 1.4, 0.8, 3.2),
    )


def _latest_judged(checks: Sequence[PerformanceCheck]) -> list[PerformanceCheck]:
    judged = [c for c in checks if not c.estimated]
    if not judged:
        return []
    end = max(c.window_end for c in judged)
    return [c for c in judged if c.window_end == end]


def _breaches(data: _Inputs) -> list[PerformanceCheck]:
    """Each stratum's worst breached window in the period (realised values only)."""
    worst: dict[tuple[str, str, str, str], PerformanceCheck] = {}
    for c in data.performance:
        if c.estimated or c.status != "breach" or c.value is None:
            continue
        key = (c.finding, c.metric, c.stratum_kind, c.stratum_value)
        if key not in worst or c.value < (worst[key].value or 0):
            worst[key] = c
    return sorted(
        worst.values(), key=lambda c: (_stratum_key(c.stratum_kind, c.stratum_value), c.metric)
    )


def _missed(data: _Inputs, now: datetime) -> list[int]:
    missed = []
    for r in data.incidents:
        for authority in ("eu-mdr", "fda"):
            _, status = _authority_deadline(r, authority, now)
            if status == "missed":
                missed.append(r.incident.id)
    return sorted(set(missed))


def _incident_counts(data: _Inputs) -> tuple[int, int, int]:
    classes = [r.incident.vigilance_class for r in data.incidents]
    serious = sum(c in SERIOUS_CLASSES for c in classes)
    non_serious = sum(c == "not_reportable" for c in classes)
    return serious, non_serious, len(classes) - serious - non_serious


def _executive_summary(data: _Inputs, now: datetime, sections: dict[str, str]) -> Section:
    labelled = data.coverage[0] if data.coverage else None
    breaches = _breaches(data)
    episodes = drift_episodes(data.drift, data.persistence_windows)
    persistent = {s: e for s, e in episodes.items() if e.onset is not None}
    serious, non_serious, pending = _incident_counts(data)
    missed = _missed(data, now)
    use = (
        f"In {data.period.describe()}, {data.model.name} {data.model.version} scored "
        f"{len(data.studies)} studies at {len({s.site for s in data.studies})} site(s) on "
        f"{len({s.scanner for s in data.studies})} scanner(s); "
        + (
            f"{labelled.labelled} ({_pct(labelled.fraction)}) have a confirmed diagnosis so far."
            if labelled
            else "none has a confirmed diagnosis yet."
        )
    )
    if breaches:
        worst = min(breaches, key=lambda c: c.value or 0)
        subgroups = len({(c.stratum_kind, c.stratum_value) for c in breaches})
        where = _stratum(worst.stratum_kind, worst.stratum_value)
        performance = (
            f"Performance breached its alert limit in {subgroups} subgroup(s), worst "
            f"{worst.finding} {worst.metric} {worst.value:.2f}"
            f"{_ci(worst.ci_lower, worst.ci_upper)} at {where} "
            f"against a limit of {worst.alert_limit:.2f}"
        )
    else:
        performance = "Performance stayed within its cleared alert limits in every judged window"
    if persistent:
        first = min(persistent.values(), key=lambda e: (e.onset or now, _stratum_key(*e.stratum)))
        drift = (
            f", and persistent data drift was found in {len(persistent)} stratum/strata, first at "
            f"{_stratum(*first.stratum)} from {_day(first.onset)}."
        )
    else:
        drift = ", with no persistent data drift."
    incidents = (
        f"{len(data.incidents)} incident(s) concern the period ({serious} serious, {non_serious} "
        f"non-serious, {pending} awaiting assessment), {len(missed)} with a missed reporting "
        f"deadline; {len(data.fscas)} field safety corrective action(s) and "
        f"{len(data.complaints)} complaint(s) were recorded; the benefit-risk conclusion is the "
        f"quality manager's ({sections['benefit-risk']})."
    )
    blocks: list[Block] = [
        Paragraph(use, "text"),
        Paragraph(performance + drift, "warning" if breaches else "text"),
        Paragraph(incidents, "warning" if missed else "text"),
        KeyValues(
            (
                (
                    "Drift checks",
                    f"{len(data.drift)} in {len({c.window_start for c in data.drift})} window(s); "
                    f"{sum(c.status == 'drift' for c in data.drift)} flagged, persistent in "
                    f"{len(persistent)} stratum/strata; "
                    f"{sum(c.status == 'below_tolerance' for c in data.drift)} significant but "
                    "below tolerance (no incident)",
                ),
                (
                    "Performance checks",
                    f"{sum(not c.estimated for c in data.performance)} realised, "
                    f"{sum(c.estimated for c in data.performance)} estimated without labels (CBPE)",
                ),
                (
                    "Check runs",
                    f"{len(data.job_runs)} "
                    f"({sum(r.status == 'failed' for r in data.job_runs)} failed)",
                ),
                ("Rejected records (dead letters)", str(sum(data.dead_letters.values()))),
            )
        ),
    ]
    return Section("summary", "Executive summary", blocks)


def _previous_section(data: _Inputs) -> Section:
    previous = data.previous
    if previous is None:
        blocks: list[Block] = [
            Paragraph(
                "No previous report was signed off in this system. If an earlier PSUR exists "
                "outside it, state its reference and conclusions and the status of the actions "
                "it decided.",
                "note",
            ),
            BlankField("Previous PSUR: reference, conclusions, status of its actions", 3),
        ]
    else:
        blocks = [
            KeyValues(
                (
                    ("Report", f"{previous.psur_reference or '-'} ({previous.period_label})"),
                    ("Signed off", f"{_when(previous.signed_at)} UTC by {previous.signed_by}"),
                    ("Signed PDF SHA-256", previous.report_sha256 or "not recorded"),
                )
            ),
            Paragraph(previous.conclusions, "text"),
            BlankField("Status of the actions decided then", 3),
        ]
    return Section("previous", "Conclusions of the previous report", blocks)


def _share_table(
    title: str, values: Sequence[str | None], caption: str, missing: str = "not recorded"
) -> TableBlock:
    counts: dict[str, int] = {}
    for v in values:
        counts[v or missing] = counts.get(v or missing, 0) + 1
    total = max(len(values), 1)
    rows = tuple((key, str(n), f"{n / total:.0%}") for key, n in sorted(counts.items())) or (
        ("-", "0", "-"),
    )
    return TableBlock((title, "studies", "share"), rows, caption=caption, widths=(2, 1, 1))


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
            _day(items[0].predicted_at),
            _day(items[-1].predicted_at),
        )
        for (site, scanner), items in sorted(groups.items())
    )
    blocks: list[Block] = [
        Paragraph(
            "Volume of use: studies the device scored in the period (its own predictions; "
            "sales figures come from the QMS). Population: patient sex and age band from the "
            "DICOM header (stored as bands only; no birth date is kept).",
            "note",
        )
    ]
    if data.weekly:
        blocks.append(
            FigureBlock(
                plots.weekly_volumes(data.weekly, fig_dir / "volumes.png"),
                "Figure 1. Studies scored per week and site. A drop can mean a site stopped "
                "sending predictions, not that it stopped imaging.",
            )
        )
    sites: dict[str, int] = {}
    for s in data.studies:
        sites[s.site] = sites.get(s.site, 0) + 1
    blocks.append(
        TableBlock(
            ("site", "studies", "share", "scanners"),
            tuple(
                (
                    site,
                    str(n),
                    f"{n / total:.0%}",
                    str(len({sc for (st, sc) in groups if st == site})),
                )
                for site, n in sorted(sites.items())
            ),
            caption="Use per site (the region is the site's; sites are labelled in the config).",
            widths=(2, 1, 1, 1),
        )
    )
    blocks.append(_share_table("sex", [s.sex for s in data.studies], "Population by patient sex."))
    blocks.append(
        _share_table("age band", [s.age_band for s in data.studies], "Population by age band.")
    )
    blocks.append(
        TableBlock(
            ("site", "scanner", "studies", "share", "first", "last"),
            rows,
            caption="Volumes per site and scanner in the period.",
            widths=(1, 2.8, 0.7, 0.6, 0.9, 0.9),
        )
    )
    return Section("volumes", "Volume of use and population", blocks)


def _n_text(check: PerformanceCheck) -> str:
    """The sample size as what it counts (AUROC's n is the rarer class, not the cases)."""
    pos, neg = check.details.get("n_positive"), check.details.get("n_negative")
    if isinstance(pos, int) and isinstance(neg, int):
        return f"{pos} pos / {neg} neg"
    return f"{check.n} {DENOMINATOR.get(check.metric, 'cases')}"


def _cell(check: PerformanceCheck | None) -> str:
    if check is None or check.value is None:
        return "-"
    return (
        f"{check.value:.3f}{_ci(check.ci_lower, check.ci_upper)} "
        f"{check.status.replace('_', ' ')}; n = {_n_text(check)}"
    )


def _performance_section(data: _Inputs, fig_dir: Path) -> Section:
    model = data.model
    overall_baselines = [b for b in model.baselines if b.stratum == "overall"]
    metrics = [b.metric for b in overall_baselines]
    title = "Performance against the clearance baseline"
    blocks: list[Block] = [
        Paragraph(
            "Realised: each window's predictions joined with the confirmed diagnoses that "
            "arrived since, judged once the window is old enough for most labels to have "
            "arrived. Breach: the upper 95% confidence bound is below the alert limit. "
            "Warning: only the point estimate is. Insufficient data: too few labelled cases. "
            "Estimated: for the recent windows whose labels have not arrived yet, confidence-"
            "based performance estimation (CBPE) from the calibrated scores alone, with its "
            "band, to the end of the period; it warns, it never breaches.",
            "note",
        )
    ]
    judged = [c for c in data.performance if not c.estimated]
    estimated = [c for c in data.performance if c.estimated]
    if not data.performance:
        blocks.append(
            Paragraph(
                "No performance check covers this period yet: performance will be reported "
                "once the checks have run.",
                "warning",
            )
        )
        return Section("performance", title, blocks)
    blocks.append(
        FigureBlock(
            plots.performance_over_time(
                data.performance,
                overall_baselines,
                fig_dir / "performance_time.png",
                period_end=data.period.end,
            ),
            "Figure 2. Performance over time to the end of the period: realised overall with "
            "95% CI (black), estimated without labels (CBPE, blue, with band), per site "
            "(coloured), breaching scanners (red dotted), clearance value and CI (grey), alert "
            "limit (red dashed). Every point lies inside the axes.",
        )
    )
    if judged:
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
                (SEVERITY.get(by_metric[m].status, 0) for m in metrics if m in by_metric),
                default=0,
            )
            status.append({0: "", 1: "warning", 2: "breach"}[worst])
        start, end = latest[0].window_start, latest[0].window_end
        blocks.append(
            TableBlock(
                ("stratum", "labelled", *metrics),
                tuple(rows),
                caption=f"Latest judged window {_day(start)}..{_day(end)}: value (95% CI), "
                "status and sample size per subgroup.",
                row_status=tuple(status),
                widths=(2.2, 0.7, *(1.8 for _ in metrics)),
            )
        )
    else:
        blocks.append(
            Paragraph(
                "No window of this period is mature yet: realised performance will be judged "
                "in a later report; the estimates below are all there is so far.",
                "warning",
            )
        )
    windows = sorted({(c.window_start, c.window_end, c.estimated) for c in data.performance})
    overall_rows = []
    overall_status = []
    for ws, we, is_estimate in windows:
        by_metric = {
            c.metric: c
            for c in data.performance
            if c.window_start == ws and c.stratum_kind == "overall" and c.estimated == is_estimate
        }
        if not by_metric:
            continue
        first_check = next(iter(by_metric.values()))
        overall_rows.append(
            (
                f"{_day(ws)}..{_day(we)}",
                "estimated (CBPE)" if is_estimate else "realised",
                _pct(first_check.labelled_fraction),
                *(_cell(by_metric.get(m)) for m in metrics),
            )
        )
        worst = max(
            (SEVERITY.get(by_metric[m].status, 0) for m in metrics if m in by_metric), default=0
        )
        overall_status.append({0: "", 1: "warning", 2: "breach"}[worst])
    blocks.append(
        TableBlock(
            ("window", "kind", "labelled", *metrics),
            tuple(overall_rows),
            caption="Overall performance per window to the period end (n: what each metric's "
            "denominator counts).",
            row_status=tuple(overall_status),
            widths=(1.5, 1.0, 0.6, *(1.8 for _ in metrics)),
        )
    )
    if estimated:
        blocks.append(
            Paragraph(
                f"{len({c.window_start for c in estimated if c.stratum_kind == 'overall'})} "
                "window(s) are estimated only; they will be judged on labels in a later report.",
                "note",
            )
        )
    return Section("performance", title, blocks)


def _drift_section(
    data: _Inputs, fig_dir: Path, settings: Settings | None, evidently: tuple[Path | None, str]
) -> Section:
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
        "acquisition fields, chi-squared on categorical header fields, MMD on embeddings. "
        "A stratum with too few cases is 'insufficient data', never drift. The onset of drift "
        f"is the first window of the latest run of at least {data.persistence_windows} "
        "consecutive drifted windows (the incident rule); earlier isolated flags are listed "
        "apart and do not date it."
    )
    if settings is not None:
        tolerances = settings.drift.min_effect
        method += (
            f" Settings: alpha {settings.drift.alpha}, windows of {settings.drift.window_days} "
            f"day(s), an incident after {settings.drift.persistence_windows} consecutive "
            f"drifted window(s); multiple-testing control {settings.drift.correction}; "
            f"tolerances: scores {tolerances.score} (KS D), acquisition {tolerances.acquisition} "
            f"(KS D), header fields {tolerances.metadata} (Cramér's V), embeddings "
            f"{tolerances.embedding}, image quality {tolerances.image}."
        )
    blocks.append(Paragraph(method, "note"))
    blocks.append(Paragraph(DRIFT_RULE, "text"))
    path, note = evidently
    if path is not None:
        blocks.append(
            Link(
                "An independent view with evidently (its data-drift report of the period's "
                "header metadata and scores against the reference) is attached:",
                path.name,
                path.name,
            )
        )
    else:
        blocks.append(Paragraph(f"evidently data-drift report: {note}", "warning"))
    if not data.drift:
        blocks.append(Paragraph("No drift check ran in this period.", "warning"))
        return Section("drift", "Data drift", blocks)
    blocks.append(
        FigureBlock(
            plots.drift_strata(data.drift, fig_dir / "drift_strata.png"),
            "Figure 4. Number of drifted signals per stratum and window.",
        )
    )
    episodes = drift_episodes(data.drift, data.persistence_windows)
    if episodes:
        focus = max(
            episodes,
            key=lambda s: (episodes[s].onset is not None, s[0] == "scanner", episodes[s].windows),
        )
        blocks.append(
            FigureBlock(
                plots.drift_signals(data.drift, focus, fig_dir / "drift_signals.png"),
                f"Figure 5. Drift tests per signal at the most affected stratum, "
                f"{_stratum(*focus)}.",
            )
        )
    rows = []
    status = []
    for stratum, e in sorted(episodes.items(), key=lambda kv: _stratum_key(*kv[0])):
        rows.append(
            (
                _stratum(*stratum),
                ", ".join(e.signals),
                _day(e.onset) if e.onset else "no persistent run",
                _day(e.last_end),
                str(e.windows),
                ", ".join(f"{w:%m-%d}" for w in e.isolated) or "-",
                _p_text(e.min_p),
                _p_text(e.min_p_adjusted),
                (
                    f"{e.max_effect:.2f} {e.effect_name or ''}".rstrip()
                    + (f" (tol. {e.tolerance:.2f})" if e.tolerance is not None else "")
                    if e.max_effect is not None
                    else "-"
                ),
            )
        )
        status.append("drift" if e.onset else "warning")
    blocks.append(
        TableBlock(
            (
                "stratum",
                "signals drifted",
                "onset",
                "last window end",
                "windows",
                "isolated flags",
                "smallest p",
                "smallest adj. p",
                "largest effect (tolerance)",
            ),
            tuple(rows) or (("-", "no drift in this period", *("-",) * 7),),
            caption="Strata with drift: onset of the persistent run, and isolated flags apart; "
            "the effect that went furthest beyond its tolerance among the drifted checks.",
            row_status=tuple(status),
            widths=(1.65, 1.8, 0.9, 0.9, 0.75, 0.8, 0.75, 0.75, 1.2),
        )
    )
    per_signal = []
    for signal in sorted({c.signal for c in data.drift}):
        mine = [c for c in data.drift if c.signal == signal]
        signal_tolerances = sorted({c.min_effect for c in mine if c.min_effect is not None})
        per_signal.append(
            (
                signal,
                mine[0].detector,
                str(len(mine)),
                str(sum(c.status == "drift" for c in mine)),
                str(sum(c.status == "below_tolerance" for c in mine)),
                str(sum(c.status == "insufficient_data" for c in mine)),
                _effect_text(_largest_effect(mine)),
                ", ".join(f"{v:.2f}" for v in signal_tolerances) or "-",
            )
        )
    blocks.append(
        TableBlock(
            (
                "signal",
                "detector",
                "checks",
                "drifted",
                "below tolerance",
                "insufficient data",
                "largest effect",
                "tolerance",
            ),
            tuple(per_signal),
            caption="Drift checks per signal (all strata and windows of the period); 'below "
            "tolerance': significant, but the effect is smaller than the tolerance.",
            widths=(2.2, 0.8, 0.6, 0.6, 0.8, 0.8, 1.0, 0.7),
        )
    )
    below = sorted(
        (c for c in data.drift if c.status == "below_tolerance"),
        key=lambda c: (c.window_start, _stratum_key(c.stratum_kind, c.stratum_value), c.signal),
    )
    blocks.append(
        Paragraph(
            f"{len(below)} check(s) in this period were significant but below tolerance: "
            "they are listed here and opened no incident."
            + (
                f" The first {BELOW_TOLERANCE_ROWS} are shown."
                if len(below) > BELOW_TOLERANCE_ROWS
                else ""
            ),
            "note",
        )
    )
    if below:
        blocks.append(
            TableBlock(
                ("window", "stratum", "signal", "p", "adjusted p", "effect", "tolerance"),
                tuple(
                    (
                        f"{_day(c.window_start)}..{_day(c.window_end)}",
                        _stratum(c.stratum_kind, c.stratum_value),
                        c.signal,
                        _p_text(c.p_value),
                        _p_text(c.p_adjusted),
                        _effect_text(c, digits=3),
                        f"{c.min_effect:.2f}" if c.min_effect is not None else "-",
                    )
                    for c in below[:BELOW_TOLERANCE_ROWS]
                ),
                caption="Significant but below tolerance: why these tests opened nothing.",
                widths=(1.6, 2.2, 1.6, 0.7, 0.8, 1.0, 0.7),
            )
        )
    return Section("drift", "Data drift", blocks)


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
    return Section("labels", "Label coverage", blocks)


def _authority_deadline(r: rs.IncidentRecord, authority: str, now: datetime) -> tuple[str, str]:
    i = r.incident
    reports = [v for v in r.reports if v.authority == authority]
    reported_at = reports[0].reported_at if reports else (None if r.reports else r.reported_at)
    deadline = i.mdr_deadline_at if authority == "eu-mdr" else i.fda_deadline_at
    text, status = deadline_status(
        deadline, reported_at=reported_at, vigilance_class=i.vigilance_class, now=now
    )
    if reports:
        text += f" (ref {reports[0].reference})"
    return f"{_when(deadline)}\n{text}", status


def _incident_table(
    records: Sequence[rs.IncidentRecord], now: datetime, caption: str
) -> TableBlock:
    rows = []
    status = []
    for r in records:
        i = r.incident
        mdr, mdr_status = _authority_deadline(r, "eu-mdr", now)
        fda, fda_status = _authority_deadline(r, "fda", now)
        rows.append(
            (
                f"#{i.id}",
                i.title,
                f"{i.vigilance_class.replace('_', ' ')}; {i.severity} / {i.status}",
                mdr,
                fda,
                i.capa_reference or "none recorded",
            )
        )
        status.append("missed" if "missed" in (mdr_status, fda_status) else "")
    return TableBlock(
        ("id", "incident", "class; severity / status", "EU MDR report", "FDA report", "CAPA"),
        tuple(rows),
        caption=caption,
        row_status=tuple(status),
        widths=(0.4, 2.5, 1.3, 1.5, 1.5, 1.2),
    )


def _incident_section(data: _Inputs, now: datetime) -> Section:
    title = "Serious incidents, non-serious incidents and vigilance reports"
    blocks: list[Block] = [
        Paragraph(
            "Deadlines: EU MDR Art. 87 (15 days from awareness for a serious incident; 2 days "
            "for a serious public health threat; 10 days for death or serious deterioration) "
            "and FDA 21 CFR 803 (30 calendar days; 5 work days with remedial action). Until a "
            "person assesses an incident its clock runs with the conservative 15 days. Met or "
            "missed is judged on the vigilance report recorded per authority "
            "('surveillance incidents report ID --authority eu-mdr|fda').",
            "note",
        )
    ]
    if not data.incidents:
        blocks.append(Paragraph("No incident in this period.", "text"))
        return Section("incidents", title, blocks)
    serious = [r for r in data.incidents if r.incident.vigilance_class in SERIOUS_CLASSES]
    non_serious = [r for r in data.incidents if r.incident.vigilance_class == "not_reportable"]
    pending = [r for r in data.incidents if r not in serious and r not in non_serious]
    asof = f"(deadline status as of {_when(now)} UTC)"
    for group, caption in (
        (serious, f"Serious incidents {asof}."),
        (pending, f"Incidents awaiting assessment: counted as potentially serious {asof}."),
        (non_serious, "Non-serious incidents (assessed not reportable; input to the trend test)."),
    ):
        if group:
            blocks.append(_incident_table(group, now, caption))
        else:
            blocks.append(Paragraph(caption.split(" (")[0].rstrip(".") + ": none.", "text"))
    for r in data.incidents:
        i = r.incident
        grouped = {"evidence": "check result(s) attached as evidence"}
        grouped["rollup"] = "wider-stratum result(s) rolled up into this root cause"
        others = [e for e in i.events if e.kind not in grouped]
        timeline = [
            (
                _when(e.at),
                e.kind,
                e.actor,
                "(the summary above)" if e.note == i.summary else e.note or "",
            )
            for e in others
        ]
        for kind, what in grouped.items():
            mine = [e for e in i.events if e.kind == kind]
            if mine:
                timeline.append(
                    (
                        _when(min(e.at for e in mine)),
                        kind,
                        ", ".join(sorted({e.actor for e in mine})),
                        f"{len(mine)} {what}",
                    )
                )
        timeline.sort(key=lambda row: row[0])
        reports = "; ".join(
            f"{v.authority} {v.reference} at {_when(v.reported_at)}" for v in r.reports
        ) or (_when(r.reported_at) if r.reported_at else "not reported")
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
                    ("Vigilance reports", reports),
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
    return Section("incidents", title, blocks)


def _trend_section(data: _Inputs) -> Section:
    title = "Trend reporting (EU MDR Art. 88)"
    trend = data.trend
    blocks: list[Block] = [
        Paragraph(
            "Method (from the PMS plan): non-serious incidents opened in the period against the "
            "four periods of the same length before it; under no change the current count is "
            "binomial given the total (exact test for a ratio of Poisson rates); a significant "
            "increase (one-sided p below alpha, at least min_count incidents) must be reported "
            "under Art. 88.",
            "note",
        )
    ]
    if trend is None:
        blocks.append(Paragraph("The trend test could not be run.", "warning"))
        return Section("trend", title, blocks)
    t = trend.result
    pending = sum(r.incident.vigilance_class == "assessment_pending" for r in data.incidents)
    blocks.append(
        KeyValues(
            (
                (
                    "Non-serious incidents",
                    f"{t.current} in the period ({t.current_rate_per_30d:.2f} per 30 days) vs "
                    f"{t.baseline} in the {t.baseline_days:.0f} days before "
                    f"({t.baseline_rate_per_30d:.2f} per 30 days)",
                ),
                (
                    "One-sided p-value",
                    f"{t.p_value:.3g} (alpha {t.alpha}, min count {t.min_count})",
                ),
                (
                    "Result",
                    "SIGNIFICANT INCREASE: a trend report is due under Art. 88"
                    if t.flagged
                    else "no statistically significant increase",
                ),
                ("Awaiting assessment", f"{pending} incident(s) of the period, not counted"),
            )
        )
    )
    if pending and not t.flagged:
        blocks.append(
            Paragraph(
                "Incidents still awaiting assessment are not counted: 'no trend' is only as "
                "good as the assessments.",
                "warning",
            )
        )
    return Section("trend", title, blocks)


def _fsca_section(data: _Inputs) -> Section:
    title = "Field safety corrective actions (FSCA)"
    if not data.fscas:
        return Section(
            "fsca",
            title,
            [
                Paragraph(
                    "No FSCA open during the period is recorded ('surveillance fsca add "
                    "--model ... --reference ... --title ... --started ...').",
                    "text",
                )
            ],
        )
    rows = tuple(
        (
            f.reference,
            f.title,
            f.status,
            _day(f.started_at),
            _day(f.closed_at),
            f.field_safety_notice or "-",
        )
        for f in data.fscas
    )
    return Section(
        "fsca",
        title,
        [
            TableBlock(
                ("reference", "action", "status", "started", "closed", "field safety notice"),
                rows,
                caption="FSCAs open at some moment of the period.",
                row_status=tuple("warning" if f.status == "open" else "" for f in data.fscas),
                widths=(1.2, 3.0, 0.6, 0.9, 0.9, 1.4),
            )
        ],
    )


def _complaints_section(data: _Inputs) -> Section:
    title = "Complaints and user feedback"
    if not data.complaints:
        return Section(
            "complaints",
            title,
            [
                Paragraph(
                    "No complaint received in the period is recorded ('surveillance complaints "
                    "import FILE.csv' takes the complaint system's export).",
                    "text",
                )
            ],
        )
    categories: dict[str, list[rs.Complaint]] = {}
    for c in data.complaints:
        categories.setdefault(c.category, []).append(c)
    blocks: list[Block] = [
        TableBlock(
            ("category", "complaints", "related to a serious incident"),
            tuple(
                (k, str(len(v)), str(sum(c.serious for c in v)))
                for k, v in sorted(categories.items())
            ),
            caption=f"{len(data.complaints)} complaint(s) received in the period, by category.",
            widths=(2, 1, 1.4),
        ),
        TableBlock(
            ("reference", "received", "category", "serious", "summary", "outcome"),
            tuple(
                (
                    c.reference,
                    _day(c.received_at),
                    c.category,
                    "yes" if c.serious else "no",
                    c.summary,
                    c.outcome or "open",
                )
                for c in data.complaints[:100]
            ),
            caption="Complaints (first 100).",
            row_status=tuple("breach" if c.serious else "" for c in data.complaints[:100]),
            widths=(1.0, 0.9, 1.1, 0.6, 3.0, 1.6),
        ),
    ]
    return Section("complaints", title, blocks)


def _pmcf_section() -> Section:
    return Section(
        "pmcf",
        "PMCF and literature (to be completed)",
        [
            Paragraph(
                "Not produced by this software: the main findings of the post-market clinical "
                "follow-up (PMCF evaluation report) and of the literature and similar-device "
                "review of the period go here, with their references.",
                "note",
            ),
            BlankField("Main findings of the PMCF evaluation report (reference)", 4),
            BlankField("Literature, registries and similar devices: relevant findings", 4),
        ],
    )


def _operations_section(
    data: _Inputs, evidently_note: str, letters: Sequence[tuple[int, str, str, datetime]]
) -> Section:
    runs = data.job_runs
    failed = [r for r in runs if r.status == "failed"]
    blocks: list[Block] = [
        Paragraph(
            "Counted by the period of the data they concern: a rejected record by the time "
            "in its payload (or by when it arrived with the period's data), a check run by the "
            "windows it judged.",
            "note",
        ),
        KeyValues(
            (
                ("Check runs", f"{len(runs)} ({len(failed)} failed)"),
                (
                    "Rejected records",
                    ", ".join(f"{k}: {v}" for k, v in sorted(data.dead_letters.items())) or "none",
                ),
                ("Metadata drift report (evidently)", evidently_note),
            )
        ),
    ]
    if letters:
        blocks.append(
            TableBlock(
                ("id", "kind", "data time", "reason"),
                tuple((str(i), k, _when(t), reason) for i, k, reason, t in letters[:50]),
                caption="Rejected records (dead letters) concerning the period (first 50).",
                widths=(0.4, 0.9, 1.1, 5),
            )
        )
    if failed:
        blocks.append(
            TableBlock(
                ("job", "scheduled", "error"),
                tuple((r.job_id, _when(r.scheduled_for), r.error or "") for r in failed[:20]),
                caption="Failed check runs.",
                widths=(1.5, 1.2, 4),
            )
        )
    return Section("operations", "Data quality and attachments", blocks)


def _benefit_risk_section(data: _Inputs, now: datetime) -> Section:
    breaches = _breaches(data)
    episodes = drift_episodes(data.drift, data.persistence_windows)
    persistent = [e for e in episodes.values() if e.onset is not None]
    serious, non_serious, pending = _incident_counts(data)
    missed = _missed(data, now)
    capas = sorted({r.incident.capa_reference for r in data.incidents if r.incident.capa_reference})
    open_incidents = [r.incident for r in data.incidents if r.incident.status != "closed"]
    evidence = (
        (
            "Performance",
            "; ".join(
                f"{c.finding} {c.metric} {c.value:.3f}{_ci(c.ci_lower, c.ci_upper)} at "
                f"{_stratum(c.stratum_kind, c.stratum_value)} "
                f"({_day(c.window_start)}..{_day(c.window_end)}) < limit {c.alert_limit:.3f}"
                for c in breaches
            )
            or "no breach of a cleared alert limit in any judged window",
        ),
        (
            "Data drift",
            "; ".join(
                f"{_stratum(*e.stratum)} from {_day(e.onset)} ({', '.join(e.signals)})"
                for e in sorted(persistent, key=lambda e: _stratum_key(*e.stratum))
            )
            or "no persistent drift",
        ),
        (
            "Incidents",
            f"{serious} serious, {non_serious} non-serious, {pending} awaiting assessment; "
            f"{len(open_incidents)} still open"
            + (f"; missed deadlines: {', '.join(f'#{i}' for i in missed)}" if missed else ""),
        ),
        (
            "Trend (Art. 88)",
            "-"
            if data.trend is None
            else (
                "significant increase"
                if data.trend.result.flagged
                else f"no significant increase (p = {data.trend.result.p_value:.3g})"
            ),
        ),
        ("FSCA", ", ".join(f"{f.reference} ({f.status})" for f in data.fscas) or "none"),
        (
            "Complaints",
            f"{len(data.complaints)} ({sum(c.serious for c in data.complaints)} related to a "
            "serious incident)",
        ),
        ("CAPA references", ", ".join(capas) or "none recorded on the incidents"),
        (
            "Label coverage",
            _pct(data.coverage[0].fraction) if data.coverage else "-",
        ),
    )
    return Section(
        "benefit-risk",
        "Benefit-risk determination, CAPA and sign-off (to be completed)",
        [
            Paragraph(
                "The evidence below is pre-filled from the sections above; the assessment and "
                "the decisions are a person's, not the software's. Record the sign-off with "
                "'surveillance report signoff --model M --period P --by NAME --conclusions-file "
                "F --report PDF': the next report quotes these conclusions.",
                "note",
            ),
            KeyValues(evidence),
            BlankField(
                "Benefit-risk determination: is it still favourable and unchanged? "
                "(MDCG 2022-21 Annex I, section on conclusions)",
                5,
            ),
            BlankField(
                "Actions decided (CAPA, FSCA, label or IFU change, retraining, PMS plan change, "
                "none) with their references and owners",
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
            "not installed (it is a default dependency: reinstall surveillance to attach the "
            "evidently data-drift report)"
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


def _gather(
    store: Store, model: ModelInfo, period: Period, settings: Settings | None
) -> tuple[_Inputs, list[tuple[int, str, str, datetime]]]:
    studies = store.reporting.studies_in_period(model.id, period.start, period.end)
    letters = store.reporting.dead_letters_in_period(model.id, period.start, period.end)
    counts: dict[str, int] = {}
    for _, kind, _, _ in letters:
        counts[kind] = counts.get(kind, 0) + 1
    days = max(1, round((period.end - period.start).total_seconds() / 86400))
    trends = assess_trends(store, now=period.end, model=model.name, period_days=days)
    data = _Inputs(
        model=model,
        period=period,
        studies=studies,
        coverage=rs.label_coverage(studies),
        weekly=rs.weekly_counts(studies),
        drift=store.checks.drift(model.id, period.start, period.end),
        performance=store.checks.performance(model.id, period.start, period.end),
        incidents=store.reporting.incidents_in_period(model.id, period.start, period.end),
        dead_letters=counts,
        job_runs=store.reporting.job_runs_in_period(model.name, period.start, period.end),
        references=store.registry.reference_sets(model.id),
        fscas=store.reporting.fscas(model.id, period.start, period.end),
        complaints=store.reporting.complaints(model.id, period.start, period.end),
        previous=store.reporting.previous_signoff(model.id, period.start),
        trend=trends[0] if trends else None,
        persistence_windows=settings.drift.persistence_windows if settings else 2,
    )
    return data, letters


def build_document(
    data: _Inputs,
    fig_dir: Path,
    *,
    now: datetime,
    settings: Settings | None,
    evidently: tuple[Path | None, str],
    audit_head: str,
    dead_letters: Sequence[tuple[int, str, str, datetime]] = (),
) -> Document:
    """The report in the order of a PSUR (MDCG 2022-21 Annex I), numbered."""
    model, period = data.model, data.period
    anchors = [
        "summary",
        "device",
        "previous",
        "volumes",
        "incidents",
        "trend",
        "fsca",
        "complaints",
        "performance",
        "drift",
        "labels",
        "pmcf",
        "operations",
        "benefit-risk",
    ]
    numbers = {anchor: f"section {i}" for i, anchor in enumerate(anchors, 1)}
    sections = [
        _executive_summary(data, now, numbers),
        _device_section(data, now),
        _previous_section(data),
        _volume_section(data, fig_dir),
        _incident_section(data, now),
        _trend_section(data),
        _fsca_section(data),
        _complaints_section(data),
        _performance_section(data, fig_dir),
        _drift_section(data, fig_dir, settings, evidently),
        _coverage_section(data, fig_dir),
        _pmcf_section(),
        _operations_section(data, evidently[1], dead_letters),
        _benefit_risk_section(data, now),
    ]
    assert [s.anchor for s in sections] == anchors
    for i, section in enumerate(sections, 1):
        section.title = f"{i}. {section.title}"
    return Document(
        title=f"Periodic safety update report (PMS): {model.name} {model.version}",
        subtitle=f"Period {period.describe()}",
        meta=(
            ("Manufacturer", model.manufacturer or "-"),
            ("Basic UDI-DI / UDI-DI", f"{model.basic_udi_di or '-'} / {model.udi_di or '-'}"),
            ("PSUR reference", f"{_psur_reference(model, period)}, version 1"),
            ("Generated", f"{_when(now)} UTC by surveillance"),
            ("Audit chain at generation", audit_head),
            ("Status", f"DRAFT until section {len(sections)} is completed and signed"),
        ),
        sections=sections,
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
    data, letters = _gather(store, model, period, settings)
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
        evidently_note = "not requested (--no-evidently)"
    document = build_document(
        data,
        fig_dir,
        now=now,
        settings=settings,
        evidently=(evidently_path, evidently_note),
        audit_head=audit_head,
        dead_letters=letters,
    )
    stem = f"pms-{model.name}-{re.sub(r'[^A-Za-z0-9-]+', '_', period.label)}"
    html = out_dir / f"{stem}.html"
    html.write_text(render_html(document), encoding="utf-8")
    pdf = write_pdf(
        document,
        out_dir / f"{stem}.pdf",
        footer=f"{_psur_reference(model, period)} · {model.name} {model.version} · {period.label}",
        created=now,
    )
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
