"""kill -9 the C-STORE receiver during a storescu transfer; the sender retries.

The receiver runs as the real command (``python -m surveillance dicom receive``)
on a real PostgreSQL. It is killed with SIGKILL several times while dcmtk's
storescu is sending; then it is restarted and the sender re-sends until every
instance is answered with Success. Afterwards there is exactly one spool row and
one study per instance, every row's file exists, no file lacks a row, and no
``.part`` file is left (a crash's leftovers are swept at the next start).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from sqlalchemy import text

from surveillance.intake.pseudonym import generate_key_file
from surveillance.store.engine import make_engine
from surveillance.store.migrations import upgrade

REPO = Path(__file__).resolve().parents[1]
INSTANCES = 80
KILLS = 3
SUCCESS = "Received Store Response (Success)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _instances(folder: Path) -> list[Path]:
    source = get_testdata_file("CT_small.dcm")
    assert source is not None
    ds = dcmread(source)
    paths = []
    for i in range(INSTANCES):
        ds.StudyInstanceUID = generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = folder / f"{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.mark.slow
@pytest.mark.postgres
def test_receiver_killed_mid_transfer_loses_and_duplicates_nothing(
    pg_url: str, tmp_path: Path
) -> None:
    storescu = shutil.which("storescu")
    if storescu is None:
        pytest.fail("dcmtk storescu is missing: run scripts/ensure_dcmtk.sh", pytrace=False)
    engine = make_engine(pg_url)
    upgrade(engine)
    (tmp_path / "files").mkdir()
    files = _instances(tmp_path / "files")
    spool = tmp_path / "spool"
    port = _free_port()
    config = tmp_path / "surveillance.toml"
    config.write_text(f'[dicom]\nae_title = "SURV"\nport = {port}\nspool_dir = "{spool}"\n')
    env = {
        **os.environ,
        "SURVEILLANCE_DB_URL": pg_url,
        "SURVEILLANCE_PSEUDONYM_KEY_FILE": str(generate_key_file(tmp_path / "key")),
    }
    command = [sys.executable, "-m", "surveillance", "--config", str(config), "dicom", "receive"]
    command += ["--host", "127.0.0.1", "--sweep-after", "0"]
    send = [storescu, "-v", "-nh", "-aet", "MODALITY", "-aec", "SURV", "127.0.0.1", str(port)]
    send += [str(p) for p in files]
    send_env = {**os.environ, "TCP_NODELAY": "1"}

    def rows() -> int:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM image_spool")).scalar_one())

    started: list[subprocess.Popen[bytes]] = []

    def start(log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            scp = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        started.append(scp)
        _wait_for(lambda: _listening(port) or scp.poll() is not None, 60, "the receiver")
        assert scp.poll() is None, log.read_text()
        return scp

    try:
        killed_mid_transfer = 0
        for round_ in range(KILLS):
            scp = start(tmp_path / f"scp{round_}.log")
            before = rows()
            sender = subprocess.Popen(
                send, env=send_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            started.append(sender)

            def some_stored(b: int = before, s: subprocess.Popen[bytes] = sender) -> bool:
                return rows() >= b + 5 or s.poll() is not None

            _wait_for(some_stored, 60, "the first stores")
            scp.send_signal(signal.SIGKILL)
            scp.wait(30)
            sender.wait(60)
            killed_mid_transfer += rows() < INSTANCES
        assert killed_mid_transfer >= 1, "every transfer finished before the kill"

        scp = start(tmp_path / "scp-final.log")
        for _attempt in range(5):  # what a PACS does: re-send until all succeed
            result = subprocess.run(
                send, env=send_env, capture_output=True, text=True, timeout=120, check=False
            )
            if result.stderr.count(SUCCESS) == INSTANCES:
                break
        else:
            pytest.fail(f"storescu never got {INSTANCES} successes:\n{result.stderr[-2000:]}")
        scp.send_signal(signal.SIGTERM)
        assert scp.wait(60) == 0
        assert "stopped:" in (tmp_path / "scp-final.log").read_text()

        with engine.connect() as conn:
            spooled = conn.execute(text("SELECT file_name FROM image_spool")).scalars().all()
            instances = conn.execute(
                text("SELECT count(DISTINCT sop_instance_pseudonym) FROM image_spool")
            ).scalar_one()
            studies = conn.execute(text("SELECT count(*) FROM study")).scalar_one()
            per_study = conn.execute(
                text(
                    "SELECT max(n) FROM (SELECT count(*) AS n FROM image_spool GROUP BY study_id) x"
                )
            ).scalar_one()
        assert len(spooled) == instances == studies == INSTANCES
        assert per_study == 1
        on_disk = {p.name for p in spool.iterdir()}
        assert on_disk == set(spooled)  # no orphan, no missing file, no .part
        for name in spooled[:5]:
            assert dcmread(spool / name).SOPInstanceUID  # whole, parseable files
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
        engine.dispose()
