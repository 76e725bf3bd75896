"""The database write path: COPY + staging on PostgreSQL, the same semantics on SQLite.

Idempotency (a redelivery with the same content is skipped), conflicts (the
same message id with different content is a dead letter, never an overwrite),
the psycopg2 URL mapping, the pseudonymizer keyed once, and DICOM-JSON headers
read directly giving exactly what pydicom's path gives (events and reasons).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest
from sqlalchemy import select

from surveillance.intake.ingest import Ingestor
from surveillance.intake.pseudonym import Pseudonymizer
from surveillance.store import Store
from surveillance.store.engine import make_engine, normalise_url
from surveillance.store.models import DiagnosisRow, PredictionRow

MODEL = "cxr-pneumothorax"


def _prediction(i: int, score: float = 0.25, at: str = "2026-08-01T10:00:00Z") -> dict:
    return {
        "kind": "prediction",
        "message_id": f"m-{i}",
        "model": MODEL,
        "model_version": "2.1.0",
        "study_instance_uid": f"1.2.826.0.1.3680043.8.498.{i}",
        "outputs": {"pneumothorax": score},
        "predicted_at": at,
    }


def _diagnosis(i: int, present: bool = True) -> dict:
    return {
        "kind": "diagnosis",
        "message_id": f"d-{i}",
        "study_instance_uid": f"1.2.826.0.1.3680043.8.498.{i}",
        "finding": "pneumothorax",
        "present": present,
        "source": "pathology",
        "confirmed_at": "2026-08-20T10:00:00Z",
    }


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _scores(store: Store) -> dict[str, float]:
    with store.sessions.scope() as s:
        return {m: v for m, v in s.execute(select(PredictionRow.message_id, PredictionRow.score))}


def test_a_redelivery_with_other_content_is_a_conflict_not_a_duplicate(
    tmp_path: Path, store: Store, ingestor: Ingestor
) -> None:
    first = ingestor.ingest_jsonl(_write(tmp_path / "a.jsonl", [_prediction(i) for i in range(5)]))
    assert (first.predictions_new, first.conflicts) == (5, 0)

    changed = [_prediction(0), _prediction(1, score=0.9), _prediction(2, at="2026-08-02T10:00:00Z")]
    second = ingestor.ingest_jsonl(_write(tmp_path / "b.jsonl", [*changed, _prediction(7)]))

    assert second.predictions_new == 1  # m-7
    assert second.predictions_duplicate == 1  # m-0, same content
    assert second.conflicts == 2
    assert second.dead_letters == 2
    assert _scores(store)["m-1"] == 0.25, "a conflicting redelivery must not overwrite"
    reasons = {d.position.rsplit(" ", 1)[1]: d.reason for d in store.events.dead_letters()}
    assert reasons["2"].startswith("conflict: prediction message_id 'm-1'")
    assert "different score" in reasons["2"]
    assert "different predicted_at" in reasons["3"]
    assert set(reasons) == {"2", "3"}


def test_reingesting_a_file_with_a_conflict_is_still_idempotent(
    tmp_path: Path, store: Store, ingestor: Ingestor
) -> None:
    ingestor.ingest_jsonl(_write(tmp_path / "a.jsonl", [_prediction(1)]))
    b = _write(tmp_path / "b.jsonl", [_prediction(1, score=0.8)])
    assert ingestor.ingest_jsonl(b).dead_letters == 1
    again = ingestor.ingest_jsonl(b)
    assert again.conflicts == 1 and again.dead_letters == 0  # same position: stored once
    assert len(store.events.dead_letters()) == 1


def test_conflict_inside_one_batch_keeps_the_first(
    tmp_path: Path, store: Store, pseudonymizer: Pseudonymizer
) -> None:
    ingestor = Ingestor(store, pseudonymizer, batch_size=1000)
    records = [_prediction(1), _prediction(2), _prediction(1), _prediction(2, score=0.5)]
    counts = ingestor.ingest_jsonl(_write(tmp_path / "a.jsonl", records))
    assert (counts.predictions_new, counts.predictions_duplicate, counts.conflicts) == (2, 1, 1)
    assert _scores(store) == {"m-1": 0.25, "m-2": 0.25}
    [letter] = store.events.dead_letters()
    assert letter.position.endswith(" 4") and "conflict:" in letter.reason


def test_diagnosis_conflict_is_dead_lettered(
    tmp_path: Path, store: Store, ingestor: Ingestor
) -> None:
    ingestor.ingest_jsonl(_write(tmp_path / "a.jsonl", [_diagnosis(1), _diagnosis(2)]))
    counts = ingestor.ingest_jsonl(
        _write(tmp_path / "b.jsonl", [_diagnosis(1), _diagnosis(2, present=False), _diagnosis(3)])
    )
    assert (counts.diagnoses_new, counts.diagnoses_duplicate, counts.conflicts) == (1, 1, 1)
    with store.sessions.scope() as s:
        present = {
            m: v for m, v in s.execute(select(DiagnosisRow.message_id, DiagnosisRow.present))
        }
    assert present == {"d-1": True, "d-2": True, "d-3": True}
    [letter] = store.events.dead_letters()
    assert "conflict: diagnosis message_id 'd-2'" in letter.reason
    assert "different present" in letter.reason
    assert letter.payload is not None and "1.2.826" not in letter.payload  # pseudonymised


def test_large_mixed_batch_takes_the_staging_path(
    tmp_path: Path, pg_store: Store, pseudonymizer: Pseudonymizer
) -> None:
    """New and redelivered rows in one batch: the straight COPY fails, staging inserts the new."""
    ingestor = Ingestor(pg_store, pseudonymizer, batch_size=5000)
    ingestor.ingest_jsonl(_write(tmp_path / "a.jsonl", [_prediction(i) for i in range(0, 3000, 2)]))
    counts = ingestor.ingest_jsonl(
        _write(tmp_path / "b.jsonl", [_prediction(i) for i in range(3000)])
    )
    assert (counts.predictions_new, counts.predictions_duplicate) == (1500, 1500)
    assert counts.conflicts == 0 and counts.dead_letters == 0
    assert len(_scores(pg_store)) == 3000


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param(
            "postgresql+psycopg2://u:pw@db:5432/s?sslmode=require",
            "postgresql+psycopg://u:pw@db:5432/s?sslmode=require",
            id="psycopg2",
        ),
        pytest.param("postgres+psycopg2://db/s", "postgresql+psycopg://db/s", id="postgres-alias"),
        pytest.param("postgresql://db/s", "postgresql+psycopg://db/s", id="plain"),
        pytest.param("postgresql+psycopg://db/s", "postgresql+psycopg://db/s", id="psycopg3"),
        pytest.param("sqlite:///x.db", "sqlite:///x.db", id="sqlite"),
    ],
)
def test_postgres_urls_run_on_psycopg3(url: str, expected: str) -> None:
    assert normalise_url(url) == expected


def test_a_psycopg2_url_connects(pg_url: str) -> None:
    url = pg_url.replace("postgresql+psycopg://", "postgresql+psycopg2://").replace(
        "postgresql://", "postgresql+psycopg2://"
    )
    assert "psycopg2" in url
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT 1").scalar() == 1
        assert engine.dialect.driver == "psycopg"
    finally:
        engine.dispose()


def test_pseudonyms_keyed_once_equal_plain_hmac() -> None:
    key = bytes(range(32))
    p = Pseudonymizer(key)
    for value in ("1.2.3", " 1.2.3 ", "Ünïcode station", ""):
        expected = hmac.new(key, f"study:{value.strip()}".encode(), hashlib.sha256).hexdigest()
        assert p("study", value) == expected
    assert p("study", "x") != p("patient", "x")


# ---- DICOM JSON headers read directly: same events, same reasons as via pydicom -------


def _header_variants() -> list[dict]:
    import warnings

    from pydicom import dcmread
    from pydicom.data import get_testdata_files

    from connectors.dicom_header import dataset_to_dicom_json

    headers = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in sorted(get_testdata_files("*.dcm"))[:30]:
            try:
                ds = dcmread(path, stop_before_pixels=True)
                headers.append(dataset_to_dicom_json(ds))
            except Exception:  # a test file pydicom cannot re-encode
                continue
    base = {
        "0020000D": {"vr": "UI", "Value": ["1.2.3.4"]},
        "00080070": {"vr": "LO", "Value": ["ACME Medical"]},
        "00180050": {"vr": "DS", "Value": [1.25]},
        "00280030": {"vr": "DS", "Value": [0.5, 0.5]},
        "00181020": {"vr": "LO", "Value": ["VA10", "syngo 2"]},
        "00100040": {"vr": "CS", "Value": ["f"]},
        "00101010": {"vr": "AS", "Value": ["045Y"]},
        "00080020": {"vr": "DA", "Value": ["20260801"]},
    }
    variants: list[dict] = [base]
    hostile = {
        "negative DS": {"00180050": {"vr": "DS", "Value": [-1]}},
        "DS as string": {"00180050": {"vr": "DS", "Value": ["1.5"]}},
        "DS not a number": {"00180050": {"vr": "DS", "Value": ["abc"]}},
        "wrong VR": {"00080070": {"vr": "US", "Value": [5]}},
        "no vr": {"00080070": {"Value": ["x"]}},
        "empty value": {"00080070": {"vr": "LO", "Value": []}},
        "no value": {"00080070": {"vr": "LO"}},
        "null item": {"00080070": {"vr": "LO", "Value": [None]}},
        "bool DS": {"00180050": {"vr": "DS", "Value": [True]}},
        "bulk data": {"00080070": {"vr": "LO", "BulkDataURI": "http://x"}},
        "bad sex": {"00100040": {"vr": "CS", "Value": ["X"]}},
        "bad date": {"00080020": {"vr": "DA", "Value": ["2026-08-01"]}},
        "bad age": {"00101010": {"vr": "AS", "Value": ["45"]}},
        "lower-case tag": {"0008103e": {"vr": "LO", "Value": ["x"]}, "00080070": None},
        "two spellings": {"00080070": {"vr": "LO", "Value": ["A"]}, "0008007a": None},
        "NUL": {"00080070": {"vr": "LO", "Value": ["AC\x00ME"]}},
        "no study uid": {"0020000D": None},
        "value not a list": {"00080070": {"vr": "LO", "Value": "ACME"}},
    }
    for change in hostile.values():
        header = dict(base)
        for key, element in change.items():
            if element is None:
                if key == "0008007a":
                    header["0008007a"] = {"vr": "LO", "Value": ["B"]}
                else:
                    header.pop(key, None)
            else:
                header[key] = element
        variants.append(header)
    return headers + variants


def test_headers_read_directly_match_pydicom(monkeypatch: pytest.MonkeyPatch) -> None:
    from connectors import dicom_header
    from surveillance.core.errors import InvalidRecord

    def outcome(header: dict) -> object:
        try:
            return dicom_header.metadata_from_dicom_json(header)
        except InvalidRecord as exc:
            return f"InvalidRecord: {exc.reason}"

    variants = _header_variants()
    fast = [outcome(h) for h in variants]
    direct = sum(
        1
        for h in variants
        if dicom_header._read_directly(
            {k: v for k, v in h.items() if k.upper() in dicom_header._WANTED}
        )
        is not None
    )
    monkeypatch.setattr(dicom_header, "_read_directly", lambda _wanted: None)
    slow = [outcome(h) for h in variants]
    assert len(variants) > 30
    assert direct > len(variants) // 2, "the direct path should take the well-formed headers"
    for header, a, b in zip(variants, fast, slow, strict=True):
        assert a == b, header
