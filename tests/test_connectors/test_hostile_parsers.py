"""Every file of the hostile corpus through the connector-level parsers.

``tests/data/hostile/MANIFEST.json`` lists, per file, its entry point, the number
of good records, the reason expected for each bad one and, for files refused as
a whole, the UsageError. Nothing but InvalidRecord (and that UsageError) may
escape a parser, every bad record must say why, and every good record must parse.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from connectors.dicom_files import header_event
from connectors.labels import (
    LabelWithdrawal,
    csv_records,
    fhir_records,
    parse_csv_row,
    parse_fhir_record,
)
from connectors.records import parse_jsonl_line, read_jsonl_records
from surveillance.core.errors import InvalidRecord, UsageError
from surveillance.core.events import SourcePosition

CORPUS = Path(__file__).resolve().parents[1] / "data" / "hostile"
MANIFEST: dict[str, Any] = json.loads((CORPUS / "MANIFEST.json").read_text())
#: The parser-level entries; "kafka" and "config" entries are run through the product
#: by tests/test_hostile_corpus.py.
PARSER_KINDS = {"jsonl", "csv", "fhir", "dicom"}
FILES: dict[str, dict[str, Any]] = {
    name: spec for name, spec in MANIFEST["files"].items() if spec["entry"] in PARSER_KINDS
}
#: Values in the corpus that must never reach a reason (a dead letter).
SECRETS = ("Jane", "Secret", "Doe", "1.2.826.0.1.3680043.8.498")


@dataclass
class Outcome:
    good: int = 0
    withdrawals: int = 0
    reasons: list[str] = field(default_factory=list)

    def attempt(self, parse: Any, *args: Any, **kwargs: Any) -> None:
        try:
            parse(*args, **kwargs)
        except InvalidRecord as exc:
            self.reasons.append(exc.reason)
        else:
            self.good += 1


def run(kind: str, path: Path, options: dict[str, Any]) -> Outcome:
    """One corpus file through its entry point; only InvalidRecord is caught."""
    known: Collection[str] | None = options.get("known_findings")
    outcome = Outcome()
    if kind == "jsonl":
        for raw in read_jsonl_records(path):
            outcome.attempt(parse_jsonl_line, raw.data, raw.position, known_findings=known)
    elif kind == "csv":
        for raw in csv_records(path):
            outcome.attempt(parse_csv_row, raw, known_findings=known)
    elif kind == "fhir":
        for item in fhir_records(path, withdrawals=True, known_findings=known):
            if isinstance(item, LabelWithdrawal):
                assert item.finding == "pneumothorax" and len(item.report_id) == 40
                outcome.withdrawals += 1
            else:
                outcome.attempt(parse_fhir_record, item, known_findings=known)
    elif kind == "dicom":
        position = SourcePosition("file", str(path))
        outcome.attempt(header_event, path.read_bytes(), position)
    else:
        raise AssertionError(f"unknown entry point {kind!r}")
    return outcome


def test_the_corpus_is_complete() -> None:
    listed = set(MANIFEST["files"])
    on_disk = {
        str(p.relative_to(CORPUS))
        for p in CORPUS.rglob("*")
        if p.is_file() and p.parent != CORPUS and "__pycache__" not in p.parts
    }
    assert listed == on_disk
    assert len(listed) >= 60
    kinds = {spec["entry"] for spec in FILES.values()}
    assert kinds == {"jsonl", "csv", "fhir", "dicom"}
    for name, spec in FILES.items():
        assert spec["bad"] == len(spec["reasons"]), name


@pytest.mark.parametrize("name", sorted(FILES))
def test_corpus_file(name: str) -> None:
    spec = FILES[name]
    path = CORPUS / name
    if "file_error" in spec:
        with pytest.raises(UsageError) as caught:
            run(spec["entry"], path, spec.get("options", {}))
        assert spec["file_error"] in str(caught.value)
        return
    outcome = run(spec["entry"], path, spec.get("options", {}))
    assert outcome.good == spec["good"], outcome.reasons
    assert outcome.withdrawals == spec.get("withdrawals", 0)
    assert len(outcome.reasons) == spec["bad"], outcome.reasons
    for expected, reason in zip(spec["reasons"], outcome.reasons, strict=True):
        assert expected in reason
    for reason in outcome.reasons:
        assert len(reason) < 400
        for secret in SECRETS:
            assert secret not in reason, reason
