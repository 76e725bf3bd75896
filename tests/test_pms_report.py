"""The PMS report: HTML and PDF written from the demo's data, sections and figures present."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from fixtures_reports import MODEL, ReportDemo
from PIL import Image

from surveillance.cli import cli
from surveillance.core.errors import UsageError
from surveillance.outputs.reports import parse_period, previous_quarter, write_pms_report
from surveillance.outputs.reports.pms import date_range, deadline_status
from surveillance.store import Store
from surveillance.store.reporting import weekly_counts

# the PSUR structure of MDCG 2022-21 Annex I, in order
SECTIONS = (
    "1. Executive summary",
    "2. Device identification and intended use",
    "3. Conclusions of the previous report",
    "4. Volume of use and population",
    "5. Serious incidents, non-serious incidents and vigilance reports",
    "6. Trend reporting (EU MDR Art. 88)",
    "7. Field safety corrective actions (FSCA)",
    "8. Complaints and user feedback",
    "9. Performance against the clearance baseline",
    "10. Data drift",
    "11. Label coverage",
    "12. PMCF and literature (to be completed)",
    "13. Data quality and attachments",
    "14. Benefit-risk determination, CAPA and sign-off (to be completed)",
)


@pytest.mark.postgres
def test_report_html_and_pdf_from_demo_data(
    report_store: Store,
    report_demo: ReportDemo,
    tmp_path: Path,
) -> None:
    period = date_range(report_demo.first_prediction.date(), report_demo.now.date())
    files = write_pms_report(
        report_store, MODEL, period, tmp_path, settings=report_demo.settings, now=report_demo.now
    )
    html = files.html.read_text()
    positions = [html.find(f"<h2>{title}</h2>") for title in SECTIONS]
    assert -1 not in positions, [t for t, p in zip(SECTIONS, positions, strict=True) if p < 0]
    assert positions == sorted(positions)
    # device identification from the model config
    for value in ("04069999000172", "4069999CXRPTX21J7", "IIa (MDR Annex VIII, Rule 11)"):
        assert value in html
    # the injected scanner update is reported as a breach, with its deadline still open
    assert "Performance breached its alert limit" in html
    breached = re.search(r"sensitivity (0\.\d+)", html)
    assert breached is not None and float(breached.group(1)) < 0.85  # below the alert limit
    assert "scanner: GE Discovery XR656" in html
    assert re.search(r"open: 1[45]d \d+h left", html)
    # counts by the period of the data: the demo's two dead letters and its check runs
    counts = dict(
        re.findall(r"<dt>(Rejected records \(dead letters\)|Check runs)</dt><dd>(.*?)</dd>", html)
    )
    assert counts["Rejected records (dead letters)"] == "2", counts  # the demo's two
    assert re.fullmatch(r"[1-9]\d* \(0 failed\)", counts["Check runs"]), counts
    # estimated (CBPE) and realised performance together; n says what it counts
    assert "estimated (CBPE)" in html and " pos / " in html
    # drift onset is the persistent run, not a stray flag
    assert "onset" in html and "isolated flags" in html
    assert "Standalone performance study CPS-017 rev C" in html  # the baseline's source
    # figures: rendered, non-trivial, embedded in the HTML
    assert len(files.figures) == 6
    for figure in files.figures:
        with Image.open(figure) as image:
            assert image.width > 800 and image.height > 200
    assert html.count("data:image/png;base64,") == len(files.figures)
    # the table of contents wraps instead of running off a 1280 px window
    assert "flex-wrap: wrap" in html
    # the PDF: a real, multi-page document
    pdf = files.pdf.read_bytes()
    assert pdf.startswith(b"%PDF-")
    assert len(re.findall(rb"/Type /Page\b", pdf)) >= 5
    # the creation date is the report's, not reportlab's invariant 2000-01-01
    assert f"/CreationDate (D:{report_demo.now:%Y%m%d}".encode() in pdf
    # generating a report is audited
    assert report_store.audit.verify().ok

    _render_and_look(files.pdf, files.html, tmp_path)


def _render_and_look(pdf: Path, html: Path, tmp_path: Path) -> None:
    """Every PDF page to PNG (pdftoppm) and the HTML in headless Chromium: real ink on each.

    ``make test`` installs both tools (scripts/ensure_render_tools.sh); elsewhere a
    missing tool skips only this look.
    """
    pdftoppm = shutil.which("pdftoppm")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if pdftoppm is None or chromium is None:
        pytest.skip("pdftoppm or chromium missing: run scripts/ensure_render_tools.sh")
    subprocess.run(
        [pdftoppm, "-r", "40", "-png", str(pdf), str(tmp_path / "p")], check=True, timeout=120
    )
    pages = sorted(tmp_path.glob("p-*.png"))
    assert len(pages) == len(re.findall(rb"/Type /Page\b", pdf.read_bytes()))
    for page in pages:
        with Image.open(page) as image:
            assert image.convert("L").getextrema()[0] < 100, f"{page.name} is blank"
    shot = tmp_path / "html.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--screenshot={shot}",
            "--window-size=1280,2000",
            html.as_uri(),
        ],
        check=True,
        timeout=120,
        capture_output=True,
    )
    with Image.open(shot) as image:
        assert image.size == (1280, 2000)
        assert image.convert("L").getextrema()[0] < 100


@pytest.mark.postgres
def test_report_cli_on_a_quarter_without_data_says_so(
    report_demo_url: str,
    tmp_path: Path,
) -> None:
    runner = CliRunner()
    result = runner.invoke(
        cli,
        [
            "--db-url",
            report_demo_url,
            "report",
            "pms",
            "--model",
            MODEL,
            "--period",
            "2020Q1",
            "--out",
            str(tmp_path),
            "--no-evidently",
        ],
    )
    assert result.exit_code == 0, result.output
    html = next(tmp_path.glob("pms-*.html")).read_text()
    assert "No drift check ran in this period." in html
    assert "No incident in this period." in html
    assert next(tmp_path.glob("pms-*.pdf")).stat().st_size > 1000


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        pytest.param(
            "2026Q3", datetime(2026, 7, 1, tzinfo=UTC), datetime(2026, 10, 1, tzinfo=UTC), id="q3"
        ),
        pytest.param(
            "2026q4", datetime(2026, 10, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC), id="q4"
        ),
        pytest.param(
            "2026-07-01..2026-07-31",
            datetime(2026, 7, 1, tzinfo=UTC),
            datetime(2026, 8, 1, tzinfo=UTC),
            id="dates",
        ),
    ],
)
def test_parse_period(text: str, start: datetime, end: datetime) -> None:
    period = parse_period(text)
    assert (period.start, period.end) == (start, end)


@pytest.mark.parametrize(
    "text", ["2026Q5", "Q3", "2026-08-01..2026-07-01", "2026-13-01..2026-12-31"]
)
def test_parse_period_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        parse_period(text)


def test_previous_quarter_and_deadlines() -> None:
    assert previous_quarter(datetime(2027, 2, 3, tzinfo=UTC)).label == "2026Q4"
    assert previous_quarter(datetime(2026, 7, 1, tzinfo=UTC)).label == "2026Q2"
    due = datetime(2026, 8, 15, tzinfo=UTC)
    now = datetime(2026, 8, 20, tzinfo=UTC)
    assert (
        deadline_status(due, reported_at=None, vigilance_class="assessment_pending", now=now)[1]
        == "missed"
    )
    assert (
        deadline_status(
            due,
            reported_at=datetime(2026, 8, 14, tzinfo=UTC),
            vigilance_class="serious_incident",
            now=now,
        )[1]
        == "ok"
    )
    assert deadline_status(due, reported_at=None, vigilance_class="not_reportable", now=now)[
        0
    ].startswith("not applicable")


@pytest.mark.postgres
def test_evidently_attachment_or_a_clear_note(
    report_store: Store,
    report_demo: ReportDemo,
    tmp_path: Path,
) -> None:
    period = date_range(report_demo.first_prediction.date(), report_demo.now.date())
    files = write_pms_report(report_store, MODEL, period, tmp_path, settings=report_demo.settings)
    html = files.html.read_text()
    # a default dependency: never skipped
    assert importlib.util.find_spec("evidently") is not None
    assert files.evidently is not None and files.evidently.stat().st_size > 10_000
    assert "attached as evidently-data-drift.html" in html
    # linked from the drift section
    drift = html[html.index("<h2>10. Data drift</h2>") : html.index("<h2>11. Label coverage</h2>")]
    assert '<a href="evidently-data-drift.html">' in drift
    text = files.evidently.read_text(errors="replace")
    assert "score:pneumothorax" in text and "software_versions" in text


@pytest.mark.postgres
def test_no_plotted_value_lies_outside_its_axes(
    report_store: Store, report_demo: ReportDemo
) -> None:
    """Every figure of the demo's report holds all its points, bands, limits and baselines."""
    from surveillance.outputs.reports import plots

    model = report_store.registry.model(MODEL)
    period = date_range(report_demo.first_prediction.date(), report_demo.now.date())
    checks = report_store.checks.performance(model.id, period.start, period.end)
    assert any(c.estimated for c in checks) and any(not c.estimated for c in checks)
    # the breaching scanner's sensitivity is far below the clearance CI
    assert min(c.value for c in checks if c.value is not None) < 0.6
    studies = report_store.reporting.studies_in_period(model.id, period.start, period.end)
    weekly = weekly_counts(studies)
    baselines = [b for b in model.baselines if b.stratum == "overall"]
    figures = {
        "performance_time": plots.draw_performance_over_time(
            checks, baselines, period_end=period.end
        ),
        "performance_subgroups": plots.draw_performance_forest(checks, baselines),
        "volumes": plots.draw_weekly_volumes(weekly),
        "label_coverage": plots.draw_label_coverage(weekly),
    }
    for name, figure in figures.items():
        plots.fit_axes(figure)
        assert plots.outside_axes(figure) == [], name
    # the estimates reach the end of the period
    time_axes = figures["performance_time"].axes[0]
    assert time_axes.get_xlim()[1] >= plots.mdates.date2num(period.end)


def test_outside_axes_sees_a_hidden_point_and_fit_axes_brings_it_back() -> None:
    """The check itself can fail: a point clipped by a hand-set axis is reported, then fixed."""
    from matplotlib.figure import Figure

    from surveillance.outputs.reports import plots

    figure = Figure()
    ax = figure.add_subplot()
    ax.errorbar([1.0, 2.0, 3.0], [0.9, 0.92, 0.45], yerr=[0.03, 0.03, 0.1])
    ax.axhline(0.85)
    ax.set_ylim(0.6, 1.0)  # the old Figure 2 axis: 0.45 is not drawn
    problems = plots.outside_axes(figure)
    assert len(problems) == 1 and "outside" in problems[0]
    plots.fit_axes(figure)
    assert plots.outside_axes(figure) == []
    assert figure.axes[0].get_ylim()[0] < 0.35
