"""Monthly partitions of ``prediction``/``embedding`` on PostgreSQL (0010); SQLite: plain.

The conversion keeps every row both ways with the id sequence and the indexes;
the idempotency key (now ``prediction_key``) still makes a redelivery a
duplicate and a changed redelivery a dead-lettered conflict; maintenance creates
partitions ahead and adopts months found in DEFAULT; retention drops whole old
partitions (with their key rows) and keeps the newer ones.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import psycopg
import pytest
from alembic import command
from sqlalchemy import inspect, select, text

from surveillance.core.config import RetentionConfig, Settings
from surveillance.intake.ingest import Ingestor
from surveillance.intake.pseudonym import Pseudonymizer
from surveillance.scheduling.jobs import JobContext, partition_maintenance, retention_job
from surveillance.store import IngestBatch, Store
from surveillance.store.domain import PredictionRecord
from surveillance.store.embeddings import EmbeddingWrite
from surveillance.store.engine import make_engine
from surveillance.store.migrations import alembic_config, upgrade
from surveillance.store.models import AuditEventRow, PredictionRow
from surveillance.store.partitions import add_months, month_start

MODEL = "cxr-pneumothorax"
ROLES_SQL = Path(__file__).parents[1] / "deploy" / "postgres" / "roles.sql"
NOW = datetime.now(UTC)


def _line(i: int, *, score: float = 0.25, at: str = "2026-03-10T10:00:00Z") -> str:
    return json.dumps(
        {
            "kind": "prediction",
            "message_id": f"m-{i}",
            "model": MODEL,
            "model_version": "2.1.0",
            "study_instance_uid": f"1.2.826.0.1.3680043.8.498.{i}",
            "outputs": {"pneumothorax": score},
            "predicted_at": at,
        }
    )


def _file(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _sql(store: Store, sql: str) -> list[tuple]:
    with store.sessions.scope() as s:
        return [tuple(r) for r in s.execute(text(sql))]


def _record(store: Store, message_id: str, at: datetime, score: float = 0.5) -> PredictionRecord:
    model = store.registry.model(MODEL)
    return PredictionRecord(
        message_id=message_id,
        model_id=model.id,
        model_version=model.version,
        study_uid_pseudonym=hashlib.sha256(message_id.encode()).hexdigest(),
        finding="pneumothorax",
        score=score,
        predicted_at=at,
    )


def _write(store: Store, *records: PredictionRecord) -> int:
    batch = IngestBatch()
    batch.predictions.extend(records)
    return store.events.write_batch(batch).predictions_new


# ---- migration up and down with data ------------------------------------------------


@pytest.mark.postgres
def test_upgrade_and_downgrade_keep_rows_ids_and_indexes(
    pg_url: str, settings: Settings, pseudonymizer: Pseudonymizer, tmp_path: Path
) -> None:
    engine = make_engine(pg_url)
    upgrade(engine)
    store = Store(engine)
    store.registry.register_models(settings.models, actor="test")
    months = ("2025-11-20T08:00:00Z", "2026-01-05T08:00:00Z", "2026-03-10T10:00:00Z")
    lines = [_line(i, at=months[i % 3]) for i in range(30)]
    Ingestor(store, pseudonymizer).ingest_jsonl(_file(tmp_path / "a.jsonl", lines))
    before = _sql(store, "SELECT id, message_id, score, predicted_at FROM prediction ORDER BY id")
    assert len(before) == 30
    studies = [sid for (sid,) in _sql(store, "SELECT id FROM study ORDER BY id")][:4]
    vectors = [EmbeddingWrite(sid, np.full(8, sid, dtype=np.float32)) for sid in studies]
    assert store.embeddings.write_embeddings("conv-ae", "1", vectors, actor="test") == 4
    embeddings = "SELECT id, study_id, vector, created_at FROM embedding ORDER BY id"
    stored = _sql(store, embeddings)

    command.downgrade(alembic_config(engine), "0009")
    inspector = inspect(engine)
    assert not {"prediction_key", "embedding_key"} & set(inspector.get_table_names())
    assert not any("_y20" in n for n in inspector.get_table_names())  # no partitions
    assert inspector.get_pk_constraint("prediction")["constrained_columns"] == ["id"]
    assert {u["name"] for u in inspector.get_unique_constraints("prediction")} == {
        "uq_prediction_message_finding"
    }
    assert {u["name"] for u in inspector.get_unique_constraints("embedding")} == {
        "uq_embedding_key"
    }
    assert _sql(store, embeddings) == stored
    rows = "SELECT id, message_id, score, predicted_at FROM prediction ORDER BY id"
    assert _sql(store, rows) == before

    upgrade(engine)  # converts the 30 rows again
    assert _sql(store, rows) == before
    assert _sql(store, embeddings) == stored
    assert _sql(store, "SELECT count(*) FROM embedding_key") == [(4,)]
    # the key survived the conversion: the same study and extractor version is not written again
    assert store.embeddings.write_embeddings("conv-ae", "1", vectors[:1], actor="test") == 0
    assert store.embeddings.write_embeddings("conv-ae", "2", vectors[:1], actor="test") == 1
    inspector = inspect(engine)
    assert inspector.get_pk_constraint("prediction")["constrained_columns"] == [
        "id",
        "predicted_at",
    ]
    names = {ix["name"] for ix in inspector.get_indexes("prediction")}
    assert {"ix_prediction_ingested_at", "ix_prediction_predicted_at"} <= names  # 0008
    assert all(c["comment"] for c in inspector.get_columns("prediction"))
    assert _sql(store, "SELECT count(*) FROM prediction_key") == [(30,)]
    assert _sql(store, "SELECT count(*) FROM prediction_default") == [(0,)]
    held = {
        name: n
        for name, n in _sql(
            store,
            "SELECT tableoid::regclass::text, count(*) FROM prediction GROUP BY 1",
        )
    }
    assert held == {"prediction_y2025m11": 10, "prediction_y2026m01": 10, "prediction_y2026m03": 10}

    # The id sequence carries on after the converted rows.
    new = Ingestor(store, pseudonymizer).ingest_jsonl(_file(tmp_path / "b.jsonl", [_line(99)]))
    assert new.predictions_new == 1
    [(new_id,)] = _sql(store, "SELECT id FROM prediction WHERE message_id = 'm-99'")
    assert new_id > max(row[0] for row in before)
    store.close()


@pytest.mark.postgres
def test_idempotency_key_still_holds_after_the_conversion(
    pg_url: str, settings: Settings, pseudonymizer: Pseudonymizer, tmp_path: Path
) -> None:
    """Rows converted by the upgrade: a redelivery is skipped, a changed one dead-lettered."""
    engine = make_engine(pg_url)
    upgrade(engine)
    store = Store(engine)
    store.registry.register_models(settings.models, actor="test")
    ingestor = Ingestor(store, pseudonymizer)
    ingestor.ingest_jsonl(_file(tmp_path / "a.jsonl", [_line(i) for i in range(5)]))
    command.downgrade(alembic_config(engine), "0009")
    upgrade(engine)

    again = ingestor.ingest_jsonl(
        _file(
            tmp_path / "b.jsonl",
            [
                _line(0),  # same content: duplicate
                _line(1, score=0.9),  # conflict: score
                _line(2, at="2026-05-01T00:00:00Z"),  # conflict: predicted_at, other month
                _line(7),  # new
            ],
        )
    )
    assert (again.predictions_new, again.predictions_duplicate, again.conflicts) == (1, 1, 2)
    reasons = {d.reason.split("'")[1]: d.reason for d in store.events.dead_letters()}
    assert set(reasons) == {"m-1", "m-2"}
    assert "different score" in reasons["m-1"]
    assert "different predicted_at" in reasons["m-2"]
    scores = dict(_sql(store, "SELECT message_id, score FROM prediction"))
    assert scores == {"m-0": 0.25, "m-1": 0.25, "m-2": 0.25, "m-3": 0.25, "m-4": 0.25, "m-7": 0.25}
    assert _sql(store, "SELECT count(*) FROM prediction WHERE message_id = 'm-2'") == [(1,)]
    store.close()


# ---- maintenance ----------------------------------------------------------------------


@pytest.mark.postgres
def test_partitions_are_created_ahead_and_default_months_adopted(pg_store: Store) -> None:
    months = [p.start for p in pg_store.partitions.partitions()]
    for ahead in range(-1, 4):  # the upgrade made the previous .. current + 3
        assert add_months(NOW, ahead) in months
    assert pg_store.partitions.ensure(add_months(NOW, 6), since=NOW) == 3
    assert add_months(NOW, 6) in [p.start for p in pg_store.partitions.partitions()]
    assert pg_store.partitions.ensure(add_months(NOW, 6), since=NOW) == 0  # idempotent

    stray = datetime(2020, 3, 14, 9, 30, tzinfo=UTC)  # a producer with a wrong clock
    assert _write(pg_store, _record(pg_store, "old-1", stray), _record(pg_store, "now-1", NOW)) == 2
    assert pg_store.partitions.default_rows() == 1

    assert pg_store.partitions.ensure(NOW, since=NOW) == 1  # adopts March 2020 only
    assert pg_store.partitions.default_rows() == 0
    held = dict(_sql(pg_store, "SELECT message_id, tableoid::regclass::text FROM prediction"))
    assert held == {"old-1": "prediction_y2020m03", "now-1": f"prediction_y{NOW:%Ym%m}"}
    # the moved row is still the one the key points at: its redelivery is a duplicate
    counts = pg_store.events.write_batch(
        IngestBatch(predictions=[_record(pg_store, "old-1", stray)])
    )
    assert (counts.predictions_new, counts.predictions_duplicate, counts.conflicts) == (0, 1, 0)


@pytest.mark.postgres
def test_ensure_refuses_a_table_that_is_not_partitioned(pg_store: Store) -> None:
    with pytest.raises(ValueError, match="not partitioned"):
        pg_store.partitions.ensure(NOW, table="study")
    with pg_store.sessions.scope() as s, pytest.raises(Exception, match="not a partitioned"):
        s.execute(text("SELECT surveillance_ensure_partitions('study', now(), now())"))


@pytest.mark.postgres
def test_the_daemon_role_maintains_partitions_without_owning_the_tables(pg_store: Store) -> None:
    """deploy/postgres/roles.sql: EXECUTE on the SECURITY DEFINER functions, for the daemon only."""
    raw = pg_store.engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute(ROLES_SQL.read_text())  # no parameters: '%I' stays SQL
        raw.commit()
        cursor.execute("SET ROLE surveillance_daemon")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            cursor.execute(
                "CREATE TABLE prediction_y2031m01 PARTITION OF prediction "
                "FOR VALUES FROM ('2031-01-01') TO ('2031-02-01')"
            )
        raw.rollback()
        cursor.execute("SET ROLE surveillance_daemon")
        cursor.execute(
            "SELECT surveillance_ensure_partitions('prediction', '2031-01-15Z', '2031-02-15Z')"
        )
        assert cursor.fetchone()[0] == 2
        cursor.execute("SELECT surveillance_drop_partitions('prediction', '2031-02-01Z')")
        dropped = cursor.fetchone()[0]
        assert "prediction_y2031m01" in dropped and "prediction_y2031m02" not in dropped
        raw.commit()
        cursor.execute("SET ROLE surveillance_oncall")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            cursor.execute("SELECT surveillance_drop_partitions('prediction', '2031-03-01Z')")
        raw.rollback()
    finally:
        raw.close()
    assert "prediction_y2031m02" in [p.name for p in pg_store.partitions.partitions()]


# ---- retention ------------------------------------------------------------------------


@pytest.mark.postgres
def test_retention_drops_whole_old_partitions_and_keeps_newer(
    pg_store: Store, settings: Settings
) -> None:
    old, older, kept = add_months(NOW, -13), add_months(NOW, -14), add_months(NOW, -12)
    pg_store.partitions.ensure(NOW, since=older)
    records = [
        _record(pg_store, "older", older + timedelta(days=3)),
        _record(pg_store, "old", old + timedelta(days=27)),
        _record(pg_store, "kept", kept + timedelta(hours=1)),
        _record(pg_store, "recent", NOW - timedelta(hours=1)),
    ]
    assert _write(pg_store, *records) == 4

    keep_forever = settings.model_copy(update={"retention": RetentionConfig()})
    retention_job(JobContext(keep_forever, pg_store), NOW, run_id=1)
    assert _sql(pg_store, "SELECT count(*) FROM prediction") == [(4,)]  # default: keep all

    twelve = settings.model_copy(update={"retention": RetentionConfig(prediction_months=12)})
    retention_job(JobContext(twelve, pg_store), NOW, run_id=2)

    left = {m for (m,) in _sql(pg_store, "SELECT message_id FROM prediction")}
    assert left == {"kept", "recent"}
    assert {m for (m,) in _sql(pg_store, "SELECT message_id FROM prediction_key")} == left
    names = [p.name for p in pg_store.partitions.partitions()]
    assert f"prediction_y{old:%Ym%m}" not in names and f"prediction_y{older:%Ym%m}" not in names
    assert f"prediction_y{kept:%Ym%m}" in names
    assert month_start(kept) == add_months(NOW, -12)
    with pg_store.sessions.scope() as s:
        [detail] = s.scalars(
            select(AuditEventRow.detail).where(AuditEventRow.action == "retention.partitions")
        ).all()
    assert detail["dropped"] == [f"prediction_y{older:%Ym%m}", f"prediction_y{old:%Ym%m}"]
    assert pg_store.audit.verify().ok

    # nothing left to drop: a second run changes nothing and audits nothing new
    assert partition_maintenance(pg_store, NOW, 12) == 0


@pytest.mark.postgres
def test_embedding_retention_drops_its_own_old_partitions_only(
    pg_store: Store, settings: Settings
) -> None:
    old = add_months(NOW, -25)
    pg_store.partitions.ensure(NOW, since=old, table="embedding")
    [(study,)] = _sql(
        pg_store,
        "INSERT INTO study (uid_pseudonym, has_metadata, received_at) "
        "VALUES ('u1', false, now()) RETURNING id",
    )
    vector = np.zeros(4, dtype=np.float32)
    pg_store.embeddings.write_embeddings(
        "conv-ae", "new", [EmbeddingWrite(study, vector)], actor="t"
    )
    with pg_store.sessions.scope() as s:  # an embedding written 25 months ago
        s.execute(
            text(
                "WITH k AS (INSERT INTO embedding_key VALUES (:s, 'conv-ae', 'old', :at) "
                "RETURNING *) INSERT INTO embedding (study_id, extractor, extractor_version, "
                "dim, vector, created_at) SELECT study_id, extractor, extractor_version, 4, "
                "'\\x00', created_at FROM k"
            ),
            {"s": study, "at": old + timedelta(days=2)},
        )
    _write(pg_store, _record(pg_store, "old-prediction", old + timedelta(days=2)))

    keep = RetentionConfig(prediction_months=None, embedding_months=24)
    retention_job(JobContext(settings.model_copy(update={"retention": keep}), pg_store), NOW, 3)

    assert _sql(pg_store, "SELECT extractor_version FROM embedding") == [("new",)]
    assert _sql(pg_store, "SELECT extractor_version FROM embedding_key") == [("new",)]
    assert _sql(pg_store, "SELECT message_id FROM prediction") == [("old-prediction",)]
    names = [p.name for p in pg_store.partitions.partitions("embedding")]
    assert f"embedding_y{old:%Ym%m}" not in names and f"embedding_y{NOW:%Ym%m}" in names


# ---- SQLite -----------------------------------------------------------------------------


def test_sqlite_keeps_plain_tables(sqlite_url: str, settings: Settings) -> None:
    engine = make_engine(sqlite_url)
    upgrade(engine)
    inspector = inspect(engine)
    assert not {"prediction_key", "embedding_key"} & set(inspector.get_table_names())
    assert {u["name"] for u in inspector.get_unique_constraints("prediction")} == {
        "uq_prediction_message_finding"
    }
    assert {u["name"] for u in inspector.get_unique_constraints("embedding")} == {
        "uq_embedding_key"
    }
    store = Store(engine)
    store.registry.register_models(settings.models, actor="test")
    assert store.partitions.partitions() == []
    assert store.partitions.ensure(add_months(NOW, 3), since=NOW) == 0
    assert partition_maintenance(store, NOW, 1) == 0
    record = _record(store, "m-1", datetime(2020, 1, 1, tzinfo=UTC))
    assert _write(store, record) == 1
    assert _write(store, record) == 0  # the table's own unique key still skips it
    with store.sessions.scope() as s:
        assert s.scalar(select(PredictionRow.message_id)) == "m-1"
    store.close()
