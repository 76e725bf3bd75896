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
    CONTROL_CHARACTERS,
    MAX_JSON_DEPTH,
    MAX_RECORD_BYTES,
    UTF8_BOM,
    check_text,
    decode_json,
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


# ---- the fast path (issue 11) --------------------------------------------------------
#
# A record whose every field is plainly valid is turned into its event by
# ``_*_fast`` with a few type checks and one control-character scan over all
# its text at once; anything else (a missing field, a wrong type, a control
# character, a time out of bounds...) returns None and goes through the
# reference validators below, which raise the exact reason. So the fast path
# only ever accepts what the reference accepts, with the same event
# (tests/test_connectors/test_fast_intake.py checks both on the hostile corpus).


def _plain_time(value: str, bounds: TimeBounds | None) -> datetime | None:
    """What :func:`parse_timestamp` returns for ``value`` (a str of at most 64
    characters), or None where it would raise. No control-character check: the
    caller scans every text of the record at once."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            return None
        moment = parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    limits = bounds or DEFAULT_TIME_BOUNDS
    if moment < limits.not_before:
        return None
    try:
        latest = datetime.now(UTC) + limits.max_ahead
    except OverflowError:  # no upper bound
        return moment
    return moment if moment <= latest else None


def _prediction_fast(
    obj: dict[str, Any],
    position: SourcePosition | None,
    bounds: TimeBounds | None,
    known_findings: Collection[str] | None,
) -> PredictionEvent | None:
    get = obj.get
    outputs = get("outputs")
    message_id = get("message_id")
    model = get("model")
    version = get("model_version")
    study = get("study_instance_uid")
    at_text = get("predicted_at")
    if (
        type(outputs) is not dict
        or type(message_id) is not str
        or type(model) is not str
        or type(version) is not str
        or type(study) is not str
        or type(at_text) is not str
        or not 0 < len(outputs) <= MAX_OUTPUTS
        or len(message_id) > MAX_TEXT
        or len(model) > MAX_TEXT
        or len(version) > MAX_TEXT
        or len(study) > MAX_TEXT
        or len(at_text) > 64
        or CONTROL_CHARACTERS.search(message_id + model + version + study + at_text)
    ):
        return None
    message_id, model, version, study = (
        message_id.strip(),
        model.strip(),
        version.strip(),
        study.strip(),
    )
    if not (message_id and model and version and study):
        return None
    at = _plain_time(at_text, bounds)
    if at is None:
        return None
    scores: dict[str, float] = {}
    for finding, score in outputs.items():
        if len(finding) > MAX_TEXT or CONTROL_CHARACTERS.search(finding):
            return None
        name = finding.strip()
        if not name or name in scores:
            return None
        if known_findings is not None and name not in known_findings:
            return None
        if type(score) is float:
            if not 0.0 <= score <= 1.0:  # NaN fails too
                return None
        elif type(score) is not int or not 0 <= score <= 1:
            return None
        scores[name] = float(score)
    return PredictionEvent(message_id, model, version, study, scores, at, position)


def _diagnosis_fast(
    obj: dict[str, Any],
    position: SourcePosition | None,
    bounds: TimeBounds | None,
    known_findings: Collection[str] | None,
) -> DiagnosisEvent | None:
    get = obj.get
    message_id = get("message_id")
    study = get("study_instance_uid")
    finding = get("finding")
    source = get("source")
    at_text = get("confirmed_at")
    present = get("present")
    if (
        type(message_id) is not str
        or type(study) is not str
        or type(finding) is not str
        or type(source) is not str
        or type(at_text) is not str
        or type(present) is not bool
        or len(message_id) > MAX_TEXT
        or len(study) > MAX_TEXT
        or len(finding) > MAX_TEXT
        or len(source) > MAX_TEXT
        or len(at_text) > 64
        or CONTROL_CHARACTERS.search(message_id + study + finding + source + at_text)
    ):
        return None
    message_id, study, finding, source = (
        message_id.strip(),
        study.strip(),
        finding.strip(),
        source.strip(),
    )
    if not (message_id and study and finding) or source not in DIAGNOSIS_SOURCES:
        return None
    if known_findings is not None and finding not in known_findings:
        return None
    at = _plain_time(at_text, bounds)
    if at is None:
        return None
    return DiagnosisEvent(message_id, study, finding, present, source, at, position)


# ---- the reference validators (every reason comes from here) --------------------------


def _prediction(
    obj: dict[str, Any],
    position: SourcePosition | None,
    bounds: TimeBounds | None,
    known_findings: Collection[str] | None,
) -> PredictionEvent:
    fast = _prediction_fast(obj, position, bounds, known_findings)
    if fast is not None:
        return fast
    return _prediction_checked(obj, position, bounds, known_findings)


def _diagnosis(
    obj: dict[str, Any],
    position: SourcePosition | None,
    bounds: TimeBounds | None,
    known_findings: Collection[str] | None,
) -> DiagnosisEvent:
    fast = _diagnosis_fast(obj, position, bounds, known_findings)
    if fast is not None:
        return fast
    return _diagnosis_checked(obj, position, bounds, known_findings)


def _prediction_checked(
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


def _diagnosis_checked(
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
        # iter_lines, inlined for the common line (issue 11): no Line object per line
        readline = handle.readline
        limit = max_bytes + 1
        number = 0
        while True:
            chunk = readline(limit)
            if not chunk:
                return
            number += 1
            if chunk[-1:] == b"\n":
                data = chunk[:-1]
                if data[-1:] == b"\r":
                    data = data[:-1]
            elif len(chunk) <= max_bytes:
                data = chunk.removesuffix(b"\r")
            else:  # longer than the limit: skip the rest of the line, never buffered
                while True:
                    rest = readline(1 << 16)
                    if not rest or rest.endswith(b"\n"):
                        break
                data = chunk.removeprefix(UTF8_BOM) if number == 1 else chunk
                yield RawRecord(data, SourcePosition("file", locator, None, number))
                continue
            if number == 1:
                data = data.removeprefix(UTF8_BOM)
            if data.strip():
                yield RawRecord(data, SourcePosition("file", locator, None, number))


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
