"""`surveillance run` ingests from Kafka, the C-STORE receiver and a drop folder at once."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures_dicom import dicom_testfile, storescu
from fixtures_kafka import Topics
from sqlalchemy import func, select

from surveillance.store.engine import make_engine
from surveillance.store.migrations import upgrade
from surveillance.store.models import DiagnosisRow, ImageSpoolRow, PredictionRow, StudyRow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _count(engine, table) -> int:  # type: ignore[no-untyped-def]
    with engine.connect() as connection:
        return int(connection.scalar(select(func.count()).select_from(table)) or 0)


@pytest.mark.slow
def test_daemon_runs_every_connector_at_once(
    pg_url: str,
    kafka_broker,
    kafka_topics: Topics,
    tmp_path: Path,
) -> None:
    engine = make_engine(pg_url)
    upgrade(engine)
    port = _free_port()
    drop = tmp_path / "drop"
    drop.mkdir()
    config = tmp_path / "surveillance.toml"
    example = (
        Path(__file__).resolve().parents[1] / "surveillance" / "examples" / "cxr-pneumothorax.toml"
    ).read_text()
    models = example[example.index("[[models]]") : example.index("[drift]")]
    config.write_text(
        f'[service]\nmode = "production"\ndb_url = "{pg_url}"\n'
        f'pseudonym_key_file = "{tmp_path / "key"}"\n\n{models}\n'
        f'[kafka]\nbootstrap = "{kafka_broker.bootstrap}"\ngroup_id = "{kafka_topics.group}"\n'
        f'predictions_topic = "{kafka_topics.predictions}"\n'
        f'metadata_topic = "{kafka_topics.metadata}"\n'
        f'diagnoses_topic = "{kafka_topics.diagnoses}"\n'
        f"session_timeout_ms = 6000\nheartbeat_interval_ms = 2000\n\n"
        f'[dicom]\nreceive = true\nae_title = "SURV"\nport = {port}\n'
        f'spool_dir = "{tmp_path / "spool"}"\ndrop_folder = "{drop}"\n'
        f"drop_folder_poll_seconds = 0.2\n\n"
        f'[schedules]\ndrift = "every 1h"\nperformance = "every 6h"\n'
    )
    (tmp_path / "key").write_text("cd" * 32 + "\n")
    (tmp_path / "key").chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SURVEILLANCE_")}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "surveillance",
            "--config",
            str(config),
            "models",
            "load",
            str(config),
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    kafka_broker.produce(
        kafka_topics.predictions,
        [
            {
                "message_id": f"p{i}",
                "model": "cxr-pneumothorax",
                "model_version": "2.1.0",
                "study_instance_uid": f"1.2.3.{i}",
                "outputs": {"pneumothorax": 0.3},
                "predicted_at": "2026-10-01T08:00:00Z",
            }
            for i in range(20)
        ],
        partitions=3,
    )
    kafka_broker.produce(
        kafka_topics.diagnoses,
        [
            {
                "message_id": f"d{i}",
                "study_instance_uid": f"1.2.3.{i}",
                "finding": "pneumothorax",
                "present": False,
                "source": "report",
                "confirmed_at": "2026-10-09T08:00:00Z",
            }
            for i in range(5)
        ],
    )
    kafka_broker.produce(
        kafka_topics.metadata,
        [
            {
                "0020000D": {"vr": "UI", "Value": ["1.2.3.0"]},
                "00080070": {"vr": "LO", "Value": ["GE MEDICAL SYSTEMS"]},
            }
        ],
    )

    daemon = subprocess.Popen(
        [sys.executable, "-m", "surveillance", "--config", str(config), "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        sent = False
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                assert daemon.poll() is None, daemon.stdout.read() if daemon.stdout else ""
                time.sleep(0.3)
        storescu(port, [dicom_testfile("CT_small.dcm")], called_aet="SURV")
        shutil.copy(dicom_testfile("MR_small.dcm"), drop / "incoming.dcm")
        sent = True
        while time.monotonic() < deadline:
            done = (
                _count(engine, PredictionRow) == 20
                and _count(engine, DiagnosisRow) == 5
                and _count(engine, ImageSpoolRow) == 2
            )
            if done:
                break
            time.sleep(0.5)
        assert sent
        assert _count(engine, PredictionRow) == 20
        assert _count(engine, DiagnosisRow) == 5
        assert _count(engine, ImageSpoolRow) == 2  # one via C-STORE, one via the drop folder
        assert not (drop / "incoming.dcm").exists()
        with engine.connect() as connection:
            with_metadata = connection.scalar(
                select(func.count()).select_from(StudyRow).where(StudyRow.has_metadata)
            )
        assert with_metadata == 3  # Kafka header + two DICOM files
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            output, _ = daemon.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            output, _ = daemon.communicate()
        engine.dispose()
    assert daemon.returncode == 0, output
    assert "stopped" in output
