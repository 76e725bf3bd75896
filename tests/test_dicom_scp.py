"""The DICOM intake against real peers: dcmtk storescu -> pynetdicom SCP -> PostgreSQL.

Covers: several vendors' files committed with generated spool names, re-send
idempotent, malformed headers dead-lettered while the receiver keeps going, the
calling-AE allow-list, the size limit, Out of Resources when the database
fails, mutual TLS, the folder ingester and drop folder on the same files, the
spool sweep, and a grep of the whole database for the files' identifiers.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from fixtures_dicom import (
    NON_IMAGE_FILE,
    VENDOR_FILES,
    dicom_testfile,
    dump_database,
    identifiers,
    require_dcmtk,
    storescu,
    vendor_paths,
)
from pydicom import dcmread
from sqlalchemy import text

from connectors.dicom_scp import StorageReceiver, server_ssl_context
from surveillance.core.events import SourcePosition
from surveillance.intake.dicom import (
    REJECTED_FOLDER,
    DicomIntake,
    DropFolderWatcher,
    ingest_paths,
    sweep_spool,
)
from surveillance.intake.ingest import Ingestor
from surveillance.intake.pseudonym import Pseudonymizer, generate_key_file
from surveillance.store import Store
from surveillance.store.engine import make_engine
from surveillance.store.migrations import upgrade

pytestmark = pytest.mark.postgres

# The fixtures this module uses (pytest finds them by these module-level names).

SPOOL_NAME = re.compile(r"^[0-9a-f]{32}\.dcm$")


def _scalar(store: Store, sql: str) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(text(sql)).scalar_one())


def _spool_names(store: Store) -> set[str]:
    with store.engine.connect() as conn:
        return set(conn.execute(text("SELECT file_name FROM image_spool")).scalars())


def _spool_files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def _broken_copies(tmp_path: Path) -> list[Path]:
    """Two instances storescu can send but whose headers we must refuse."""
    source = dicom_testfile("CT_small.dcm")
    no_study = dcmread(source)
    del no_study.StudyInstanceUID
    no_study.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    bad_sex = dcmread(source)
    bad_sex.PatientSex = "Q"
    bad_sex.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    paths = [tmp_path / "no_study.dcm", tmp_path / "bad_sex.dcm"]
    no_study.save_as(paths[0], enforce_file_format=True)
    bad_sex.save_as(paths[1], enforce_file_format=True)
    return paths


def test_storescu_vendors_are_committed_spooled_and_idempotent(
    receiver: StorageReceiver, dicom_intake: DicomIntake, pg_store: Store
) -> None:
    files = vendor_paths()
    results = storescu(receiver.port, files)
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert receiver.counts.stored == len(files)

    names = _spool_names(pg_store)
    assert len(names) == len(files)
    assert all(SPOOL_NAME.match(n) for n in names)
    assert _spool_files(dicom_intake.spool_dir) == names  # no .part, no strays
    assert _scalar(pg_store, "SELECT count(*) FROM study WHERE has_metadata") == len(files)
    with pg_store.engine.connect() as conn:
        vendors = set(conn.execute(text("SELECT manufacturer FROM device")).scalars())
    assert vendors == {vendor for _, vendor in VENDOR_FILES}

    # The spooled bytes are the instance as sent: same SOP instance, same pixels.
    sent = {str(dcmread(p).SOPInstanceUID): dcmread(p) for p in files}
    for name in names:
        spooled = dcmread(dicom_intake.spool_dir / name)
        original = sent.pop(str(spooled.SOPInstanceUID))
        assert spooled.PixelData == original.PixelData if "PixelData" in original else True
    assert sent == {}

    again = storescu(receiver.port, files)
    assert all(r.returncode == 0 for r in again)
    assert receiver.counts.duplicate == len(files)
    assert _spool_names(pg_store) == names
    assert _spool_files(dicom_intake.spool_dir) == names  # the re-sent copies were dropped


def test_non_image_sop_class_is_refused_and_not_spooled(
    receiver: StorageReceiver, dicom_intake: DicomIntake, pg_store: Store
) -> None:
    results = storescu(receiver.port, [dicom_testfile(NON_IMAGE_FILE)])
    assert "Refused: SOPClassNotSupported" in results[0].stderr, results[0].stderr
    assert receiver.counts.refused_sop_class == 1
    assert receiver.counts.stored == 0
    assert _spool_names(pg_store) == set()
    assert _spool_files(dicom_intake.spool_dir) == set()


def test_malformed_headers_are_dead_lettered_and_the_receiver_goes_on(
    receiver: StorageReceiver, dicom_intake: DicomIntake, pg_store: Store, tmp_path: Path
) -> None:
    broken = _broken_copies(tmp_path)
    good = vendor_paths()[:2]
    results = storescu(receiver.port, [*broken, *good])
    assert receiver.counts.rejected == 2
    assert receiver.counts.stored == 2
    output = "".join(r.stderr for r in results)
    assert output.count("Received Store Response (Error: CannotUnderstand)") == 2
    letters = pg_store.events.dead_letters()
    assert len(letters) == 2
    reasons = " | ".join(d.reason for d in letters)
    assert "StudyInstanceUID" in reasons and "PatientSex" in reasons
    assert all(d.position.startswith("dicom STORESCU@127.0.0.1") for d in letters)
    assert len(_spool_files(dicom_intake.spool_dir)) == 2  # nothing spooled for the broken
    with pg_store.engine.connect() as conn:
        payloads = conn.execute(text("SELECT payload, payload_bytes FROM dead_letter")).all()
    assert all(payload is None and size > 1000 for payload, size in payloads)


def test_calling_ae_allow_list_rejects_unknown_callers(dicom_intake: DicomIntake) -> None:
    require_dcmtk()
    files = vendor_paths()[:1]
    with StorageReceiver(
        dicom_intake, ae_title="SURV", host="127.0.0.1", port=0, allowed_calling_aets=["CT01"]
    ) as scp:
        (refused,) = storescu(scp.port, files, calling_aet="INTRUDER")
        assert refused.returncode != 0
        assert "Association Rejected" in refused.stdout + refused.stderr
        assert scp.counts.stored == 0
        (allowed,) = storescu(scp.port, files, calling_aet="CT01")
        assert allowed.returncode == 0, allowed.stderr
        assert scp.counts.stored == 1


def test_instance_over_the_size_limit_aborts_the_association(dicom_intake: DicomIntake) -> None:
    require_dcmtk()
    large = dicom_testfile("examples_overlay.dcm")  # ~320 kB
    small = dicom_testfile("CT_small.dcm")  # ~39 kB
    with StorageReceiver(
        dicom_intake, ae_title="SURV", host="127.0.0.1", port=0, max_bytes=100_000
    ) as scp:
        (refused,) = storescu(scp.port, [large])
        assert refused.returncode != 0
        assert scp.counts.aborted_too_large == 1
        assert scp.counts.stored == 0
        (ok,) = storescu(scp.port, [small])
        assert ok.returncode == 0, ok.stderr
        assert scp.counts.stored == 1
    assert len(_spool_files(dicom_intake.spool_dir)) == 1


def test_database_failure_answers_out_of_resources_and_keeps_no_file(
    receiver: StorageReceiver, dicom_intake: DicomIntake, pg_store: Store
) -> None:
    files = vendor_paths()[:1]
    with pg_store.engine.begin() as conn:
        conn.execute(text("ALTER TABLE image_spool RENAME TO image_spool_away"))
    (failed,) = storescu(receiver.port, files)
    assert "Received Store Response (Refused: OutOfResources)" in failed.stderr
    assert receiver.counts.retry == 1
    assert _spool_files(dicom_intake.spool_dir) == set()
    with pg_store.engine.begin() as conn:
        conn.execute(text("ALTER TABLE image_spool_away RENAME TO image_spool"))
    (retried,) = storescu(receiver.port, files)  # what the sender does next
    assert retried.returncode == 0
    assert len(_spool_names(pg_store)) == 1


def test_mutual_tls(dicom_intake: DicomIntake, tmp_path: Path) -> None:
    require_dcmtk()
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    request = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    subprocess.run(
        [openssl, *request, "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    context = server_ssl_context(cert, key, ca=cert)
    files = vendor_paths()[:1]
    with StorageReceiver(
        dicom_intake, ae_title="SURV", host="127.0.0.1", port=0, ssl_context=context
    ) as scp:
        (plain,) = storescu(scp.port, files, timeout_s=30)
        assert plain.returncode != 0  # no TLS, no association
        tls = ("+tls", str(key), str(cert), "+cf", str(cert), "-ic")
        (secure,) = storescu(scp.port, files, extra=tls, timeout_s=30)
        assert secure.returncode == 0, secure.stdout + secure.stderr
        assert scp.counts.stored == 1


def test_folder_ingest_takes_the_same_path(dicom_intake: DicomIntake, tmp_path: Path) -> None:
    drop = tmp_path / "in"
    (drop / "sub").mkdir(parents=True)
    for i, path in enumerate(vendor_paths()):
        shutil.copy(path, (drop if i % 2 else drop / "sub") / f"img{i}.dcm")
    (drop / "README.txt").write_text("not a DICOM file")
    (drop / "events.jsonl").write_text("{}\n")  # the JSONL ingester's, not ours
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(dicom_testfile("MR_small_RLE.dcm"), outside / "secret.dcm")
    (drop / "link.dcm").symlink_to(outside / "secret.dcm")
    (drop / "linkdir").symlink_to(outside, target_is_directory=True)
    broken = bytearray(dicom_testfile("CT_small.dcm").read_bytes())
    broken[1000:] = b"\xff" * (len(broken) - 1000)  # garbage after the file meta
    (drop / "broken.dcm").write_bytes(bytes(broken))

    n = len(vendor_paths())
    (counts,) = ingest_paths(dicom_intake, [drop]).values()
    assert (counts.stored, counts.duplicate, counts.rejected, counts.not_dicom) == (n, 0, 1, 1)
    (again,) = ingest_paths(dicom_intake, [drop]).values()
    assert (again.stored, again.duplicate, again.rejected) == (0, n, 1)
    names = _spool_names(dicom_intake.store)
    assert len(names) == n and _spool_files(dicom_intake.spool_dir) == names
    letters = dicom_intake.store.events.dead_letters()
    assert {d.position for d in letters} == {f"file {drop.absolute() / 'broken.dcm'}"}


def test_cli_ingest_prints_one_line_per_path(sqlite_url: str, tmp_path: Path) -> None:
    """On SQLite: ``surveillance ingest`` leaves its JSONL store open (see the report)."""
    from surveillance.cli import cli

    engine = make_engine(sqlite_url)
    upgrade(engine)
    engine.dispose()
    folder = tmp_path / "dicom"
    folder.mkdir()
    for path in vendor_paths()[:3]:
        shutil.copy(path, folder / path.name)
    key = generate_key_file(tmp_path / "key")
    config = tmp_path / "surveillance.toml"
    config.write_text(f'[dicom]\nspool_dir = "{tmp_path / "spool"}"\n')
    result = CliRunner().invoke(
        cli,
        ["--config", str(config), "--db-url", sqlite_url, "ingest", str(folder)],
        env={"SURVEILLANCE_PSEUDONYM_KEY_FILE": str(key)},
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip() == (
        f"{folder}: 3 instance(s) stored, 0 already stored, 0 dead letter(s), 0 not DICOM (skipped)"
    )
    assert len(list((tmp_path / "spool").iterdir())) == 3


def test_drop_folder_ingests_stable_files_and_quarantines_junk(
    dicom_intake: DicomIntake, tmp_path: Path
) -> None:
    drop = tmp_path / "drop"
    watcher = DropFolderWatcher(dicom_intake, drop, poll_seconds=0.1)
    shutil.copy(dicom_testfile("CT_small.dcm"), drop / "a.dcm")
    (drop / "junk.bin").write_bytes(b"\x00" * 300)
    assert sum(watcher.poll_once().values()) == 0  # first sight: maybe still being written
    done = watcher.poll_once()
    assert done == {"stored": 1, "rejected": 1}
    assert sorted(p.name for p in drop.iterdir()) == [REJECTED_FOLDER]
    quarantined = sorted((drop / REJECTED_FOLDER).iterdir())
    assert [p.name.endswith("-junk.bin") for p in quarantined] == [True, False]
    assert quarantined[1].name.endswith(".reason.txt")  # says why, for a person
    assert "not a DICOM Part 10 file" in quarantined[1].read_text()
    assert len(_spool_names(dicom_intake.store)) == 1

    watcher.start()  # the thread does the same; stop() ends it
    watcher.stop()


def test_sweep_removes_only_unreferenced_spool_files(
    receiver: StorageReceiver, dicom_intake: DicomIntake, pg_store: Store
) -> None:
    storescu(receiver.port, vendor_paths()[:2])
    kept = _spool_names(pg_store)
    spool = dicom_intake.spool_dir
    (spool / "0123456789abcdef0123456789abcdef.dcm").write_bytes(b"orphan")
    (spool / "fedcba9876543210fedcba9876543210.dcm.part").write_bytes(b"half")
    assert sweep_spool(pg_store, spool, older_than_s=3600).orphans_removed == 0  # too young
    result = sweep_spool(pg_store, spool, older_than_s=0)
    assert (result.partial_removed, result.orphans_removed) == (1, 1)
    assert _spool_files(spool) == kept


def test_no_identifier_of_the_ingested_files_reaches_the_database(
    receiver: StorageReceiver, pg_store: Store, tmp_path: Path
) -> None:
    files = vendor_paths()
    storescu(receiver.port, [*files, *_broken_copies(tmp_path)])
    folder_intake = DicomIntake(
        pg_store, Ingestor(pg_store, Pseudonymizer(b"k" * 32)), tmp_path / "spool2"
    )
    folder = tmp_path / "folder"
    folder.mkdir()
    for i, path in enumerate(files):  # the same instances again, as files
        shutil.copy(path, folder / f"{i}.dcm")
    ingest_paths(folder_intake, [folder])
    assert _scalar(pg_store, "SELECT count(*) FROM image_spool") == len(files)
    assert _scalar(pg_store, "SELECT count(*) FROM dead_letter") == 2

    secrets = identifiers(files)
    assert len(secrets) >= 25  # names, IDs, birth dates, UIDs, institutions of 7 files
    dump = "\n".join(dump_database(pg_store.engine))
    leaked = {value: where for value, where in secrets.items() if value in dump}
    assert leaked == {}


def test_accept_refuses_non_dicom_bytes_as_dead_letter(dicom_intake: DicomIntake) -> None:
    result = dicom_intake.accept(b"\x00" * 200, SourcePosition("dicom", "test"))
    assert result.outcome.value == "rejected"
    assert "DICM" in (result.reason or "")
