"""CLI commands for the DICOM C-STORE receiver and its benchmark.

``surveillance dicom receive`` runs the Storage SCP (and the drop-folder
watcher when ``[dicom] drop_folder`` is set) in the foreground until SIGTERM or
SIGINT. ``surveillance bench cstore`` times dcmtk's ``storescu`` sending N
instances on one association to a receiver on a free local port.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import click

from surveillance.cli.app import AppContext, group, pass_app, print_json
from surveillance.core.errors import SurveillanceError, UsageError

LOG = logging.getLogger("surveillance.dicom")
MIB = 1024 * 1024


def _configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # pynetdicom logs every PDU and the UIDs of each request at INFO/DEBUG.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from surveillance.core.phi_logging import install_phi_filter

    install_phi_filter()  # again, for the handlers just added: UIDs never reach the log


def register(cli: click.Group) -> None:
    """Add this area's commands to ``cli`` (see ``surveillance.cli.group``)."""
    dicom = group("dicom", "DICOM C-STORE receiver.")
    dicom.add_command(receive)
    group("bench", "Benchmarks that print JSON figures.").add_command(bench_cstore)


@click.command("receive")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Default: [dicom] port.")
@click.option("--ae-title", default=None, help="Our AE title. Default: [dicom] ae_title.")
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option(
    "--allow-aet",
    "allowed",
    multiple=True,
    help="Accept associations only from this calling AE title (repeat for more).",
)
@click.option(
    "--tls-cert",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="PEM certificate (chain): accept only TLS connections.",
)
@click.option(
    "--tls-key", type=click.Path(path_type=Path, dir_okay=False), default=None, help="PEM key."
)
@click.option(
    "--tls-ca",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="CA file: require and verify client certificates (mutual TLS).",
)
@click.option(
    "--max-mb",
    type=click.IntRange(1, 1 << 20),
    default=None,
    help="Largest instance accepted, in MiB (default: [dicom] max_file_bytes, 512 MiB).",
)
@click.option(
    "--sweep-after",
    type=click.FloatRange(0),
    default=300.0,
    show_default=True,
    help="At start, remove spool files older than this many seconds that no row references.",
)
@pass_app
def receive(
    app: AppContext,
    port: int | None,
    ae_title: str | None,
    host: str,
    allowed: tuple[str, ...],
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_ca: Path | None,
    max_mb: int | None,
    sweep_after: float,
) -> None:
    """Run the DICOM C-STORE receiver in the foreground until SIGTERM/SIGINT."""
    from connectors.dicom_scp import StorageReceiver
    from surveillance.intake.dicom import (
        DropFolderWatcher,
        accepted_sop_classes,
        check_spool_dir,
        intake_for,
        sweep_spool,
    )
    from surveillance.scheduling.services import dicom_ssl_context

    _configure_logging()
    config = app.settings.dicom
    if (tls_cert is None) != (tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together; give both or neither")
    if tls_ca is not None and tls_cert is None:
        raise UsageError("--tls-ca needs --tls-cert and --tls-key")
    if tls_cert is None and tls_key is None:  # flags override [dicom] as a pair
        tls_cert, tls_key = config.tls_certificate, config.tls_private_key
        tls_ca = tls_ca or config.tls_ca_certificate
    context = dicom_ssl_context(tls_cert, tls_key, tls_ca)
    allowed = allowed or tuple(config.allowed_calling_aets)
    max_bytes = config.max_file_bytes if max_mb is None else max_mb * MIB
    intake = intake_for(app, max_bytes=max_bytes)
    check_spool_dir(intake.store, intake.spool_dir)
    swept = sweep_spool(intake.store, intake.spool_dir, older_than_s=sweep_after)
    try:
        receiver = StorageReceiver(
            intake,
            ae_title=ae_title or config.ae_title,
            host=host,
            port=config.port if port is None else port,
            allowed_calling_aets=list(allowed) or None,
            ssl_context=context,
            max_bytes=max_bytes,
            accepted_sop_classes=accepted_sop_classes(config.accepted_sop_classes),
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    watcher = None
    try:
        try:
            receiver.start()
        except OSError as exc:
            raise UsageError(f"{exc.strerror or exc}; choose another --port") from exc
        if config.drop_folder is not None:
            watcher = DropFolderWatcher(intake, config.drop_folder, config.drop_folder_poll_seconds)
            watcher.start()
        click.echo(
            f"receiving as {receiver.ae_title} on {host}:{receiver.port}"
            f"{' (TLS)' if context else ''}; spool {intake.spool_dir}"
            f"{f'; drop folder {config.drop_folder}' if watcher else ''}"
            f"; swept {swept.partial_removed + swept.orphans_removed} leftover file(s)",
        )
        while not stop.wait(1.0):
            pass
    finally:
        if watcher is not None:
            watcher.stop()
        receiver.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        intake.store.close()
    c = receiver.counts
    dropped = ""
    if watcher is not None:
        w = watcher.counts
        dropped = (
            f"; drop folder: {w['stored']} stored, {w['duplicate']} already stored, "
            f"{w['rejected']} rejected"
        )
    click.echo(
        f"stopped: {c.stored} stored, {c.duplicate} already stored, {c.rejected} rejected, "
        f"{c.retry} asked to retry, {c.aborted_too_large} association(s) aborted (too large)"
        + dropped
    )


# ---- bench ---------------------------------------------------------------------------


def make_bench_files(folder: Path, count: int, template: Path | None = None) -> int:
    """``count`` copies of a small CT with fresh study/instance UIDs; returns bytes."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    source = template or get_testdata_file("CT_small.dcm")
    if source is None:
        raise SurveillanceError("pydicom's test file CT_small.dcm is not available")
    ds = dcmread(source)
    ds.InstitutionName = "surveillance-bench"
    total = 0
    for i in range(count):
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = folder / f"bench{i:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        total += path.stat().st_size
    return total


def run_storescu(
    port: int,
    files: list[Path],
    *,
    called_aet: str,
    calling_aet: str = "STORESCU",
    timeout_s: float = 600.0,
    extra: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """dcmtk ``storescu`` on one association, with TCP_NODELAY."""
    storescu = shutil.which("storescu")
    if storescu is None:
        raise UsageError("dcmtk's storescu is not installed: run scripts/ensure_dcmtk.sh")
    env = {**os.environ, "TCP_NODELAY": "1"}
    command = [
        storescu,
        "-aet",
        calling_aet,
        "-aec",
        called_aet,
        *extra,
        "127.0.0.1",
        str(port),
        *map(str, files),
    ]
    return subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )


@click.command("cstore")
@click.option("--files", "count", type=click.IntRange(1, 100000), default=200, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def bench_cstore(app: AppContext, count: int, as_json: bool) -> None:
    """C-STORE files/s: storescu -> receiver -> spool + configured database.

    Writes ``count`` synthetic studies (institution "surveillance-bench") to the
    configured database; point --db-url at a scratch database.
    """
    from connectors.dicom_scp import StorageReceiver
    from surveillance.intake.dicom import intake_for

    with tempfile.TemporaryDirectory(prefix="surveillance-bench-") as tmp:
        root = Path(tmp)
        (root / "files").mkdir()
        total_bytes = make_bench_files(root / "files", count)
        files = sorted((root / "files").iterdir())
        intake = intake_for(app)
        intake.spool_dir = root / "spool"
        intake.spool_dir.mkdir()
        receiver = StorageReceiver(intake, ae_title="BENCH", host="127.0.0.1", port=0)
        receiver.start()
        try:
            started = time.perf_counter()
            done = run_storescu(receiver.port, files, called_aet="BENCH")
            elapsed = time.perf_counter() - started
        finally:
            receiver.stop()
            backend = intake.store.engine.url.get_backend_name()
            intake.store.close()
        if done.returncode != 0 or receiver.counts.stored != count:
            raise SurveillanceError(
                f"storescu exit {done.returncode}, {receiver.counts.stored}/{count} stored: "
                f"{done.stderr.strip()[-300:]}"
            )
    result: dict[str, Any] = {
        "files": count,
        "seconds": round(elapsed, 3),
        "files_per_s": round(count / elapsed, 1),
        "mb_per_s": round(total_bytes / MIB / elapsed, 2),
        "bytes_per_file": total_bytes // count,
        "database": backend,
        "associations": 1,
        "sender": "dcmtk storescu (TCP_NODELAY=1)",
    }
    if as_json:
        print_json(result)
    else:
        click.echo(
            f"C-STORE: {result['files']} files in {result['seconds']} s on one association = "
            f"{result['files_per_s']} files/s ({result['mb_per_s']} MB/s) into {backend}"
        )
