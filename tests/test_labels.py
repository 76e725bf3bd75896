"""Diagnoses from CSV and FHIR R4 files, on both backends: mapping, dead letters, privacy."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from connectors.labels import fhir_records, parse_fhir_record
from connectors.records import event_to_jsonl
from surveillance.core.config import EXAMPLE_CONFIG, ModelConfig, load_settings
from surveillance.core.errors import InvalidRecord, UsageError
from surveillance.core.events import DicomMetadataEvent, PredictionEvent
from surveillance.intake.ingest import Ingestor
from surveillance.intake.labels import ingest_label_file
from surveillance.intake.pseudonym import Pseudonymizer
from surveillance.store import Store
from surveillance.store.models import DiagnosisRow, StudyRow

UID = "1.2.826.0.1.3680043.8.498.7"
HEADER = "message_id,study_instance_uid,finding,present,source,confirmed_at,patient_name\n"


def _diagnoses(store: Store, pseudo: Pseudonymizer) -> dict[tuple[str, str], tuple[bool, str]]:
    """(study UID, finding) -> (present, source) for the UIDs used in these tests."""
    with store.sessions.scope() as s:
        rows = s.execute(
            select(
                StudyRow.uid_pseudonym,
                DiagnosisRow.finding,
                DiagnosisRow.present,
                DiagnosisRow.source,
            ).join(StudyRow, StudyRow.id == DiagnosisRow.study_id)
        ).all()
    by_pseudonym = {pseudo("study", f"{UID}.{i}"): f"{UID}.{i}" for i in range(10)}
    return {(by_pseudonym[p], f): (present, src) for p, f, present, src in rows}


# ---- CSV --------------------------------------------------------------------------


def test_csv_rows_are_stored_and_bad_rows_dead_lettered(
    tmp_path: Path, store: Store, ingestor: Ingestor, pseudonymizer: Pseudonymizer
) -> None:
    file = tmp_path / "labels.csv"
    file.write_text(
        HEADER
        + f",{UID}.1,pneumothorax,Yes,report,2026-08-20T09:00:00+02:00,Jane Doe\n"  # line 2
        + f"d-2,{UID}.2,pneumothorax,0,pathology,2026-08-21T09:00:00Z,John Roe\n"
        + f",{UID}.3,,yes,report,2026-08-21T09:00:00Z,Ann Poe\n"  # 4: no finding
        + f",{UID}.4,pneumothorax,maybe,report,2026-08-21T09:00:00Z,Bob Moe\n"  # 5: boolean
        + "\n"
        + f",{UID}.5,pneumothorax,no,report,2026-08-21T09:00:00,Cat Loe\n"  # 7: no zone
        + f",{UID}.6,pneumothorax,no,radiologist,2026-08-21T09:00:00Z,Dan Koe\n"  # 8: source
        + f'"d-9",{UID}.7,pneumothorax,TRUE,follow-up,2026-09-30T12:00:00Z,"Eve\nMultiline"\n'
    )
    counts = ingest_label_file(ingestor, file)

    assert (counts.diagnoses_new, counts.dead_letters) == (3, 4)
    assert _diagnoses(store, pseudonymizer) == {
        (f"{UID}.1", "pneumothorax"): (True, "report"),
        (f"{UID}.2", "pneumothorax"): (False, "pathology"),
        (f"{UID}.7", "pneumothorax"): (True, "follow-up"),
    }
    letters = {int(d.position.rsplit(" ", 1)[1]): d for d in store.events.dead_letters()}
    assert sorted(letters) == [4, 5, 7, 8]
    assert "missing required field 'finding'" in letters[4].reason
    assert "column 'present' is 'maybe'" in letters[5].reason
    assert "no time zone" in letters[7].reason
    assert "field 'source' is 'radiologist'" in letters[8].reason
    for letter in letters.values():
        assert letter.kind == "diagnosis"
        assert letter.payload is not None
        assert "Poe" not in letter.payload and "Moe" not in letter.payload
        assert UID not in letter.payload  # study UIDs are pseudonymised
    audit = [e for e in _audit_actions(store) if e == "ingest.labels"]
    assert audit == ["ingest.labels"]


def _audit_actions(store: Store) -> list[str]:
    from surveillance.store.models import AuditEventRow

    with store.sessions.scope() as s:
        return list(s.scalars(select(AuditEventRow.action).order_by(AuditEventRow.id)))


def test_csv_reimport_is_idempotent_and_header_is_checked(
    tmp_path: Path, store: Store, ingestor: Ingestor
) -> None:
    file = tmp_path / "labels.csv"
    file.write_text(
        HEADER.replace("message_id,", "")
        + "".join(
            f"{UID}.{i},pneumothorax,{i % 2},consensus,2026-08-20T09:00:00Z,x\n" for i in range(6)
        )
    )
    first = ingest_label_file(ingestor, file)
    second = ingest_label_file(ingestor, file)
    assert (first.diagnoses_new, first.dead_letters) == (6, 0)
    assert (second.diagnoses_new, second.diagnoses_duplicate) == (0, 6)

    bad = tmp_path / "bad.csv"
    bad.write_text("study_instance_uid,finding,present\n1.2,pneumothorax,yes\n")
    with pytest.raises(UsageError, match="lacks column"):
        ingest_label_file(ingestor, bad)


def test_diagnosis_before_prediction_and_metadata_joins_later(
    tmp_path: Path, store: Store, ingestor: Ingestor
) -> None:
    labels = tmp_path / "early.csv"
    labels.write_text(HEADER + f"d-1,{UID}.1,pneumothorax,yes,report,2026-08-02T09:00:00Z,\n")
    assert ingest_label_file(ingestor, labels).diagnoses_new == 1
    with store.sessions.scope() as s:
        assert len(s.scalars(select(StudyRow.id)).all()) == 1  # a skeleton study

    events = tmp_path / "late.jsonl"
    prediction = PredictionEvent(
        "p-1",
        "cxr-pneumothorax",
        "2.1.0",
        f"{UID}.1",
        {"pneumothorax": 0.8},
        datetime(2026, 8, 1, tzinfo=UTC),
    )
    header = DicomMetadataEvent(
        study_instance_uid=f"{UID}.1", manufacturer="GE", software_versions="VA10"
    )
    events.write_text(event_to_jsonl(prediction) + "\n" + event_to_jsonl(header) + "\n")
    ingestor.ingest_jsonl(events)

    cases = store.checks.case_table(store.registry.model("cxr-pneumothorax").id, "pneumothorax")
    assert cases.label.tolist() == [1]
    assert cases.categorical["software_versions"].tolist() == ["VA10"]
    with store.sessions.scope() as s:
        assert len(s.scalars(select(StudyRow.id)).all()) == 1


# ---- FHIR -------------------------------------------------------------------------


def _study(rid: str, uid: str) -> dict[str, Any]:
    return {
        "resourceType": "ImagingStudy",
        "id": rid,
        "status": "available",
        "subject": {"reference": "Patient/p1"},
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}],
    }


def _report(
    rid: str,
    study_ref: str,
    codes: list[str],
    status: str = "final",
    issued: str = "2026-08-20T09:00:00+02:00",
) -> dict[str, Any]:
    return {
        "resourceType": "DiagnosticReport",
        "id": rid,
        "status": status,
        "code": {"coding": [{"system": "http://loinc.org", "code": "36643-5"}]},
        "subject": {"reference": "Patient/p1", "display": "Jane Doe"},
        "issued": issued,
        "imagingStudy": [{"reference": study_ref}],
        "conclusion": "Large left pneumothorax, Dr Secret informed.",
        "presentedForm": [{"contentType": "text/plain", "data": "U2VjcmV0IHRleHQ="}],
        "conclusionCode": [
            {"coding": [{"system": "http://snomed.info/sct", "code": c}]} for c in codes
        ],
    }


def _bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": f"urn:uuid:0000-{i}", "resource": r} for i, r in enumerate(resources)
        ],
    }


def test_fhir_bundle_maps_reports_to_studies_and_findings(
    tmp_path: Path, store: Store, ingestor: Ingestor, pseudonymizer: Pseudonymizer
) -> None:
    contained = _report("r3", "#s", ["36118008"])
    contained["contained"] = [_study("s", f"{UID}.3")]
    bundle = _bundle(
        _study("s1", f"{UID}.1"),
        _report("r1", "ImagingStudy/s1", ["36118008"]),
        _report("r2", "urn:uuid:0000-3", ["17621005"]),  # SNOMED "normal" -> absent
        _study("s2", f"{UID}.2"),
        contained,
        _report("r4", "ImagingStudy/s1", ["36118008"], status="preliminary"),
        _report("r5", "ImagingStudy/missing", ["36118008"]),
    )
    file = tmp_path / "reports.json"
    file.write_text(json.dumps(bundle))
    codes = {"36118008": "pneumothorax", "http://snomed.info/sct|233604007": "pneumonia"}
    # a diagnosis for a finding no registered model has is dead-lettered: register one
    base = load_settings(EXAMPLE_CONFIG, env={}).models[0]
    store.registry.register_models(
        [ModelConfig(**{**base.model_dump(), "name": "cxr-pneumonia", "baselines": [],
                        "monitor_only": True, "findings": {"pneumonia": 0.5}})],
        actor="test",
    )  # fmt: skip
    ingestor.refresh_models()

    counts = ingest_label_file(ingestor, file, codes)

    assert (counts.diagnoses_new, counts.dead_letters) == (6, 2)
    assert _diagnoses(store, pseudonymizer) == {
        (f"{UID}.1", "pneumothorax"): (True, "report"),
        (f"{UID}.1", "pneumonia"): (False, "report"),
        (f"{UID}.2", "pneumothorax"): (False, "report"),
        (f"{UID}.2", "pneumonia"): (False, "report"),
        (f"{UID}.3", "pneumothorax"): (True, "report"),
        (f"{UID}.3", "pneumonia"): (False, "report"),
    }
    with store.sessions.scope() as s:
        confirmed = set(s.scalars(select(DiagnosisRow.confirmed_at)))
        message_ids = list(s.scalars(select(DiagnosisRow.message_id)))
    assert confirmed == {datetime(2026, 8, 20, 7, 0, tzinfo=UTC)}
    assert all(m.startswith("fhir:") and "r1" not in m for m in message_ids)
    letters = {d.position.rsplit("#", 1)[1]: d for d in store.events.dead_letters()}
    assert set(letters) == {"entry[6]", "entry[7]"}
    assert letters["entry[6]"].reason == "report status preliminary is not a confirmed diagnosis"
    assert "no imagingStudy reference resolves" in letters["entry[7]"].reason
    for letter in letters.values():
        text = letter.reason + (letter.payload or "")
        for secret in ("Secret", "Jane", "Patient/p1", "U2Vj", UID):
            assert secret not in text
    # the preliminary report's dead letter still names its (pseudonymised) study
    assert pseudonymizer("study", f"{UID}.1") in (letters["entry[6]"].payload or "")

    again = ingest_label_file(ingestor, file, codes)
    assert (again.diagnoses_new, again.diagnoses_duplicate) == (0, 6)


def test_fhir_ndjson_amended_report_is_a_new_confirmation(tmp_path: Path) -> None:
    first = _report("r1", "ImagingStudy/s1", ["36118008"])
    amended = _report("r1", "ImagingStudy/s1", [], status="amended", issued="2026-09-01T10:00:00Z")
    amended["conclusionCode"] = [
        {"coding": [{"system": "http://snomed.info/sct", "code": "17621005"}]}
    ]
    uncoded = _report("r2", "ImagingStudy/s1", [])
    file = tmp_path / "export.ndjson"
    file.write_text(
        "\n".join(json.dumps(r) for r in (_study("s1", f"{UID}.1"), first, amended, uncoded))
        + "\n{not json\n"
    )
    outcomes: list[Any] = []
    for raw in fhir_records(file):
        try:
            outcomes.append(parse_fhir_record(raw))
        except InvalidRecord as exc:
            outcomes.append(exc.reason)
    events = [o for o in outcomes if not isinstance(o, str)]
    assert [(e.present, e.position.offset) for e in events] == [(True, 2), (False, 3)]
    assert events[0].message_id != events[1].message_id
    assert outcomes[2:] == [
        "report has no conclusionCode coding; an uncoded report cannot say which findings "
        "are absent",
        "line is not a JSON object",
    ]


def test_case_table_takes_the_latest_confirmation_and_reads_only_what_is_asked(
    tmp_path: Path, store: Store, ingestor: Ingestor
) -> None:
    """Cases with two confirmations, one, and none: the latest confirmation is the label
    (on PostgreSQL the labels are joined into the COPY, one row per confirmation)."""
    labels = tmp_path / "labels.csv"
    labels.write_text(
        HEADER
        + f"d-1,{UID}.1,pneumothorax,yes,report,2026-08-03T09:00:00Z,\n"
        + f"d-2,{UID}.1,pneumothorax,no,pathology,2026-08-09T09:00:00Z,\n"  # later: wins
        + f"d-3,{UID}.2,pneumothorax,yes,report,2026-08-04T09:00:00Z,\n"
    )
    events = tmp_path / "predictions.jsonl"
    events.write_text(
        "\n".join(
            event_to_jsonl(
                PredictionEvent(
                    f"p-{i}",
                    "cxr-pneumothorax",
                    "2.1.0",
                    f"{UID}.{i}",
                    {"pneumothorax": 0.1 * i},
                    datetime(2026, 8, i, tzinfo=UTC),
                )
            )
            for i in (1, 2, 3)
        )
        + "\n"
    )
    ingestor.ingest_jsonl(events)
    assert ingest_label_file(ingestor, labels).diagnoses_new == 3
    model_id = store.registry.model("cxr-pneumothorax").id

    cases = store.checks.case_table(model_id, "pneumothorax")
    assert cases.label.tolist() == [0, 1, -1]
    assert cases.score.tolist() == [0.1, 0.2, 0.30000000000000004]
    assert [str(t) for t in cases.confirmed_at] == [
        "2026-08-09T09:00:00.000000",
        "2026-08-04T09:00:00.000000",
        "NaT",
    ]
    only = store.checks.case_table(model_id, "pneumothorax", labelled_only=True)
    assert only.label.tolist() == [0, 1]
    assert only.score.tolist() == [0.1, 0.2]
    none = store.checks.case_table(model_id, "pneumothorax", labels=False)
    assert none.label.tolist() == [-1, -1, -1]
    assert len(none) == 3
