"""connectors.labels against hostile files: CSV quotes, FHIR withdrawals, uncoded reports."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from connectors.labels import (
    LabelWithdrawal,
    csv_records,
    fhir_records,
    parse_csv_row,
    parse_fhir_record,
    parse_fhir_report,
)
from surveillance.core.errors import InvalidRecord, UsageError
from surveillance.core.events import DiagnosisEvent

UID = "1.2.826.0.1.3680043.8.498.3"
WHEN = "2026-08-20T09:00:00Z"
HEADER = "message_id,study_instance_uid,finding,present,source,confirmed_at,note"
CODES = {"36118008": "pneumothorax", "http://snomed.info/sct|233604007": "pneumonia"}


def _row(n: int, note: str = "ok") -> str:
    return f"d-{n},{UID}.{n},pneumothorax,yes,report,{WHEN},{note}"


def _csv(tmp_path: Path, *lines: str) -> list[tuple[int, str]]:
    """(line number, message id or reason) per record."""
    path = tmp_path / "labels.csv"
    path.write_text("\n".join([HEADER, *lines]) + "\n")
    result: list[tuple[int, str]] = []
    for raw in csv_records(path):
        assert raw.position is not None and raw.position.offset is not None
        try:
            result.append((raw.position.offset, parse_csv_row(raw).message_id))
        except InvalidRecord as exc:
            result.append((raw.position.offset, exc.reason))
    return result


def test_csv_unterminated_quote_is_one_dead_letter_and_reading_goes_on(tmp_path: Path) -> None:
    outcomes = _csv(
        tmp_path,
        _row(1),
        f'd-2,"{UID}.2,pneumothorax,no,report,{WHEN},x',
        _row(3),
        _row(4, '"Eve'),
        _row(5),
        _row(6, '"multi'),
        'line, note"',
        _row(7),
    )
    assert [(n, o[:18]) for n, o in outcomes] == [
        (2, "d-1"),
        (3, "unterminated quote"),
        (4, "d-3"),
        (5, "unterminated quote"),
        (6, "d-5"),
        (7, "d-6"),  # a quoted note over two lines in an ignored column is fine
        (9, "d-7"),
    ]
    assert "opened on line 3" in outcomes[1][1]


def test_csv_limits_on_quoted_fields(tmp_path: Path) -> None:
    many = [_row(1, '"a'), *(f"line {i}" for i in range(20)), 'end"', _row(2)]
    outcomes = _csv(tmp_path, *many)
    assert outcomes[0] == (2, outcomes[0][1]) and "within 16 lines" in outcomes[0][1]
    assert outcomes[-1] == (24, "d-2")
    # a used column may never hold a line break
    outcomes = _csv(tmp_path, f'd-1,{UID}.1,"pneumo\nthorax",yes,report,{WHEN},x', _row(2))
    assert outcomes[0][1].startswith("unterminated quote") and outcomes[-1][1] == "d-2"


def test_csv_cells_with_control_characters(tmp_path: Path) -> None:
    outcomes = _csv(tmp_path, _row(1).replace("report", "rep\x00ort"), _row(2, "x\x00y"))
    assert outcomes == [(2, "column 'source' contains a NUL byte"), (3, "d-2")]


def test_csv_known_findings_and_header_checks(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text(HEADER + "\n" + _row(1).replace("pneumothorax", "nodule") + "\n")
    (raw,) = csv_records(path)
    with pytest.raises(InvalidRecord, match="unknown finding 'nodule'; known: pneumothorax"):
        parse_csv_row(raw, known_findings={"pneumothorax"})
    path.write_text(HEADER + ",finding\n")
    with pytest.raises(UsageError, match="more than once"):
        list(csv_records(path))
    path.write_text('"message_id,study\n')
    with pytest.raises(UsageError, match="unterminated quote"):
        list(csv_records(path))


# ---- FHIR -----------------------------------------------------------------------------


def _study() -> dict[str, Any]:
    return {
        "resourceType": "ImagingStudy",
        "id": "s1",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{UID}"}],
    }


def _report(codes: list[str], status: str = "final", rid: str = "r1") -> dict[str, Any]:
    return {
        "resourceType": "DiagnosticReport",
        "id": rid,
        "status": status,
        "issued": WHEN,
        "imagingStudy": [{"reference": "ImagingStudy/s1"}],
        "conclusionCode": [
            {"coding": [{"system": "http://snomed.info/sct", "code": c}]} for c in codes
        ],
    }


def _ndjson(tmp_path: Path, *resources: dict[str, Any]) -> Path:
    path = tmp_path / "export.ndjson"
    path.write_text("".join(json.dumps(r) + "\n" for r in resources))
    return path


def test_entered_in_error_yields_withdrawals(tmp_path: Path) -> None:
    path = _ndjson(
        tmp_path, _study(), _report(["36118008"]), _report(["36118008"], "entered-in-error")
    )
    items = list(fhir_records(path, CODES, withdrawals=True, report_key=lambda t: "k" * 64))
    events = [parse_fhir_record(i) for i in items if not isinstance(i, LabelWithdrawal)]
    withdrawals = [i for i in items if isinstance(i, LabelWithdrawal)]
    assert {(e.finding, e.present) for e in events} == {
        ("pneumothorax", True),
        ("pneumonia", False),
    }
    assert [(w.study_instance_uid, w.finding) for w in withdrawals] == [
        (UID, "pneumonia"),
        (UID, "pneumothorax"),
    ]
    assert all(w.report_id == "k" * 40 and w.kind == "label-withdrawal" for w in withdrawals)
    assert withdrawals[0].position is not None and withdrawals[0].position.offset == 3

    unkeyed = next(
        i for i in fhir_records(path, withdrawals=True) if isinstance(i, LabelWithdrawal)
    )
    assert unkeyed.report_id == hashlib.sha256(b"DiagnosticReport/r1").hexdigest()[:40]

    # a reader that does not ask for withdrawals still dead-letters the report
    outcomes = []
    for raw in fhir_records(path, CODES):
        try:
            outcomes.append(parse_fhir_record(raw).finding)
        except InvalidRecord as exc:
            outcomes.append(exc.reason)
    assert outcomes == [
        "pneumonia",
        "pneumothorax",
        "report status entered-in-error is not a confirmed diagnosis",
    ]


def test_uncoded_reports_are_not_absent_unless_asked() -> None:
    rib_fracture, normal = "33737001", "17621005"
    resources = [_study()]
    with pytest.raises(InvalidRecord, match="report has no coded finding"):
        parse_fhir_report(_report([rib_fracture]), CODES, resources=resources)
    with pytest.raises(InvalidRecord, match="no conclusionCode coding"):
        parse_fhir_report(_report([]), CODES, resources=resources)
    for codes in ([rib_fracture], [], [normal]):
        events = parse_fhir_report(
            _report(codes), CODES, resources=resources, uncoded_as_absent=True
        )
        assert {(e.finding, e.present) for e in events} == {
            ("pneumothorax", False),
            ("pneumonia", False),
        }
    events = parse_fhir_report(_report([normal]), CODES, resources=resources)
    assert all(not e.present for e in events)
    events = parse_fhir_report(_report(["233604007", rib_fracture]), CODES, resources=resources)
    assert {(e.finding, e.present) for e in events} == {
        ("pneumothorax", False),
        ("pneumonia", True),
    }
    with pytest.raises(InvalidRecord, match="no coded finding"):
        parse_fhir_report(_report([normal]), CODES, resources=resources, normal_codes=())


def test_known_findings_for_fhir(tmp_path: Path) -> None:
    with pytest.raises(InvalidRecord, match="unknown finding 'pneumonia'; known: pneumothorax"):
        parse_fhir_report(
            _report(["36118008"]), CODES, resources=[_study()], known_findings=["pneumothorax"]
        )
    path = _ndjson(tmp_path, _study(), _report(["36118008"]))
    with pytest.raises(UsageError, match="unknown finding"):
        fhir_records(path, CODES, known_findings=["pneumothorax"])


def test_bundle_entries_that_are_not_objects_are_dead_letters(tmp_path: Path) -> None:
    path = tmp_path / "bundle.json"
    entries = [42, {"resource": _study()}, {"resource": _report(["36118008"])}, "x"]
    path.write_text(json.dumps({"resourceType": "Bundle", "entry": entries}))
    outcomes: list[tuple[str, str]] = []
    for raw in fhir_records(path):
        locator = raw.position.locator.rsplit("#", 1)[1] if raw.position else ""
        try:
            event = parse_fhir_record(raw)
            assert isinstance(event, DiagnosisEvent)
            outcomes.append((locator, event.finding))
        except InvalidRecord as exc:
            outcomes.append((locator, exc.reason))
    assert outcomes == [
        ("entry[1]", "Bundle entry 1 is not a JSON object"),
        ("entry[3]", "pneumothorax"),
        ("entry[4]", "Bundle entry 4 is not a JSON object"),
    ]
