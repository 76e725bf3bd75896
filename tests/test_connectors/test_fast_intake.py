"""The intake's fast paths (issue 11) against the reference paths they stand in for.

Each fast path (orjson decoding with the duplicate-key and depth checks on the
raw bytes, the one-pass prediction/diagnosis validators, the direct DICOM JSON
header reader) either gives up, and the reference path decides, or returns
exactly what the reference returns. So for every input, the public function
(fast, then reference) must return what the reference alone returns, or raise
InvalidRecord with the same reason. Checked on the hostile corpus and on
fuzzed documents (deterministic hypothesis), and on the inputs that must take
the reference way (a duplicate key, a too-deep document, a long integer...).

Also: the fast paths really are taken for ordinary records (else they would be
dead code), and the pipelined batch writer keeps order, counts and errors.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors import dicom_header, records, untrusted
from connectors.dicom_header import metadata_from_dicom_json
from connectors.records import TimeBounds, parse_json, parse_jsonl_line, read_jsonl_records
from connectors.untrusted import decode_json
from surveillance.core.errors import InvalidRecord, StoreError
from surveillance.core.events import SourcePosition
from surveillance.intake.ingest import _BatchWriter
from surveillance.store import IngestBatch, IngestCounts

CORPUS = Path(__file__).resolve().parents[1] / "data" / "hostile"
FUZZ = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
KNOWN = frozenset({"pneumothorax", "effusion", "a"})
POSITION = SourcePosition("file", "/x.jsonl", None, 3)
NOW = datetime.now(UTC).replace(microsecond=0)
WHEN = (NOW - timedelta(hours=2)).isoformat().replace("+00:00", "Z")


def _outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", call()
    except InvalidRecord as exc:
        return "invalid", exc.reason


def _same(fast: Callable[[], Any], reference: Callable[[], Any]) -> None:
    got, expected = _outcome(fast), _outcome(reference)
    assert got == expected
    if got[0] == "ok":  # equal values of the same types (1 == 1.0 == True would hide a change)
        assert json.dumps(got[1], default=repr) == json.dumps(expected[1], default=repr)


def _reference_decode(data: Any) -> Any:
    return untrusted._decode_json_reference(data)


def _reference_jsonl_line(data: bytes) -> Any:
    """parse_jsonl_line with every fast path off."""
    obj = untrusted._decode_json_reference(data)
    if not isinstance(obj, dict):
        raise InvalidRecord("each line must be a JSON object")
    kind = obj.pop("kind", None)
    if kind is None:
        raise InvalidRecord(f"missing field 'kind' (one of {records.EVENT_KINDS})")
    if not isinstance(kind, str):
        raise InvalidRecord(
            f"field 'kind' must be one of {records.EVENT_KINDS}, got {untrusted.shown(kind)}"
        )
    untrusted.check_text(kind, "kind")
    return _reference_record(kind, obj)


def _reference_record(kind: str, obj: Any) -> Any:
    if kind == "prediction" and isinstance(obj, dict):
        return records._prediction_checked(obj, POSITION, None, KNOWN)
    if kind == "diagnosis" and isinstance(obj, dict):
        return records._diagnosis_checked(obj, POSITION, None, KNOWN)
    if kind == "dicom-metadata" and isinstance(obj, dict):
        return dicom_header._metadata_from_dicom_json_reference(obj, POSITION)
    return records.parse_record(kind, obj, POSITION, known_findings=KNOWN)  # its own errors


# ---- the hostile corpus -------------------------------------------------------------------


def _corpus_jsonl_lines() -> list[Any]:
    params = []
    for path in sorted((CORPUS / "jsonl").glob("*.jsonl")):
        for raw in read_jsonl_records(path):
            params.append(pytest.param(raw.data, id=f"{path.stem}:{raw.position.offset}"))
    return params


@pytest.mark.parametrize("line", _corpus_jsonl_lines())
def test_corpus_jsonl_line_fast_equals_reference(line: bytes) -> None:
    _same(lambda: decode_json(line), lambda: _reference_decode(line))
    _same(
        lambda: parse_jsonl_line(line, POSITION, known_findings=KNOWN),
        lambda: _reference_jsonl_line(line),
    )


@pytest.mark.parametrize(
    "path", [pytest.param(p, id=p.stem) for p in sorted((CORPUS / "kafka").glob("*.bin"))]
)
@pytest.mark.parametrize("kind", ["prediction", "diagnosis", "dicom-metadata"])
def test_corpus_kafka_value_fast_equals_reference(path: Path, kind: str) -> None:
    data = path.read_bytes()

    def reference() -> Any:
        return _reference_record(kind, _reference_decode(data))

    _same(lambda: parse_json(data, kind, POSITION, known_findings=KNOWN), reference)


# ---- documents that must take the reference way --------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(b'{"a":1,"a":2}', "duplicate key 'a'", id="duplicate-top"),
        pytest.param(b'{"o":{"k":1,"k":2}}', "duplicate key 'k'", id="duplicate-nested"),
        pytest.param(b'[{"k":1},{"k":1,"k":2}]', "duplicate key 'k'", id="duplicate-in-list"),
        pytest.param(b'{"a":"x\\"y","a":1}', "duplicate key 'a'", id="duplicate-after-escape"),
        pytest.param(b'{"a":":","a":1}', "duplicate key 'a'", id="duplicate-colon-value"),
        pytest.param(b"[" * 33 + b"]" * 33, "deeper than the limit of 32", id="deep-33"),
        pytest.param(b'{"a":' * 40 + b"1" + b"}" * 40, "deeper than the limit", id="deep-obj"),
        pytest.param(b'{"s":NaN}', "NaN is not a JSON number", id="nan"),
        pytest.param(b"\xff{}", "not valid UTF-8", id="utf8"),
    ],
)
def test_refusals_keep_the_reference_reason(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidRecord, match=reason):
        decode_json(data)
    assert untrusted._decode_fast(data, 32) is untrusted._FAST_FAILED


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(b'{"n":123456789012345678901}', {"n": 123456789012345678901}, id="big-int"),
        pytest.param(b'\xef\xbb\xbf{"a":1}', {"a": 1}, id="bom"),
        pytest.param(b'{"s":"\\ud800"}', {"s": "\ud800"}, id="lone-surrogate-escape"),
        pytest.param(b'{"n":1e400}', {"n": float("inf")}, id="overflowing-float"),
    ],
)
def test_what_orjson_would_read_otherwise_goes_the_reference_way(
    data: bytes, expected: Any
) -> None:
    assert untrusted._decode_fast(data, 32) is untrusted._FAST_FAILED
    assert decode_json(data) == expected


def test_the_fast_paths_are_taken_for_ordinary_records() -> None:
    line = json.dumps(
        {
            "kind": "prediction",
            "message_id": "m-1",
            "model": "m",
            "model_version": "1",
            "study_instance_uid": "1.2.3",
            "outputs": {"a": 0.25, "effusion": 1},
            "predicted_at": WHEN,
        }
    ).encode()
    assert untrusted._decode_fast(line, 32) == json.loads(line)
    obj = json.loads(line)
    del obj["kind"]
    assert records._prediction_fast(obj, POSITION, None, KNOWN) is not None
    header = _header()
    assert untrusted._decode_fast(json.dumps(header).encode(), 32) == header
    wanted = {t: header[t] for t in dicom_header._WANTED_ORDER if t in header}
    assert dicom_header._event_direct(wanted, POSITION) is not None
    diagnosis = {
        "message_id": "d-1",
        "study_instance_uid": "1.2.3",
        "finding": "a",
        "present": True,
        "source": "pathology",
        "confirmed_at": WHEN,
    }
    assert records._diagnosis_fast(diagnosis, POSITION, None, KNOWN) is not None


# ---- fuzzed documents ------------------------------------------------------------------------

keys = st.sampled_from(["a", "b", "kind", "outputs", "Value", "vr", ":", '"', "\\", "é"])
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**25), max_value=10**25)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=20,
)


def _with_duplicate(text: str, key: str) -> str:
    """``text`` with ``"key": 1,`` added at the start of its first object, if any."""
    at = text.find("{")
    return text if at < 0 else f'{text[: at + 1]}"{key}": 1, {text[at + 1 :]}'


@FUZZ
@given(
    value=json_values,
    compact=st.booleans(),
    duplicate=st.sampled_from([None, "a", "b", ":"]),
    wrap=st.integers(min_value=0, max_value=36),
)
def test_fuzzed_documents_fast_equals_reference(
    value: Any, compact: bool, duplicate: str | None, wrap: int
) -> None:
    text = json.dumps(value, separators=(",", ":") if compact else (", ", ": "))
    if duplicate is not None:
        text = _with_duplicate(text, duplicate)
        text = _with_duplicate(text, duplicate)
    text = "[" * wrap + text + "]" * wrap
    data = text.encode("utf-8", "surrogatepass")
    _same(lambda: decode_json(data), lambda: _reference_decode(data))


texts = st.sampled_from(["x", " x ", "", "  ", "a\x00", "é", "x" * 257, "\ud800", "1.2.3"])
maybe = st.one_of(
    texts, st.none(), st.integers(-1, 2), st.floats(allow_nan=True), st.booleans(), st.just([])
)
times = st.sampled_from(
    [WHEN, WHEN.replace("Z", ""), "1999-12-31T23:00:00Z", "9999-01-01T00:00:00Z", "x", ""]
)


@FUZZ
@given(
    fields=st.fixed_dictionaries(
        {},
        optional={
            "message_id": maybe,
            "model": maybe,
            "model_version": maybe,
            "study_instance_uid": maybe,
            "predicted_at": times | maybe,
            "outputs": st.dictionaries(
                st.sampled_from(["a", " a", "a ", "effusion", "zz", "", "a\x01"]),
                maybe | st.floats(0, 1),
                max_size=3,
            )
            | maybe,
        },
    )
)
def test_fuzzed_predictions_fast_equals_reference(fields: dict[str, Any]) -> None:
    _same(
        lambda: records._prediction(fields, POSITION, None, KNOWN),
        lambda: records._prediction_checked(fields, POSITION, None, KNOWN),
    )


@FUZZ
@given(
    fields=st.fixed_dictionaries(
        {},
        optional={
            "message_id": maybe,
            "study_instance_uid": maybe,
            "finding": st.sampled_from(["a", " a ", "zz"]) | maybe,
            "present": maybe,
            "source": st.sampled_from(["pathology", " report ", "x"]) | maybe,
            "confirmed_at": times | maybe,
        },
    ),
    bounds=st.sampled_from([None, TimeBounds(max_ahead=timedelta.max)]),
)
def test_fuzzed_diagnoses_fast_equals_reference(
    fields: dict[str, Any], bounds: TimeBounds | None
) -> None:
    _same(
        lambda: records._diagnosis(fields, POSITION, bounds, KNOWN),
        lambda: records._diagnosis_checked(fields, POSITION, bounds, KNOWN),
    )


def _header() -> dict[str, Any]:
    def el(vr: str, *values: Any) -> dict[str, Any]:
        return {"vr": vr, "Value": list(values)}

    return {
        "00080020": el("DA", "20260801"),
        "00080050": el("SH", "A1"),
        "00080060": el("CS", "CT"),
        "00080070": el("LO", "SIEMENS"),
        "00080080": el("LO", "Hospital"),
        "00081010": el("SH", "CT01"),
        "00081090": el("LO", "Model X"),
        "00100010": el("PN", {"Alphabetic": "Doe^Jane"}),
        "00100020": el("LO", "P1"),
        "00100030": el("DA", "19800203"),
        "00100040": el("CS", "F"),
        "00101010": el("AS", "045Y"),
        "00180015": el("CS", "CHEST"),
        "00180050": el("DS", 1.0),
        "00180060": el("DS", 120),
        "00181020": el("LO", "VA40"),
        "00181210": el("SH", "B30f"),
        "0020000D": el("UI", "2.25.1"),
        "00280030": el("DS", 0.7, 0.7),
    }


_TEXT_VALUES = [
    [],
    [""],
    ["  "],
    ["x"],
    [" x "],
    ["m"],
    ["O"],
    ["X"],
    ["a", "b"],
    ["", "x"],
    [" a ", "b "],
    ["\u00a0a", "b\u2003 "],
    ["\u00a0x\u2003"],
    ["x" * 200],
    ["a\x00"],
    [1],
]
_VALUES = {
    dicom_header._TEXT: _TEXT_VALUES,
    dicom_header._NUMBER: [[], [1.5], [0], [0, 2], [2.5, -1], [-1.0], ["1.5"], [True], [None]],
    dicom_header._DATE: [
        [],
        [""],
        ["20260801"],
        ["20261301"],
        ["2026"],
        ["", "20260801"],
        ["٢٠٢٦٠٨٠١"],
    ],
    dicom_header._AGE: [[], [""], [" "], ["045Y"], ["120M"], ["0²5Y"], ["45"], ["", "045Y"]],
    dicom_header._BIRTH: [[], [""], ["19800203"], ["20270101"], ["1980"], ["", "19800203"]],
}


@st.composite
def _change(draw: st.DrawFn) -> tuple[str, str, Any]:
    tag = draw(st.sampled_from(sorted(dicom_header._WANTED)))
    what = draw(
        st.sampled_from(
            ["Value"] * 6 + ["drop", "vr", "extra", "no-value", "value-none", "not-a-dict"]
        )
    )
    value = draw(st.sampled_from(_VALUES[dicom_header._PLAN[tag][1]])) if what == "Value" else None
    return tag, what, value


def _changed_header(changes: list[tuple[str, str, Any]], lower: bool) -> dict[str, Any]:
    header: dict[str, Any] = _header()
    for tag, what, value in changes:
        vr = dicom_header._WANTED[tag][1]
        element = header.setdefault(tag, {"vr": vr, "Value": ["x"]})
        if not isinstance(element, dict):
            continue
        if what == "Value":
            element["Value"] = list(value)
        elif what == "drop":
            del header[tag]
        elif what == "vr":
            element["vr"] = "DS" if vr != "DS" else "LO"
        elif what == "extra":
            element["InlineBinary"] = "AAAA"
        elif what == "no-value":
            element.pop("Value", None)
        elif what == "value-none":
            element["Value"] = None
        else:
            header[tag] = ["x"]
    if lower:
        header = {k.lower(): v for k, v in header.items()}
    return header


def _single_changes() -> list[Any]:
    params = []
    for tag in sorted(dicom_header._WANTED):
        keyword = dicom_header._WANTED[tag][0]
        for i, value in enumerate(_VALUES[dicom_header._PLAN[tag][1]]):
            params.append(pytest.param([(tag, "Value", value)], id=f"{keyword}-{i}"))
        for what in ("drop", "vr", "extra", "no-value", "value-none", "not-a-dict"):
            params.append(pytest.param([(tag, what, None)], id=f"{keyword}-{what}"))
    return params


def _age_changes() -> list[Any]:
    """No usable PatientAge, so the birth date and the study date decide the band."""
    tags = {dicom_header._WANTED[t][0]: t for t in dicom_header._WANTED}
    params = []
    for a, age in enumerate([("drop", None), ("Value", []), ("Value", [""])]):
        for b, birth in enumerate(_VALUES[dicom_header._BIRTH]):
            for d, date in enumerate([*_VALUES[dicom_header._DATE], None]):
                changes = [
                    (tags["PatientAge"], *age),
                    (tags["PatientBirthDate"], "Value", birth),
                    (tags["StudyDate"], "drop", None)
                    if date is None
                    else (tags["StudyDate"], "Value", date),
                ]
                params.append(pytest.param(changes, id=f"age{a}-birth{b}-date{d}"))
    return params


@pytest.mark.parametrize("changes", _single_changes() + _age_changes())
def test_each_header_change_fast_equals_reference(changes: list[tuple[str, str, Any]]) -> None:
    header = _changed_header(changes, lower=False)
    _same(
        lambda: metadata_from_dicom_json(header, POSITION),
        lambda: dicom_header._metadata_from_dicom_json_reference(header, POSITION),
    )


@FUZZ
@given(changes=st.lists(_change(), min_size=2, max_size=4), lower=st.booleans())
def test_fuzzed_headers_fast_equals_reference(
    changes: list[tuple[str, str, Any]], lower: bool
) -> None:
    header = _changed_header(changes, lower)
    _same(
        lambda: metadata_from_dicom_json(header, POSITION),
        lambda: dicom_header._metadata_from_dicom_json_reference(header, POSITION),
    )


def test_jsonl_reader_keeps_line_numbers_crlf_bom_and_cut_lines(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a":1}\r\n\n  \n{"b":2}\n' + b"x" * 40 + b"\nlast")
    got = [(r.position.offset, r.data) for r in read_jsonl_records(path, max_bytes=32)]
    assert got == [(1, b'{"a":1}'), (4, b'{"b":2}'), (5, b"x" * 33), (6, b"last")]


# ---- the pipelined batch writer ---------------------------------------------------------------


def _batch(n: int) -> IngestBatch:
    batch = IngestBatch()
    batch.dead_letters.extend([None] * n)  # type: ignore[list-item]
    return batch


def test_pipelined_writer_keeps_order_counts_and_progress() -> None:
    written: list[int] = []
    threads: set[str] = set()

    def write(batch: IngestBatch) -> IngestCounts:
        threads.add(threading.current_thread().name)
        written.append(len(batch))
        return IngestCounts(dead_letters=len(batch))

    progress: list[int] = []
    writer = _BatchWriter(write, pipelined=True, progress=progress.append)
    try:
        for n in (3, 5, 7):
            writer.submit(_batch(n), n)
        writer.submit(_batch(2), 2, last=True)
        totals = writer.finish()
    finally:
        writer.close()
    assert written == [3, 5, 7, 2]
    assert progress == [3, 5, 7, 2]
    assert totals.dead_letters == 17
    assert any(name.startswith("ingest-writer") for name in threads)  # the helper thread wrote


def test_one_batch_is_written_on_the_callers_thread() -> None:
    threads: list[str] = []

    def write(batch: IngestBatch) -> IngestCounts:
        threads.append(threading.current_thread().name)
        return IngestCounts()

    writer = _BatchWriter(write, pipelined=True, progress=None)
    writer.submit(_batch(1), 1, last=True)
    writer.finish()
    writer.close()
    assert threads == [threading.current_thread().name]


def test_a_write_error_reaches_the_caller_and_stops_the_writes() -> None:
    written: list[int] = []

    def write(batch: IngestBatch) -> IngestCounts:
        if len(batch) == 5:
            raise StoreError("database is down")
        written.append(len(batch))
        return IngestCounts()

    writer = _BatchWriter(write, pipelined=True, progress=None)
    with pytest.raises(StoreError, match="database is down"):
        try:
            writer.submit(_batch(3), 3)
            writer.submit(_batch(5), 5)
            writer.submit(_batch(7), 7)  # raises: the batch before failed
            writer.finish()
        finally:
            writer.close()
    assert written == [3]  # nothing after the failed batch was written
