"""Clinician-confirmed diagnoses from files: CSV exports and FHIR R4 DiagnosticReports.

Both readers turn a file into :class:`~surveillance.intake.ingest.RawRecord` items of kind
``"diagnosis"`` whose ``data`` is a small JSON object holding *only* the diagnosis
fields of the ``imaging.diagnoses`` topic contract (message_id, study_instance_uid,
finding, present, source, confirmed_at). Nothing else from the file (patient
references, names, free-text conclusions, extra CSV columns) is ever put into a
record, so neither an event nor a dead-letter payload can carry it. Each record
then parses into exactly one :class:`~surveillance.core.events.DiagnosisEvent`, which is
what :meth:`surveillance.intake.ingest.Ingestor.ingest_raw` expects.

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

Hostile CSV: the file is read line by line (each line at most ``max_row_bytes``,
strict UTF-8 per line, a BOM on the header stripped), so no row can stop the
file. A quoted field may span lines (a multi-line note in an ignored column),
but only up to ``max_row_lines`` lines, only if it closes cleanly, no used
column holds a line break and no continuation line looks like a row of its own;
otherwise the row's *first line* is dead-lettered as "unterminated quote" and
reading resumes on the next line, so later good rows still parse (Python's csv
module would silently swallow every following row into the open field). A used
cell with a NUL or other control character is dead-lettered ("column 'finding'
contains a NUL byte"). A header without the required columns, or naming one
twice, is a UsageError (the whole file is unusable).

FHIR R4 (``.json``: one DiagnosticReport, or a Bundle of any type; ``.ndjson``: one
resource per line, as a bulk export writes them). What is accepted:

* ``status`` final, amended, corrected or appended; any other status is dead-lettered
  ("report status preliminary is not a confirmed diagnosis"), except
  ``entered-in-error`` when the reader is asked for withdrawals
  (``fhir_records(..., withdrawals=True)``): such a report says an earlier version
  was wrong, so it yields one :class:`LabelWithdrawal` per finding of the code
  table for its study (the earlier version gave a diagnosis for each of them).
  The consumer withdraws the current report-sourced label of (study, finding).
  Without ``withdrawals=True`` it stays a dead letter, so a consumer that does not
  know withdrawals never sees one.
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
  (FHIR has no standard way to code a negated finding, hence this rule.) Likewise
  a report whose codings are neither in the table nor a "normal" code
  (``normal_codes``, default SNOMED CT 17621005 |Normal|) is dead-lettered ("report
  has no coded finding"): a code we do not know says nothing about our findings.
  Pass ``uncoded_as_absent=True`` to read both kinds as "every finding absent".
* ``known_findings`` (optional, every reader and parser): the finding names the
  store knows; a diagnosis for another one is dead-lettered ("unknown finding
  'x'; known: ..."), and a code table mapping to one is a UsageError.
* ``confirmed_at`` is ``issued`` (an instant with a time zone); ``source`` is
  ``report``; ``message_id`` is ``fhir:`` + a hash of (report id, issued) + ``:`` +
  finding, so an amended report (a new ``issued``) is a new diagnosis and the latest
  confirmation wins, while re-importing the same version is idempotent. The report
  id is ``Resource.id``, else the Bundle entry's ``fullUrl``, else its first
  ``identifier``; it is hashed (keyed, when a ``report_key`` is given) because sites
  sometimes use accession numbers as ids.
* Hostile FHIR: a ``.json`` file is strict UTF-8 JSON nested at most
  :data:`MAX_FHIR_DEPTH` levels, without duplicate keys (else a UsageError: the
  whole file is unusable); an NDJSON line failing the same checks, or longer than
  ``max_line_bytes``, is one dead letter. A Bundle entry that is not a JSON object
  (or whose ``resource`` is not one) is a dead letter at ``#entry[n]``, never
  dropped silently. A string anywhere in a DiagnosticReport with a NUL or another
  control character (tab, CR and LF are allowed: free text) dead-letters the
  report ("field 'conclusionCode[0].coding[0].code' contains a NUL byte").
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import re
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, overload

from connectors.records import DEFAULT_TIME_BOUNDS, TimeBounds, parse_record, parse_timestamp
from connectors.untrusted import (
    UTF8_BOM,
    Line,
    control_character_reason,
    decode_json,
    decode_utf8,
    find_control_characters,
    iter_lines,
)
from surveillance.core.errors import InvalidRecord, UsageError
from surveillance.core.events import DiagnosisEvent, RawRecord, SourcePosition

SNOMED_CT = "http://snomed.info/sct"
DICOM_UID_SYSTEM = "urn:dicom:uid"
DEFAULT_FINDING_CODES: Mapping[str, str] = {"36118008": "pneumothorax"}
"""Code -> finding: SNOMED CT 36118008 |Pneumothorax (disorder)|."""
DEFAULT_NORMAL_CODES: frozenset[str] = frozenset({"17621005"})
"""Codes that explicitly say "nothing found": SNOMED CT 17621005 |Normal (qualifier value)|."""

CSV_COLUMNS = ("message_id", "study_instance_uid", "finding", "present", "source", "confirmed_at")
REQUIRED_CSV_COLUMNS = CSV_COLUMNS[1:]
CONFIRMED_STATUSES = frozenset({"final", "amended", "corrected", "appended"})
WITHDRAWN_STATUS = "entered-in-error"
_KNOWN_STATUSES = CONFIRMED_STATUSES | {
    "registered",
    "partial",
    "preliminary",
    "cancelled",
    WITHDRAWN_STATUS,
    "unknown",
}
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
MAX_FILE_BYTES = 256 << 20  # a Bundle is read whole; a bigger file should be NDJSON
MAX_FHIR_DEPTH = 64  # Bundle > entry > resource > contained > ... > extension
MAX_FHIR_LINE_BYTES = 32 << 20  # one NDJSON resource (a report may embed a PDF)
MAX_CSV_ROW_BYTES = 64 << 10  # one CSV row, all its lines together
MAX_CSV_ROW_LINES = 16  # most physical lines one quoted CSV field may span
_INVALID = "_invalid"  # key in a record's data carrying why the report was rejected


@dataclass(frozen=True, slots=True)
class LabelWithdrawal:
    """An ``entered-in-error`` DiagnosticReport: the label it superseded is void.

    Yielded by :func:`fhir_records` with ``withdrawals=True`` (one per finding of
    the code table). ``study_instance_uid`` is the raw UID (pseudonymise it like a
    DiagnosisEvent's); ``report_id`` is the hashed report id (``report_key``, or
    an unkeyed SHA-256, of ``DiagnosticReport/<id>``, first 40 hex digits), never
    the id itself. The consumer withdraws the current report-sourced diagnosis of
    (study, finding); a later final/amended report confirms a new one.
    """

    study_instance_uid: str
    finding: str
    report_id: str
    position: SourcePosition | None = None
    kind: Literal["label-withdrawal"] = "label-withdrawal"


# ---- CSV ------------------------------------------------------------------------------


def _open_binary(path: Path) -> IO[bytes]:
    try:
        return path.open("rb")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc


_START, _IN_FIELD, _IN_QUOTED, _QUOTE_IN_QUOTED = range(4)


def _scan_quotes(text: str, state: int) -> tuple[int, bool]:
    """The CSV quote state after ``text`` and whether text followed a closing quote.

    ``state`` is where the line starts (``_START``, or ``_IN_QUOTED`` inside an
    open field). Quotes in an unquoted field are literal, as in Python's csv.
    """
    if '"' not in text and state == _START:
        return _START, False
    junk = False
    for char in text:
        if state == _IN_QUOTED:
            if char == '"':
                state = _QUOTE_IN_QUOTED
        elif state == _QUOTE_IN_QUOTED:
            if char == '"':
                state = _IN_QUOTED
            elif char == ",":
                state = _START
            else:
                junk, state = True, _IN_FIELD
        elif char == ",":
            state = _START
        elif state == _START and char == '"':
            state = _IN_QUOTED
        else:
            state = _IN_FIELD
    return (_IN_QUOTED if state == _IN_QUOTED else _START), junk


class _Lines:
    """Physical lines with look-ahead."""

    def __init__(self, lines: Iterator[Line]) -> None:
        self._lines = lines
        self._ahead: deque[Line] = deque()

    def peek(self, index: int) -> Line | None:
        while len(self._ahead) <= index:
            line = next(self._lines, None)
            if line is None:
                return None
            self._ahead.append(line)
        return self._ahead[index]

    def take(self, count: int = 1) -> None:
        for _ in range(count):
            if not self._ahead and self.peek(0) is None:
                return
            self._ahead.popleft()


def csv_records(
    path: Path,
    *,
    max_row_bytes: int = MAX_CSV_ROW_BYTES,
    max_row_lines: int = MAX_CSV_ROW_LINES,
) -> Iterator[RawRecord]:
    """One ``diagnosis`` record per non-empty CSV row (the header row is required).

    A header without the required columns is a usage error (the whole file is
    unusable); a row with a missing value, an unterminated quote, a NUL, invalid
    UTF-8 or more than ``max_row_bytes`` is still yielded and fails in
    :func:`parse_csv_row`, so it becomes a dead letter with its line number.
    """
    locator = str(path.resolve())
    with _open_binary(path) as handle:
        lines = _Lines(iter_lines(handle, max_row_bytes))
        names = _csv_header(path, lines)
        width = len(names)
        index = {c: names.index(c) for c in CSV_COLUMNS if c in names}
        used = sorted(index.values())
        while (first := lines.peek(0)) is not None:
            position = SourcePosition("file", locator, None, first.number)
            count, result = _csv_logical_row(lines, width, used, max_row_bytes, max_row_lines)
            lines.take(count)
            if result is None:
                continue
            if isinstance(result, str):
                data = json.dumps({_INVALID: result}, separators=(",", ":")).encode()
            else:
                data = _csv_row_json(path.name, result, index, width)
            yield RawRecord(data, position, "diagnosis")


def _csv_header(path: Path, lines: _Lines) -> list[str]:
    first = lines.peek(0)
    if first is None:
        raise UsageError(f"{path} is empty; a CSV label file needs a header row")
    if first.too_long:
        raise UsageError(f"{path}: the header row is too long; is this a CSV label file?")
    try:
        text = decode_utf8(first.data.removeprefix(UTF8_BOM))
    except InvalidRecord as exc:
        raise UsageError(
            f"{path} is not UTF-8 near line 1 ({exc.reason}); save it as UTF-8"
        ) from exc
    if _scan_quotes(text, _START)[0] != _START:
        raise UsageError(f"{path} line 1: the header row has an unterminated quote")
    try:
        header = next(csv.reader([text]), [])
    except csv.Error as exc:
        raise UsageError(f"{path} line 1: not valid CSV ({exc})") from exc
    lines.take()
    names = [h.strip().lower() for h in header]
    missing = [c for c in REQUIRED_CSV_COLUMNS if c not in names]
    if missing:
        raise UsageError(
            f"{path}: header lacks column(s) {', '.join(missing)}; "
            f"expected {','.join(CSV_COLUMNS)} (message_id optional)"
        )
    twice = sorted({c for c in CSV_COLUMNS if names.count(c) > 1})
    if twice:
        raise UsageError(f"{path}: header names column(s) {', '.join(twice)} more than once")
    return names


def _decoded(line: Line, max_row_bytes: int) -> str:
    if line.too_long:
        raise InvalidRecord(f"row is longer than {max_row_bytes} bytes")
    return decode_utf8(line.data)


def _csv_logical_row(
    lines: _Lines, width: int, used: list[int], max_row_bytes: int, max_row_lines: int
) -> tuple[int, list[str] | str | None]:
    """(physical lines consumed, the row's cells | a dead-letter reason | None if blank)."""
    first = lines.peek(0)
    assert first is not None
    try:
        text = _decoded(first, max_row_bytes)
    except InvalidRecord as exc:
        return 1, f"row is {exc.reason}" if exc.reason.startswith("not valid") else exc.reason
    if not text.strip():
        return 1, None
    state, _ = _scan_quotes(text, _START)
    if state == _START:
        try:
            return 1, next(csv.reader([text]), [])
        except csv.Error as exc:
            return 1, f"not valid CSV ({exc})"
    # A quoted field runs past the end of the line: gather its continuation lines.
    unterminated = (
        f"unterminated quote: a quoted field opened on line {first.number} is not "
        f"closed cleanly within {max_row_lines} lines"
    )
    parts, size, junk = [text], len(first.data), False
    while state != _START:
        following = lines.peek(len(parts))
        if following is None or len(parts) >= max_row_lines:
            return 1, unterminated
        try:
            more = _decoded(following, max_row_bytes)
        except InvalidRecord:
            return 1, unterminated
        size += len(following.data) + 1
        if size > max_row_bytes or more.count(",") >= max(width - 1, 1):
            return 1, unterminated  # the continuation looks like a row of its own
        state, junk_here = _scan_quotes(more, _IN_QUOTED)
        junk = junk or junk_here
        parts.append(more)
    if junk:
        return 1, unterminated
    try:
        rows = list(csv.reader(["\n".join(parts) + "\n"], strict=True))
    except csv.Error:
        return 1, unterminated
    if len(rows) != 1 or any(i < len(rows[0]) and "\n" in rows[0][i] for i in used):
        return 1, unterminated
    return len(parts), rows[0]


def _csv_row_json(file_name: str, row: list[str], index: dict[str, int], width: int) -> bytes:
    obj: dict[str, Any] = {}
    for column, i in index.items():
        cell = row[i] if i < len(row) else ""
        reason = control_character_reason(cell, column)
        if reason is not None:
            reason = reason.replace("field ", "column ", 1)
            return json.dumps({_INVALID: reason}, separators=(",", ":")).encode()
        cell = cell.strip()
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


def parse_csv_row(
    raw: RawRecord,
    *,
    known_findings: Collection[str] | None = None,
    bounds: TimeBounds | None = None,
) -> DiagnosisEvent:
    """Validate one record from :func:`csv_records` (raises InvalidRecord)."""
    obj = _load(raw)
    present = obj.get("present")
    if isinstance(present, str):
        raise InvalidRecord(
            f"column 'present' is {present[:32]!r}; expected true/false, 1/0 or yes/no"
        )
    return _diagnosis(obj, raw.position, known_findings, bounds)


# ---- FHIR -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Located:
    resource: dict[str, Any]
    full_url: str | None
    position: SourcePosition


@dataclass(frozen=True, slots=True)
class _Options:
    finding_codes: Mapping[str, str]
    report_key: Callable[[str], str] | None
    uncoded_as_absent: bool
    normal_codes: Collection[str]
    bounds: TimeBounds


@overload
def fhir_records(
    path: Path,
    finding_codes: Mapping[str, str] = ...,
    *,
    report_key: Callable[[str], str] | None = ...,
    withdrawals: Literal[False] = ...,
    uncoded_as_absent: bool = ...,
    normal_codes: Collection[str] = ...,
    known_findings: Collection[str] | None = ...,
    bounds: TimeBounds | None = ...,
    max_line_bytes: int = ...,
) -> Iterator[RawRecord]: ...


@overload
def fhir_records(
    path: Path,
    finding_codes: Mapping[str, str] = ...,
    *,
    report_key: Callable[[str], str] | None = ...,
    withdrawals: bool,
    uncoded_as_absent: bool = ...,
    normal_codes: Collection[str] = ...,
    known_findings: Collection[str] | None = ...,
    bounds: TimeBounds | None = ...,
    max_line_bytes: int = ...,
) -> Iterator[RawRecord | LabelWithdrawal]: ...


def fhir_records(
    path: Path,
    finding_codes: Mapping[str, str] = DEFAULT_FINDING_CODES,
    *,
    report_key: Callable[[str], str] | None = None,
    withdrawals: bool = False,
    uncoded_as_absent: bool = False,
    normal_codes: Collection[str] = DEFAULT_NORMAL_CODES,
    known_findings: Collection[str] | None = None,
    bounds: TimeBounds | None = None,
    max_line_bytes: int = MAX_FHIR_LINE_BYTES,
) -> Iterator[RawRecord] | Iterator[RawRecord | LabelWithdrawal]:
    """One ``diagnosis`` record per (DiagnosticReport, finding in ``finding_codes``).

    A report that cannot give confirmed diagnoses yields one record that fails in
    :func:`parse_fhir_record` with the reason (never any text of the report).
    ``report_key`` turns a report id into the hex digest used in message ids
    (pass a keyed HMAC; the default is an unkeyed SHA-256). With
    ``withdrawals=True`` an ``entered-in-error`` report yields
    :class:`LabelWithdrawal` items instead of a dead letter (see the module doc).
    """
    options = _options(finding_codes, report_key, uncoded_as_absent, normal_codes, bounds)
    if known_findings is not None:
        unknown = sorted(set(finding_codes.values()) - set(known_findings))
        if unknown:
            raise UsageError(
                f"the finding-code table maps to unknown finding(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known_findings))}"
            )
    return _fhir_items(path, options, withdrawals, max_line_bytes)


def _options(
    finding_codes: Mapping[str, str],
    report_key: Callable[[str], str] | None,
    uncoded_as_absent: bool,
    normal_codes: Collection[str],
    bounds: TimeBounds | None,
) -> _Options:
    if not finding_codes:
        raise UsageError("the finding-code table is empty; give at least one code -> finding")
    return _Options(
        finding_codes, report_key, uncoded_as_absent, normal_codes, bounds or DEFAULT_TIME_BOUNDS
    )


def _fhir_items(
    path: Path, options: _Options, withdrawals: bool, max_line_bytes: int
) -> Iterator[RawRecord | LabelWithdrawal]:
    locator = str(path.resolve())
    resources = list(_read_fhir(path, locator, max_line_bytes))
    index = _index(resources)
    for item in resources:
        if item.resource.get("resourceType") != "DiagnosticReport":
            continue
        try:
            rows = _report_rows(item, index, options, withdrawals)
        except _Rejected as exc:
            rows = [exc.row]
        except InvalidRecord as exc:
            rows = [{_INVALID: exc.reason}]
        for row in rows:
            if isinstance(row, LabelWithdrawal):
                yield row
                continue
            data = json.dumps(row, separators=(",", ":")).encode()
            yield RawRecord(data, item.position, "diagnosis")


def parse_fhir_record(
    raw: RawRecord,
    *,
    known_findings: Collection[str] | None = None,
    bounds: TimeBounds | None = None,
) -> DiagnosisEvent:
    """Validate one record from :func:`fhir_records` (raises InvalidRecord)."""
    return _diagnosis(_load(raw), raw.position, known_findings, bounds)


def parse_fhir_report(
    report: Mapping[str, Any],
    finding_codes: Mapping[str, str] = DEFAULT_FINDING_CODES,
    *,
    resources: Iterable[Mapping[str, Any]] = (),
    position: SourcePosition | None = None,
    uncoded_as_absent: bool = False,
    normal_codes: Collection[str] = DEFAULT_NORMAL_CODES,
    known_findings: Collection[str] | None = None,
    bounds: TimeBounds | None = None,
) -> list[DiagnosisEvent]:
    """The diagnoses of one DiagnosticReport resource; ``resources`` resolve references.

    Raises InvalidRecord for a report that gives no confirmed diagnosis
    (including ``entered-in-error``; use :func:`fhir_records` for withdrawals).
    """
    if not isinstance(report, Mapping):
        raise InvalidRecord("a DiagnosticReport must be a JSON object")
    options = _options(finding_codes, None, uncoded_as_absent, normal_codes, bounds)
    pos = position or SourcePosition("fhir", "DiagnosticReport")
    others = [_Located(dict(r), None, pos) for r in resources if isinstance(r, Mapping)]
    item = _Located(dict(report), None, pos)
    rows = _report_rows(item, _index([item, *others]), options, withdrawals=False)
    return [
        _diagnosis(row, pos, known_findings, bounds)
        for row in rows
        if not isinstance(row, LabelWithdrawal)
    ]


def _read_fhir(path: Path, locator: str, max_line_bytes: int) -> Iterator[_Located]:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
    if path.suffix.lower() == ".ndjson":
        yield from _read_ndjson(path, locator, max_line_bytes)
        return
    if size > MAX_FILE_BYTES:
        raise UsageError(f"{path} is {size} bytes (limit {MAX_FILE_BYTES}); export it as NDJSON")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        obj = decode_json(data, max_depth=MAX_FHIR_DEPTH, max_bytes=None)
    except InvalidRecord as exc:
        raise UsageError(f"{path}: {exc.reason}") from exc
    kind = obj.get("resourceType") if isinstance(obj, dict) else None
    if kind == "DiagnosticReport":
        yield _Located(obj, None, SourcePosition("file", locator))
    elif kind == "Bundle":
        entries = obj.get("entry")
        if entries is None:
            return
        if not isinstance(entries, list):
            raise UsageError(f"{path}: the Bundle's 'entry' is not a JSON array")
        for number, entry in enumerate(entries, start=1):
            position = SourcePosition("file", f"{locator}#entry[{number}]")
            if not isinstance(entry, dict):
                yield _invalid(f"Bundle entry {number} is not a JSON object", position)
                continue
            resource = entry.get("resource")
            if resource is None:  # e.g. a batch-response entry: nothing to read
                continue
            if not isinstance(resource, dict):
                yield _invalid(f"Bundle entry {number}: 'resource' is not a JSON object", position)
                continue
            full_url = entry.get("fullUrl")
            yield _Located(resource, full_url if isinstance(full_url, str) else None, position)
    else:
        raise UsageError(
            f"{path} holds neither a FHIR DiagnosticReport nor a Bundle "
            "(expected resourceType DiagnosticReport or Bundle)"
        )


def _invalid(reason: str, position: SourcePosition) -> _Located:
    """A placeholder that becomes one dead letter at ``position``."""
    return _Located({"resourceType": "DiagnosticReport", _INVALID: reason}, None, position)


def _read_ndjson(path: Path, locator: str, max_line_bytes: int) -> Iterator[_Located]:
    with _open_binary(path) as handle:
        for line in iter_lines(handle, max_line_bytes):
            position = SourcePosition("file", locator, None, line.number)
            if line.too_long:
                yield _invalid(f"line is longer than {max_line_bytes} bytes", position)
                continue
            if not line.data.strip():
                continue
            try:
                obj = decode_json(line.data, max_depth=MAX_FHIR_DEPTH, max_bytes=None)
            except InvalidRecord as exc:
                # a broken line becomes a dead letter, as in JSONL event files
                reason = exc.reason
                if reason.startswith("not valid JSON"):
                    reason = "line is not a JSON object"
                yield _invalid(reason, position)
                continue
            if not isinstance(obj, dict):
                yield _invalid("line is not a JSON object", position)
                continue
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
    options: _Options,
    withdrawals: bool,
) -> list[dict[str, Any] | LabelWithdrawal]:
    report = item.resource
    if _INVALID in report:
        raise InvalidRecord(str(report[_INVALID]))
    partial: dict[str, Any] = {}
    try:
        reason = find_control_characters(report, free_text=True)
        if reason is not None:
            raise InvalidRecord(reason)
        status = report.get("status")
        if not isinstance(status, str):
            status = None
        if withdrawals and status == WITHDRAWN_STATUS:
            return list(_withdrawals(item, index, options))
        if status not in CONFIRMED_STATUSES:
            shown = status if status in _KNOWN_STATUSES else "missing or unrecognised"
            with contextlib.suppress(InvalidRecord):  # name the study in the dead letter
                partial["study_instance_uid"] = _study_uid(report, index)
            raise InvalidRecord(f"report status {shown} is not a confirmed diagnosis")
        partial["study_instance_uid"] = _study_uid(report, index)
        issued = report.get("issued")
        if issued is None:
            raise InvalidRecord("report has no 'issued' time, so no confirmation time")
        confirmed = parse_timestamp(issued, "issued", bounds=options.bounds)
        partial["confirmed_at"] = confirmed.isoformat()
        partial["source"] = "report"
        findings = _findings(_conclusion_codes(report), options)
        report_id = _report_id(report, item.full_url)
        digest = (options.report_key or _sha256)(f"{report_id}|{partial['confirmed_at']}")
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


def _withdrawals(
    item: _Located, index: Mapping[str, dict[str, Any]], options: _Options
) -> Iterator[LabelWithdrawal]:
    study = _study_uid(item.resource, index)
    report_id = _report_id(item.resource, item.full_url)
    digest = (options.report_key or _sha256)(report_id)[:40]
    for finding in sorted(set(options.finding_codes.values())):
        yield LabelWithdrawal(study, finding, digest, item.position)


class _Rejected(InvalidRecord):
    """A rejected report plus what could be read (for the sanitised dead letter)."""

    def __init__(self, row: dict[str, Any]) -> None:
        super().__init__(str(row[_INVALID]))
        self.row = row


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _study_uid(report: Mapping[str, Any], index: Mapping[str, dict[str, Any]]) -> str:
    references = report.get("imagingStudy") or []
    if not isinstance(references, list) or not references:
        raise InvalidRecord("report has no imagingStudy reference, so no StudyInstanceUID")
    contained = {
        f"#{r['id']}": r
        for r in _list(report.get("contained"))
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
    for identifier in _list(identifiers):
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
    if len(uid) > 64 or not _UID.fullmatch(uid):
        raise InvalidRecord(f"ImagingStudy identifier ({DICOM_UID_SYSTEM}) is not a DICOM UID")
    return uid


def _conclusion_codes(report: Mapping[str, Any]) -> set[str]:
    """``system|code`` of every conclusionCode coding."""
    codes: set[str] = set()
    for concept in _list(report.get("conclusionCode")):
        codings = concept.get("coding") if isinstance(concept, dict) else None
        for coding in _list(codings):
            if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                codes.add(f"{coding.get('system')}|{coding['code']}")
    return codes


def _qualified(key: str) -> str:
    return key if "|" in key else f"{SNOMED_CT}|{key}"


def _findings(codes: set[str], options: _Options) -> dict[str, bool]:
    if not codes and not options.uncoded_as_absent:
        raise InvalidRecord(
            "report has no conclusionCode coding; an uncoded report cannot say "
            "which findings are absent"
        )
    findings: dict[str, bool] = {}
    for key, finding in options.finding_codes.items():
        findings[finding] = findings.get(finding, False) or _qualified(key) in codes
    normal = {_qualified(key) for key in options.normal_codes}
    if not any(findings.values()) and not codes & normal and not options.uncoded_as_absent:
        raise InvalidRecord(
            f"report has no coded finding: none of its {len(codes)} conclusionCode "
            "coding(s) is a finding of the code table or a 'normal' code, so it cannot "
            "say which findings are absent"
        )
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
    obj = decode_json(raw.data)
    if not isinstance(obj, dict):
        raise InvalidRecord("a diagnosis record must be a JSON object")
    if _INVALID in obj:
        raise InvalidRecord(str(obj[_INVALID]))
    return obj


def _diagnosis(
    obj: Mapping[str, Any],
    position: SourcePosition | None,
    known_findings: Collection[str] | None = None,
    bounds: TimeBounds | None = None,
) -> DiagnosisEvent:
    event = parse_record(
        "diagnosis", dict(obj), position, bounds=bounds, known_findings=known_findings
    )
    assert isinstance(event, DiagnosisEvent)
    return event


__all__ = [
    "CONFIRMED_STATUSES",
    "CSV_COLUMNS",
    "DEFAULT_FINDING_CODES",
    "DEFAULT_NORMAL_CODES",
    "DICOM_UID_SYSTEM",
    "MAX_CSV_ROW_BYTES",
    "MAX_CSV_ROW_LINES",
    "MAX_FHIR_DEPTH",
    "SNOMED_CT",
    "LabelWithdrawal",
    "csv_records",
    "fhir_records",
    "parse_csv_row",
    "parse_fhir_record",
    "parse_fhir_report",
]
