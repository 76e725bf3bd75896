"""Issue 12 wired into the product: config refusals, key files, keyed audit chain,
database roles, label withdrawals, spool moves, Kafka offsets out of range."""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fixtures_kafka import GROUP_TIMEOUTS, KafkaBroker, Topics
from sqlalchemy import select, update

from connectors.records import parse_record
from surveillance.core.config import (
    EXAMPLE_CONFIG,
    KNOWN_EXTRACTORS,
    Settings,
    load_settings,
    parse_settings,
)
from surveillance.core.errors import ConfigError, PseudonymKeyError, StoreError
from surveillance.core.statuses import SignalKind
from surveillance.intake.dicom import check_spool_dir
from surveillance.intake.ingest import Ingestor
from surveillance.intake.kafka import KafkaIngestService
from surveillance.intake.labels import ingest_label_file
from surveillance.intake.pseudonym import (
    Pseudonymizer,
    generate_key_file,
    load_audit_key,
    load_pseudonymizer,
)
from surveillance.store import Store
from surveillance.store.audit import GENESIS, chain_hash
from surveillance.store.domain import IngestBatch, SpoolRecord
from surveillance.store.engine import make_engine
from surveillance.store.models import AuditEventRow, ConsumerOffsetRow, DiagnosisRow

ROLES_SQL = Path(__file__).parents[1] / "deploy" / "postgres" / "roles.sql"
UID = "1.2.826.0.1.3680043.8.498.77"


def _model(**changes: Any) -> dict[str, Any]:
    base = load_settings(EXAMPLE_CONFIG, env={}).models[0].model_dump()
    return {**base, **changes}


# ---- config ---------------------------------------------------------------------------


def test_unknown_extractor_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown extractor 'nonexistent'; expected one of"):
        parse_settings({"embedding": {"extractor": "nonexistent"}})


def test_known_extractors_match_the_backbone_registry() -> None:
    from surveillance.analysis.embeddings.backbones import Backbone

    assert set(KNOWN_EXTRACTORS) == set(Backbone.registry)


def test_model_without_baselines_needs_monitor_only() -> None:
    with pytest.raises(ConfigError, match="monitor_only = true"):
        parse_settings({"models": [_model(baselines=[])]})
    settings = parse_settings({"models": [_model(baselines=[], monitor_only=True)]})
    assert settings.models[0].monitor_only


def test_intake_limits_are_configurable() -> None:
    settings = parse_settings(
        {
            "intake": {"not_before": datetime(2020, 1, 1, tzinfo=UTC), "max_ahead_hours": 2},
            "dicom": {"accepted_sop_classes": ["1.2.840.10008.5.1.4.1.1.2"]},
            "kafka": {"on_offset_out_of_range": "stop"},
        }
    )
    assert settings.intake.not_before.year == 2020
    with pytest.raises(ConfigError, match="on_offset_out_of_range"):
        parse_settings({"kafka": {"on_offset_out_of_range": "latest"}})
    with pytest.raises(ConfigError, match="accepted_sop_classes"):
        parse_settings({"dicom": {"accepted_sop_classes": ["CT"]}})


def test_time_bounds_from_config_reach_the_jsonl_ingest(
    tmp_path: Path, store: Store, pseudonymizer: Pseudonymizer, settings: Settings
) -> None:
    strict = settings.model_copy(
        update={
            "intake": settings.intake.model_copy(
                update={"not_before": datetime(2026, 8, 2, tzinfo=UTC)}
            )
        }
    )
    ingestor = Ingestor.for_settings(store, pseudonymizer, strict)
    line = {
        "kind": "prediction",
        "message_id": "m-1",
        "model": "cxr-pneumothorax",
        "model_version": "2.1.0",
        "study_instance_uid": UID,
        "outputs": {"pneumothorax": 0.5},
        "predicted_at": "2026-08-01T10:00:00Z",
    }
    file = tmp_path / "events.jsonl"
    file.write_text(json.dumps(line) + "\n")
    counts = ingestor.ingest_jsonl(file)
    assert (counts.predictions_new, counts.dead_letters) == (0, 1)
    (letter,) = store.events.dead_letters()
    assert "before the earliest accepted time 2026-08-02" in letter.reason


# ---- key files ------------------------------------------------------------------------


def test_world_readable_key_is_refused_in_production_only(tmp_path: Path) -> None:
    key = generate_key_file(tmp_path / "pseudonym.key")
    load_pseudonymizer(key, mode="production")  # 0600: fine
    key.chmod(0o644)
    with pytest.raises(PseudonymKeyError, match=r"mode 0644\); run 'chmod 600"):
        load_pseudonymizer(key, mode="production")
    load_pseudonymizer(key, mode="demo")  # the demo only warns
    service = load_settings(None, env={"SURVEILLANCE_PSEUDONYM_KEY_FILE": str(key)}).service
    with pytest.raises(PseudonymKeyError, match="group or others"):
        load_audit_key(service)


# ---- the keyed audit chain ------------------------------------------------------------


def _rehash_unkeyed(store: Store) -> None:
    """What an attacker with table access does: edit a row, recompute every hash."""
    from surveillance.store.audit import _canonical

    with store.sessions.scope() as s:
        rows = list(s.scalars(select(AuditEventRow).order_by(AuditEventRow.seq)))
        prev = GENESIS
        for row in rows:
            if row.seq == 1:
                row.actor = "someone-else"
            payload = _canonical(
                row.seq,
                row.at,
                row.actor,
                row.action,
                row.entity,
                row.entity_id,
                row.detail,
                row.db_user,
            )
            row.prev_hash, row.hash = prev, chain_hash(prev, payload)
            row.key_id = None
            prev = row.hash


def test_recomputed_chain_fails_with_the_key(store: Store) -> None:
    key = os.urandom(32)
    store.audit.use_key(key)
    for i in range(3):
        store.audit.record(actor="qm", action="test.step", entity="thing", entity_id=i)
    assert store.audit.verify().ok
    _rehash_unkeyed(store)
    report = store.audit.verify()
    assert not report.ok
    assert any("not keyed" in p or "none of the" in p for p in report.problems), report.problems
    store.audit.use_key(None)
    assert store.audit.verify(key=b"x" * 32).problems  # the wrong key never verifies


def test_expected_head_and_count_catch_deleting_the_newest_events(store: Store) -> None:
    store.audit.use_key(b"k" * 32)
    for i in range(4):
        store.audit.record(actor="qm", action="test.step", entity="thing", entity_id=i)
    anchor = store.audit.anchor()
    assert anchor.events >= 4 and anchor.head_hash is not None
    assert store.audit.verify(expect_head=anchor.head_hash, expect_count=anchor.events).ok
    with store.sessions.scope() as s:
        newest = s.scalar(select(AuditEventRow).order_by(AuditEventRow.seq.desc()).limit(1))
        assert newest is not None
        s.delete(newest)
    assert store.audit.verify().ok  # from inside the database alone: invisible
    report = store.audit.verify(expect_head=anchor.head_hash, expect_count=anchor.events)
    assert not report.ok
    assert any("is not in the chain" in p for p in report.problems)
    assert any("fewer than the" in p for p in report.problems)


# ---- roles ----------------------------------------------------------------------------


def _as_user(pg_url: str, user: str) -> Store:
    from sqlalchemy.engine import make_url

    url = make_url(pg_url.replace("postgresql://", "postgresql+psycopg://", 1)).set(username=user)
    return Store(make_engine(url.render_as_string(hide_password=False)))


@pytest.mark.postgres
def test_oncall_role_may_ack_but_not_close_or_export(pg_url: str, pg_store: Store) -> None:
    from surveillance.intake.kafka import raise_intake_incident

    raw = pg_store.engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute(ROLES_SQL.read_text())  # no parameters: '%I' stays SQL
        for user, role in (("surv_t_oncall", "oncall"), ("surv_t_quality", "quality")):
            cursor.execute(
                "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = "
                f"'{user}') THEN CREATE ROLE {user} LOGIN IN ROLE surveillance_{role}; "
                "END IF; END $$"
            )
        raw.commit()
    finally:
        raw.close()
    raise_intake_incident(pg_store, "test", topic="t", action="earliest")
    (incident,) = pg_store.incidents.find()
    oncall, quality = _as_user(pg_url, "surv_t_oncall"), _as_user(pg_url, "surv_t_quality")
    try:
        acked, changed = oncall.incidents.ack(incident.id, actor="alice")
        assert changed and acked.status == "acknowledged"
        with pytest.raises(StoreError, match=r"permission denied|row-level security"):
            oncall.incidents.update(
                incident.id,
                actor="alice",
                kind="closed",
                status="closed",
                closed_at=datetime.now(UTC),
                resolution="x",
            )
        with pytest.raises(StoreError, match="row-level security"):
            oncall.audit.record(
                actor="alice", action="export.article72", entity="model", entity_id="m"
            )
        closed = quality.incidents.update(
            incident.id,
            actor="bob",
            kind="closed",
            status="closed",
            closed_at=datetime.now(UTC),
            resolution="broker fixed",
        )
        assert closed.status == "closed"
    finally:
        oncall.close()
        quality.close()
    with pg_store.sessions.scope() as s:
        rows = s.execute(select(AuditEventRow.action, AuditEventRow.db_user)).all()
    users = {action: user for action, user in rows}
    assert users["incident.acknowledged"] == "surv_t_oncall"  # the database's word, not --by
    assert users["incident.closed"] == "surv_t_quality"
    assert pg_store.audit.verify().ok


def test_sqlite_records_no_database_user(sqlite_url: str, settings: Settings) -> None:
    from surveillance.store.migrations import upgrade

    engine = make_engine(sqlite_url)
    upgrade(engine)
    store = Store(engine)
    store.audit.record(actor="demo", action="test.step", entity="thing", entity_id=1)
    with store.sessions.scope() as s:
        assert s.scalar(select(AuditEventRow.db_user)) is None  # single-user demo
    store.close()


# ---- labels ---------------------------------------------------------------------------


def _report(status: str, issued: str, codes: list[str]) -> dict[str, Any]:
    return {
        "resourceType": "DiagnosticReport",
        "id": "rep-1",
        "status": status,
        "issued": issued,
        "contained": [
            {
                "resourceType": "ImagingStudy",
                "id": "s",
                "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{UID}"}],
            }
        ],
        "imagingStudy": [{"reference": "#s"}],
        "conclusionCode": [
            {"coding": [{"system": "http://snomed.info/sct", "code": c}]} for c in codes
        ],
    }


def test_entered_in_error_withdraws_the_earlier_label(
    tmp_path: Path, store: Store, ingestor: Ingestor
) -> None:
    first = tmp_path / "first.ndjson"
    first.write_text(json.dumps(_report("final", "2026-08-20T09:00:00Z", ["36118008"])) + "\n")
    assert ingest_label_file(ingestor, first).diagnoses_new == 1
    error = tmp_path / "error.ndjson"
    error.write_text(
        json.dumps(_report("entered-in-error", "2026-08-21T09:00:00Z", ["36118008"])) + "\n"
    )
    counts = ingest_label_file(ingestor, error)
    assert (counts.diagnoses_new, counts.dead_letters) == (0, 0)
    with store.sessions.scope() as s:
        withdrawn = s.scalars(select(DiagnosisRow.withdrawn_at)).all()
    assert len(withdrawn) == 1 and withdrawn[0] is not None
    assert ingest_label_file(ingestor, first).diagnoses_duplicate == 1  # stays withdrawn


def test_unknown_finding_diagnosis_is_dead_lettered(
    tmp_path: Path, store: Store, ingestor: Ingestor
) -> None:
    file = tmp_path / "labels.csv"
    file.write_text(
        "study_instance_uid,finding,present,source,confirmed_at\n"
        f"{UID},pneumothorax,yes,report,2026-08-20T09:00:00Z\n"
        f"{UID},nodule,yes,report,2026-08-20T09:00:00Z\n"
    )
    counts = ingest_label_file(ingestor, file)
    assert (counts.diagnoses_new, counts.dead_letters) == (1, 1)
    assert "unknown finding 'nodule'" in store.events.dead_letters()[0].reason


# ---- spool moves ----------------------------------------------------------------------


def test_moved_spool_dir_is_named_with_the_fix(
    tmp_path: Path, store: Store, ingestor: Ingestor
) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    batch = IngestBatch()
    ingestor.add(parse_record("dicom-metadata", {"0020000D": {"vr": "UI", "Value": [UID]}}), batch)
    study = ingestor.pseudonym("study", UID)
    batch.spool.append(SpoolRecord(study, "f" * 64, "a" * 32 + ".dcm", 10, None))
    store.events.write_batch(batch)
    (old / ("a" * 32 + ".dcm")).write_bytes(b"x" * 10)
    check_spool_dir(store, old)  # the files are there
    with pytest.raises(ConfigError, match=r"did \[dicom\] spool_dir change\?.*mv OLD_SPOOL"):
        check_spool_dir(store, new)


# ---- Kafka offsets out of range -------------------------------------------------------


def _prediction(i: int) -> dict[str, Any]:
    return {
        "message_id": f"p-{i}",
        "model": "cxr-pneumothorax",
        "model_version": "2.1.0",
        "study_instance_uid": f"{UID}.{i}",
        "outputs": {"pneumothorax": 0.4},
        "predicted_at": "2026-08-01T10:00:00Z",
    }


def _service(store: Store, settings: Settings) -> KafkaIngestService:
    return KafkaIngestService(
        store,
        Ingestor(store, Pseudonymizer(b"k" * 32)),
        settings,
        max_records=10,
        poll_timeout_ms=200,
        end_offsets_s=0.2,
        session_timeout_ms=GROUP_TIMEOUTS["session_timeout_ms"],
        heartbeat_interval_ms=GROUP_TIMEOUTS["heartbeat_interval_ms"],
    )


def _run(service: KafkaIngestService, *, until_caught_up: bool, timeout_s: float = 60) -> bool:
    stop = threading.Event()
    timer = threading.Timer(timeout_s, stop.set)
    timer.start()
    try:
        service.run(stop, until_caught_up=until_caught_up)
    finally:
        timer.cancel()
    return not stop.is_set()


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize("action", ["earliest", "stop"])
def test_stored_offset_beyond_the_log_end_raises_an_intake_incident(
    pg_store: Store, kafka_broker: KafkaBroker, kafka_topics: Topics, action: str
) -> None:
    t = kafka_topics
    overrides = {**t.overrides(kafka_broker.bootstrap), "kafka.on_offset_out_of_range": action}
    settings = load_settings(EXAMPLE_CONFIG, env={}, overrides=overrides)
    kafka_broker.produce(t.predictions, [_prediction(i) for i in range(6)], partitions=1)
    assert _run(_service(pg_store, settings), until_caught_up=True)
    # the broker "lost its log": the stored offsets now lie far beyond its end
    with pg_store.sessions.scope() as s:
        s.execute(
            update(ConsumerOffsetRow).values(next_offset=ConsumerOffsetRow.next_offset + 1000)
        )
    service = _service(pg_store, settings)
    if action == "earliest":
        assert _run(service, until_caught_up=True), "stalled silently"
        offsets = pg_store.events.offsets(t.group)
        assert max(offsets.values()) < 1000  # back inside the log
    else:
        _run(service, until_caught_up=False, timeout_s=60)
        assert service.halted is not None and "beyond the log end" in service.halted
        assert service.health().state == "stopped"
    assert service.offset_problems >= 1
    incidents = [i for i in pg_store.incidents.find() if i.signal_kind == SignalKind.INTAKE]
    assert incidents and "out of range" in incidents[0].title
    with pg_store.sessions.scope() as s:
        actions = set(s.scalars(select(AuditEventRow.action)))
    assert "incident.opened" in actions
    assert ("kafka.offset_reset" in actions) == (action == "earliest")


def test_audit_verify_cli_checks_the_anchor_and_the_key(tmp_path: Path, sqlite_url: str) -> None:
    from cli_runner import run_cli

    def cli(*args: str) -> Any:
        result = run_cli(*args, cwd=tmp_path, db_url=sqlite_url, key_hex="ab" * 32)
        assert "Traceback" not in result.stderr, result.stderr
        return result

    assert cli("db", "upgrade").returncode == 0
    assert cli("models", "load", str(EXAMPLE_CONFIG)).returncode == 0
    good = cli("audit", "verify", "--json")
    assert good.returncode == 0, good.stderr
    report = json.loads(good.stdout)
    assert report["ok"] and report["keyed"] and report["unkeyed_events"] == 0
    head, count = report["head_hash"], report["events"]
    assert (
        cli("audit", "verify", "--expect-head", head, "--expect-count", str(count)).returncode == 0
    )
    missing = cli("audit", "verify", "--expect-head", "0" * 63 + "1")
    assert missing.returncode == 1 and "is not in the chain" in missing.stderr
    assert cli("audit", "verify", "--expect-head", "XYZ").returncode == 2
    # without the key, keyed events cannot be verified: refused, not passed
    no_key = run_cli("audit", "verify", cwd=tmp_path, db_url=sqlite_url)
    assert no_key.returncode == 1 and "cannot be verified without the audit key" in no_key.stderr


# ---- DICOM paths ----------------------------------------------------------------------

HOSTILE = Path(__file__).resolve().parent / "data" / "hostile" / "dicom"


def test_embed_decoder_refuses_a_pixel_bomb_before_decoding() -> None:
    from surveillance.analysis.embeddings.decode import DecodeError, decode_for_embedding

    with pytest.raises(DecodeError, match="exceeds max_decoded_bytes"):
        decode_for_embedding(HOSTILE / "frames_bomb.dcm")
    image = decode_for_embedding(HOSTILE / "good_ct.dcm", size=32)
    assert image.shape == (32, 32)
    with pytest.raises(DecodeError, match="of 128 bytes exceeds max_decoded_bytes 64"):
        decode_for_embedding(HOSTILE / "good_ct.dcm", max_decoded_bytes=64)  # 8 x 8 x 2


def _cap_in_child(budget: int) -> tuple[int | None, int]:
    import resource

    from surveillance.analysis.embeddings.decode import cap_worker_address_space

    cap = cap_worker_address_space(budget)
    return cap, resource.getrlimit(resource.RLIMIT_AS)[0]


def test_decode_workers_run_under_an_address_space_cap() -> None:
    import multiprocessing

    from surveillance.analysis.embeddings.decode import cap_worker_address_space

    assert cap_worker_address_space() is None  # never the main process
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        cap, soft = pool.apply(_cap_in_child, (64 << 20,))
    assert cap is not None and soft == cap


def test_symbolic_links_are_counted_not_followed(
    tmp_path: Path, store: Store, ingestor: Ingestor
) -> None:
    from surveillance.intake.dicom import DicomIntake, ingest_paths

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.dcm").write_bytes((HOSTILE / "good_ct.dcm").read_bytes())
    (folder / "link.dcm").symlink_to(HOSTILE / "good_ct.dcm")
    intake = DicomIntake(store, ingestor, tmp_path / "spool")
    (counts,) = ingest_paths(intake, [folder]).values()
    assert (counts.stored, counts.skipped_links) == (1, 1)
    assert "1 symbolic link(s) not followed" in counts.describe()


def test_drop_folder_rejects_permanently_with_a_reason_file(
    tmp_path: Path, store: Store, ingestor: Ingestor
) -> None:
    from surveillance.intake.dicom import REJECTED_FOLDER, DicomIntake, DropFolderWatcher

    drop = tmp_path / "drop"
    watcher = DropFolderWatcher(DicomIntake(store, ingestor, tmp_path / "spool"), drop, 0.1)
    for name in ("rt_plan.dcm", "pixel_bomb_rle.dcm", "nul_manufacturer.dcm"):
        (drop / name).write_bytes((HOSTILE / name).read_bytes())
    watcher.poll_once()
    assert watcher.poll_once() == {"rejected": 3}
    assert watcher.poll_once() == {}  # never retried
    reasons = sorted(p.read_text() for p in (drop / REJECTED_FOLDER).glob("*.reason.txt"))
    assert len(reasons) == 3
    assert any("not an accepted image storage class" in r for r in reasons)
    assert any("exceeds max_decoded_bytes" in r for r in reasons)
    assert any("contains a NUL byte" in r for r in reasons)
    assert len(store.events.dead_letters()) == 3


def test_repeated_log_lines_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from surveillance.intake.dicom import RateLimitedLog

    log = RateLimitedLog(logging.getLogger("test.ratelimit"), interval_s=3600)
    with caplog.at_level(logging.WARNING, logger="test.ratelimit"):
        logged = [log.warning("db", "database down: %s", i) for i in range(50)]
    assert logged.count(True) == 1
    assert len(caplog.records) == 1
