"""JSON limits, strict UTF-8, NUL bytes and plausible-time bounds in connectors.records."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from connectors.records import (
    DEFAULT_TIME_BOUNDS,
    MAX_JSON_DEPTH,
    TimeBounds,
    parse_json,
    parse_jsonl_line,
    parse_record,
    parse_timestamp,
    read_jsonl_records,
)
from connectors.untrusted import check_depth, decode_json, iter_lines
from surveillance.core.errors import InvalidRecord
from surveillance.core.events import DiagnosisEvent, PredictionEvent

UID = "1.2.826.0.1.3680043.8.498.9"
NOW = datetime(2026, 9, 1, 12, 0, tzinfo=UTC)


def _diagnosis(**changes: object) -> dict[str, object]:
    record: dict[str, object] = {
        "message_id": "d-1",
        "study_instance_uid": UID,
        "finding": "pneumothorax",
        "present": True,
        "source": "report",
        "confirmed_at": "2026-08-20T09:00:00Z",
    }
    record.update(changes)
    return record


def test_time_bounds_default_and_custom() -> None:
    assert DEFAULT_TIME_BOUNDS.not_before == datetime(2000, 1, 1, tzinfo=UTC)
    assert DEFAULT_TIME_BOUNDS.max_ahead == timedelta(days=1)
    assert parse_timestamp("2000-01-01T00:00:00Z", "t") == datetime(2000, 1, 1, tzinfo=UTC)
    ahead = (NOW + timedelta(hours=23)).isoformat()
    assert parse_timestamp(ahead, "t", now=NOW) == NOW + timedelta(hours=23)
    with pytest.raises(InvalidRecord, match=r"field 't' is .* more than 1 day after now"):
        parse_timestamp((NOW + timedelta(hours=25)).isoformat(), "t", now=NOW)
    with pytest.raises(InvalidRecord, match="before the earliest accepted time 2000-01-01"):
        parse_timestamp("1999-12-31T23:59:59Z", "t")

    strict = TimeBounds(not_before=datetime(2026, 1, 1, tzinfo=UTC), max_ahead=timedelta(0))
    with pytest.raises(
        InvalidRecord, match=r"confirmed_at.*before the earliest accepted time 2026"
    ):
        parse_record("diagnosis", _diagnosis(confirmed_at="2025-06-01T00:00Z"), bounds=strict)
    with pytest.raises(InvalidRecord, match="more than 0 seconds after now"):
        parse_timestamp((NOW + timedelta(seconds=1)).isoformat(), "t", bounds=strict, now=NOW)
    loose = TimeBounds(not_before=datetime(1900, 1, 1, tzinfo=UTC), max_ahead=timedelta.max)
    old = parse_jsonl_line(
        json.dumps({"kind": "diagnosis", **_diagnosis(confirmed_at="1950-01-01T00:00Z")}),
        bounds=loose,
    )
    assert isinstance(old, DiagnosisEvent) and old.confirmed_at.year == 1950
    assert parse_timestamp("9999-12-31T00:00:00Z", "t", bounds=loose).year == 9999

    with pytest.raises(ValueError, match="time-zone aware"):
        TimeBounds(not_before=datetime(2000, 1, 1))
    with pytest.raises(ValueError, match="negative"):
        TimeBounds(max_ahead=timedelta(seconds=-1))


def test_nesting_depth_is_checked_before_decoding() -> None:
    ok = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert decode_json(ok) is not None
    too_deep = "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)
    with pytest.raises(InvalidRecord, match="deeper than the limit of 32"):
        decode_json(too_deep)
    with pytest.raises(InvalidRecord, match="deeper than the limit of 4"):
        parse_json('{"a":{"b":{"c":{"d":{}}}}}', "prediction", max_depth=4)
    for bomb in ("[" * 1_000_000, "{" * 100_000, '{"a":' * 100_000):
        with pytest.raises(InvalidRecord, match="deeper"):
            parse_jsonl_line(bomb)
    check_depth('["' + "[" * 1000 + '"]')  # brackets in strings do not count
    check_depth('["\\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["]')


def test_record_size_and_encoding() -> None:
    with pytest.raises(InvalidRecord, match="larger than the limit of 100 bytes"):
        parse_json(b"{" + b" " * 200 + b"}", "prediction", max_bytes=100)
    with pytest.raises(InvalidRecord, match="larger than the limit of 100 bytes"):
        parse_jsonl_line("{" + "\u00e9" * 60 + "}", max_bytes=100)  # 120 bytes in UTF-8
    utf16 = json.dumps({"kind": "diagnosis", **_diagnosis()}).encode("utf-16")
    with pytest.raises(InvalidRecord, match="not valid UTF-8"):
        parse_jsonl_line(utf16)
    with pytest.raises(InvalidRecord, match="not valid UTF-8"):
        parse_json(json.dumps(_diagnosis()).encode("utf-32"), "diagnosis")
    bom = b"\xef\xbb\xbf" + json.dumps(_diagnosis()).encode()
    assert isinstance(parse_json(bom, "diagnosis"), DiagnosisEvent)
    assert isinstance(parse_json(bom.decode("utf-8"), "diagnosis"), DiagnosisEvent)


@pytest.mark.parametrize(
    ("kind", "field"),
    [
        ("prediction", "message_id"),
        ("prediction", "model"),
        ("prediction", "model_version"),
        ("prediction", "study_instance_uid"),
        ("diagnosis", "finding"),
        ("diagnosis", "source"),
        ("diagnosis", "message_id"),
    ],
)
def test_nul_in_any_text_field(kind: str, field: str) -> None:
    record: dict[str, object] = (
        _diagnosis()
        if kind == "diagnosis"
        else {
            "message_id": "p-1",
            "model": "m",
            "model_version": "1",
            "study_instance_uid": UID,
            "outputs": {"pneumothorax": 0.5},
            "predicted_at": "2026-08-20T09:00:00Z",
        }
    )
    event = parse_json(json.dumps(record), kind)
    assert isinstance(event, DiagnosisEvent | PredictionEvent)
    record[field] = "ab\u0000cd"
    with pytest.raises(InvalidRecord) as caught:
        parse_json(json.dumps(record).encode(), kind)
    assert caught.value.reason == f"field {field!r} contains a NUL byte"


def test_known_findings() -> None:
    with pytest.raises(InvalidRecord, match="unknown finding 'nodule'; known: effusion, pn"):
        parse_record(
            "diagnosis", _diagnosis(finding="nodule"), known_findings={"pneumothorax", "effusion"}
        )
    event = parse_record("diagnosis", _diagnosis(), known_findings=["pneumothorax"])
    assert isinstance(event, DiagnosisEvent)


def test_read_jsonl_records_bounds_each_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    good = json.dumps({"kind": "diagnosis", **_diagnosis()}).encode()
    path.write_bytes(b"\xef\xbb\xbf" + good + b"\n\n" + b"x" * 5000 + b"\r\n" + good + b"\r\n")
    records = list(read_jsonl_records(path, max_bytes=1000))
    assert [r.position.offset for r in records if r.position] == [1, 3, 4]
    assert len(records[1].data) == 1001  # cut, never held whole
    outcomes: list[str] = []
    for raw in records:
        try:
            outcomes.append(parse_jsonl_line(raw.data, raw.position, max_bytes=1000).kind)
        except InvalidRecord as exc:
            outcomes.append(exc.reason)
    assert outcomes == ["diagnosis", "record is larger than the limit of 1000 bytes", "diagnosis"]


def test_iter_lines_skips_the_rest_of_a_long_line() -> None:
    handle = io.BytesIO(b"a\n" + b"b" * 100 + b"\nc")
    lines = list(iter_lines(handle, 10))
    assert [(x.number, x.data, x.too_long) for x in lines] == [
        (1, b"a", False),
        (2, b"b" * 11, True),
        (3, b"c", False),
    ]
