"""Clinician-confirmed diagnoses from files: CSV exports and FHIR R4 DiagnosticReports.

Both readers turn a file into :class:`~surveillance.ingest.RawRecord` items of kind
``"diagnosis"`` whose ``data`` is a small JSON object holding *only* the diagnosis
fields of the ``imaging.diagnoses`` topic contract (message_id, study_instance_uid,
finding, present, source, confirmed_at). Nothing else from the file (patient
references, names, free-text conclusions, extra CSV columns) is ever put into a
record, so neither an event nor a dead-letter payload can carry it. Each record
then parses into exactly one :class:`~connectors.events.DiagnosisEvent`, which is
what :meth:`surveillance.ingest.Ingestor.ingest_raw` expects.

Why FHIR rather than HL7 v2 ORU for the clinical feed: a radiology department's
RIS/EHR today exposes its reports through a FHIR R4 API (or bulk export), and a
``DiagnosticReport`` carries what we need natively: the link to the DICOM study
(``imagingStudy`` -> ``ImagingStudy.identifier`` with system ``urn:dicom:uid``), coded
conclusions (``conclusionCode``, SNOMED CT) and a report status that says whether
the report is final. An HL7 v2 ORU^R01 feed would need an MLLP listener and
site-specific OBX parsing (the Study Instance UID sits in a local OBX or ZDS
segment, conclusions are usually free text); it is left as future work.

CSV (one diagnosis per row, header row required; extra columns are ignored)::

    message_id,study_instance_uid,finding,present,source,confirmed_at
    ,1.2.840.1.2,pneumothorax,yes,report,2026-08-20T09:00:00+02:00

``message_id`` is optional (column or cell may be missing/empty): the default is
``csv:`` + a SHA-256 of the file name and the row's diagnosis fields, so
re-importing a file is idempotent. ``present`` accepts true/false/1/0/yes/no (any
case); ``source`` is pathology|consensus|report|follow-up; ``confirmed_at`` is
ISO-8601 with a time zone. A row's position is the file and its first line number.

FHIR R4 (``.json``: one DiagnosticReport, or a Bundle of any type; ``.ndjson``: one
resource per line, as a bulk export writes them). What is accepted:

* ``status`` final, amended, corrected or appended; any other status is dead-lettered
  ("report status preliminary is not a confirmed diagnosis").
* The study: each ``imagingStudy`` reference is resolved to an ImagingStudy, either
  ``#id`` (a contained resource of the report), a relative ``ImagingStudy/<id>`` or
  a ``fullUrl`` (``urn:uuid:...``, absolute URL) of a resource in the same Bundle or
  NDJSON file, or a logical reference whose own ``identifier`` is the UID. The UID
  is the ``identifier`` with system ``urn:dicom:uid`` and value ``urn:oid:<uid>``.
  No UID, or more than one distinct UID, is dead-lettered. In a bulk export
  ImagingStudy resources sit in their own file: concatenate it with the
  DiagnosticReport file (``cat ImagingStudy.ndjson DiagnosticReport.ndjson``).
* Findings: ``conclusionCode[].coding[]`` matched through a code table. A key
  ``"<code>"`` means a SNOMED CT code (system ``http://snomed.info/sct``); a key
  ``"<system>|<code>"`` names any other system. Codings without a system never match.
  For every finding in the table: present if one of its codes is in
  ``conclusionCode``, absent otherwise. A report with no ``conclusionCode`` coding
  at all is dead-lettered: an uncoded report cannot say what is absent.
  (FHIR has no standard way to code a negated finding, hence this rule.)
* ``confirmed_at`` is ``issued`` (an instant with a time zone); ``source`` is
  ``report``; ``message_id`` is ``fhir:`` + a hash of (report id, issued) + ``:`` +
  finding, so an amended report (a new ``issued``) is a new diagnosis and the latest
  confirmation wins, while re-importing the same version is idempotent. The report
  id is ``Resource.id``, else the Bundle entry's ``fullUrl``, else its first
  ``identifier``; it is hashed (keyed, when a ``report_key`` is given) because sites
  sometimes use accession numbers as ids.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connectors.events import DiagnosisEvent, SourcePosition
from connectors.records import parse_record, parse_timestamp
from surveillance.errors import InvalidRecord, UsageError
from surveillance.ingest import RawRecord

SNOMED_CT = "http://snomed.info/sct"
DICOM_UID_SYSTEM = "urn:dicom:uid"
DEFAULT_FINDING_CODES: Mapping[str, str] = {"36118008": "pneumothorax"}
"""Code -> finding: SNOMED CT 36118008 |Pneumothorax (disorder)|."""

CSV_COLUMNS = ("message_id", "study_instance_uid", "finding", "present", "source", "confirmed_at")
REQUIRED_CSV_COLUMNS = CSV_COLUMNS[1:]
CONFIRMED_STATUSES = frozenset({"final", "amended", "corrected", "appended"})
_KNOWN_STATUSES = CONFIRMED_STATUSES | {
    "registered",
    "partial",
    "preliminary",
    "cancelled",
    "entered-in-error",
    "unknown",
}
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
MAX_FILE_BYTES = 256 << 20  # a Bundle is read whole; a bigger file should be NDJSON
_INVALID = "_invalid"  # key in a record's data carrying why the report was rejected

# ---- CSV ------------------------------------------------------------------------------


def _open_text(path: Path) -> Any:
    try:
        return path.open("r", encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc


def csv_records(path: Path) -> Iterator[RawRecord]:
    """One ``diagnosis`` record per non-empty CSV row (the header row is required).

    A header without the required columns is a usage error (the whole file is
    unusable); a row with a missing value is still yielded and fails in
    :func:`parse_csv_row`, so it becomes a dead letter with its line number.
    """
    locator = str(path.resolve())
    with _open_text(path) as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
            if header is None:
                raise UsageError(f"{path} is empty; a CSV label file needs a header row")
            names = [h.strip().lower() for h in header]
            missing = [c for c in REQUIRED_CSV_COLUMNS if c not in names]
            if missing:
                raise UsageError(
                    f"{path}: header lacks column(s) {', '.join(missing)}; "
                    f"expected {','.join(CSV_COLUMNS)} (message_id optional)"
                )
            index = {c: names.index(c) for c in CSV_COLUMNS if c in names}
            previous_end = reader.line_num
            for row in reader:
                line = previous_end + 1
                previous_end = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                yield RawRecord(
                    _csv_row_json(path.name, row, index, len(names)),
                    SourcePosition("file", locator, None, line),
                    "diagnosis",
                )
        except UnicodeDecodeError as exc:
            raise UsageError(
                f"{path} is not UTF-8 near line {reader.line_num + 1}; save it as UTF-8"
            ) from exc
        except csv.Error as exc:
            raise UsageError(f"{path} line {reader.line_num}: not valid CSV ({exc})") from exc


def _csv_row_json(file_name: str, row: list[str], index: dict[str, int], width: int) -> bytes:
    obj: dict[str, Any] = {}
    for column, i in index.items():
        cell = row[i].strip() if i < len(row) else ""
        if cell:
            obj[column] = cell
    present = obj.get("present")
    if isinstance(present, str):
        lowered = present.lower()
        obj["present"] = True if lowered in _TRUE else False if lowered in _FALSE else present
    if "message_id" not in obj:
        canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(f"{file_name}\x1f{canonical}".encode()).hexdigest()
        obj["message_id"] = "csv:" + digest[:40]
    if len(row) > width:
        obj[_INVALID] = f"row has {len(row)} cells but the header has {width} columns"
    return json.dumps(obj, separators=(",", ":")).encode()


def parse_csv_row(raw: RawRecord) -> DiagnosisEvent:
    """Validate one record from :func:`csv_records` (raises InvalidRecord)."""
    obj = _load(raw)
    present = obj.get("present")
    if isinstance(present, str):
        raise InvalidRecord(
            f"column 'present' is {present[:32]!r}; expected true/false, 1/0 or yes/no"
        )
    return _diagnosis(obj, raw.position)


# ---- FHIR -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Located:
    resource: dict[str, Any]
    full_url: str | None
    position: SourcePosition


def fhir_records(
    path: Path,
    finding_codes: Mapping[str, str] = DEFAULT_FINDING_CODES,
    *,
    report_key: Callable[[str], str] | None = None,
) -> Iterator[RawRecord]:
    """One ``diagnosis`` record per (DiagnosticReport, finding in ``finding_codes``).

    A report that cannot give confirmed diagnoses yields one record that fails in
    :func:`parse_fhir_record` with the reason (never any text of the report).
    ``report_key`` turns a report id into the hex digest used in message ids
    (pass a keyed HMAC; the default is an unkeyed SHA-256).
    """
    if not finding_codes:
        raise UsageError("the finding-code table is empty; give at least one code -> finding")
    locator = str(path.resolve())
    resources = list(_read_fhir(path, locator))
    index = _index(resources)
    for item in resources:
        if item.resource.get("resourceType") != "DiagnosticReport":
            continue
        try:
            rows = _report_rows(item, index, finding_codes, report_key)
        except _Rejected as exc:
            rows = [exc.row]
        except InvalidRecord as exc:
            rows = [{_INVALID: exc.reason}]
        for row in rows:
            data = json.dumps(row, separators=(",", ":")).encode()
            yield RawRecord(data, item.position, "diagnosis")


def parse_fhir_record(raw: RawRecord) -> DiagnosisEvent:
    """Validate one record from :func:`fhir_records` (raises InvalidRecord)."""
    return _diagnosis(_load(raw), raw.position)


def parse_fhir_report(
    report: Mapping[str, Any],
    finding_codes: Mapping[str, str] = DEFAULT_FINDING_CODES,
    *,
    resources: Iterable[Mapping[str, Any]] = (),
    position: SourcePosition | None = None,
) -> list[DiagnosisEvent]:
    """The diagnoses of one DiagnosticReport resource; ``resources`` resolve references."""
    pos = position or SourcePosition("fhir", "DiagnosticReport")
    others = [_Located(dict(r), None, pos) for r in resources]
    item = _Located(dict(report), None, pos)
    rows = _report_rows(item, _index([item, *others]), finding_codes, None)
    return [_diagnosis(row, pos) for row in rows]


def _read_fhir(path: Path, locator: str) -> Iterator[_Located]:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
    if path.suffix.lower() == ".ndjson":
        yield from _read_ndjson(path, locator)
        return
    if size > MAX_FILE_BYTES:
        raise UsageError(f"{path} is {size} bytes (limit {MAX_FILE_BYTES}); export it as NDJSON")
    try:
        obj = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} is not valid JSON: {exc}") from exc
    kind = obj.get("resourceType") if isinstance(obj, dict) else None
    if kind == "DiagnosticReport":
        yield _Located(obj, None, SourcePosition("file", locator))
    elif kind == "Bundle":
        for number, entry in enumerate(obj.get("entry") or [], start=1):
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(resource, dict):
                full_url = entry.get("fullUrl")
                yield _Located(
                    resource,
                    full_url if isinstance(full_url, str) else None,
                    SourcePosition("file", f"{locator}#entry[{number}]"),
                )
    else:
        raise UsageError(
            f"{path} holds neither a FHIR DiagnosticReport nor a Bundle "
            "(expected resourceType DiagnosticReport or Bundle)"
        )


def _read_ndjson(path: Path, locator: str) -> Iterator[_Located]:
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            position = SourcePosition("file", locator, None, number)
            try:
                obj = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                obj = None
            if not isinstance(obj, dict):
                # a broken line becomes a dead letter, as in JSONL event files
                obj = {"resourceType": "DiagnosticReport", _INVALID: "line is not a JSON object"}
            yield _Located(obj, None, position)


def _index(items: Iterable[_Located]) -> dict[str, dict[str, Any]]:
    """ImagingStudy resources by ``ImagingStudy/<id>`` and by ``fullUrl``."""
    found: dict[str, dict[str, Any]] = {}
    for item in items:
        resource = item.resource
        if resource.get("resourceType") != "ImagingStudy":
            continue
        if isinstance(resource.get("id"), str):
            found[f"ImagingStudy/{resource['id']}"] = resource
        if item.full_url:
            found[item.full_url] = resource
    return found


def _report_rows(
    item: _Located,
    index: Mapping[str, dict[str, Any]],
    finding_codes: Mapping[str, str],
    report_key: Callable[[str], str] | None,
) -> list[dict[str, Any]]:
    report = item.resource
    if _INVALID in report:
        raise InvalidRecord(str(report[_INVALID]))
    partial: dict[str, Any] = {}
    try:
        status = report.get("status")
        if status not in CONFIRMED_STATUSES:
            shown = status if status in _KNOWN_STATUSES else "missing or unrecognised"
            with contextlib.suppress(InvalidRecord):  # name the study in the dead letter
                partial["study_instance_uid"] = _study_uid(report, index)
            raise InvalidRecord(f"report status {shown} is not a confirmed diagnosis")
        partial["study_instance_uid"] = _study_uid(report, index)
        issued = report.get("issued")
        if issued is None:
            raise InvalidRecord("report has no 'issued' time, so no confirmation time")
        confirmed = parse_timestamp(issued, "issued")
        partial["confirmed_at"] = confirmed.isoformat()
        partial["source"] = "report"
        codes = _conclusion_codes(report)
        if not codes:
            raise InvalidRecord(
                "report has no conclusionCode coding; an uncoded report cannot say "
                "which findings are absent"
            )
        findings = _findings(codes, finding_codes)
        report_id = _report_id(report, item.full_url)
        digest = (report_key or _sha256)(f"{report_id}|{partial['confirmed_at']}")
        return [
            {
                **partial,
                "message_id": f"fhir:{digest[:40]}:{finding}",
                "finding": finding,
                "present": present,
            }
            for finding, present in sorted(findings.items())
        ]
    except InvalidRecord as exc:
        partial[_INVALID] = exc.reason
        raise _Rejected(partial) from exc


class _Rejected(InvalidRecord):
    """A rejected report plus what could be read (for the sanitised dead letter)."""

    def __init__(self, row: dict[str, Any]) -> None:
        super().__init__(str(row[_INVALID]))
        self.row = row


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _study_uid(report: Mapping[str, Any], index: Mapping[str, dict[str, Any]]) -> str:
    references = report.get("imagingStudy") or []
    if not isinstance(references, list) or not references:
        raise InvalidRecord("report has no imagingStudy reference, so no StudyInstanceUID")
    contained = {
        f"#{r['id']}": r
        for r in report.get("contained") or []
        if isinstance(r, dict) and r.get("resourceType") == "ImagingStudy" and "id" in r
    }
    uids: set[str] = set()
    for reference in references:
        if not isinstance(reference, dict):
            continue
        uid = _dicom_uid(reference.get("identifier"))
        target = reference.get("reference")
        if uid is None and isinstance(target, str):
            study = contained.get(target) or index.get(target)
            if study is None and "/ImagingStudy/" in target:  # absolute URL, relative in file
                study = index.get("ImagingStudy/" + target.rsplit("/ImagingStudy/", 1)[1])
            if study is not None:
                uid = _first_uid(study.get("identifier"))
        if uid is not None:
            uids.add(uid)
    if not uids:
        raise InvalidRecord(
            "no imagingStudy reference resolves to an ImagingStudy identifier with system "
            f"{DICOM_UID_SYSTEM} (contained, in the same Bundle/file, or on the reference)"
        )
    if len(uids) > 1:
        raise InvalidRecord(
            f"report references {len(uids)} different studies; cannot tell which one "
            "its conclusion belongs to"
        )
    return uids.pop()


def _first_uid(identifiers: Any) -> str | None:
    if isinstance(identifiers, dict):
        identifiers = [identifiers]
    for identifier in identifiers if isinstance(identifiers, list) else []:
        uid = _dicom_uid(identifier)
        if uid is not None:
            return uid
    return None


def _dicom_uid(identifier: Any) -> str | None:
    if not isinstance(identifier, dict) or identifier.get("system") != DICOM_UID_SYSTEM:
        return None
    value = identifier.get("value")
    if not isinstance(value, str):
        return None
    uid = value.removeprefix("urn:oid:")
    if len(uid) > 64 or not _UID.match(uid):
        raise InvalidRecord(f"ImagingStudy identifier ({DICOM_UID_SYSTEM}) is not a DICOM UID")
    return uid


def _conclusion_codes(report: Mapping[str, Any]) -> set[str]:
    """``system|code`` of every conclusionCode coding."""
    codes: set[str] = set()
    for concept in report.get("conclusionCode") or []:
        codings = concept.get("coding") if isinstance(concept, dict) else None
        for coding in codings if isinstance(codings, list) else []:
            if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                codes.add(f"{coding.get('system')}|{coding['code']}")
    return codes


def _findings(codes: set[str], finding_codes: Mapping[str, str]) -> dict[str, bool]:
    findings: dict[str, bool] = {}
    for key, finding in finding_codes.items():
        qualified = key if "|" in key else f"{SNOMED_CT}|{key}"
        findings[finding] = findings.get(finding, False) or qualified in codes
    return findings


def _report_id(report: Mapping[str, Any], full_url: str | None) -> str:
    if isinstance(report.get("id"), str) and report["id"]:
        return f"DiagnosticReport/{report['id']}"
    if full_url:
        return full_url
    identifiers = report.get("identifier")
    if isinstance(identifiers, list) and identifiers and isinstance(identifiers[0], dict):
        first = identifiers[0]
        if isinstance(first.get("value"), str):
            return f"identifier:{first.get('system')}|{first['value']}"
    raise InvalidRecord("report has no id, fullUrl or identifier to tell its versions apart")


# ---- shared ---------------------------------------------------------------------------


def _load(raw: RawRecord) -> dict[str, Any]:
    try:
        obj = json.loads(raw.data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRecord(f"not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise InvalidRecord("a diagnosis record must be a JSON object")
    if _INVALID in obj:
        raise InvalidRecord(str(obj[_INVALID]))
    return obj


def _diagnosis(obj: Mapping[str, Any], position: SourcePosition | None) -> DiagnosisEvent:
    event = parse_record("diagnosis", dict(obj), position)
    assert isinstance(event, DiagnosisEvent)
    return event


__all__ = [
    "CONFIRMED_STATUSES",
    "CSV_COLUMNS",
    "DEFAULT_FINDING_CODES",
    "DICOM_UID_SYSTEM",
    "SNOMED_CT",
    "csv_records",
    "fhir_records",
    "parse_csv_row",
    "parse_fhir_record",
    "parse_fhir_report",
]
