"""Article 72 export: a real export validates, tampering is detected, the export is audited,
and a broken audit chain refuses it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from fixtures_reports import MODEL, ReportDemo
from sqlalchemy import update

from surveillance.cli import cli
from surveillance.outputs.exports import (
    ExportRefused,
    export_article72,
    validate_document,
    verify_export,
)
from surveillance.outputs.exports.article72 import load_schema
from surveillance.store import Store
from surveillance.store.models import AuditEventRow
from surveillance.store.types import utcnow

pytestmark = pytest.mark.postgres


@pytest.fixture
def clone_store(report_demo_clone: str) -> Iterator[Store]:
    store = Store.open(report_demo_clone)
    try:
        yield store
    finally:
        store.close()


def _period(demo: ReportDemo) -> tuple[date, date]:
    return demo.first_prediction.date(), demo.now.date()


def test_export_validates_is_audited_and_tampering_is_detected(
    clone_store: Store,
    report_demo: ReportDemo,
    report_demo_clone: str,
    tmp_path: Path,
) -> None:
    first, last = _period(report_demo)
    key = tmp_path / "sign.key"
    key.write_bytes(b"s" * 48)
    out = tmp_path / "bundle"
    before = clone_store.audit.verify()
    bundle = export_article72(
        clone_store, MODEL, first, last, out, settings=report_demo.settings, sign_key=key
    )

    document = json.loads(bundle.document.read_text())
    assert validate_document(document) == []
    assert document["integrity"]["audit_chain"]["head_hash"] == before.head_hash
    # the figures are the demo's: the injected scanner update is in results and incidents
    breaches = [r for r in document["results"]["performance"] if r["status"] == "breach"]
    assert any(r["metric"] == "sensitivity" and r["stratum"]["kind"] == "scanner" for r in breaches)
    # one incident per root cause: the updated scanner, gathering its drift and performance
    assert any(i["stratum"]["kind"] == "scanner" for i in document["incidents"])
    assert all(i["deadlines"]["eu_mdr"]["status"] == "open" for i in document["incidents"])
    # the demo's two dead letters, counted by the period of the data they concern
    assert document["data_collected"]["rejected_records"] == {"unparseable": 1, "prediction": 1}
    tables = {t["file"]: t["rows"] for t in document["tables"]}
    drift_rows = (out / "drift_checks.csv").read_text().splitlines()
    assert tables["drift_checks.csv"] == len(drift_rows) - 1 > 100
    # job runs and audit events are those concerning the period's data: never empty for
    # the demo, whose data is dated before the checks ran
    assert tables["job_runs.csv"] == document["analyses_performed"]["job_runs"] >= 2
    assert tables["audit_events.csv"] == document["integrity"]["audit_chain"]["events_in_period"]
    assert tables["audit_events.csv"] >= 1
    assert document["integrity"]["audit_chain"]["events"] == before.events
    # the device, the monitoring plan it was produced under
    assert document["device"]["udi_di"] == "04069999000172"
    assert document["device"]["basic_udi_di"] == "4069999CXRPTX21J7"
    assert len(document["monitoring_plan"]["plan_sha256"]) == 64
    assert document["monitoring_plan"]["settings"]["drift"]["alpha"] == (
        report_demo.settings.drift.alpha
    )
    assert all(i["vigilance_reports"] == [] for i in document["incidents"])
    # the manifest covers every file but itself and its signature, SHA256SUMS included
    listed = {f["path"] for f in json.loads(bundle.manifest.read_text())["files"]}
    assert listed == {p.name for p in out.iterdir()} - {"manifest.json", "manifest.json.sig"}
    assert "SHA256SUMS" in listed

    # audited, with the manifest's hash, and the chain still verifies
    after = clone_store.audit.verify()
    assert after.ok and after.events == before.events + 1

    last_event = clone_store.reporting.audit_entries(
        report_demo.first_prediction, report_demo.now + timedelta(days=1)
    )[-1]
    assert last_event.action == "export.article72"

    # CLI verify: intact, signature valid with the key
    runner = CliRunner()
    ok = runner.invoke(cli, ["export", "verify", str(out), "--key", str(key)])
    assert ok.exit_code == 0, ok.output
    assert "intact" in ok.output and "signature valid" in ok.output

    # tamper with one figure of one CSV: detected
    csv_path = out / "performance_checks.csv"
    text = csv_path.read_text()
    csv_path.write_text(text.replace(",breach,", ",ok,", 1))
    result = verify_export(out, key_file=key)
    assert not result.ok
    assert any("performance_checks.csv" in p and "SHA-256" in p for p in result.problems)
    bad = runner.invoke(cli, ["export", "verify", str(out)])
    assert bad.exit_code == 1
    assert "FAIL performance_checks.csv" in bad.output

    # rewriting the manifest to match breaks the signature instead
    csv_path.write_text(text)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"][0]["bytes"] += 1
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    assert verify_export(out, key_file=key).signature == "INVALID"


def test_broken_audit_chain_refuses_the_export(
    clone_store: Store,
    report_demo: ReportDemo,
    tmp_path: Path,
) -> None:
    with clone_store.sessions.scope() as s:
        s.execute(update(AuditEventRow).where(AuditEventRow.seq == 2).values(actor="someone-else"))
    first, last = _period(report_demo)
    with pytest.raises(ExportRefused, match="audit chain is broken, export refused: seq 2"):
        export_article72(clone_store, MODEL, first, last, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


def test_export_refuses_a_non_empty_folder_and_bad_dates(
    clone_store: Store, tmp_path: Path
) -> None:
    (tmp_path / "old.csv").write_text("x")
    from surveillance.core.errors import UsageError

    with pytest.raises(UsageError, match="not empty"):
        export_article72(clone_store, MODEL, date(2026, 1, 1), date(2026, 3, 31), tmp_path)
    with pytest.raises(UsageError, match="before"):
        export_article72(clone_store, MODEL, date(2026, 3, 1), date(2026, 1, 1), tmp_path / "n")


def test_schema_is_draft_2020_12_and_rejects_a_broken_document() -> None:
    schema = load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    problems = validate_document({"schema_version": "1.1"})
    assert any("export" in p for p in problems)


def test_ed25519_signed_bundle_verifies_with_the_public_key_and_fails_after_one_byte(
    clone_store: Store,
    report_demo: ReportDemo,
    tmp_path: Path,
) -> None:
    first, last = _period(report_demo)
    runner = CliRunner()
    made = runner.invoke(cli, ["keys", "signing", str(tmp_path / "qms")])
    assert made.exit_code == 0, made.output
    out = tmp_path / "bundle"
    bundle = export_article72(
        clone_store,
        MODEL,
        first,
        last,
        out,
        settings=report_demo.settings,
        sign_key=tmp_path / "qms",
    )
    assert bundle.signature is not None
    assert json.loads(bundle.signature.read_text())["algorithm"] == "Ed25519"
    public = str(tmp_path / "qms.pub")
    ok = runner.invoke(cli, ["export", "verify", str(out), "--public-key", public])
    assert ok.exit_code == 0, ok.output
    assert "signature valid (Ed25519" in ok.output

    # one byte changed in SHA256SUMS (covered by the manifest): not intact
    sums = out / "SHA256SUMS"
    original = sums.read_bytes()
    sums.write_bytes(original[:-2] + bytes([original[-2] ^ 0x01]) + original[-1:])
    bad = runner.invoke(cli, ["export", "verify", str(out), "--public-key", public])
    assert bad.exit_code == 1 and "FAIL SHA256SUMS" in bad.output
    sums.write_bytes(original)

    # one byte changed in the manifest: the signature no longer verifies
    manifest = out / "manifest.json"
    original = manifest.read_bytes()
    index = original.index(b'"sha256": "') + len(b'"sha256": "')
    flipped = b"0" if original[index : index + 1] != b"0" else b"1"
    manifest.write_bytes(original[:index] + flipped + original[index + 1 :])
    result = verify_export(out, public_key=tmp_path / "qms.pub")
    assert result.signature == "INVALID"
    assert any("Ed25519 signature does not match" in p for p in result.problems)
    manifest.write_bytes(original)

    # somebody else's public key: refused
    runner.invoke(cli, ["keys", "signing", str(tmp_path / "other")])
    assert verify_export(out, public_key=tmp_path / "other.pub").signature == "INVALID"
    assert verify_export(out, public_key=tmp_path / "qms.pub").ok


def test_export_cli_json_names_the_bundle_it_wrote(
    report_demo: ReportDemo, report_demo_clone: str, tmp_path: Path
) -> None:
    first, last = _period(report_demo)
    out = tmp_path / "bundle"
    result = CliRunner().invoke(
        cli,
        [
            "--db-url",
            report_demo_clone,
            "export",
            "article72",
            "--model",
            MODEL,
            "--from",
            first.isoformat(),
            "--to",
            last.isoformat(),
            "--out",
            str(out),
            "--by",
            "qm@example.org",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed["export_id"] and len(printed["manifest_sha256"]) == 64
    assert {Path(f).name for f in printed["files"]} >= {"article72.json", "SHA256SUMS"}
    assert all(Path(f).exists() for f in printed["files"])
    assert verify_export(out).ok


def test_each_authority_deadline_is_judged_from_its_own_report(
    clone_store: Store, report_demo: ReportDemo, tmp_path: Path
) -> None:
    first, last = _period(report_demo)
    incident = next(i for i in clone_store.incidents.find() if i.mdr_deadline_at)
    assert incident.fda_deadline_at is not None
    # reported to the EU only, on time; the FDA has no report yet
    clone_store.incidents.record_report(
        incident.id,
        authority="eu-mdr",
        reference="MIR-2026-0001",
        reported_at=utcnow(),  # after awareness, well within the 15 days
        actor="qm@example.org",
    )
    bundle = export_article72(
        clone_store, MODEL, first, last, tmp_path / "b", settings=report_demo.settings
    )
    document = json.loads(bundle.document.read_text())
    exported = next(i for i in document["incidents"] if i["id"] == incident.id)
    assert exported["deadlines"]["eu_mdr"]["status"] == "met"
    assert exported["deadlines"]["fda"]["status"] == "open"
