"""Property-based fuzzing of the connector parsers: only InvalidRecord may escape.

(UsageError is allowed where documented: a CSV file whose header is unusable.)
Deterministic (``derandomize=True``) so CI sees the same examples every run.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.dicom_header import metadata_from_dicom_json
from connectors.labels import (
    csv_records,
    fhir_records,
    parse_csv_row,
    parse_fhir_record,
    parse_fhir_report,
)
from connectors.records import parse_json, parse_jsonl_line
from surveillance.core.errors import InvalidRecord, UsageError
from surveillance.core.events import DicomMetadataEvent

FUZZ = settings(
    max_examples=600,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
UID = "1.2.826.0.1.3680043.8.498.5"
WHEN = "2026-08-20T09:00:00Z"

# Text that hits the interesting characters often.
NASTY_TOKENS = [
    *'"{}[],:\\\x00\x01\n\r\t\ufeff\ud800 aZ09.-+eE',
    *("\u00e9", "\u2028", "true", "null", "NaN", "1e999", "Z", "\\u0000", "\\ud800"),
]
nasty_text = st.lists(st.sampled_from(NASTY_TOKENS), max_size=30).map("".join) | st.text(
    max_size=40
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | nasty_text
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(nasty_text, children, max_size=4)
    ),
    max_leaves=20,
)

RECORD_FIELDS = (
    "kind",
    "message_id",
    "model",
    "model_version",
    "study_instance_uid",
    "outputs",
    "predicted_at",
    "finding",
    "present",
    "source",
    "confirmed_at",
)
good_values: dict[str, Any] = {
    "kind": st.sampled_from(["prediction", "diagnosis", "dicom-metadata", "other"]),
    "message_id": st.just("m-1"),
    "model": st.just("cxr"),
    "model_version": st.just("1.0"),
    "study_instance_uid": st.just(UID),
    "outputs": st.dictionaries(nasty_text, st.floats(allow_nan=True), max_size=3)
    | st.just({"pneumothorax": 0.5}),
    "predicted_at": st.sampled_from([WHEN, "1900-01-01T00:00Z", "9999-12-31T23:59:59-01:00"]),
    "finding": st.just("pneumothorax"),
    "present": st.booleans(),
    "source": st.sampled_from(["report", "pathology", "nurse"]),
    "confirmed_at": st.sampled_from([WHEN, "2026-08-20", "0001-01-01T00:00:00+14:00"]),
}


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly-valid records with some fields replaced by arbitrary JSON."""
    record: dict[str, Any] = {}
    for field in RECORD_FIELDS:
        choice = draw(st.integers(0, 5))
        if choice == 0:
            continue
        record[field] = draw(json_values if choice == 1 else good_values[field])
    return record


def _only_invalid_record(call: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return call(*args, **kwargs)
    except InvalidRecord as exc:
        assert isinstance(exc.reason, str) and exc.reason
        assert len(exc.reason) < 2000
        return None


@FUZZ
@given(st.text(max_size=300) | nasty_text)
def test_jsonl_line_text(line: str) -> None:
    _only_invalid_record(parse_jsonl_line, line)


@FUZZ
@given(st.binary(max_size=300))
def test_jsonl_line_bytes(data: bytes) -> None:
    _only_invalid_record(parse_jsonl_line, data)
    _only_invalid_record(parse_json, data, "prediction")


@FUZZ
@given(records(), st.booleans())
def test_jsonl_records(record: dict[str, Any], ascii_only: bool) -> None:
    line = json.dumps(record, ensure_ascii=ascii_only, allow_nan=True)
    _only_invalid_record(parse_jsonl_line, line)
    _only_invalid_record(parse_jsonl_line, line.encode("utf-8", "surrogatepass"))
    kind = record.get("kind")
    if isinstance(kind, str):
        _only_invalid_record(parse_json, line, kind)


@FUZZ
@given(json_values)
def test_topic_values(value: Any) -> None:
    text = json.dumps(value, allow_nan=True)
    for kind in ("prediction", "diagnosis", "dicom-metadata"):
        _only_invalid_record(parse_json, text, kind)


# ---- CSV ------------------------------------------------------------------------------

HEADER = "message_id,study_instance_uid,finding,present,source,confirmed_at,note"
csv_cells = st.text(alphabet=st.sampled_from(list('ab,"\x00\r \t1.Z:-')), max_size=12)
csv_lines = st.lists(csv_cells, max_size=9).map(",".join)


def _good_row(n: int) -> str:
    return f"g-{n},{UID}.{n},pneumothorax,yes,report,{WHEN},fine"


def _csv_outcome(text: bytes) -> tuple[set[str], int]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "labels.csv"
        path.write_bytes(text)
        good: set[str] = set()
        bad = 0
        for raw in csv_records(path):
            event = _only_invalid_record(parse_csv_row, raw)
            if event is None:
                bad += 1
            else:
                good.add(event.message_id)
        return good, bad


@FUZZ
@given(st.binary(max_size=400) | st.text(max_size=400).map(str.encode))
def test_csv_arbitrary_file(data: bytes) -> None:
    with contextlib.suppress(UsageError):  # documented: an unusable header refuses the file
        _csv_outcome(data)


@FUZZ
@given(st.lists(csv_lines, min_size=1, max_size=6), st.integers(0, 6))
def test_csv_garbage_never_hides_good_rows(garbage: list[str], spacing: int) -> None:
    """Good rows around arbitrary lines (quotes, NULs, CRs) always parse."""
    rows: list[str] = []
    expected: set[str] = set()
    for n, line in enumerate(garbage):
        rows.append(line)
        for k in range(spacing % 3 + 1):
            rows.append(_good_row(10 * n + k))
            expected.add(f"g-{10 * n + k}")
    good, _ = _csv_outcome(("\n".join([HEADER, *rows]) + "\n").encode())
    assert expected <= good


# ---- FHIR -----------------------------------------------------------------------------

fhir_keys = st.sampled_from(
    [
        "resourceType",
        "id",
        "status",
        "issued",
        "imagingStudy",
        "conclusionCode",
        "contained",
        "identifier",
        "coding",
        "system",
        "code",
        "reference",
        "value",
    ]
)
fhir_values = st.recursive(
    scalars
    | st.sampled_from(
        [
            "DiagnosticReport",
            "ImagingStudy",
            "final",
            "entered-in-error",
            WHEN,
            "urn:dicom:uid",
            f"urn:oid:{UID}",
            "http://snomed.info/sct",
            "36118008",
            "17621005",
            "#s1",
            "ImagingStudy/s1",
        ]
    ),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(fhir_keys | nasty_text, children, max_size=5)
    ),
    max_leaves=25,
)


def _report() -> dict[str, Any]:
    return {
        "resourceType": "DiagnosticReport",
        "id": "r1",
        "status": "final",
        "issued": WHEN,
        "imagingStudy": [{"reference": "#s1"}],
        "contained": [
            {
                "resourceType": "ImagingStudy",
                "id": "s1",
                "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{UID}"}],
            }
        ],
        "conclusionCode": [{"coding": [{"system": "http://snomed.info/sct", "code": "36118008"}]}],
    }


@FUZZ
@given(st.dictionaries(fhir_keys, fhir_values, max_size=8), st.booleans())
def test_fhir_report_arbitrary_objects(changes: dict[str, Any], on_a_real_report: bool) -> None:
    report = {**_report(), **changes} if on_a_real_report else changes
    events = _only_invalid_record(parse_fhir_report, report)
    _only_invalid_record(parse_fhir_report, report, uncoded_as_absent=True)
    if events is not None:
        assert all(e.study_instance_uid == UID for e in events)


@FUZZ
@given(st.lists(fhir_values, max_size=5))
def test_fhir_ndjson_arbitrary_lines(resources: list[Any]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "export.ndjson"
        lines = [json.dumps(r, allow_nan=True) for r in resources] + [json.dumps(_report())]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
        items = list(fhir_records(path, withdrawals=True))
        for item in items:
            if not hasattr(item, "report_id"):
                _only_invalid_record(parse_fhir_record, item)
        assert items  # the good report at the end is always read


# ---- DICOM JSON -----------------------------------------------------------------------

wanted_tags = st.sampled_from(
    [
        "0020000D",
        "00080070",
        "00100040",
        "00101010",
        "00100030",
        "00080020",
        "00180060",
        "00280030",
        "00100020",
        "00081090",
        "0020000d",
        "7FE00010",
        "bogus",
    ]
)
vrs = st.sampled_from(["UI", "LO", "CS", "AS", "DA", "DS", "SH", "PN", "SQ", "OB", "XX"])
dicom_values = st.lists(scalars | st.dictionaries(nasty_text, scalars, max_size=2), max_size=3)
elements = (
    st.fixed_dictionaries(
        {},
        optional={
            "vr": vrs | scalars,
            "Value": dicom_values | scalars,
            "InlineBinary": nasty_text,
            "BulkDataURI": nasty_text,
        },
    )
    | json_values
)


@FUZZ
@given(st.dictionaries(wanted_tags, elements, max_size=6), st.booleans())
def test_dicom_json_header_arbitrary_dicts(header: dict[str, Any], with_study: bool) -> None:
    if with_study:
        header.setdefault("0020000D", {"vr": "UI", "Value": [UID]})
    event = _only_invalid_record(metadata_from_dicom_json, header)
    if event is not None:
        assert isinstance(event, DicomMetadataEvent)
        for value in (event.manufacturer, event.patient_id, event.study_instance_uid):
            assert value is None or "\x00" not in value
