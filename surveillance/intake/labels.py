"""Diagnosis files -> the ingest path: CSV exports and FHIR R4 DiagnosticReports.

The parsing lives in :mod:`connectors.labels`; this module picks the reader by
suffix (``.csv``; ``.json``/``.ndjson`` for FHIR), runs the records through
:meth:`Ingestor.ingest_raw` (bad rows/reports become dead letters with their
position, the rest is written; message ids make re-imports idempotent) and audits
the file like :meth:`Ingestor.ingest_jsonl` does.

Label delay needs nothing special: a diagnosis for a study the store has not
seen yet creates a skeleton study row, which a later prediction or DICOM header
for the same StudyInstanceUID joins (both use the same pseudonym).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from connectors.labels import (
    DEFAULT_FINDING_CODES,
    csv_records,
    fhir_records,
    parse_csv_row,
    parse_fhir_record,
)
from surveillance.core.errors import UsageError
from surveillance.intake.ingest import Ingestor
from surveillance.store import IngestCounts

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
    if fmt == "csv":
        counts = ingestor.ingest_raw(csv_records(path), parse_csv_row, progress)
    else:
        # keyed, so a report id that is really an accession number cannot be guessed back
        records = fhir_records(
            path, finding_codes, report_key=lambda text: ingestor.pseudo("report", text)
        )
        counts = ingestor.ingest_raw(records, parse_fhir_record, progress)
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
        },
    )
    return counts


__all__ = ["LABEL_SUFFIXES", "ingest_label_file", "is_label_file", "label_format"]
