"""Diagnosis files -> the ingest path: CSV exports and FHIR R4 DiagnosticReports.

The parsing lives in :mod:`connectors.labels`; this module picks the reader by
suffix (``.csv``; ``.json``/``.ndjson`` for FHIR), runs the records through
:meth:`Ingestor.ingest_raw` (bad rows/reports become dead letters with their
position, the rest is written; message ids make re-imports idempotent) and audits
the file like :meth:`Ingestor.ingest_jsonl` does.

An ``entered-in-error`` FHIR report withdraws the label an earlier version
gave: the records before it in the file are written first, then every valid
report-sourced diagnosis of its (study, finding) is marked withdrawn
(:meth:`EventsRepository.withdraw_labels`), so a later final report in the same
file confirms a new label. Reports coded only with unknown codes, or uncoded,
are dead-lettered unless ``[intake] uncoded_reports_absent = true``. Once a model
is registered, a diagnosis for a finding no registered model has is a dead
letter ("unknown finding ..."), and so is a finding-code table entry for one.

Label delay needs nothing special: a diagnosis for a study the store has not
seen yet creates a skeleton study row, which a later prediction or DICOM header
for the same StudyInstanceUID joins (both use the same pseudonym).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from connectors.labels import (
    DEFAULT_FINDING_CODES,
    LabelWithdrawal,
    csv_records,
    fhir_records,
    parse_csv_row,
    parse_fhir_record,
)
from surveillance.core.errors import InvalidRecord, UsageError
from surveillance.core.events import Event, RawRecord
from surveillance.intake.ingest import Ingestor
from surveillance.store import IngestBatch, IngestCounts
from surveillance.store.domain import LabelWithdrawalRecord

CSV_SUFFIXES = frozenset({".csv"})
FHIR_SUFFIXES = frozenset({".json", ".ndjson"})
LABEL_SUFFIXES = CSV_SUFFIXES | FHIR_SUFFIXES


def is_label_file(path: Path) -> bool:
    """True for files :func:`ingest_label_file` reads (by suffix, case-insensitive)."""
    return path.suffix.lower() in LABEL_SUFFIXES


def label_format(path: Path) -> str:
    """``"csv"`` or ``"fhir"`` for ``path``; a usage error for anything else."""
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        return "csv"
    if suffix in FHIR_SUFFIXES:
        return "fhir"
    raise UsageError(
        f"{path}: cannot tell the label format from the suffix {suffix or '(none)'!r}; "
        "use .csv for CSV, .json or .ndjson for FHIR R4 DiagnosticReports"
    )


def ingest_label_file(
    ingestor: Ingestor,
    path: Path,
    finding_codes: Mapping[str, str] = DEFAULT_FINDING_CODES,
    progress: Callable[[int], None] | None = None,
) -> IngestCounts:
    """Ingest one CSV or FHIR diagnosis file; returns what was written."""
    fmt = label_format(path)
    known = ingestor.known_findings
    bounds = ingestor.bounds
    withdrawn = 0
    if fmt == "csv":
        counts = ingestor.ingest_raw(
            csv_records(path),
            lambda raw: parse_csv_row(raw, known_findings=known, bounds=bounds),
            progress,
        )
    else:
        if known is not None:  # a code table entry for an unknown finding: drop that entry
            finding_codes = {c: f for c, f in finding_codes.items() if f in known}
            if not finding_codes:
                raise UsageError(
                    "no finding of the FHIR code table belongs to a registered model "
                    f"(registered findings: {', '.join(sorted(known))})"
                )
        # keyed, so a report id that is really an accession number cannot be guessed back
        items = fhir_records(
            path,
            finding_codes,
            report_key=lambda text: ingestor.pseudo("report", text),
            withdrawals=True,
            uncoded_as_absent=ingestor.uncoded_as_absent,
            known_findings=known,
            bounds=bounds,
        )

        def parse(raw: RawRecord) -> Event:
            return parse_fhir_record(raw, known_findings=known, bounds=bounds)

        counts = IngestCounts()
        segment: list[RawRecord] = []
        for item in items:
            if isinstance(item, LabelWithdrawal):
                counts += ingestor.ingest_raw(segment, parse, progress)
                segment = []
                withdrawn += _withdraw(ingestor, item)
            else:
                segment.append(item)
        counts += ingestor.ingest_raw(segment, parse, progress)
    ingestor.store.audit.record(
        actor="ingest",
        action="ingest.labels",
        entity="file",
        entity_id=str(path),
        detail={
            "format": fmt,
            "diagnoses_new": counts.diagnoses_new,
            "diagnoses_duplicate": counts.diagnoses_duplicate,
            "dead_letters": counts.dead_letters,
            "withdrawn": withdrawn,
        },
    )
    return counts


def _withdraw(ingestor: Ingestor, item: LabelWithdrawal) -> int:
    """Apply one withdrawal; an unusable one (bad UID) becomes a dead letter."""
    try:
        study = ingestor.pseudonym("study", item.study_instance_uid)
    except InvalidRecord as exc:
        batch = IngestBatch()
        position = item.position
        assert position is not None
        batch.dead_letters.append(
            ingestor.dead_letter(RawRecord(b"", position, "diagnosis"), exc.reason)
        )
        ingestor.store.events.write_batch(batch)
        return 0
    return ingestor.store.events.withdraw_labels(
        [LabelWithdrawalRecord(study, item.finding, item.report_id)], actor="ingest"
    )


__all__ = ["LABEL_SUFFIXES", "ingest_label_file", "is_label_file", "label_format"]
