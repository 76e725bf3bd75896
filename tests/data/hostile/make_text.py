"""Write the JSONL, CSV and FHIR files of the hostile corpus and their MANIFEST.json entries.

Deterministic: run ``python tests/data/hostile/make_text.py`` from the repository
root to regenerate them (the files are committed; this documents how they were
made). Each manifest entry gives the entry point, how many good and bad records
the file holds, the reason substring expected for each bad record in order,
and, for a file the reader refuses as a whole, the UsageError substring.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
UID = "1.2.826.0.1.3680043.8.498.1"
WHEN = "2026-08-20T09:00:00Z"

Entries = dict[str, dict[str, Any]]


def entry(
    kind: str,
    good: int,
    reasons: list[str] | None = None,
    *,
    file_error: str | None = None,
    withdrawals: int = 0,
    options: dict[str, Any] | None = None,
    note: str = "",
) -> dict[str, Any]:
    reasons = reasons or []
    result: dict[str, Any] = {
        "entry": kind,
        "good": good,
        "bad": len(reasons),
        "reasons": reasons,
        "note": note,
    }
    if file_error is not None:
        result["file_error"] = file_error
    if withdrawals:
        result["withdrawals"] = withdrawals
    if options:
        result["options"] = options
    return result


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


# ---- JSONL ----------------------------------------------------------------------------


def prediction(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "kind": "prediction",
        "message_id": "p-1",
        "model": "cxr-pneumothorax",
        "model_version": "2.1.0",
        "study_instance_uid": UID,
        "outputs": {"pneumothorax": 0.25},
        "predicted_at": WHEN,
    }
    record.update(changes)
    return {k: v for k, v in record.items() if v is not ...}


def diagnosis(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "kind": "diagnosis",
        "message_id": "d-1",
        "study_instance_uid": UID,
        "finding": "pneumothorax",
        "present": True,
        "source": "report",
        "confirmed_at": WHEN,
    }
    record.update(changes)
    return {k: v for k, v in record.items() if v is not ...}


def metadata(**values: tuple[str, Any]) -> dict[str, Any]:
    tags = {
        "StudyInstanceUID": "0020000D",
        "Manufacturer": "00080070",
        "PatientSex": "00100040",
        "KVP": "00180060",
        "PatientID": "00100020",
    }
    record: dict[str, Any] = {"kind": "dicom-metadata", "0020000D": {"vr": "UI", "Value": [UID]}}
    for keyword, (vr, value) in values.items():
        if value is ...:
            record.pop(tags[keyword], None)
        else:
            record[tags[keyword]] = {"vr": vr, "Value": value}
    return record


def jsonl(entries: Entries, name: str, lines: list[str | bytes], *args: Any, **kw: Any) -> None:
    data = b"".join(
        (x if isinstance(x, bytes) else x.encode("utf-8", "surrogatepass")) + b"\n" for x in lines
    )
    (HERE / "jsonl").mkdir(exist_ok=True)
    (HERE / "jsonl" / name).write_bytes(data)
    entries[f"jsonl/{name}"] = entry("jsonl", *args, **kw)


def make_jsonl(entries: Entries) -> None:
    good_p, good_d = dumps(prediction()), dumps(diagnosis())
    nul = "a\u0000b"
    for field in ("message_id", "model", "model_version", "study_instance_uid"):
        jsonl(
            entries,
            f"nul_prediction_{field}.jsonl",
            [good_p, dumps(prediction(**{field: nul}))],
            1,
            [f"field '{field}' contains a NUL byte"],
        )
    for field in ("message_id", "study_instance_uid", "finding", "source"):
        jsonl(
            entries,
            f"nul_diagnosis_{field}.jsonl",
            [good_d, dumps(diagnosis(**{field: nul}))],
            1,
            [f"field '{field}' contains a NUL byte"],
        )
    jsonl(
        entries,
        "nul_output_finding.jsonl",
        [dumps(prediction(outputs={"pneumo\u0000thorax": 0.5})), good_p],
        1,
        ["field 'outputs' contains a NUL byte"],
    )
    jsonl(
        entries,
        "nul_kind.jsonl",
        [dumps(prediction(kind="prediction\u0000")), good_d],
        1,
        ["field 'kind' contains a NUL byte"],
    )
    jsonl(
        entries,
        "nul_timestamp.jsonl",
        [dumps(diagnosis(confirmed_at=WHEN + "\u0000"))],
        0,
        ["field 'confirmed_at' contains a NUL byte"],
    )
    jsonl(
        entries,
        "nul_dicom_manufacturer.jsonl",
        [
            dumps(metadata(Manufacturer=("LO", ["ACME\u0000Corp"]))),
            dumps(metadata(Manufacturer=("LO", ["ACME"]))),
        ],
        1,
        ["field 'Manufacturer' contains a NUL byte"],
    )
    jsonl(
        entries,
        "nul_dicom_patient_id.jsonl",
        [dumps(metadata(PatientID=("LO", ["12\u000034"])))],
        0,
        ["field 'PatientID' contains a NUL byte"],
    )
    jsonl(
        entries,
        "control_chars.jsonl",
        [
            dumps(prediction(model="cxr\u0007bell")),
            dumps(diagnosis(finding="pneumo\nthorax")),
            dumps(diagnosis(source="report\u001b[31m")),
            good_d,
        ],
        1,
        ["control character (U+0007)", "control character (U+000A)", "control character (U+001B)"],
    )
    jsonl(
        entries,
        "lone_surrogate.jsonl",
        ['{"kind":"prediction","message_id":"\\ud800",' + good_p.split(",", 2)[2], good_p],
        1,
        ["unpaired surrogate"],
    )
    jsonl(
        entries,
        "deep_array.jsonl",
        ["[" * 100000, good_p],
        1,
        ["deeper than the limit of 32 levels"],
    )
    jsonl(
        entries,
        "deep_object.jsonl",
        [
            '{"kind":"prediction","outputs":' + '{"a":' * 40 + "1" + "}" * 40 + "}",
            '{"x":' * 33 + "{}" + "}" * 33,
        ],
        0,
        ["deeper than the limit", "deeper than the limit"],
    )
    jsonl(
        entries,
        "deep_in_string_is_fine.jsonl",
        [dumps(prediction(message_id="[" * 200))],
        1,
        note="brackets inside a string do not count as nesting",
    )
    jsonl(
        entries,
        "huge_line.jsonl",
        [dumps(prediction(message_id="x" * (1 << 20))), good_p],
        1,
        ["record is larger than the limit of 1048576 bytes"],
    )
    jsonl(
        entries,
        "bom_first_line.jsonl",
        [b"\xef\xbb\xbf" + good_p.encode(), good_d],
        2,
        note="a UTF-8 byte-order mark on the first line is stripped",
    )
    (HERE / "jsonl" / "utf16le_bom.jsonl").write_bytes(("\ufeff" + good_p).encode("utf-16-le"))
    entries["jsonl/utf16le_bom.jsonl"] = entry(
        "jsonl", 0, ["not valid UTF-8"], note="UTF-16 is never guessed at"
    )
    (HERE / "jsonl" / "utf16be_bom.jsonl").write_bytes(("\ufeff" + good_d).encode("utf-16-be"))
    entries["jsonl/utf16be_bom.jsonl"] = entry("jsonl", 0, ["not valid UTF-8"])
    jsonl(
        entries,
        "invalid_utf8.jsonl",
        [good_p, good_d.encode().replace(b"report", b"rep\xc3\x28rt"), b"\xed\xa0\x80"],
        1,
        ["not valid UTF-8", "not valid UTF-8"],
        note="a CESU-8 surrogate is not UTF-8 either",
    )
    jsonl(
        entries,
        "time_bounds.jsonl",
        [
            dumps(prediction(predicted_at="1900-01-01T00:00:00Z")),
            dumps(diagnosis(confirmed_at="2200-01-01T00:00:00Z")),
            dumps(diagnosis(confirmed_at="9999-12-31T23:59:59Z")),
            dumps(diagnosis(confirmed_at="1999-12-31T23:59:59Z")),
            dumps(diagnosis(confirmed_at="2000-01-01T00:00:00Z")),
        ],
        1,
        [
            "field 'predicted_at' is 1900-01-01T00:00:00Z, before the earliest accepted",
            "field 'confirmed_at' is 2200-01-01T00:00:00Z, more than 1 day after now",
            "field 'confirmed_at' is 9999-12-31T23:59:59Z, more than 1 day after now",
            "before the earliest accepted time 2000-01-01T00:00:00Z",
        ],
    )
    jsonl(
        entries,
        "time_garbage.jsonl",
        [
            dumps(diagnosis(confirmed_at="2026-08-20T09:00:00")),
            dumps(diagnosis(confirmed_at="yesterday")),
            dumps(diagnosis(confirmed_at=1755680400)),
            dumps(diagnosis(confirmed_at="0001-01-01T00:00:00+01:00")),
            dumps(diagnosis(confirmed_at="2026-02-30T00:00:00Z")),
            dumps(diagnosis(confirmed_at="9" * 5000)),
        ],
        0,
        [
            "has no time zone",
            "is not ISO-8601",
            "must be an ISO-8601 string",
            "is out of range",
            "is not ISO-8601",
            "is not ISO-8601",
        ],
    )
    jsonl(
        entries,
        "missing_fields.jsonl",
        [
            dumps(prediction(model=...)),
            dumps(prediction(outputs=...)),
            dumps(diagnosis(present=...)),
            dumps(diagnosis(confirmed_at=None)),
            dumps(prediction(kind=...)),
            dumps(metadata(StudyInstanceUID=("UI", ...))),
        ],
        0,
        [
            "missing required field 'model'",
            "missing required field 'outputs'",
            "missing required field 'present'",
            "missing required field 'confirmed_at'",
            "missing field 'kind'",
            "no StudyInstanceUID",
        ],
    )
    jsonl(
        entries,
        "wrong_types.jsonl",
        [
            dumps(prediction(model=5)),
            dumps(prediction(outputs=[0.5])),
            dumps(prediction(outputs={"pneumothorax": "0.5"})),
            dumps(prediction(outputs={"pneumothorax": True})),
            dumps(diagnosis(present="yes")),
            dumps(diagnosis(source="radiologist")),
            dumps(prediction(kind=["prediction"])),
            dumps(prediction(kind="inference")),
            dumps(diagnosis(finding={"name": "x"})),
            dumps(prediction(message_id="   ")),
        ],
        0,
        [
            "field 'model' must be a non-empty string",
            "field 'outputs' must be a non-empty",
            "must be a number",
            "must be a number",
            "field 'present' must be true or false",
            "field 'source' is 'radiologist'",
            "field 'kind' must be one of",
            "unknown event kind 'inference'",
            "field 'finding' must be a non-empty string",
            "field 'message_id' must be a non-empty string",
        ],
    )
    jsonl(
        entries,
        "non_finite_scores.jsonl",
        [
            good_p.replace("0.25", "NaN"),
            good_p.replace("0.25", "Infinity"),
            good_p.replace("0.25", "-Infinity"),
            good_p.replace("0.25", "1e999"),
            good_p,
        ],
        1,
        [
            "NaN is not a JSON number",
            "Infinity is not a JSON number",
            "-Infinity is not a JSON number",
            "outside 0..1",
        ],
    )
    jsonl(
        entries,
        "scores_out_of_range.jsonl",
        [
            dumps(prediction(outputs={"pneumothorax": 1.5})),
            dumps(prediction(outputs={"pneumothorax": -0.1})),
            dumps(prediction(outputs={"pneumothorax": 0, "effusion": 1})),
            dumps(prediction(outputs={f"f{i}": 0.5 for i in range(65)})),
            dumps(prediction(outputs={})),
        ],
        1,
        ["outside 0..1", "outside 0..1", "more than 64 findings", "non-empty object"],
    )
    jsonl(
        entries,
        "non_object_lines.jsonl",
        ["[1, 2]", '"a string"', "42", "null", "true", good_d],
        1,
        ["each line must be a JSON object"] * 5,
    )
    jsonl(
        entries,
        "empty_lines.jsonl",
        ["", "   ", "\t", good_p, "", good_d, " \r"],
        2,
        note="blank lines are not records",
    )
    jsonl(
        entries,
        "duplicate_keys.jsonl",
        [
            good_p[:-1] + ',"model":"other"}',
            '{"kind":"diagnosis","kind":"prediction"}',
            dumps(prediction(outputs={"pneumothorax": 0.1})).replace(
                '"pneumothorax":0.1', '"pneumothorax":0.1,"pneumothorax":0.9'
            ),
            good_p,
        ],
        1,
        ["duplicate key 'model'", "duplicate key 'kind'", "duplicate key 'pneumothorax'"],
    )
    jsonl(
        entries,
        "not_json.jsonl",
        ["{not json", good_p[:-5], "{'kind': 'prediction'}", "\u0000", "1" * 5000, good_p],
        1,
        ["not valid JSON"] * 5,
    )
    jsonl(
        entries,
        "too_long_text.jsonl",
        [dumps(prediction(model="m" * 300)), dumps(diagnosis(finding="f" * 257)), good_d],
        1,
        ["field 'model' is longer than 256", "field 'finding' is longer than 256"],
    )
    jsonl(
        entries,
        "crlf_lines.jsonl",
        [good_p + "\r", good_d + "\r"],
        2,
        note="CRLF line ends are fine",
    )
    jsonl(
        entries,
        "dicom_metadata_values.jsonl",
        [
            dumps(metadata(PatientSex=("CS", ["Q"]))),
            dumps(metadata(KVP=("DS", ["inf"]))),
            dumps(metadata(KVP=("DS", ["-3"]))),
            dumps(metadata(KVP=("DS", ["abc"]))),
            '{"kind":"dicom-metadata","0020000D":{"vr":"UI","Value":"not a list"}}',
            '{"kind":"dicom-metadata","0020000D":[1,2]}',
            dumps(metadata(Manufacturer=("LO", ["GE"]), KVP=("DS", [120]))),
        ],
        1,
        [
            "PatientSex 'Q' must be M, F or O",
            "KVP 'inf' is out of range",
            "KVP '-3.0' is out of range",
            "not a valid DICOM JSON model header",
            "not a valid DICOM JSON model header",
            "not a valid DICOM JSON model header",
        ],
    )
    jsonl(
        entries,
        "unknown_finding.jsonl",
        [
            dumps(diagnosis(finding="pneumonia")),
            dumps(prediction(outputs={"pneumothorax": 0.5, "nodule": 0.1})),
            good_p,
            good_d,
        ],
        2,
        [
            "unknown finding 'pneumonia'; known: pneumothorax",
            "unknown finding 'nodule'; known: pneumothorax",
        ],
        options={"known_findings": ["pneumothorax"]},
    )


# ---- CSV ------------------------------------------------------------------------------

HEADER = "message_id,study_instance_uid,finding,present,source,confirmed_at,patient_name"


def row(n: int, name: str = "Jane Doe", finding: str = "pneumothorax") -> str:
    return f"d-{n},{UID}.{n},{finding},yes,report,{WHEN},{name}"


def csv_file(entries: Entries, name: str, text: str | bytes, *args: Any, **kw: Any) -> None:
    (HERE / "csv").mkdir(exist_ok=True)
    data = text if isinstance(text, bytes) else text.encode("utf-8")
    (HERE / "csv" / name).write_bytes(data)
    entries[f"csv/{name}"] = entry("csv", *args, **kw)


def lines(*parts: str) -> str:
    return "\n".join(parts) + "\n"


def make_csv(entries: Entries) -> None:
    csv_file(
        entries,
        "unterminated_quote.csv",
        lines(HEADER, row(1), f'd-2,"{UID}.2,pneumothorax,no,report,{WHEN},Ann', row(3), row(4)),
        3,
        ["unterminated quote"],
        note="Python's csv module would swallow rows 3 and 4 into the open field",
    )
    csv_file(
        entries,
        "unterminated_quote_in_ignored_column.csv",
        lines(HEADER, row(1, '"Eve'), row(2), row(3), row(4)),
        3,
        ["unterminated quote"],
    )
    csv_file(
        entries,
        "unterminated_quote_at_eof.csv",
        lines(HEADER, row(1), row(2, '"Zed')),
        1,
        ["unterminated quote"],
    )
    csv_file(
        entries,
        "quote_closes_into_junk.csv",
        lines(HEADER, row(1, '"Eve'), row(2, '"Smith, J"'), row(3)),
        2,
        ["unterminated quote"],
        note="the stray quote pairs with the next row's quote, followed by junk",
    )
    csv_file(
        entries,
        "multiline_note_is_fine.csv",
        lines(HEADER, row(1, '"Eve\nMultiline, Jr."'), row(2)),
        2,
        note="a quoted multi-line value in an ignored column",
    )
    csv_file(entries, "bom.csv", "\ufeff" + lines(HEADER, row(1), row(2)), 2)
    csv_file(entries, "crlf.csv", lines(HEADER, row(1), row(2)).replace("\n", "\r\n"), 2)
    csv_file(
        entries,
        "wrong_header.csv",
        lines("study,finding,present", f"{UID},x,yes"),
        0,
        file_error="lacks column",
    )
    csv_file(
        entries,
        "duplicate_header.csv",
        lines(HEADER + ",finding", row(1) + ",pneumonia"),
        0,
        file_error="more than once",
    )
    csv_file(entries, "empty.csv", "", 0, file_error="is empty")
    csv_file(
        entries, "utf16.csv", lines(HEADER, row(1)).encode("utf-16"), 0, file_error="not UTF-8"
    )
    csv_file(
        entries,
        "extra_columns.csv",
        lines(HEADER, row(1) + ",extra", row(2), row(3) + ",a,b"),
        1,
        [
            "row has 8 cells but the header has 7 columns",
            "row has 9 cells but the header has 7 columns",
        ],
    )
    csv_file(
        entries,
        "nul_cells.csv",
        lines(
            HEADER,
            row(1, finding="pneumo\u0000thorax"),
            row(2, "Jane\u0000Doe"),
            f"d-3,{UID}.3\u0000,pneumothorax,yes,report,{WHEN},x",
            f"d-4,{UID}.4,pneumothorax,yes\u0001,report,{WHEN},x",
        ),
        1,
        [
            "column 'finding' contains a NUL byte",
            "column 'study_instance_uid' contains a NUL byte",
            "column 'present' contains a control character (U+0001)",
        ],
        note="a NUL in an ignored column is never stored, so the row is fine",
    )
    csv_file(
        entries,
        "bad_values.csv",
        lines(
            HEADER,
            f"d-1,{UID}.1,pneumothorax,maybe,report,{WHEN},x",
            f"d-2,{UID}.2,pneumothorax,yes,report,1900-01-01T00:00:00Z,x",
            f"d-3,{UID}.3,pneumothorax,yes,report,2200-01-01T00:00:00Z,x",
            f"d-4,{UID}.4,pneumothorax,yes,radiologist,{WHEN},x",
            f"d-5,{UID}.5,,yes,report,{WHEN},x",
            "d-6",
            row(7),
        ),
        1,
        [
            "column 'present' is 'maybe'",
            "before the earliest accepted time",
            "more than 1 day after now",
            "field 'source' is 'radiologist'",
            "missing required field 'finding'",
            "missing required field 'study_instance_uid'",
        ],
    )
    csv_file(
        entries,
        "invalid_utf8_row.csv",
        lines(HEADER, row(1)).encode() + b"d-2,\xff\xfe,x\n" + lines(row(3)).encode(),
        2,
        ["row is not valid UTF-8"],
    )
    csv_file(
        entries,
        "long_row.csv",
        lines(HEADER, row(1, "x" * 70000), row(2)),
        1,
        ["row is longer than 65536 bytes"],
    )
    csv_file(
        entries,
        "unknown_finding.csv",
        lines(HEADER, row(1, finding="pneumonia"), row(2)),
        1,
        ["unknown finding 'pneumonia'; known: pneumothorax"],
        options={"known_findings": ["pneumothorax"]},
    )


# ---- FHIR -----------------------------------------------------------------------------


def study(rid: str, uid: str) -> dict[str, Any]:
    return {
        "resourceType": "ImagingStudy",
        "id": rid,
        "status": "available",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}],
    }


def report(rid: str, codes: list[str], status: Any = "final", **extra: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": rid,
        "status": status,
        "code": {"coding": [{"system": "http://loinc.org", "code": "36643-5"}]},
        "subject": {"reference": "Patient/p1", "display": "Jane Doe"},
        "issued": WHEN,
        "imagingStudy": [{"reference": "ImagingStudy/s1"}],
        "conclusion": "Dr Secret informed.",
        "conclusionCode": [
            {"coding": [{"system": "http://snomed.info/sct", "code": c}]} for c in codes
        ],
    }
    resource.update(extra)
    return resource


def bundle(*entries: Any) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection", "entry": list(entries)}


def wrap(resource: Any, n: int) -> dict[str, Any]:
    return {"fullUrl": f"urn:uuid:0000-{n}", "resource": resource}


def fhir_file(entries: Entries, name: str, data: str | bytes, *args: Any, **kw: Any) -> None:
    (HERE / "fhir").mkdir(exist_ok=True)
    (HERE / "fhir" / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    entries[f"fhir/{name}"] = entry("fhir", *args, **kw)


def ndjson(*resources: Any) -> str:
    return "".join((r if isinstance(r, str) else dumps(r)) + "\n" for r in resources)


def make_fhir(entries: Entries) -> None:
    s1 = study("s1", f"{UID}.1")
    pneumothorax, normal, rib_fracture = "36118008", "17621005", "33737001"
    fhir_file(
        entries,
        "entered_in_error.ndjson",
        ndjson(
            s1,
            report("r1", [pneumothorax]),
            report("r1", [pneumothorax], status="entered-in-error"),
        ),
        1,
        withdrawals=1,
        note="withdraws the label the first version gave",
    )
    fhir_file(
        entries,
        "entered_in_error_no_study.ndjson",
        ndjson(report("r1", [], status="entered-in-error", imagingStudy=[])),
        0,
        ["no imagingStudy reference"],
    )
    fhir_file(
        entries,
        "uncoded.json",
        dumps(
            bundle(
                wrap(s1, 1),
                wrap(report("r1", [rib_fracture]), 2),
                wrap(report("r2", []), 3),
                wrap(report("r3", [normal]), 4),
                wrap(report("r4", [rib_fracture, pneumothorax]), 5),
            )
        ),
        2,
        ["report has no coded finding", "report has no conclusionCode coding"],
        note="only unknown codes, then no codes: neither may become 'absent'",
    )
    fhir_file(
        entries,
        "non_object_entries.json",
        dumps(
            bundle(
                1,
                "entry",
                None,
                [],
                {"resource": [1]},
                {"resource": "x"},
                {"response": {"status": "200"}},
                wrap(s1, 8),
                wrap(report("r1", [pneumothorax]), 9),
            )
        ),
        1,
        [
            "Bundle entry 1 is not a JSON object",
            "Bundle entry 2 is not a JSON object",
            "Bundle entry 3 is not a JSON object",
            "Bundle entry 4 is not a JSON object",
            "Bundle entry 5: 'resource' is not a JSON object",
            "Bundle entry 6: 'resource' is not a JSON object",
        ],
        note="an entry without a resource (a batch response) is not a record",
    )
    deep: Any = {"url": "x"}
    for _ in range(80):
        deep = {"url": "x", "extension": [deep]}
    fhir_file(
        entries,
        "deep_nesting.json",
        dumps(bundle(wrap(s1, 1), wrap(report("r1", [pneumothorax], extension=[deep]), 2))),
        0,
        file_error="deeper than the limit of 64",
    )
    fhir_file(
        entries,
        "deep_nesting.ndjson",
        ndjson(
            s1,
            report("r1", [pneumothorax], extension=[deep]),
            "[" * 100000,
            report("r2", [pneumothorax]),
        ),
        1,
        ["deeper than the limit of 64", "deeper than the limit of 64"],
    )
    fhir_file(
        entries,
        "not_a_bundle.json",
        dumps({"resourceType": "Patient", "id": "p1"}),
        0,
        file_error="neither a FHIR DiagnosticReport nor a Bundle",
    )
    fhir_file(
        entries,
        "not_an_object.json",
        "[1, 2, 3]",
        0,
        file_error="neither a FHIR DiagnosticReport nor a Bundle",
    )
    fhir_file(
        entries,
        "entry_not_an_array.json",
        dumps({"resourceType": "Bundle", "entry": {"resource": s1}}),
        0,
        file_error="'entry' is not a JSON array",
    )
    fhir_file(
        entries, "not_json.json", '{"resourceType": "Bundle", ', 0, file_error="not valid JSON"
    )
    fhir_file(
        entries,
        "utf16.json",
        dumps(bundle(wrap(s1, 1))).encode("utf-16"),
        0,
        file_error="not valid UTF-8",
    )
    fhir_file(
        entries,
        "duplicate_keys.json",
        '{"resourceType":"Bundle","resourceType":"DiagnosticReport"}',
        0,
        file_error="duplicate key 'resourceType'",
    )
    fhir_file(
        entries,
        "bom.json",
        "\ufeff"
        + dumps(report("r1", [pneumothorax], contained=[s1], imagingStudy=[{"reference": "#s1"}])),
        1,
    )
    code_nul = report("r1", [pneumothorax + "\u0000"])
    text_nul = report("r2", [pneumothorax], conclusion="Large\u0000 pneumothorax")
    text_tab = report("r3", [pneumothorax], conclusion="Large\tleft\r\npneumothorax")
    id_nul = report("r4\u0000", [pneumothorax])
    fhir_file(
        entries,
        "nul_values.ndjson",
        ndjson(s1, code_nul, text_nul, text_tab, id_nul),
        1,
        [
            "field 'conclusionCode[0].coding[0].code' contains a NUL byte",
            "field 'conclusion' contains a NUL byte",
            "field 'id' contains a NUL byte",
        ],
        note="tab, CR and LF are fine in free text",
    )
    fhir_file(
        entries,
        "statuses.ndjson",
        ndjson(
            s1,
            report("r1", [pneumothorax], status="preliminary"),
            report("r2", [pneumothorax], status=["final"]),
            report("r3", [pneumothorax], status="cancelled"),
            report("r4", [pneumothorax], status="amended"),
        ),
        1,
        [
            "report status preliminary is not a confirmed diagnosis",
            "report status missing or unrecognised",
            "report status cancelled",
        ],
    )
    fhir_file(
        entries,
        "issued_times.ndjson",
        ndjson(
            s1,
            report("r1", [pneumothorax], issued="2200-01-01T00:00:00Z"),
            report("r2", [pneumothorax], issued="1900-01-01T00:00:00Z"),
            report("r3", [pneumothorax], issued="2026-08-20"),
            report("r4", [pneumothorax], issued=None),
        ),
        0,
        [
            "field 'issued' is 2200-01-01T00:00:00Z, more than 1 day after now",
            "field 'issued' is 1900-01-01T00:00:00Z, before the earliest",
            "field 'issued' has no time zone",
            "report has no 'issued' time",
        ],
    )
    (HERE / "fhir" / "garbage_lines.ndjson").write_bytes(
        b"{not json\n[1]\n\xff\xfe{}\n"
        + ndjson(s1, report("r1", [pneumothorax])).encode()
        + b"null\n"
        + b"x" * 10
        + b"\n"
    )
    entries["fhir/garbage_lines.ndjson"] = entry(
        "fhir",
        1,
        [
            "line is not a JSON object",
            "line is not a JSON object",
            "not valid UTF-8",
            "line is not a JSON object",
            "line is not a JSON object",
        ],
    )
    fhir_file(
        entries,
        "weird_shapes.ndjson",
        ndjson(
            s1,
            report("r1", [pneumothorax], imagingStudy={"reference": "x"}),
            report("r2", [pneumothorax], conclusionCode=5, contained=7),
            report(
                "r3",
                [pneumothorax],
                imagingStudy=[
                    {"identifier": {"system": "urn:dicom:uid", "value": "urn:oid:1.2.abc"}}
                ],
            ),
            report(
                "r4",
                [pneumothorax],
                imagingStudy=[
                    {"reference": "ImagingStudy/s1"},
                    {"identifier": {"system": "urn:dicom:uid", "value": "urn:oid:1.2.3"}},
                ],
            ),
            {
                "resourceType": "DiagnosticReport",
                "status": "final",
                "issued": WHEN,
                "imagingStudy": [{"reference": "ImagingStudy/s1"}],
                "conclusionCode": [
                    {"coding": [{"system": "http://snomed.info/sct", "code": pneumothorax}]}
                ],
            },
        ),
        0,
        [
            "report has no imagingStudy reference",
            "no conclusionCode coding",
            "is not a DICOM UID",
            "different studies",
            "no id, fullUrl or identifier",
        ],
    )


def write_manifest(entries: Entries, kinds: set[str]) -> None:
    path = HERE / "MANIFEST.json"
    manifest: dict[str, Any] = (
        json.loads(path.read_text()) if path.exists() else {"version": 1, "files": {}}
    )
    files = {k: v for k, v in manifest["files"].items() if v["entry"] not in kinds}
    files.update(entries)
    manifest["files"] = dict(sorted(files.items()))
    manifest["description"] = (
        "Hostile inputs for the connector parsers: per file its entry point "
        "(jsonl|csv|fhir|dicom), the number of good records, the number of bad records "
        "with the reason substring expected for each (in file order), optionally "
        "file_error (the UsageError substring when the whole file is refused), "
        "withdrawals (FHIR LabelWithdrawal items) and options (reader keyword arguments). "
        "Regenerate with make_text.py and make_dicom.py."
    )
    path.write_text(json.dumps(manifest, indent=1, ensure_ascii=True) + "\n")


def main() -> None:
    entries: Entries = {}
    make_jsonl(entries)
    make_csv(entries)
    make_fhir(entries)
    write_manifest(entries, {"jsonl", "csv", "fhir"})
    print(f"wrote {len(entries)} files")


if __name__ == "__main__":
    main()
