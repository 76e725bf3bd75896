"""PSUR inputs from the QMS: FSCAs, complaints, report sign-offs, and the report using them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from fixtures_reports import MODEL, ReportDemo

from surveillance.cli import cli
from surveillance.core.errors import UsageError
from surveillance.outputs.reports.pms import date_range, write_pms_report
from surveillance.store import Store

COMPLAINTS = """reference,received_at,category,serious,summary,outcome
CMP-101,2026-08-14,false negative,no,Radiologist found a small apical pneumothorax not flagged,
CMP-102,2026-09-02T10:30:00Z,usability,no,Worklist flag hard to see at night,closed: UI fix
CMP-103,2026-10-20,false negative,yes,Missed pneumothorax at Northgate after scanner update,
"""


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_fsca_complaints_and_signoff_round_trip(store: Store, tmp_path: Path) -> None:
    model = store.registry.model(MODEL)
    store.reporting.add_fsca(
        MODEL,
        reference="FSCA-2026-01",
        title="Restrict use on GE Discovery XR656 FW32 until retraining",
        started_at=_at("2026-10-05"),
        actor="qm",
    )
    # the same reference again updates it (closing it), it does not double
    store.reporting.add_fsca(
        MODEL,
        reference="FSCA-2026-01",
        title="Restrict use on GE Discovery XR656 FW32 until retraining",
        started_at=_at("2026-10-05"),
        closed_at=_at("2026-11-20"),
        field_safety_notice="FSN-2026-01",
        actor="qm",
    )
    fscas = store.reporting.fscas(model.id)
    assert [(f.reference, f.status, f.field_safety_notice) for f in fscas] == [
        ("FSCA-2026-01", "closed", "FSN-2026-01")
    ]
    assert store.reporting.fscas(model.id, _at("2026-12-01"), _at("2027-01-01")) == []
    with pytest.raises(UsageError, match="before"):
        store.reporting.add_fsca(
            MODEL,
            reference="X",
            title="t",
            started_at=_at("2026-10-05"),
            closed_at=_at("2026-10-01"),
            actor="qm",
        )

    csv_file = tmp_path / "complaints.csv"
    csv_file.write_text(COMPLAINTS)
    assert store.reporting.import_complaints(MODEL, csv_file, actor="qm") == (3, 0)
    assert store.reporting.import_complaints(MODEL, csv_file, actor="qm") == (0, 3)
    q3 = store.reporting.complaints(model.id, _at("2026-07-01"), _at("2026-10-01"))
    assert [c.reference for c in q3] == ["CMP-101", "CMP-102"]
    assert q3[1].outcome == "closed: UI fix" and not q3[1].serious

    # a bad row refuses the whole file, naming the line
    bad = tmp_path / "bad.csv"
    bad.write_text(COMPLAINTS + "CMP-104,yesterday,usability,no,x,\n")
    with pytest.raises(UsageError, match=r"bad\.csv line 5: 'received_at'"):
        store.reporting.import_complaints(MODEL, bad, actor="qm")
    assert len(store.reporting.complaints(model.id, _at("2026-01-01"), _at("2027-01-01"))) == 3
    missing = tmp_path / "missing.csv"
    missing.write_text("reference,received_at\nA,2026-08-01\n")
    with pytest.raises(UsageError, match="missing column"):
        store.reporting.import_complaints(MODEL, missing, actor="qm")

    signed = store.reporting.sign_off(
        MODEL,
        period_label="2026Q3",
        period_start=_at("2026-07-01"),
        period_end=_at("2026-10-01"),
        conclusions="Benefit-risk unchanged. CAPA-7 opened for the Northgate scanner.",
        signed_by="A. Quality, QM",
        psur_reference="PSUR-7 v1",
    )
    assert signed.signed_by == "A. Quality, QM"
    with pytest.raises(UsageError, match="already signed off"):
        store.reporting.sign_off(
            MODEL,
            period_label="2026Q3",
            period_start=_at("2026-07-01"),
            period_end=_at("2026-10-01"),
            conclusions="changed my mind",
            signed_by="someone",
        )
    previous = store.reporting.previous_signoff(model.id, _at("2026-10-01"))
    assert previous is not None and previous.psur_reference == "PSUR-7 v1"
    assert store.reporting.previous_signoff(model.id, _at("2026-09-30")) is None
    # every change is in the audit chain
    assert store.audit.verify().ok


@pytest.mark.postgres
def test_report_quotes_previous_conclusions_and_lists_fsca_and_complaints(
    report_demo: ReportDemo, report_demo_clone: str, tmp_path: Path
) -> None:
    period = date_range(report_demo.first_prediction.date(), report_demo.now.date())
    runner = CliRunner()
    base = ["--db-url", report_demo_clone]

    def run(*args: str) -> str:
        result = runner.invoke(cli, [*base, *args])
        assert result.exit_code == 0, result.output
        return result.output

    started = f"{report_demo.now:%Y-%m-%d}"
    run(
        "fsca", "add", "--model", MODEL, "--reference", "FSCA-9", "--title",
        "Restrict use at the updated scanner", "--started", started, "--by", "qm",
    )  # fmt: skip
    listed = json.loads(run("fsca", "list", "--model", MODEL, "--json"))
    assert [f["reference"] for f in listed] == ["FSCA-9"]
    complaints = tmp_path / "complaints.csv"
    complaints.write_text(
        "reference,received_at,category,serious,summary\n"
        f"CMP-1,{started},false negative,yes,Missed pneumothorax after the scanner update\n"
    )
    assert "1 new complaint(s)" in run("complaints", "import", str(complaints), "--model", MODEL)
    conclusions = tmp_path / "conclusions.txt"
    conclusions.write_text("Benefit-risk favourable; no action needed in 2026Q2.")
    run(
        "report", "signoff", "--model", MODEL, "--period", "2026Q2", "--by", "A. Quality, QM",
        "--conclusions-file", str(conclusions), "--psur-reference", "PSUR-cxr-2026Q2 v1",
    )  # fmt: skip

    store = Store.open(report_demo_clone)
    try:
        files = write_pms_report(
            store,
            MODEL,
            period,
            tmp_path / "report",
            settings=report_demo.settings,
            now=report_demo.now,
            attach_evidently=False,
        )
    finally:
        store.close()
    html = files.html.read_text()
    previous = html[html.index("<h2>3. Conclusions of the previous report</h2>") :]
    assert "Benefit-risk favourable; no action needed in 2026Q2." in previous
    assert "PSUR-cxr-2026Q2 v1" in html
    assert "FSCA-9" in html and "Restrict use at the updated scanner" in html
    assert "CMP-1" in html and "1 complaint(s) received in the period" in html
    # the benefit-risk box carries the evidence
    box = html[html.index("<h2>14. Benefit-risk determination") :]
    assert "FSCA-9 (open)" in box and "1 (1 related to a serious incident)" in box


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_report_and_bundle_agree_with_the_demo_summary(tmp_path: Path) -> None:
    """The demo's own summary, report and signed bundle tell the same counts (~3 min)."""
    import re

    from cli_runner import run_cli

    out = tmp_path / "demo"
    result = run_cli("demo", "--out", str(out), cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    printed = int(re.search(r"(\d+) dead letter\(s\)", result.stdout).group(1))  # type: ignore[union-attr]
    html = next((out / "report").glob("pms-*.html")).read_text()
    counts = dict(
        re.findall(r"<dt>(Rejected records \(dead letters\)|Check runs)</dt><dd>(.*?)</dd>", html)
    )
    assert counts["Rejected records (dead letters)"] == str(printed) == "2"
    assert re.fullmatch(r"[1-9]\d* \(0 failed\)", counts["Check runs"])
    for title in ("Executive summary", "Device identification", "Trend reporting", "PMCF"):
        assert title in html
    document = json.loads((out / "article72" / "article72.json").read_text())
    assert sum(document["data_collected"]["rejected_records"].values()) == printed
    tables = {t["file"]: t["rows"] for t in document["tables"]}
    assert tables["job_runs.csv"] >= 1 and tables["audit_events.csv"] >= 1
    verified = run_cli(
        "export", "verify", str(out / "article72"), "--public-key",
        str(out / "export-signing.key.pub"), cwd=tmp_path,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "signature valid (Ed25519" in verified.stdout
