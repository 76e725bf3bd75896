"""Topic records <-> typed events.

The JSON shapes are the contract in DESIGN.md ("Kafka topics"); JSONL event
files hold the same objects plus a ``"kind"`` field. :func:`parse_record` is the
only place that validates them: every failure raises
:class:`~surveillance.errors.InvalidRecord` with a sentence saying what is wrong,
which the ingest layer stores in the dead-letter table.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

from pydicom import Dataset

from connectors.dicom_header import dataset_to_dicom_json, metadata_from_dicom_json
from connectors.events import (
    DIAGNOSIS_SOURCES,
    EVENT_KINDS,
    DiagnosisEvent,
    DicomMetadataEvent,
    Event,
    PredictionEvent,
    SourcePosition,
)
from surveillance.errors import InvalidRecord

MAX_TEXT = 256  # longest identifier or name accepted in a record field
MAX_OUTPUTS = 64  # most findings one prediction may carry


def _require(obj: dict[str, Any], key: str) -> Any:
    if key not in obj or obj[key] is None:
        raise InvalidRecord(f"missing required field {key!r}")
    return obj[key]


def _text(obj: dict[str, Any], key: str) -> str:
    value = _require(obj, key)
    if not isinstance(value, str) or not value.strip():
        raise InvalidRecord(f"field {key!r} must be a non-empty string")
    if len(value) > MAX_TEXT:
        raise InvalidRecord(f"field {key!r} is longer than {MAX_TEXT} characters")
    return value.strip()


def parse_timestamp(value: Any, key: str) -> datetime:
    """An ISO-8601 timestamp with a time zone, converted to UTC."""
    if not isinstance(value, str):
        raise InvalidRecord(f"field {key!r} must be an ISO-8601 string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidRecord(f"field {key!r} is not ISO-8601: {value!r}") from exc
    if parsed.tzinfo is None:
        raise InvalidRecord(
            f"field {key!r} has no time zone: {value!r} (add 'Z' or an offset like '+01:00')"
        )
    return parsed.astimezone(UTC)


def _prediction(obj: dict[str, Any], position: SourcePosition | None) -> PredictionEvent:
    outputs = _require(obj, "outputs")
    if not isinstance(outputs, dict) or not outputs:
        raise InvalidRecord("field 'outputs' must be a non-empty object {finding: score}")
    if len(outputs) > MAX_OUTPUTS:
        raise InvalidRecord(f"field 'outputs' has more than {MAX_OUTPUTS} findings")
    scores: dict[str, float] = {}
    for finding, score in outputs.items():
        if not isinstance(finding, str) or not finding.strip() or len(finding) > MAX_TEXT:
            raise InvalidRecord(f"finding name {finding!r} must be a short non-empty string")
        if isinstance(score, bool) or not isinstance(score, int | float):
            raise InvalidRecord(f"score for {finding!r} must be a number, got {score!r}")
        if not math.isfinite(score) or not 0.0 <= score <= 1.0:
            raise InvalidRecord(f"score for {finding!r} is {score!r}, outside 0..1")
        scores[finding.strip()] = float(score)
    return PredictionEvent(
        message_id=_text(obj, "message_id"),
        model=_text(obj, "model"),
        model_version=_text(obj, "model_version"),
        study_instance_uid=_text(obj, "study_instance_uid"),
        outputs=scores,
        predicted_at=parse_timestamp(_require(obj, "predicted_at"), "predicted_at"),
        position=position,
    )


def _diagnosis(obj: dict[str, Any], position: SourcePosition | None) -> DiagnosisEvent:
    present = _require(obj, "present")
    if not isinstance(present, bool):
        raise InvalidRecord(f"field 'present' must be true or false, got {present!r}")
    source = _text(obj, "source")
    if source not in DIAGNOSIS_SOURCES:
        raise InvalidRecord(f"field 'source' is {source!r}; expected one of {DIAGNOSIS_SOURCES}")
    return DiagnosisEvent(
        message_id=_text(obj, "message_id"),
        study_instance_uid=_text(obj, "study_instance_uid"),
        finding=_text(obj, "finding"),
        present=present,
        source=source,
        confirmed_at=parse_timestamp(_require(obj, "confirmed_at"), "confirmed_at"),
        position=position,
    )


def parse_record(kind: str, obj: Any, position: SourcePosition | None = None) -> Event:
    """Validate one topic record value (already JSON-decoded) into an event."""
    if kind not in EVENT_KINDS:
        raise InvalidRecord(f"unknown event kind {kind!r}; expected one of {EVENT_KINDS}")
    if not isinstance(obj, dict):
        raise InvalidRecord(f"a {kind} record must be a JSON object")
    if kind == "prediction":
        return _prediction(obj, position)
    if kind == "diagnosis":
        return _diagnosis(obj, position)
    return metadata_from_dicom_json(obj, position)


def parse_json(data: bytes | str, kind: str, position: SourcePosition | None = None) -> Event:
    """Decode and validate one topic record value."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRecord(f"not valid JSON: {exc}") from exc
    return parse_record(kind, obj, position)


def parse_jsonl_line(line: str, position: SourcePosition | None = None) -> Event:
    """One line of a JSONL event file: a record plus its ``"kind"``."""
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise InvalidRecord(f"not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise InvalidRecord("each line must be a JSON object")
    kind = obj.pop("kind", None)
    if kind is None:
        raise InvalidRecord(f"missing field 'kind' (one of {EVENT_KINDS})")
    return parse_record(str(kind), obj, position)


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
    "event_to_jsonl",
    "event_to_record",
    "parse_json",
    "parse_jsonl_line",
    "parse_record",
    "parse_timestamp",
]
