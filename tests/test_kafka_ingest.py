"""The Kafka intake against a real tansu broker and a real PostgreSQL database.

Covers: the three topics end to end, dead letters with their topic/partition/
offset, redelivery without duplicates, resuming from the offsets stored in
PostgreSQL whatever the broker's committed offsets say, `kafka lag`, and
`deadletters replay` after the missing model is registered, and a database
outage that the consumer backs off from and recovers without losing a record.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cli_runner import run_cli
from fixtures_kafka import GROUP_TIMEOUTS, KafkaBroker, Topics
from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata
from pg_server import PostgresServer
from sqlalchemy import delete, func, select
from sqlalchemy.engine import make_url

from connectors.records import event_to_record
from surveillance.core.config import EXAMPLE_CONFIG, ModelConfig, Settings, load_settings
from surveillance.core.events import DicomMetadataEvent
from surveillance.intake.ingest import Ingestor
from surveillance.intake.kafka import KafkaIngestService
from surveillance.intake.pseudonym import Pseudonymizer
from surveillance.store import Store
from surveillance.store.models import (
    ConsumerOffsetRow,
    DeadLetterRow,
    DiagnosisRow,
    PredictionRow,
    StudyRow,
)

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.parametrize("db_url", ["postgres"], indirect=True),
]

KEY_HEX = "cd" * 32
MODEL = "cxr-pneumothorax"


def _prediction(i: int, *, model: str = MODEL, score: float = 0.4) -> dict[str, Any]:
    return {
        "message_id": f"p-{i}",
        "model": model,
        "model_version": "2.1.0",
        "study_instance_uid": f"1.2.826.0.1.3680043.8.498.{i}",
        "outputs": {"pneumothorax": score},
        "predicted_at": "2026-08-01T10:00:00Z",
    }


def _diagnosis(i: int) -> dict[str, Any]:
    return {
        "message_id": f"d-{i}",
        "study_instance_uid": f"1.2.826.0.1.3680043.8.498.{i}",
        "finding": "pneumothorax",
        "present": i % 2 == 0,
        "source": "report",
        "confirmed_at": "2026-08-20T09:00:00+02:00",
    }


def _header(i: int) -> dict[str, Any]:
    return event_to_record(
        DicomMetadataEvent(
            study_instance_uid=f"1.2.826.0.1.3680043.8.498.{i}",
            patient_id=f"PAT-{i}",
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
    )


def _settings(broker: KafkaBroker, topics: Topics) -> Settings:
    return load_settings(EXAMPLE_CONFIG, env={}, overrides=topics.overrides(broker.bootstrap))


def _consume(store: Store, settings: Settings, timeout_s: float = 90) -> KafkaIngestService:
    """Run a service until every partition is caught up (bounded by ``timeout_s``)."""
    service = KafkaIngestService(
        store,
        Ingestor(store, Pseudonymizer(bytes.fromhex(KEY_HEX)), batch_size=7),
        settings,
        max_records=10,  # several batches and transactions even for a few records
        poll_timeout_ms=200,
        session_timeout_ms=GROUP_TIMEOUTS["session_timeout_ms"],
        heartbeat_interval_ms=GROUP_TIMEOUTS["heartbeat_interval_ms"],
    )
    stop = threading.Event()
    timer = threading.Timer(timeout_s, stop.set)
    timer.start()
    try:
        service.run(stop, until_caught_up=True)
    finally:
        timer.cancel()
    assert not stop.is_set(), f"not caught up within {timeout_s}s: {service.health()}"
    return service


def _count(store: Store, table: type) -> int:
    with store.sessions.scope() as s:
        return int(s.scalar(select(func.count()).select_from(table)) or 0)


def _offsets(store: Store, group: str) -> dict[tuple[str, int], int]:
    with store.sessions.scope() as s:
        rows = s.execute(
            select(
                ConsumerOffsetRow.topic, ConsumerOffsetRow.partition, ConsumerOffsetRow.next_offset
            ).where(ConsumerOffsetRow.consumer_group == group)
        )
        return {(t, p): o for t, p, o in rows}


def _cli(
    *args: str, db_url: str, tmp_path: Path, bootstrap: str
) -> subprocess.CompletedProcess[str]:
    return run_cli(
        *args,
        cwd=tmp_path,
        db_url=db_url,
        key_hex=KEY_HEX,
        env={"SURVEILLANCE_KAFKA_BOOTSTRAP": bootstrap},
    )


def test_three_topics_into_postgres_with_dead_letters_and_lag(
    store: Store,
    kafka_broker: KafkaBroker,
    kafka_topics: Topics,
    db_url: str,
    tmp_path: Path,
) -> None:
    t = kafka_topics
    kafka_broker.produce(t.predictions, [_prediction(i) for i in range(30)], partitions=3)
    kafka_broker.produce(t.metadata, [_header(i) for i in range(5)])
    kafka_broker.produce(t.diagnoses, [_diagnosis(i) for i in range(5)])
    bad: dict[str, bytes | dict[str, Any]] = {
        "not valid JSON": b'{"message_id": "x", ',
        "missing required field 'outputs'": {
            k: v for k, v in _prediction(90).items() if k != "outputs"
        },
        "unknown model 'cxr-nope'": _prediction(91, model="cxr-nope"),
        "outside 0..1": _prediction(92, score=1.5),
    }  # fmt: skip
    positions = kafka_broker.produce(t.predictions, bad.values(), partitions=3)
    bad_header = kafka_broker.produce(t.metadata, [b"[1, 2]"])

    service = _consume(store, _settings(kafka_broker, t))

    assert _count(store, PredictionRow) == 30
    assert _count(store, DiagnosisRow) == 5
    with store.sessions.scope() as s:
        assert s.scalar(select(func.count()).where(StudyRow.has_metadata)) == 5
    letters = {d.position: d for d in store.events.dead_letters()}
    expected = {
        f"kafka {t.predictions} partition {p} offset {o}": reason
        for (p, o), reason in zip(positions, bad, strict=True)
    }
    expected[f"kafka {t.metadata} partition {bad_header[0][0]} offset {bad_header[0][1]}"] = (
        "must be a JSON object"
    )
    assert set(letters) == set(expected)
    for position, reason in expected.items():
        assert reason in letters[position].reason, (position, letters[position].reason)
    unknown = next(d for d in letters.values() if "cxr-nope" in d.reason)
    assert unknown.kind == "prediction"
    assert unknown.payload is not None and "1.2.826.0.1.3680043" not in unknown.payload

    # Offsets in PostgreSQL: the next offset of every partition = its log end.
    stored = _offsets(store, t.group)
    assert stored == {
        (t.predictions, 0): 12,
        (t.predictions, 1): 11,
        (t.predictions, 2): 11,
        (t.metadata, 0): 6,
        (t.diagnoses, 0): 5,
    }
    health = service.health()
    assert health.state == "stopped"
    assert health.total_lag == 0
    assert {(p.topic, p.partition): p.stored for p in health.partitions} == stored
    assert health.counts.predictions_new == 30 and health.counts.dead_letters == 5

    # `kafka lag` reads the stored offsets and the broker's log ends.
    kafka_broker.produce(t.predictions, [_prediction(i) for i in range(100, 104)], partitions=3)
    result = _cli(
        "--config", str(EXAMPLE_CONFIG), "kafka", "lag", "--group", t.group, "--json",
        db_url=db_url, tmp_path=tmp_path, bootstrap=kafka_broker.bootstrap,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lag = json.loads(result.stdout)
    assert lag["group"] == t.group
    assert sum(p["lag"] for p in lag["partitions"] if p["topic"] == t.predictions) == 4, lag


def test_redelivery_and_restart_follow_postgres_offsets_not_the_broker(
    store: Store,
    kafka_broker: KafkaBroker,
    kafka_topics: Topics,
) -> None:
    t = kafka_topics
    settings = _settings(kafka_broker, t)
    kafka_broker.produce(t.predictions, [_prediction(i) for i in range(30)], partitions=3)
    kafka_broker.produce(t.predictions, [b"not json"])
    first = _consume(store, settings)
    assert first.health().counts.predictions_new == 30
    assert (_count(store, PredictionRow), _count(store, DeadLetterRow)) == (30, 1)

    # Redelivery: forget the stored offsets, so everything is read again.
    with store.sessions.scope() as s:
        s.execute(delete(ConsumerOffsetRow).where(ConsumerOffsetRow.consumer_group == t.group))
    again = _consume(store, settings).health().counts
    assert (again.predictions_new, again.predictions_duplicate, again.dead_letters) == (0, 30, 0)
    assert (_count(store, PredictionRow), _count(store, DeadLetterRow)) == (30, 1)

    # The broker's committed offsets are wrong: past the end on partition 0 (a consumer
    # trusting them would skip), zero on partition 1 (it would re-read). PostgreSQL wins.
    kafka_broker.produce(t.predictions, [_prediction(i) for i in range(200, 212)], partitions=3)
    committer = KafkaConsumer(
        bootstrap_servers=[kafka_broker.bootstrap], group_id=t.group, enable_auto_commit=False
    )
    try:
        p0, p1 = TopicPartition(t.predictions, 0), TopicPartition(t.predictions, 1)
        committer.assign([p0, p1])
        committer.commit({p0: OffsetAndMetadata(1000, "", -1), p1: OffsetAndMetadata(0, "", -1)})
        assert committer.committed(p0) == 1000
    finally:
        committer.close(autocommit=False)
    resumed = _consume(store, settings).health().counts
    assert (resumed.predictions_new, resumed.predictions_duplicate) == (12, 0)
    assert _count(store, PredictionRow) == 42


def test_deadletters_replay_after_registering_the_missing_model(
    store: Store,
    kafka_broker: KafkaBroker,
    kafka_topics: Topics,
    db_url: str,
    tmp_path: Path,
) -> None:
    t = kafka_topics
    kafka_broker.produce(
        t.predictions,
        [
            _prediction(1, model="cxr-effusion"),
            _prediction(2, model="cxr-effusion"),
            _prediction(3, score=7.0),
            b"\xff\xfe not json",
        ],
        partitions=1,
    )
    _consume(store, _settings(kafka_broker, t))
    assert _count(store, PredictionRow) == 0
    assert len(store.events.dead_letters()) == 4

    # Still unknown: nothing is replayed, exit 1, each outcome reported.
    result = _cli("deadletters", "replay", "--all", db_url=db_url, tmp_path=tmp_path,
                  bootstrap=kafka_broker.bootstrap)  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "0 of 4 replayed" in result.stdout
    assert "still invalid: unknown model 'cxr-effusion'" in result.stdout
    assert "payload was not JSON" in result.stdout

    base = load_settings(EXAMPLE_CONFIG, env={}).models[0]
    store.registry.register_models(
        [
            ModelConfig(
                **{
                    **base.model_dump(),
                    "name": "cxr-effusion",
                    "baselines": [],
                    "monitor_only": True,
                }
            )
        ],
        actor="test",
    )
    result = _cli("deadletters", "replay", "--all", "--json", db_url=db_url, tmp_path=tmp_path,
                  bootstrap=kafka_broker.bootstrap)  # fmt: skip
    assert result.returncode == 1, result.stderr  # two still fail
    outcomes = {o["id"]: o for o in json.loads(result.stdout)}
    assert sorted(o["replayed"] for o in outcomes.values()) == [False, False, True, True]
    assert _count(store, PredictionRow) == 2
    with store.sessions.scope() as s:
        rows = s.execute(select(PredictionRow.message_id, StudyRow.uid_pseudonym).join(StudyRow))
        stored = dict(rows.all())
    # The replayed rows carry the same study pseudonyms a direct ingest would have made.
    pseudo = Pseudonymizer(bytes.fromhex(KEY_HEX))
    assert stored == {f"p-{i}": pseudo("study", f"1.2.826.0.1.3680043.8.498.{i}") for i in (1, 2)}
    pending = store.events.dead_letters()
    assert len(pending) == 2 and all(d.replayed_at is None for d in pending)
    assert len(store.events.dead_letters(include_replayed=True)) == 4
    assert store.audit.verify().ok

    # Replaying an already replayed one is reported, not written again.
    replayed_id = next(i for i, o in outcomes.items() if o["replayed"])
    result = _cli("deadletters", "replay", str(replayed_id), db_url=db_url, tmp_path=tmp_path,
                  bootstrap=kafka_broker.bootstrap)  # fmt: skip
    assert "already replayed" in result.stdout
    assert _count(store, PredictionRow) == 2


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


def test_database_outage_backs_off_and_resumes_without_loss(
    store: Store,
    postgres_server: PostgresServer,
    db_url: str,
    kafka_broker: KafkaBroker,
    kafka_topics: Topics,
) -> None:
    t = kafka_topics
    kafka_broker.produce(t.predictions, [_prediction(i) for i in range(20)], partitions=3)
    service = KafkaIngestService(
        store,
        Ingestor(store, Pseudonymizer(bytes.fromhex(KEY_HEX))),
        _settings(kafka_broker, t),
        poll_timeout_ms=200,
        backoff_initial_s=0.2,
        backoff_max_s=1.0,
        session_timeout_ms=GROUP_TIMEOUTS["session_timeout_ms"],
        heartbeat_interval_ms=GROUP_TIMEOUTS["heartbeat_interval_ms"],
    )
    stop = threading.Event()
    runner = threading.Thread(target=service.run, args=(stop,), daemon=True)
    runner.start()
    database = make_url(db_url).database
    admin = psycopg.connect(postgres_server.conninfo("postgres"), autocommit=True)
    try:
        _wait_for(lambda: service.health().records_written == 20, 60, "the first 20 records")
        # The database goes away: no new connections, existing ones killed.
        admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            (database,),
        )
        kafka_broker.produce(t.predictions, [_prediction(i) for i in range(20, 40)], partitions=3)
        _wait_for(lambda: service.health().consecutive_failures >= 2, 60, "retries")
        down = service.health()
        assert down.state == "backing-off" and "database" in (down.last_error or "")
        assert runner.is_alive()
    finally:
        admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        admin.close()
    try:
        _wait_for(lambda: service.health().records_written == 40, 60, "the outage backlog")
    finally:
        stop.set()
        runner.join(timeout=60)
    health = service.health()
    assert (health.consecutive_failures, health.state) == (0, "stopped")
    assert _count(store, PredictionRow) == 40
    assert (
        sum(o for (topic, _), o in _offsets(store, t.group).items() if topic == t.predictions) == 40
    )


def test_bench_ingest_prints_figures_and_cleans_up(
    store: Store,
    db_url: str,
    kafka_broker: KafkaBroker,
    tmp_path: Path,
) -> None:
    result = _cli(
        "bench", "ingest", "--messages", "300", "--partitions", "2", "--json",
        "--session-timeout-ms", "6000", "--heartbeat-ms", "2000",
        db_url=db_url, tmp_path=tmp_path, bootstrap=kafka_broker.bootstrap,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["complete"] and figures["rows_stored"] == 300 == figures["copy_rows"]
    assert (figures["duplicates"], figures["dead_letters"]) == (0, 0)
    for key in ("produce_msgs_per_s", "ingest_msgs_per_s", "copy_rows_per_s"):
        assert figures[key] > 0
    assert figures["bare_consumer_msgs"] == 300  # the yardstick read the whole topic
    assert figures["bare_consumer_msgs_per_s"] > 0
    assert figures["ingest_to_bare_consumer_ratio"] is not None
    assert (_count(store, PredictionRow), _count(store, StudyRow)) == (0, 0)
    assert _count(store, ConsumerOffsetRow) == 0


def test_bench_ingest_jsonl_prints_intake_and_database_figures(
    store: Store, db_url: str, tmp_path: Path
) -> None:
    result = run_cli(
        "bench", "ingest-jsonl", "--messages", "1000", "--batch-size", "300", "--json",
        cwd=tmp_path, db_url=db_url, key_hex=KEY_HEX, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    for name, unit in (("predictions_only", "predictions"), ("with_dicom_headers", "studies")):
        run = figures[name]
        assert (run["predictions_new"], run["dead_letters"], run["unit"]) == (1000, 0, unit)
        assert run["per_s"] > 0 and run["intake_only_per_s"] > 0
    assert figures["with_dicom_headers"]["headers"] == 1000
    assert figures["write_path"]["rows"] == 1000 == figures["write_path"]["plain_copy_rows"]
    # predictions and the study skeletons they made are deleted; the header run's studies
    # (with their metadata) stay in the scratch database, as the bench's docstring says
    assert (_count(store, PredictionRow), _count(store, StudyRow)) == (0, 1000)
