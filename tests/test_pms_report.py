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

SECTIONS = (
    "Intended use and clearance baseline",
    "At a glance",
    "Volumes per site and scanner",
    "Performance against the clearance baseline",
    "Data drift",
    "Label coverage",
    "Incidents and vigilance",
    "Conclusions (to be completed by the quality manager)",
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
    for title in SECTIONS:
        assert title in html
    # the injected scanner update is reported as a breach, with its deadline still open
    assert "Performance breach: pneumothorax sensitivity at scanner: GE Discovery XR656" in html
    assert re.search(r"open: 1[45]d \d+h left", html)
    assert "Standalone performance study CPS-017 rev C" in html  # the baseline's source
    # figures: rendered, non-trivial, embedded in the HTML
    assert len(files.figures) == 6
    for figure in files.figures:
        with Image.open(figure) as image:
            assert image.width > 800 and image.height > 200
    assert html.count("data:image/png;base64,") == len(files.figures)
    # the PDF: a real, multi-page document
    pdf = files.pdf.read_bytes()
    assert pdf.startswith(b"%PDF-")
    assert len(re.findall(rb"/Type /Page\b", pdf)) >= 5
    # generating a report is audited
    assert report_store.audit.verify().ok

    pdftoppm = shutil.which("pdftoppm")
    if pdftoppm is None:
        pytest.skip("pdftoppm (poppler-utils) not installed: PDF page rendering not checked")
    subprocess.run(
        [pdftoppm, "-r", "60", "-png", "-f", "1", "-l", "3", str(files.pdf), str(tmp_path / "p")],
        check=True,
        timeout=60,
    )
    pages = sorted(tmp_path.glob("p-*.png"))
    assert len(pages) == 3
    with Image.open(pages[0]) as page:
        grey = page.convert("L")
        # a rendered page has ink on it: not blank
        assert grey.getextrema()[0] < 100


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
    if importlib.util.find_spec("evidently") is None:
        assert files.evidently is None
        assert "not installed (pip install &#39;surveillance[reports]&#39;" in html
        return
    assert files.evidently is not None and files.evidently.stat().st_size > 10_000
    assert "attached as evidently-data-drift.html" in html
