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
    assert {i["signal_kind"] for i in document["incidents"]} == {"drift", "performance"}
    assert all(i["deadlines"]["eu_mdr"]["status"] == "open" for i in document["incidents"])
    assert document["data_collected"]["rejected_records"] == {"unparseable": 1, "prediction": 1}
    tables = {t["file"]: t["rows"] for t in document["tables"]}
    drift_rows = (out / "drift_checks.csv").read_text().splitlines()
    assert tables["drift_checks.csv"] == len(drift_rows) - 1 > 100

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
    problems = validate_document({"schema_version": "1.0"})
    assert any("export" in p for p in problems)
