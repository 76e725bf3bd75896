"""Topic records <-> typed events.

The JSON shapes are the contract in DESIGN.md ("Kafka topics"); JSONL event
files hold the same objects plus a ``"kind"`` field. :func:`parse_record` is the
only place that validates them: every failure raises
:class:`~surveillance.core.errors.InvalidRecord` with a sentence saying what is wrong,
which the ingest layer stores in the dead-letter table.

Hostile input (see :mod:`connectors.untrusted`): bytes are strict UTF-8 (a
leading BOM is stripped, UTF-16 is refused), a record is at most
:data:`MAX_RECORD_BYTES` (1 MiB) and nests at most :data:`MAX_JSON_DEPTH` (32)
levels, ``NaN``/``Infinity`` and duplicate keys are refused, and no text field
(message_id, model, model_version, study_instance_uid, finding, source, kind)
may hold a NUL or another C0 control character: "field 'model' contains a NUL
byte". Event times must lie within :class:`TimeBounds` (default
2000-01-01T00:00Z .. now + 1 day); every ``parse_*`` function takes ``bounds``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydicom import Dataset

from connectors.dicom_header import dataset_to_dicom_json, metadata_from_dicom_json
from connectors.untrusted import (
    MAX_JSON_DEPTH,
    MAX_RECORD_BYTES,
    UTF8_BOM,
    check_text,
    decode_json,
    iter_lines,
    shown,
)
from surveillance.core.errors import InvalidRecord, UsageError
from surveillance.core.events import (
    DIAGNOSIS_SOURCES,
    EVENT_KINDS,
    DiagnosisEvent,
    DicomMetadataEvent,
    Event,
    PredictionEvent,
    RawRecord,
    SourcePosition,
)

MAX_TEXT = 256  # longest identifier or name accepted in a record field
MAX_OUTPUTS = 64  # most findings one prediction may carry
MAX_KNOWN_SHOWN = 20  # known findings named in an "unknown finding" reason


@dataclass(frozen=True, slots=True)
class TimeBounds:
    """The plausible range of an event time: ``not_before`` .. now + ``max_ahead``.

    A time before ``not_before`` (default 2000-01-01T00:00Z) is a broken clock,
    a default value or a typo (1900, 0001); a time more than ``max_ahead``
    (default one day) in the future cannot be a confirmation or an inference
    that already happened, and would pin a monitoring window open. Both are
    dead-lettered with the field and the bound in the reason.
    """

    not_before: datetime = datetime(2000, 1, 1, tzinfo=UTC)
    max_ahead: timedelta = timedelta(days=1)

    def __post_init__(self) -> None:
        if self.not_before.tzinfo is None or self.not_before.utcoffset() is None:
            raise ValueError("TimeBounds.not_before must be time-zone aware")
        if self.max_ahead < timedelta(0):
            raise ValueError("TimeBounds.max_ahead must not be negative")

    def check(self, moment: datetime, key: str, *, now: datetime | None = None) -> datetime:
        """``moment`` if it lies within the bounds, else InvalidRecord naming ``key``."""
        if moment < self.not_before:
            raise InvalidRecord(
                f"field {key!r} is {_iso(moment)}, before the earliest accepted time "
                f"{_iso(self.not_before)}"
            )
        current = now if now is not None else datetime.now(UTC)
        try:
            latest = current + self.max_ahead
        except OverflowError:  # max_ahead = timedelta.max: no upper bound
            return moment
        if moment > latest:
            raise InvalidRecord(
                f"field {key!r} is {_iso(moment)}, more than {_duration(self.max_ahead)} "
                f"after now (latest accepted {_iso(latest.replace(microsecond=0))})"
            )
        return moment


def _duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} seconds"


DEFAULT_TIME_BOUNDS = TimeBounds()
"""2000-01-01T00:00Z .. now + 1 day."""


def _require(obj: dict[str, Any], key: str) -> Any:
    if key not in obj or obj[key] is None:
        raise InvalidRecord(f"missing required field {key!r}")
    return obj[key]


def _text(obj: dict[str, Any], key: str) -> str:
    value = _require(obj, key)
    if not isinstance(value, str):
        raise InvalidRecord(f"field {key!r} must be a non-empty string")
    check_text(value, key)
    if not value.strip():
        raise InvalidRecord(f"field {key!r} must be a non-empty string")
    if len(value) > MAX_TEXT:
        raise InvalidRecord(f"field {key!r} is longer than {MAX_TEXT} characters")
    return value.strip()


def parse_timestamp(
    value: Any,
    key: str,
    *,
    bounds: TimeBounds | None = None,
    now: datetime | None = None,
) -> datetime:
    """An ISO-8601 timestamp with a time zone, converted to UTC, within ``bounds``.

    ``bounds`` defaults to :data:`DEFAULT_TIME_BOUNDS`; ``now`` (for tests)
    defaults to the current time.
    """
    if not isinstance(value, str):
        raise InvalidRecord(f"field {key!r} must be an ISO-8601 string")
    check_text(value, key)
    if len(value) > 64:
        raise InvalidRecord(f"field {key!r} is not ISO-8601: {shown(value)}")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidRecord(f"field {key!r} is not ISO-8601: {shown(value)}") from exc
    if parsed.tzinfo is None:
        raise InvalidRecord(
            f"field {key!r} has no time zone: {shown(value)} (add 'Z' or an offset like '+01:00')"
        )
    try:
        moment = parsed.astimezone(UTC)
    except OverflowError as exc:  # 0001-01-01T00:00+01:00 has no UTC equivalent
        raise InvalidRecord(f"field {key!r} is out of range: {shown(value)}") from exc
    return (bounds or DEFAULT_TIME_BOUNDS).check(moment, key, now=now)


def check_known_finding(finding: str, known_findings: Collection[str] | None) -> str:
    """``finding`` if ``known_findings`` is None or holds it, else InvalidRecord."""
    if known_findings is not None and finding not in known_findings:
        names = sorted(known_findings)
        listed = ", ".join(names[:MAX_KNOWN_SHOWN])
        if len(names) > MAX_KNOWN_SHOWN:
            listed += f", ... ({len(names)} in all)"
        raise InvalidRecord(f"unknown finding {shown(finding)}; known: {listed or '(none)'}")
    return finding


def _prediction(
    obj: dict[str, Any],
    position: SourcePosition | None,
    bounds: TimeBounds | None,
    known_findings: Collection[str] | None,
) -> PredictionEvent:
    outputs = _require(obj, "outputs")
    if not isinstance(outputs, dict) or not outputs:
        raise InvalidRecord("field 'outputs' must be a non-empty object {finding: score}")
    if len(outputs) > MAX_OUTPUTS:
        raise InvalidRecord(f"field 'outputs' has more than {MAX_OUTPUTS} findings")
    scores: dict[str, float] = {}
    for finding, score in outputs.items():
        if not isinstance(finding, str) or not finding.strip() or len(finding) > MAX_TEXT:
            raise InvalidRecord(f"finding name {shown(finding)} must be a short non-empty string")
        check_text(finding, "outputs")
        if isinstance(score, bool) or not isinstance(score, int | float):
            raise InvalidRecord(f"score for {shown(finding)} must be a number, got {shown(score)}")
        if not math.isfinite(score) or not 0.0 <= score <= 1.0:
            raise InvalidRecord(f"score for {shown(finding)} is {shown(score)}, outside 0..1")
        name = check_known_finding(finding.strip(), known_findings)
        if name in scores:
            raise InvalidRecord(f"finding {shown(name)} appears twice in 'outputs'")
        scores[name] = float(score)
    return PredictionEvent(
        message_id=_text(obj, "message_id"),
        model=_text(obj, "model"),
        model_version=_text(obj, "model_version"),
        study_instance_uid=_text(obj, "study_instance_uid"),
        outputs=scores,
        predicted_at=parse_timestamp(_require(obj, "predicted_at"), "predicted_at", bounds=bounds),
        position=position,
    )


def _diagnosis(
    obj: dict[str, Any],
    position: SourcePosition | None,
    bounds: TimeBounds | None,
    known_findings: Collection[str] | None,
) -> DiagnosisEvent:
    message_id = _text(obj, "message_id")
    study = _text(obj, "study_instance_uid")
    finding = check_known_finding(_text(obj, "finding"), known_findings)
    present = _require(obj, "present")
    if not isinstance(present, bool):
        raise InvalidRecord(f"field 'present' must be true or false, got {shown(present)}")
    source = _text(obj, "source")
    if source not in DIAGNOSIS_SOURCES:
        raise InvalidRecord(
            f"field 'source' is {shown(source)}; expected one of {DIAGNOSIS_SOURCES}"
        )
    return DiagnosisEvent(
        message_id=message_id,
        study_instance_uid=study,
        finding=finding,
        present=present,
        source=source,
        confirmed_at=parse_timestamp(_require(obj, "confirmed_at"), "confirmed_at", bounds=bounds),
        position=position,
    )


def parse_record(
    kind: str,
    obj: Any,
    position: SourcePosition | None = None,
    *,
    bounds: TimeBounds | None = None,
    known_findings: Collection[str] | None = None,
) -> Event:
    """Validate one topic record value (already JSON-decoded) into an event.

    ``bounds`` limits the event times (default :data:`DEFAULT_TIME_BOUNDS`);
    ``known_findings``, when given, is the set of finding names a prediction's
    outputs and a diagnosis may use (others: "unknown finding ...").
    """
    if kind not in EVENT_KINDS:
        raise InvalidRecord(f"unknown event kind {shown(kind)}; expected one of {EVENT_KINDS}")
    if not isinstance(obj, dict):
        raise InvalidRecord(f"a {kind} record must be a JSON object")
    if kind == "prediction":
        return _prediction(obj, position, bounds, known_findings)
    if kind == "diagnosis":
        return _diagnosis(obj, position, bounds, known_findings)
    return metadata_from_dicom_json(obj, position)


def parse_json(
    data: bytes | str,
    kind: str,
    position: SourcePosition | None = None,
    *,
    bounds: TimeBounds | None = None,
    known_findings: Collection[str] | None = None,
    max_depth: int = MAX_JSON_DEPTH,
    max_bytes: int = MAX_RECORD_BYTES,
) -> Event:
    """Decode and validate one topic record value (strict UTF-8, bounded JSON)."""
    obj = decode_json(data, max_depth=max_depth, max_bytes=max_bytes)
    return parse_record(kind, obj, position, bounds=bounds, known_findings=known_findings)


def parse_jsonl_line(
    line: str | bytes,
    position: SourcePosition | None = None,
    *,
    bounds: TimeBounds | None = None,
    known_findings: Collection[str] | None = None,
    max_depth: int = MAX_JSON_DEPTH,
    max_bytes: int = MAX_RECORD_BYTES,
) -> Event:
    """One line of a JSONL event file: a record plus its ``"kind"``.

    ``line`` may be the raw bytes (strict UTF-8) or already-decoded text; a
    leading byte-order mark is stripped either way.
    """
    obj = decode_json(line, max_depth=max_depth, max_bytes=max_bytes)
    if not isinstance(obj, dict):
        raise InvalidRecord("each line must be a JSON object")
    kind = obj.pop("kind", None)
    if kind is None:
        raise InvalidRecord(f"missing field 'kind' (one of {EVENT_KINDS})")
    if not isinstance(kind, str):
        raise InvalidRecord(f"field 'kind' must be one of {EVENT_KINDS}, got {shown(kind)}")
    check_text(kind, "kind")
    return parse_record(kind, obj, position, bounds=bounds, known_findings=known_findings)


def read_jsonl_records(path: Path, *, max_bytes: int = MAX_RECORD_BYTES) -> Iterator[RawRecord]:
    """The non-blank lines of a JSONL file as records, memory bounded by ``max_bytes``.

    Positions are the file and the 1-based line number. A line longer than
    ``max_bytes`` is yielded cut to ``max_bytes + 1`` bytes, so
    :func:`parse_jsonl_line` dead-letters it as too large without the reader
    ever holding the whole line. A missing/unreadable file is a UsageError.
    """
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
    locator = str(path.resolve())
    with handle:
        for line in iter_lines(handle, max_bytes):
            data = line.data
            if line.number == 1:
                data = data.removeprefix(UTF8_BOM)
            if line.too_long or data.strip():
                yield RawRecord(data, SourcePosition("file", locator, None, line.number))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _metadata_dataset(event: DicomMetadataEvent) -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID = event.study_instance_uid
    text_fields = {
        "PatientID": event.patient_id,
        "AccessionNumber": event.accession_number,
        "StationName": event.station_name,
        "InstitutionName": event.institution_name,
        "Modality": event.modality,
        "Manufacturer": event.manufacturer,
        "ManufacturerModelName": event.manufacturer_model_name,
        "SoftwareVersions": event.software_versions,
        "ConvolutionKernel": event.convolution_kernel,
        "BodyPartExamined": event.body_part_examined,
        "ViewPosition": event.view_position,
        "PatientSex": event.patient_sex,
    }
    for keyword, value in text_fields.items():
        if value is not None:
            setattr(ds, keyword, value)
    numeric = {
        "SliceThickness": event.slice_thickness,
        "KVP": event.kvp,
        "MagneticFieldStrength": event.magnetic_field_strength,
    }
    for keyword, number in numeric.items():
        if number is not None:
            setattr(ds, keyword, f"{number:g}")
    if event.pixel_spacing is not None:
        ds.PixelSpacing = [f"{event.pixel_spacing:g}", f"{event.pixel_spacing:g}"]
    if event.study_date is not None:
        ds.StudyDate = event.study_date.strftime("%Y%m%d")
    if event.age_band is not None:
        low = int(event.age_band.split("-")[0].rstrip("+"))
        ds.PatientAge = f"{low:03d}Y"
    return ds


def event_to_record(event: Event) -> dict[str, Any]:
    """The topic record value for ``event`` (inverse of :func:`parse_record`)."""
    if isinstance(event, PredictionEvent):
        return {
            "message_id": event.message_id,
            "model": event.model,
            "model_version": event.model_version,
            "study_instance_uid": event.study_instance_uid,
            "outputs": dict(event.outputs),
            "predicted_at": _iso(event.predicted_at),
        }
    if isinstance(event, DiagnosisEvent):
        return {
            "message_id": event.message_id,
            "study_instance_uid": event.study_instance_uid,
            "finding": event.finding,
            "present": event.present,
            "source": event.source,
            "confirmed_at": _iso(event.confirmed_at),
        }
    return dataset_to_dicom_json(_metadata_dataset(event))


def event_to_jsonl(event: Event) -> str:
    """One JSONL line (no newline) for ``event``."""
    record = event_to_record(event)
    return json.dumps({"kind": event.kind, **record}, separators=(",", ":"))


__all__ = [
    "DEFAULT_TIME_BOUNDS",
    "MAX_JSON_DEPTH",
    "MAX_RECORD_BYTES",
    "TimeBounds",
    "check_known_finding",
    "event_to_jsonl",
    "event_to_record",
    "parse_json",
    "parse_jsonl_line",
    "parse_record",
    "parse_timestamp",
    "read_jsonl_records",
]
