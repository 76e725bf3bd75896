"""The ingest path on both backends: validation, dead letters, idempotency, privacy."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import func, select, text

from connectors.records import event_to_jsonl
from surveillance.core.events import DicomMetadataEvent, PredictionEvent
from surveillance.intake.ingest import Ingestor
from surveillance.store import Store
from surveillance.store.models import DeadLetterRow, DiagnosisRow, PredictionRow, StudyRow


def _prediction(i: int, uid: str = "1.2.826.0.1.3680043.8.498.1", score: float = 0.7) -> str:
    return json.dumps(
        {
            "kind": "prediction",
            "message_id": f"m-{i}",
            "model": "cxr-pneumothorax",
            "model_version": "2.1.0",
            "study_instance_uid": f"{uid}.{i}",
            "outputs": {"pneumothorax": score},
            "predicted_at": "2026-08-01T10:00:00Z",
        }
    )


def _count(store: Store, table: type) -> int:
    with store.sessions.scope() as s:
        return int(s.scalar(select(func.count()).select_from(table)) or 0)


def test_valid_lines_are_stored_and_bad_ones_dead_lettered(
    tmp_path: Path, store: Store, ingestor: Ingestor
) -> None:
    lines = [_prediction(i) for i in range(5)]
    bad = {
        "not json": '{"kind": "prediction", ',
        "unknown model": _prediction(99).replace("cxr-pneumothorax", "cxr-nope"),
        "score out of range": _prediction(98, score=1.5),
        "no time zone": _prediction(97).replace("10:00:00Z", "10:00:00"),
        "unknown kind": json.dumps({"kind": "weather", "x": 1}),
    }
    file = tmp_path / "events.jsonl"
    file.write_text("\n".join([lines[0], *bad.values(), *lines[1:]]) + "\n")

    counts = ingestor.ingest_jsonl(file)

    assert counts.predictions_new == 5
    assert counts.dead_letters == len(bad)
    assert _count(store, PredictionRow) == 5
    letters = store.events.dead_letters()
    reasons = " | ".join(d.reason for d in letters)
    assert "not valid JSON" in reasons
    assert "unknown model 'cxr-nope'" in reasons
    assert "outside 0..1" in reasons
    assert "no time zone" in reasons
    assert "unknown event kind 'weather'" in reasons
    assert sorted(int(d.position.rsplit(" ", 1)[1]) for d in letters) == [2, 3, 4, 5, 6]


def test_reingesting_the_same_file_duplicates_nothing(
    tmp_path: Path, store: Store, ingestor: Ingestor
) -> None:
    file = tmp_path / "events.jsonl"
    file.write_text("\n".join([_prediction(i) for i in range(120)] + ["oops"]) + "\n")
    first = ingestor.ingest_jsonl(file)
    second = ingestor.ingest_jsonl(file)
    assert (first.predictions_new, first.dead_letters) == (120, 1)
    assert (second.predictions_new, second.predictions_duplicate) == (0, 120)
    assert second.dead_letters == 0
    assert _count(store, PredictionRow) == 120
    assert _count(store, StudyRow) == 120
    assert _count(store, DeadLetterRow) == 1


def test_metadata_after_prediction_fills_the_same_study(
    tmp_path: Path, store: Store, ingestor: Ingestor
) -> None:
    from datetime import UTC, date, datetime

    uid = "1.2.3.4.5"
    prediction = PredictionEvent(
        "p-1",
        "cxr-pneumothorax",
        "2.1.0",
        uid,
        {"pneumothorax": 0.9},
        datetime(2026, 8, 1, tzinfo=UTC),
    )
    header = DicomMetadataEvent(
        study_instance_uid=uid,
        patient_id="PAT-123",
        institution_name="General Hospital",
        station_name="XR1",
        manufacturer="GE",
        manufacturer_model_name="Discovery XR656",
        software_versions="VA10",
        kvp=110.0,
        patient_sex="F",
        age_band="40-49",
        study_date=date(2026, 8, 1),
    )
    diagnosis = json.dumps(
        {
            "kind": "diagnosis",
            "message_id": "d-1",
            "study_instance_uid": uid,
            "finding": "pneumothorax",
            "present": True,
            "source": "report",
            "confirmed_at": "2026-08-20T09:00:00+02:00",
        }
    )
    file = tmp_path / "e.jsonl"
    file.write_text("\n".join([event_to_jsonl(prediction), diagnosis, event_to_jsonl(header)]))
    counts = ingestor.ingest_jsonl(file)
    assert (counts.predictions_new, counts.diagnoses_new, counts.metadata) == (1, 1, 1)
    assert _count(store, StudyRow) == 1
    model = store.registry.model("cxr-pneumothorax")
    cases = store.checks.case_table(model.id, "pneumothorax")
    assert len(cases) == 1
    assert cases.label.tolist() == [1]
    assert cases.categorical["software_versions"].tolist() == ["VA10"]
    assert "GE Discovery XR656" in cases.scanner[0]
    with store.sessions.scope() as s:
        confirmed = s.scalar(select(DiagnosisRow.confirmed_at))
    assert confirmed == datetime(2026, 8, 20, 7, 0, tzinfo=UTC)


def test_no_identifier_or_name_reaches_the_database(
    tmp_path: Path, store: Store, ingestor: Ingestor
) -> None:
    from pydicom import Dataset

    from connectors.dicom_header import dataset_to_dicom_json

    ds = Dataset()
    ds.StudyInstanceUID = "1.2.840.99999.4242"
    ds.PatientID = "MRN-7781234"
    ds.PatientName = "Doe^Jane"
    ds.PatientBirthDate = "19610412"
    ds.StudyDate = "20260801"
    ds.AccessionNumber = "ACC-555123"
    ds.InstitutionName = "St Elsewhere Hospital"
    ds.StationName = "XRAY-ROOM-3"
    ds.StudyDescription = "CHEST PA free text about Jane"
    ds.Manufacturer = "Agfa"
    lines = [json.dumps({"kind": "dicom-metadata", **dataset_to_dicom_json(ds)})]
    broken = dataset_to_dicom_json(ds)
    broken["00100040"] = {"vr": "CS", "Value": ["Q"]}  # invalid sex: dead letter with payload
    lines.append(json.dumps({"kind": "dicom-metadata", **broken}))
    file = tmp_path / "h.jsonl"
    file.write_text("\n".join(lines) + "\n")
    counts = ingestor.ingest_jsonl(file)
    assert (counts.metadata, counts.dead_letters) == (1, 1)

    secrets = [
        "1.2.840.99999.4242",
        "MRN-7781234",
        "Doe",
        "Jane",
        "19610412",
        "ACC-555123",
        "St Elsewhere",
        "XRAY-ROOM-3",
        "free text",
    ]
    with store.sessions.scope() as s:
        dump = []
        for table in ("study", "site", "device", "dead_letter", "audit_event"):
            for row in s.execute(text(f"SELECT * FROM {table}")):
                dump.append(" ".join(str(v) for v in row))
    everything = "\n".join(dump)
    assert "Agfa" in everything  # the dump really holds the rows
    for secret in secrets:
        assert secret not in everything, f"{secret!r} was stored"
    with store.sessions.scope() as s:
        age_band = s.scalar(select(StudyRow.age_band))
    assert age_band == "60-69"


def test_long_values_fit_and_bad_dates_are_not_echoed(
    tmp_path: Path, store: Store, ingestor: Ingestor
) -> None:
    from pydicom import Dataset

    from connectors.dicom_header import dataset_to_dicom_json

    long_header = Dataset()
    long_header.StudyInstanceUID = "1.2.3.9"
    long_header.SoftwareVersions = ["V" * 64, "W" * 64, "X" * 64, "Y" * 50]  # 245 characters
    bad_date = {  # written as JSON: pydicom itself refuses to build the bad date
        "kind": "dicom-metadata",
        "0020000D": {"vr": "UI", "Value": ["1.2.3.10"]},
        "00080020": {"vr": "DA", "Value": ["20260801"]},
        "00100030": {"vr": "DA", "Value": ["19610499"]},
    }
    lines = [
        json.dumps({"kind": "dicom-metadata", **dataset_to_dicom_json(long_header)}),
        json.dumps(bad_date),
    ]
    file = tmp_path / "h.jsonl"
    file.write_text("\n".join(lines) + "\n")
    counts = ingestor.ingest_jsonl(file)
    assert (counts.metadata, counts.dead_letters) == (1, 1)
    with store.sessions.scope() as s:
        stored = s.scalar(select(StudyRow.software_versions))
    assert stored is not None and len(stored) == 128 and stored.startswith("V" * 64 + "\\" + "W")
    (letter,) = store.events.dead_letters()
    assert "PatientBirthDate is not a valid date" in letter.reason
    assert "19610499" not in letter.reason


def test_batches_land_in_order_while_the_next_is_parsed(
    tmp_path: Path, store: Store, ingestor: Ingestor
) -> None:
    """On PostgreSQL a full batch is written on a helper thread while the next one is
    parsed (``Ingestor.pipelined``); on SQLite in line. Either way every batch lands,
    once, with its dead letters at their lines, and progress counts every line."""
    lines = [_prediction(i) for i in range(260)]
    for at in (0, 129, 259):  # lines 1, 130 and 260: one in the first, a middle, the last batch
        lines[at] = "not json"
    file = tmp_path / "events.jsonl"
    file.write_text("\n".join(lines) + "\n")
    seen: list[int] = []

    counts = ingestor.ingest_jsonl(file, progress=seen.append)

    assert ingestor.pipelined == (store.engine.dialect.name == "postgresql")
    assert (counts.predictions_new, counts.dead_letters) == (257, 3)
    assert sum(seen) == 260 and len(seen) == 6  # batches of 50 records
    assert _count(store, PredictionRow) == 257
    letters = store.events.dead_letters()
    assert sorted(int(d.position.rsplit(" ", 1)[1]) for d in letters) == [1, 130, 260]
