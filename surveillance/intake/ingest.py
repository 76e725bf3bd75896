"""Events in, pseudonymised rows out: the one path every connector feeds.

``Ingestor`` validates events against the registered models, replaces every
identifier by its keyed-HMAC pseudonym, and writes batches through
:meth:`Store.write_batch` (idempotent on message ids). A record that cannot be
accepted becomes a dead letter with its reason and source position; the rest of
the stream goes on.

Dead-letter payloads are sanitised before they are stored: identifiers become
``"pseudonym:<hex>"`` strings (which the ingest path accepts as already
pseudonymised, so a fixed record can be replayed), DICOM headers keep only the
allow-listed attributes, and a payload that is not JSON at all is kept only as
its SHA-256 and size (the original stays at its source position).

Hostile input (issue 12): every record-level failure is a dead letter with a
reason, never a file- or batch-level failure. JSONL lines are read as bytes
(strict UTF-8, a leading BOM accepted, at most 1 MiB and 32 JSON levels per
record; :mod:`connectors.untrusted`); NUL and other control characters are
refused before the database, so PostgreSQL and SQLite behave the same; event
times must lie within ``[intake] not_before .. now + max_ahead_hours``; once a
model is registered, a diagnosis (or prediction output) for a finding that no
registered model has is dead-lettered. An unexpected exception while parsing
one record (a bug, a library's surprise) dead-letters that record with the
exception's type, logs it once, and the stream goes on.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

from pydicom.datadict import tag_for_keyword

from connectors.dicom_header import ALLOWED_KEYWORDS, IDENTIFIER_KEYWORDS
from connectors.records import (
    DEFAULT_TIME_BOUNDS,
    MAX_RECORD_BYTES,
    TimeBounds,
    parse_jsonl_line,
    read_jsonl_records,
)
from connectors.untrusted import decode_json
from surveillance.core.errors import InvalidRecord
from surveillance.core.events import (
    EVENT_KINDS,
    DiagnosisEvent,
    DicomMetadataEvent,
    Event,
    PredictionEvent,
    RawRecord,
)
from surveillance.intake.pseudonym import Pseudonymizer
from surveillance.store import IngestBatch, IngestCounts, ModelInfo, Store
from surveillance.store.domain import (
    DeadLetterRecord,
    DiagnosisRecord,
    OffsetRecord,
    PredictionRecord,
    StudyMetadataRecord,
)

LOG = logging.getLogger(__name__)

PSEUDONYM_PREFIX = "pseudonym:"
MAX_LINE_BYTES = MAX_RECORD_BYTES  # one JSONL event; a DICOM JSON header is far smaller
UNKNOWN = "(unknown)"

_IDENTIFIER_KIND = {
    "StudyInstanceUID": "study",
    "PatientID": "patient",
    "AccessionNumber": "accession",
    "StationName": "station",
    "InstitutionName": "institution",
}
_TAG_HEX = {kw: f"{tag_for_keyword(kw):08X}" for kw in (*ALLOWED_KEYWORDS, *IDENTIFIER_KEYWORDS)}
_KEEP_TAGS = {_TAG_HEX[kw] for kw in ALLOWED_KEYWORDS} | {f"{tag_for_keyword('PatientAge'):08X}"}
_ID_TAGS = {_TAG_HEX[kw]: _IDENTIFIER_KIND[kw] for kw in IDENTIFIER_KEYWORDS}


class _BatchWriter:
    """Writes sealed batches in order; pipelined, one batch at a time on a helper thread.

    ``submit`` first collects the batch in flight (its counts, or its error),
    then hands the next one to the thread and returns, so the caller parses
    while PostgreSQL works (the wait on the server releases the GIL). A
    ``last`` batch is written on the caller's thread, and the thread is only
    started for a second batch: a one-batch call (a Kafka poll) costs no thread.
    """

    def __init__(
        self,
        write: Callable[[IngestBatch], IngestCounts],
        *,
        pipelined: bool,
        progress: Callable[[int], None] | None,
    ) -> None:
        self._write = write
        self._pipelined = pipelined
        self._progress = progress
        self._executor: ThreadPoolExecutor | None = None
        self._inflight: tuple[Future[IngestCounts], int] | None = None
        self.totals = IngestCounts()

    def submit(self, batch: IngestBatch | None, records: int, *, last: bool = False) -> None:
        """Write ``batch`` (None: nothing to write), which covers ``records`` records."""
        self._collect()
        if batch is None:
            self._done(IngestCounts(), records)
        elif last or not self._pipelined:
            self._done(self._write(batch), records)
        else:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="ingest-writer")
            self._inflight = (self._executor.submit(self._write, batch), records)

    def _collect(self) -> None:
        if self._inflight is not None:
            future, records = self._inflight
            self._inflight = None
            self._done(future.result(), records)  # re-raises the write's error

    def _done(self, counts: IngestCounts, records: int) -> None:
        self.totals += counts
        if self._progress is not None and records:
            self._progress(records)

    def finish(self) -> IngestCounts:
        self._collect()
        return self.totals

    def close(self) -> None:
        """Let a write in flight end (on an error elsewhere), then stop the thread."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


class Ingestor:
    """Validates, pseudonymises and writes events in batches."""

    def __init__(
        self,
        store: Store,
        pseudonymizer: Pseudonymizer,
        batch_size: int = 2000,
        *,
        bounds: TimeBounds = DEFAULT_TIME_BOUNDS,
        uncoded_as_absent: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"'batch_size' must be >= 1, got {batch_size}")
        self.store = store
        self.pseudo = pseudonymizer
        self.batch_size = batch_size
        self.bounds = bounds
        self.uncoded_as_absent = uncoded_as_absent
        self.models: dict[str, ModelInfo] = {}
        self._unexpected_logged: set[str] = set()
        #: Write a full batch on a helper thread while the next is parsed (PostgreSQL,
        #: where the write waits on the server; SQLite writes in-process, so no gain).
        self.pipelined = store.engine.dialect.name == "postgresql"
        self.refresh_models()

    @classmethod
    def for_settings(cls, store: Store, pseudonymizer: Pseudonymizer, settings: Any) -> Ingestor:
        """An ingestor with the ``[intake]`` limits of ``settings`` (a core Settings)."""
        return cls(
            store,
            pseudonymizer,
            bounds=bounds_from_settings(settings),
            uncoded_as_absent=settings.intake.uncoded_reports_absent,
        )

    def refresh_models(self) -> None:
        self.models = {m.name: m for m in self.store.registry.models()}
        self._known_findings = (
            frozenset(f for m in self.models.values() for f in m.findings) if self.models else None
        )

    @property
    def known_findings(self) -> frozenset[str] | None:
        """Findings of the registered models; None (no check) while none is registered.

        Computed once per :meth:`refresh_models`, not per record (the Kafka hot path).
        """
        return self._known_findings

    # ---- identifiers --------------------------------------------------------------

    def pseudonym(self, kind: str, value: str) -> str:
        """HMAC pseudonym of ``value``; values already pseudonymised pass through."""
        if value.startswith(PSEUDONYM_PREFIX):
            digest = value[len(PSEUDONYM_PREFIX) :]
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise InvalidRecord(f"{kind} pseudonym {value!r} is not 64 lowercase hex digits")
            return digest
        return self.pseudo(kind, value)

    def _repeated(self, kind: str, value: str) -> str:
        """:meth:`pseudonym` of a value that repeats on most records (a site, a station)."""
        if value.startswith(PSEUDONYM_PREFIX):
            return self.pseudonym(kind, value)
        return self.pseudo.repeated(kind, value)

    def _optional(self, kind: str, value: str | None) -> str | None:
        return None if value is None else self.pseudonym(kind, value)

    # ---- events -> records ----------------------------------------------------------

    def add(self, event: Event, batch: IngestBatch) -> None:
        """Validate ``event`` and append its records to ``batch`` (or raise InvalidRecord)."""
        if isinstance(event, PredictionEvent):
            self._add_prediction(event, batch)
        elif isinstance(event, DiagnosisEvent):
            batch.diagnoses.append(
                DiagnosisRecord(
                    message_id=event.message_id,
                    study_uid_pseudonym=self.pseudonym("study", event.study_instance_uid),
                    finding=event.finding,
                    present=event.present,
                    source=event.source,
                    confirmed_at=event.confirmed_at,
                    position=event.position,
                )
            )
        else:
            batch.metadata.append(self._metadata(event))

    def _add_prediction(self, event: PredictionEvent, batch: IngestBatch) -> None:
        model = self.models.get(event.model)
        if model is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise InvalidRecord(
                f"unknown model {event.model!r} (registered: {known}); "
                "register it with 'surveillance models load', then replay"
            )
        findings = model.findings
        for finding in event.outputs:
            if finding not in findings:
                unknown = sorted(set(event.outputs) - set(findings))
                raise InvalidRecord(
                    f"model {model.name!r} has no finding {unknown[0]!r} "
                    f"(its findings: {', '.join(sorted(findings))})"
                )
        study = self.pseudonym("study", event.study_instance_uid)
        append = batch.predictions.append
        for finding, score in event.outputs.items():
            append(
                PredictionRecord(
                    event.message_id,
                    model.id,
                    event.model_version,
                    study,
                    finding,
                    score,
                    event.predicted_at,
                    event.position,
                )
            )

    def _metadata(self, event: DicomMetadataEvent) -> StudyMetadataRecord:
        studied_at = (
            datetime.combine(event.study_date, time(0), tzinfo=UTC) if event.study_date else None
        )
        return StudyMetadataRecord(
            uid_pseudonym=self.pseudonym("study", event.study_instance_uid),
            patient_pseudonym=self._optional("patient", event.patient_id),
            accession_pseudonym=self._optional("accession", event.accession_number),
            site_pseudonym=self._repeated("institution", event.institution_name or UNKNOWN),
            station_pseudonym=self._repeated("station", event.station_name or UNKNOWN),
            manufacturer=event.manufacturer or UNKNOWN,
            model_name=event.manufacturer_model_name or UNKNOWN,
            studied_at=studied_at,
            modality=event.modality,
            software_versions=event.software_versions,
            convolution_kernel=event.convolution_kernel,
            slice_thickness=event.slice_thickness,
            kvp=event.kvp,
            pixel_spacing=event.pixel_spacing,
            magnetic_field_strength=event.magnetic_field_strength,
            body_part=event.body_part_examined,
            view_position=event.view_position,
            sex=event.patient_sex,
            age_band=event.age_band,
        )

    # ---- dead letters ---------------------------------------------------------------

    def sanitise(self, data: bytes, kind: str | None) -> str | None:
        """A privacy-safe copy of a rejected payload, or None if it is not JSON."""
        obj = _loads(data)
        if not isinstance(obj, dict):
            return None
        kind = str(obj.get("kind", kind)) if kind is None else kind
        if kind not in EVENT_KINDS:
            kind = None  # an unknown "kind" value is not copied into the stored payload
        if kind in ("prediction", "diagnosis"):
            allowed = {
                "prediction": (
                    "message_id",
                    "model",
                    "model_version",
                    "study_instance_uid",
                    "outputs",
                    "predicted_at",
                ),
                "diagnosis": (
                    "message_id",
                    "study_instance_uid",
                    "finding",
                    "present",
                    "source",
                    "confirmed_at",
                ),
            }[kind]
            clean: dict[str, Any] = {k: obj[k] for k in allowed if k in obj}
            uid = clean.get("study_instance_uid")
            if isinstance(uid, str) and uid and not uid.startswith(PSEUDONYM_PREFIX):
                clean["study_instance_uid"] = PSEUDONYM_PREFIX + self.pseudo("study", uid)
            elif uid is not None and not isinstance(uid, str):
                clean["study_instance_uid"] = None
        else:
            clean = {}
            for tag, element in obj.items():
                tag_key = str(tag).upper()
                if tag_key in _KEEP_TAGS:
                    clean[tag_key] = element
                elif tag_key in _ID_TAGS and isinstance(element, dict):
                    values = element.get("Value")
                    if isinstance(values, list) and values and isinstance(values[0], str):
                        pseudo = PSEUDONYM_PREFIX + self.pseudo(_ID_TAGS[tag_key], values[0])
                        clean[tag_key] = {"vr": element.get("vr", "LO"), "Value": [pseudo]}
        if "kind" in obj and kind is not None:
            clean = {"kind": kind, **clean}
        return json.dumps(clean, separators=(",", ":"), default=str)

    def dead_letter(self, raw: RawRecord, reason: str) -> DeadLetterRecord:
        kind = raw.kind
        if kind is None:
            obj = _loads(raw.data)
            kind = str(obj.get("kind"))[:32] if isinstance(obj, dict) and "kind" in obj else None
        if kind not in EVENT_KINDS:  # only a known kind is stored (never a NUL, never PHI)
            kind = None
        return DeadLetterRecord(
            source=raw.position.source,
            locator=raw.position.locator,
            partition=-1 if raw.position.partition is None else raw.position.partition,
            offset=-1 if raw.position.offset is None else raw.position.offset,
            kind=kind,
            reason=reason.replace("\x00", "\\x00")[:2000],
            payload=self.sanitise(raw.data, kind),
            payload_sha256=hashlib.sha256(raw.data).hexdigest(),
            payload_bytes=len(raw.data),
        )

    # ---- streams --------------------------------------------------------------------

    def ingest_raw(
        self,
        records: Iterable[RawRecord],
        parse: Callable[[RawRecord], Event],
        progress: Callable[[int], None] | None = None,
        *,
        consumer_group: str | None = None,
    ) -> IngestCounts:
        """Parse, validate and write ``records`` in batches; bad ones become dead letters.

        With ``consumer_group``, each batch also upserts the next offset of every
        Kafka (topic, partition) it covers, in the same transaction as its rows.
        On PostgreSQL (:attr:`pipelined`) a full batch is written on a helper
        thread while the next one is parsed; batches still commit one at a time
        and in order, and a write error is raised here as before.
        """
        writer = _BatchWriter(
            self.store.events.write_batch, pipelined=self.pipelined, progress=progress
        )
        batch = IngestBatch()
        pending = 0
        next_offsets: dict[tuple[str, int], int] = {}
        batch_size = self.batch_size
        add = self.add

        def sealed() -> IngestBatch:
            if consumer_group is not None:
                batch.offsets.extend(
                    OffsetRecord(consumer_group, topic, partition, offset)
                    for (topic, partition), offset in sorted(next_offsets.items())
                )
                next_offsets.clear()
            return batch

        try:
            for raw in records:
                if consumer_group is not None:
                    position = raw.position
                    if position.partition is not None:
                        key = (position.locator, position.partition)
                        offset = (position.offset or 0) + 1
                        if offset > next_offsets.get(key, 0):
                            next_offsets[key] = offset
                try:
                    if len(raw.data) > MAX_LINE_BYTES:
                        raise InvalidRecord(
                            f"record is larger than the limit of {MAX_LINE_BYTES} bytes"
                        )
                    add(parse(raw), batch)
                except InvalidRecord as exc:
                    batch.dead_letters.append(self.dead_letter(raw, exc.reason))
                except (RecursionError, MemoryError) as exc:
                    batch.dead_letters.append(
                        self.dead_letter(
                            raw, f"record is too large or too deep ({type(exc).__name__})"
                        )
                    )
                except Exception as exc:  # one record must never stop the stream
                    name = type(exc).__name__
                    if name not in self._unexpected_logged:
                        self._unexpected_logged.add(name)
                        LOG.error("unexpected %s while parsing a record; dead-lettered", name)
                    batch.dead_letters.append(
                        self.dead_letter(raw, f"record could not be parsed (unexpected {name})")
                    )
                pending += 1
                if len(batch) >= batch_size:
                    writer.submit(sealed(), pending)
                    batch = IngestBatch()
                    pending = 0
            if len(batch) or next_offsets:
                writer.submit(sealed(), pending, last=True)
            elif pending:
                writer.submit(None, pending, last=True)
            return writer.finish()
        finally:
            writer.close()

    def ingest_events(
        self, events: Iterable[Event], progress: Callable[[int], None] | None = None
    ) -> IngestCounts:
        """Write already-typed events (the synthetic feed), pipelined like :meth:`ingest_raw`."""
        writer = _BatchWriter(
            self.store.events.write_batch, pipelined=self.pipelined, progress=progress
        )
        batch = IngestBatch()
        try:
            for event in events:
                self.add(event, batch)
                if len(batch) >= self.batch_size:
                    writer.submit(batch, len(batch))
                    batch = IngestBatch()
            if len(batch):
                writer.submit(batch, len(batch), last=True)
            return writer.finish()
        finally:
            writer.close()

    def ingest_jsonl(
        self, path: Path, progress: Callable[[int], None] | None = None
    ) -> IngestCounts:
        """One JSONL event file; line numbers are the dead letters' positions."""
        known = self.known_findings
        with collector_spared():
            counts = self.ingest_raw(
                read_jsonl_records(path, max_bytes=MAX_LINE_BYTES),
                lambda raw: parse_jsonl_line(
                    raw.data, raw.position, bounds=self.bounds, known_findings=known
                ),
                progress,
            )
        self.store.audit.record(
            actor="ingest",
            action="ingest.file",
            entity="file",
            entity_id=str(path),
            detail={
                "predictions_new": counts.predictions_new,
                "diagnoses_new": counts.diagnoses_new,
                "metadata": counts.metadata,
                "dead_letters": counts.dead_letters,
                "conflicts": counts.conflicts,
            },
        )
        return counts


@contextmanager
def collector_spared() -> Iterator[None]:
    """Keep the cyclic garbage collector off the objects that exist now, while inside.

    Intake creates and keeps many small objects per batch, so the collector's
    full passes come often; each one walks every live object, the whole of
    SQLAlchemy, pydicom's dictionaries and the rest (~0.2 s a pass on the
    project machine), which cost more than parsing. ``gc.freeze()`` moves what
    lives now out of their way; ``gc.unfreeze()`` on the way out hands it back,
    so nothing stays uncollectable. Reentrant enough: an inner exit only
    unfreezes early (slower, never wrong).
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _loads(data: bytes) -> Any:
    """``data`` as JSON within the record limits, or None (never raises)."""
    try:
        return decode_json(data)
    except (InvalidRecord, ValueError, RecursionError):
        return None


def bounds_from_settings(settings: Any) -> TimeBounds:
    """The plausible-time bounds of ``[intake]`` (not_before, max_ahead_hours)."""
    intake = settings.intake
    return TimeBounds(
        not_before=intake.not_before, max_ahead=timedelta(hours=intake.max_ahead_hours)
    )


def count_lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip())


__all__ = [
    "PSEUDONYM_PREFIX",
    "Ingestor",
    "RawRecord",
    "bounds_from_settings",
    "collector_spared",
    "count_lines",
]
