"""Typed events: what every connector emits and what ``surveillance.intake.ingest`` consumes.

Events hold raw identifiers (StudyInstanceUID, PatientID, ...) in memory only;
the ingest layer replaces them with keyed-HMAC pseudonyms before anything is
written. Each event carries its :class:`SourcePosition` so the store can commit
the position together with the rows in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Literal

DiagnosisSource = Literal["pathology", "consensus", "report", "follow-up"]
DIAGNOSIS_SOURCES: tuple[str, ...] = ("pathology", "consensus", "report", "follow-up")
EventKind = Literal["prediction", "dicom-metadata", "diagnosis"]
EVENT_KINDS: tuple[str, ...] = ("prediction", "dicom-metadata", "diagnosis")


@dataclass(frozen=True, slots=True)
class SourcePosition:
    """Where a record came from.

    ``source`` is ``kafka``, ``file``, ``dicom`` or ``synthetic``; ``locator`` is
    the topic, the file path on the local disk (never built from a DICOM value),
    or the association; ``partition``/``offset`` are the Kafka partition and
    offset, or ``None`` and the line number for files.
    """

    source: str
    locator: str
    partition: int | None = None
    offset: int | None = None

    def describe(self) -> str:
        parts = [self.source, self.locator]
        if self.partition is not None:
            parts.append(f"partition {self.partition}")
        if self.offset is not None:
            parts.append(f"{'offset' if self.source == 'kafka' else 'line'} {self.offset}")
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class RawRecord:
    """A record as read from its source, before validation."""

    data: bytes
    position: SourcePosition
    kind: str | None = None  # None for JSONL lines, which carry their own "kind"


@dataclass(frozen=True, slots=True)
class PredictionEvent:
    """One model inference on one study: a score in [0, 1] per finding."""

    message_id: str
    model: str
    model_version: str
    study_instance_uid: str
    outputs: dict[str, float]
    predicted_at: datetime
    position: SourcePosition | None = None
    kind: Literal["prediction"] = field(default="prediction", init=False)


@dataclass(frozen=True, slots=True)
class DicomMetadataEvent:
    """The allow-listed header of one study (see DESIGN.md, Privacy).

    Identifier fields are raw here and pseudonymised at ingest; everything else
    is already reduced to what may be stored (sex, an age band, device and
    acquisition fields). Names, birth dates and free text never get this far.
    """

    study_instance_uid: str
    patient_id: str | None = None
    accession_number: str | None = None
    station_name: str | None = None
    institution_name: str | None = None
    modality: str | None = None
    study_date: date | None = None
    manufacturer: str | None = None
    manufacturer_model_name: str | None = None
    software_versions: str | None = None
    convolution_kernel: str | None = None
    slice_thickness: float | None = None
    kvp: float | None = None
    pixel_spacing: float | None = None
    magnetic_field_strength: float | None = None
    body_part_examined: str | None = None
    view_position: str | None = None
    patient_sex: str | None = None
    age_band: str | None = None
    position: SourcePosition | None = None
    kind: Literal["dicom-metadata"] = field(default="dicom-metadata", init=False)


@dataclass(frozen=True, slots=True)
class DiagnosisEvent:
    """A clinician-confirmed ground truth for one finding of one study."""

    message_id: str
    study_instance_uid: str
    finding: str
    present: bool
    source: str
    confirmed_at: datetime
    position: SourcePosition | None = None
    kind: Literal["diagnosis"] = field(default="diagnosis", init=False)


Event = PredictionEvent | DicomMetadataEvent | DiagnosisEvent

__all__ = [
    "DIAGNOSIS_SOURCES",
    "EVENT_KINDS",
    "DiagnosisEvent",
    "DicomMetadataEvent",
    "Event",
    "EventKind",
    "PredictionEvent",
    "RawRecord",
    "SourcePosition",
]
