"""The PMS report's figures (matplotlib, PNG).

Each function draws one figure from domain objects and writes it to ``path``.
They use :class:`matplotlib.figure.Figure` directly, never ``pyplot``, so no
global state is touched and no GUI backend is ever needed (the scheduler may
call them from a worker thread).

Plots never hide a point: before a figure is saved every axis is widened to hold
every plotted value, interval, limit and baseline (:func:`fit_axes`), and
:func:`outside_axes` (used by the tests) lists anything that still lies outside.
Each ``draw_*`` function returns the :class:`Figure` so a test can inspect it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
from matplotlib import dates as mdates
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure

from surveillance.store.domain import Baseline, DriftCheck, PerformanceCheck
from surveillance.store.reporting import WeeklyCount

DPI = 150
WIDTH = 7.2  # inches: the text width of an A4 page with 2 cm margins
STRATUM_ORDER = {"overall": 0, "site": 1, "scanner": 2}


def _x(moments: Sequence[datetime]) -> np.ndarray:
    """Matplotlib date numbers (tz-aware datetimes in, no numpy timezone warning)."""
    return np.asarray(mdates.date2num(list(moments)), dtype=float)


def _y(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _display_points(ax: Axes) -> np.ndarray:
    """Every plotted vertex of ``ax`` (lines, markers, bars, bands, error bars) in pixels."""
    chunks: list[np.ndarray] = []
    for line in ax.get_lines():
        xy = np.asarray(line.get_xydata(), dtype=float)
        if len(xy):
            chunks.append(line.get_transform().transform(xy))
    for collection in ax.collections:
        if isinstance(collection, PathCollection):  # scatter: markers sit at the offsets
            offsets = np.asarray(collection.get_offsets(), dtype=float).reshape(-1, 2)
            chunks.append(collection.get_offset_transform().transform(offsets))
            continue
        transform = collection.get_transform()
        for path in collection.get_paths():
            vertices = np.asarray(path.vertices, dtype=float).reshape(-1, 2)
            chunks.append(transform.transform(vertices))
    for patch in ax.patches:
        vertices = np.asarray(patch.get_path().vertices, dtype=float).reshape(-1, 2)
        chunks.append(patch.get_transform().transform(vertices))
    if not chunks:
        return np.empty((0, 2))
    points = np.concatenate(chunks)
    return points[np.isfinite(points).all(axis=1)]


def _data_axes(fig: Figure) -> list[Axes]:
    """Axes holding plotted values (heat-map images and colour bars hold a grid, not points)."""
    return [ax for ax in fig.axes if not ax.images and ax.get_label() != "<colorbar>"]


def fit_axes(fig: Figure, pad: float = 0.04) -> None:
    """Widen every data axis until all its plotted points lie inside (never narrows)."""
    FigureCanvasAgg(fig).draw()
    for ax in _data_axes(fig):
        points = _display_points(ax)
        if not len(points):
            continue
        data = ax.transData.inverted().transform(points)
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        lo, hi = data.min(axis=0), data.max(axis=0)
        if lo[1] < y0 or hi[1] > y1:
            span = max(hi[1], y1) - min(lo[1], y0)
            ax.set_ylim(
                min(y0, lo[1] - pad * span) if lo[1] < y0 else y0,
                max(y1, hi[1] + pad * span) if hi[1] > y1 else y1,
            )
        if lo[0] < x0 or hi[0] > x1:
            span = max(hi[0], x1) - min(lo[0], x0)
            ax.set_xlim(
                min(x0, lo[0] - pad * span) if lo[0] < x0 else x0,
                max(x1, hi[0] + pad * span) if hi[0] > x1 else x1,
            )


def outside_axes(fig: Figure, tolerance_px: float = 1.0) -> list[str]:
    """Plotted points that lie outside their axes, as messages (empty: nothing hidden)."""
    FigureCanvasAgg(fig).draw()
    problems = []
    for index, ax in enumerate(_data_axes(fig)):
        points = _display_points(ax)
        box = ax.bbox
        outside = (
            (points[:, 0] < box.x0 - tolerance_px)
            | (points[:, 0] > box.x1 + tolerance_px)
            | (points[:, 1] < box.y0 - tolerance_px)
            | (points[:, 1] > box.y1 + tolerance_px)
        )
        if outside.any():
            data = ax.transData.inverted().transform(points[outside])
            problems.append(
                f"axes {index} ({ax.get_title(loc='left') or ax.get_title()}): "
                f"{int(outside.sum())} point(s) outside x {ax.get_xlim()} y {ax.get_ylim()}, "
                f"e.g. {data[0].tolist()}"
            )
    return problems


def _save(fig: Figure, path: Path) -> Path:
    fit_axes(fig)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", metadata={"Software": "surveillance"})
    return path


def _colours(names: Sequence[str]) -> dict[str, tuple[float, float, float, float]]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(sorted(set(names)))}


def _date_axis(ax: object) -> None:
    locator = mdates.AutoDateLocator(minticks=3, maxticks=8)
    ax.xaxis.set_major_locator(locator)  # type: ignore[attr-defined]
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))  # type: ignore[attr-defined]


def weekly_volumes(weekly: Sequence[WeeklyCount], path: Path) -> Path:
    """Stacked weekly study counts per site."""
    return _save(draw_weekly_volumes(weekly), path)


def draw_weekly_volumes(weekly: Sequence[WeeklyCount]) -> Figure:
    fig = Figure(figsize=(WIDTH, 2.8))
    ax = fig.add_subplot()
    weeks = sorted({w.week_start for w in weekly})
    sites = sorted({w.site for w in weekly})
    colours = _colours(sites)
    bottom = np.zeros(len(weeks))
    index = {week: i for i, week in enumerate(weeks)}
    for site in sites:
        values = np.zeros(len(weeks))
        for w in weekly:
            if w.site == site:
                values[index[w.week_start]] = w.studies
        ax.bar(
            _x(weeks), values, width=6, bottom=bottom, label=site, color=colours[site], align="edge"
        )
        bottom += values
    ax.set_ylabel("studies per week")
    ax.set_title("Studies scored per week, by site", fontsize=10)
    ax.legend(fontsize=7, ncols=min(len(sites), 4), loc="upper left", frameon=False)
    ax.set_ylim(0, max(bottom.max(), 1) * 1.25)
    _date_axis(ax)
    ax.grid(axis="y", alpha=0.3)
    return fig


def label_coverage(weekly: Sequence[WeeklyCount], path: Path) -> Path:
    """Share of each week's studies that has a confirmed diagnosis, per site."""
    return _save(draw_label_coverage(weekly), path)


def draw_label_coverage(weekly: Sequence[WeeklyCount]) -> Figure:
    fig = Figure(figsize=(WIDTH, 2.5))
    ax = fig.add_subplot()
    sites = sorted({w.site for w in weekly})
    colours = _colours(sites)
    for site in sites:
        rows = [w for w in weekly if w.site == site and w.studies]
        ax.plot(
            _x([w.week_start for w in rows]),
            [w.labelled / w.studies for w in rows],
            marker="o",
            markersize=3,
            label=site,
            color=colours[site],
        )
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("labelled fraction")
    ax.set_title(
        "Studies with a confirmed diagnosis, by week of the prediction (labels arrive late)",
        fontsize=10,
    )
    ax.legend(fontsize=7, ncols=min(len(sites), 4), loc="lower left", frameon=False)
    _date_axis(ax)
    ax.grid(alpha=0.3)
    return fig


def _metric_panels(baselines: Sequence[Baseline]) -> list[Baseline]:
    return [b for b in baselines if b.stratum == "overall"]


def performance_over_time(
    checks: Sequence[PerformanceCheck],
    baselines: Sequence[Baseline],
    path: Path,
    *,
    period_end: datetime | None = None,
) -> Path:
    """Realised and estimated (CBPE) value per window against the clearance baseline."""
    return _save(draw_performance_over_time(checks, baselines, period_end=period_end), path)


def _interval(checks: Sequence[PerformanceCheck]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    values = np.array([c.value for c in checks], dtype=float)
    lower = np.array([c.value if c.ci_lower is None else c.ci_lower for c in checks], dtype=float)
    upper = np.array([c.value if c.ci_upper is None else c.ci_upper for c in checks], dtype=float)
    return values, lower, upper


def draw_performance_over_time(
    checks: Sequence[PerformanceCheck],
    baselines: Sequence[Baseline],
    *,
    period_end: datetime | None = None,
) -> Figure:
    """One panel per overall baseline metric.

    Realised (labelled) overall values with their 95% CI in black; the label-free
    CBPE estimate of the windows whose labels have not arrived yet, with its band,
    in blue, to the end of the period (as NannyML draws them); per-site realised
    values in colour; scanners with a breach in red. The y axis holds every point,
    interval, the alert limit and the clearance CI (see :func:`fit_axes`).
    """
    panels = _metric_panels(baselines)
    fig = Figure(figsize=(WIDTH, 2.3 * max(len(panels), 1)))
    sites = sorted({c.stratum_value for c in checks if c.stratum_kind == "site"})
    colours = _colours(sites)
    legend: dict[str, Artist] = {}
    flagged = sorted(
        {c.stratum_value for c in checks if c.stratum_kind == "scanner" and c.status == "breach"}
    )
    for i, baseline in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, i + 1)
        mine = [
            c
            for c in checks
            if c.finding == baseline.finding and c.metric == baseline.metric and c.value is not None
        ]
        realised = [c for c in mine if not c.estimated]
        estimated = [c for c in mine if c.estimated and c.stratum_kind == "overall"]
        if baseline.ci_lower is not None and baseline.ci_upper is not None:
            ax.axhspan(baseline.ci_lower, baseline.ci_upper, color="0.85", label="clearance 95% CI")
        ax.axhline(baseline.value, color="0.35", lw=1, label="clearance value")
        ax.axhline(baseline.alert_limit, color="tab:red", lw=1, ls="--", label="alert limit")
        for site in sites:
            pts = [c for c in realised if c.stratum_kind == "site" and c.stratum_value == site]
            ax.plot(
                _x([c.window_end for c in pts]),
                _y([c.value for c in pts]),
                color=colours[site],
                lw=0.8,
                alpha=0.7,
                marker=".",
                label=f"site {site}",
            )
        if estimated:
            values, lower, upper = _interval(estimated)
            x = _x([c.window_end for c in estimated])
            ax.fill_between(x, lower, upper, color="tab:blue", alpha=0.18, lw=0)
            ax.errorbar(
                x,
                values,
                yerr=[values - lower, upper - values],
                fmt="o--",
                color="tab:blue",
                ms=4,
                lw=1.2,
                capsize=3,
                label="estimated without labels (CBPE, band)",
            )
        overall = [c for c in realised if c.stratum_kind == "overall"]
        if overall:
            values, lower, upper = _interval(overall)
            ax.errorbar(
                _x([c.window_end for c in overall]),
                values,
                yerr=[values - lower, upper - values],
                fmt="o-",
                color="black",
                capsize=3,
                lw=1.4,
                label="realised overall (95% CI)",
            )
        for scanner in flagged:
            pts = [
                c for c in realised if c.stratum_kind == "scanner" and c.stratum_value == scanner
            ]
            ax.plot(
                _x([c.window_end for c in pts]),
                _y([c.value for c in pts]),
                color="tab:red",
                lw=1.2,
                ls=":",
                marker="s",
                ms=4,
                label=f"scanner {scanner} (breach)",
            )
        if period_end is not None:
            ax.axvline(float(_x([period_end])[0]), color="0.5", lw=0.8, ls=":", label="period end")
        ax.set_ylabel(baseline.metric)
        ax.set_title(
            f"{baseline.finding}: {baseline.metric} per window (plotted at window end)",
            fontsize=9,
            loc="left",
        )
        everything = [baseline.alert_limit, baseline.value]
        everything += [v for v in (baseline.ci_lower, baseline.ci_upper) if v is not None]
        for c in mine:
            everything += [v for v in (c.value, c.ci_lower, c.ci_upper) if v is not None]
        low, high = min(everything), max(everything)
        pad = max(0.02, 0.05 * (high - low))
        ax.set_ylim(max(0.0, low - pad), min(1.0, high + pad) + 0.01)
        ax.grid(alpha=0.3)
        _date_axis(ax)
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    legend_rows = math.ceil(len(legend) / 3)
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.12 + 0.13 * legend_rows) / fig.get_figheight()))
    fig.legend(
        list(legend.values()),
        list(legend.keys()),
        loc="upper center",
        ncols=3,
        fontsize=6.5,
        frameon=False,
    )
    return fig


def performance_forest(
    checks: Sequence[PerformanceCheck], baselines: Sequence[Baseline], path: Path
) -> Path:
    """Latest judged window: every stratum's value and CI against baseline and alert limit."""
    return _save(draw_performance_forest(checks, baselines), path)


def draw_performance_forest(
    checks: Sequence[PerformanceCheck], baselines: Sequence[Baseline]
) -> Figure:
    panels = _metric_panels(baselines)
    judged = [c for c in checks if not c.estimated]
    latest_end = max((c.window_end for c in judged), default=None)
    latest = [c for c in judged if c.window_end == latest_end]
    strata = sorted(
        {(c.stratum_kind, c.stratum_value) for c in latest},
        key=lambda s: (STRATUM_ORDER.get(s[0], 3), s[1]),
    )
    fig = Figure(figsize=(WIDTH, 0.6 + 0.26 * max(len(strata), 1) + 0.4))
    axes = [fig.add_subplot(1, max(len(panels), 1), i + 1) for i in range(len(panels))]
    y = np.arange(len(strata))[::-1]
    for ax, baseline in zip(axes, panels, strict=True):
        by_stratum = {
            (c.stratum_kind, c.stratum_value): c
            for c in latest
            if c.finding == baseline.finding and c.metric == baseline.metric
        }
        ax.axvline(baseline.value, color="0.35", lw=1)
        ax.axvline(baseline.alert_limit, color="tab:red", lw=1, ls="--")
        for yi, stratum in zip(y, strata, strict=True):
            check = by_stratum.get(stratum)
            if check is None or check.value is None:
                continue
            colour = {
                "breach": "tab:red",
                "warning": "tab:orange",
                "insufficient_data": "0.6",
            }.get(check.status, "black")
            lo = check.ci_lower if check.ci_lower is not None else check.value
            hi = check.ci_upper if check.ci_upper is not None else check.value
            ax.plot([lo, hi], [yi, yi], color=colour, lw=1.5)
            ax.plot([check.value], [yi], "o", color=colour, ms=4)
        ax.set_yticks(y)
        ax.set_yticklabels(
            [f"{v}" if k != "overall" else "overall" for k, v in strata] if ax is axes[0] else [],
            fontsize=6,
        )
        ax.set_title(baseline.metric, fontsize=9)
        shown = [baseline.alert_limit, baseline.value]
        for c in by_stratum.values():
            shown += [v for v in (c.value, c.ci_lower, c.ci_upper) if v is not None]
        ax.set_xlim(max(0.0, min(shown) - 0.03), min(1.0, max(shown) + 0.02) + 0.01)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    if latest_end is not None and latest:
        start = latest[0].window_start
        fig.suptitle(
            f"Per subgroup, window {start:%Y-%m-%d}..{latest_end:%Y-%m-%d}: value and 95% CI; "
            "grey line clearance value, red dashed alert limit;\n"
            "red = breach, orange = warning, grey = insufficient data",
            fontsize=8,
        )
    fig.tight_layout()
    return fig


def _windows(checks: Sequence[DriftCheck]) -> list[datetime]:
    return sorted({c.window_start for c in checks})


def drift_strata(checks: Sequence[DriftCheck], path: Path) -> Path:
    """Heat map: how many signals drifted, per stratum (rows) and window (columns)."""
    windows = _windows(checks)
    strata = sorted(
        {(c.stratum_kind, c.stratum_value) for c in checks},
        key=lambda s: (STRATUM_ORDER.get(s[0], 3), s[1]),
    )
    grid = np.full((len(strata), len(windows)), np.nan)
    col = {w: i for i, w in enumerate(windows)}
    row = {s: i for i, s in enumerate(strata)}
    for c in checks:
        r, k = row[(c.stratum_kind, c.stratum_value)], col[c.window_start]
        if c.status == "insufficient_data":
            grid[r, k] = grid[r, k] if not np.isnan(grid[r, k]) else -1
            continue
        grid[r, k] = max(0 if np.isnan(grid[r, k]) else grid[r, k], 0) + (c.status == "drift")
    top = int(np.nanmax(grid)) if np.isfinite(grid).any() else 0
    bounds = [-1.5, -0.5, 0.5, *(x + 0.5 for x in range(1, max(top, 1) + 1))]
    colours = ["0.85", "#e8f5e9"] + [
        (1.0, 0.85 - 0.65 * i / max(top, 1), 0.3 - 0.3 * i / max(top, 1))
        for i in range(max(top, 1))
    ]
    cmap = ListedColormap(colours)
    fig = Figure(figsize=(WIDTH, 0.8 + 0.25 * max(len(strata), 1)))
    ax = fig.add_subplot()
    ax.imshow(
        np.ma.masked_invalid(grid), aspect="auto", cmap=cmap, norm=BoundaryNorm(bounds, cmap.N)
    )
    for r in range(len(strata)):
        for k in range(len(windows)):
            if grid[r, k] > 0:
                ax.text(k, r, str(int(grid[r, k])), ha="center", va="center", fontsize=6)
    ax.set_yticks(range(len(strata)))
    ax.set_yticklabels([v if k != "overall" else "overall" for k, v in strata], fontsize=6)
    ax.set_xticks(range(len(windows)))
    ax.set_xticklabels([f"{w:%m-%d}" for w in windows], fontsize=6, rotation=90)
    ax.set_xlabel("window start", fontsize=7)
    ax.set_title(
        "Signals drifted per stratum and window (number in cell; green none, grey too few cases)",
        fontsize=9,
    )
    return _save(fig, path)


def drift_signals(checks: Sequence[DriftCheck], stratum: tuple[str, str], path: Path) -> Path:
    """Heat map of -log10(p) per signal and window at one stratum; drifted cells marked."""
    kind, value = stratum
    mine = [c for c in checks if c.stratum_kind == kind and c.stratum_value == value]
    windows = _windows(mine)
    signals = sorted({c.signal for c in mine})
    grid = np.full((len(signals), len(windows)), np.nan)
    col = {w: i for i, w in enumerate(windows)}
    row = {s: i for i, s in enumerate(signals)}
    for c in mine:
        if c.p_value is not None:
            grid[row[c.signal], col[c.window_start]] = min(-math.log10(max(c.p_value, 1e-300)), 20)
    fig = Figure(figsize=(WIDTH, 0.9 + 0.28 * max(len(signals), 1)))
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap="Reds", vmin=0, vmax=20)
    for c in mine:
        if c.status == "drift":
            shade = grid[row[c.signal], col[c.window_start]]
            ax.text(
                col[c.window_start],
                row[c.signal],
                "×",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if np.isfinite(shade) and shade > 10 else "black",
            )
    ax.set_yticks(range(len(signals)))
    ax.set_yticklabels(signals, fontsize=7)
    ax.set_xticks(range(len(windows)))
    ax.set_xticklabels([f"{w:%m-%d}" for w in windows], fontsize=6, rotation=90)
    ax.set_xlabel("window start", fontsize=7)
    label = "overall" if kind == "overall" else f"{kind} {value}"
    ax.set_title(f"Drift tests at {label}: -log10(p), capped at 20; × = drift", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01).ax.tick_params(labelsize=6)
    return _save(fig, path)


__all__ = [
    "draw_label_coverage",
    "draw_performance_forest",
    "draw_performance_over_time",
    "draw_weekly_volumes",
    "drift_signals",
    "drift_strata",
    "fit_axes",
    "label_coverage",
    "outside_axes",
    "performance_forest",
    "performance_over_time",
    "weekly_volumes",
]
