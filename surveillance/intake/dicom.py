"""DICOM instances into the store: one intake for the C-STORE receiver and for files.

:class:`DicomIntake` is the only path a DICOM instance takes, whether it came
over the network (``connectors.dicom_scp``), from ``surveillance ingest DIR``
or from the daemon's drop folder:

1. parse the header (no pixels; ``connectors.dicom_files.parse_header``) and
   reduce it to the allow-listed fields (``connectors.dicom_header``);
2. write the whole file to ``<spool_dir>/<uuid4 hex>.dcm.part``, fsync it,
   rename it to ``<uuid4 hex>.dcm`` and fsync the folder, so the name never
   comes from a DICOM value and a crash leaves no half file under a final name;
3. commit the pseudonymised header rows and the ``image_spool`` row (keyed by the
   SOP Instance UID's pseudonym) in one transaction. A re-sent instance hits the
   unique key: it counts as a duplicate and the new copy is deleted.

Only after step 3 does the caller report success (C-STORE status 0x0000, or
deleting the file from the drop folder). If the disk or the database fails, the
new spool file is removed and :class:`IntakeUnavailable` tells the caller to
retry later. A crash between steps 2 and 3 leaves an unreferenced ``.dcm`` (or a
``.part``); :func:`sweep_spool` removes those at the next start.

A header that cannot be accepted becomes a dead letter (source position,
reason, SHA-256 and size only: the bytes of a DICOM file are never stored).
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import Dataset

from connectors.dicom_files import (
    DEFAULT_MAX_BYTES,
    NotDicom,
    iter_candidate_files,
    parse_header,
    read_regular_file,
)
from connectors.dicom_header import metadata_from_dataset
from connectors.dicom_scp import IntakeResult, IntakeUnavailable, Outcome
from surveillance.core.errors import InvalidRecord, StoreError, UsageError
from surveillance.core.events import RawRecord, SourcePosition
from surveillance.intake.ingest import Ingestor
from surveillance.store import IngestBatch, Store
from surveillance.store.domain import SpoolRecord

LOG = logging.getLogger(__name__)

SPOOL_SUFFIX = ".dcm"
PART_SUFFIX = ".part"
DEAD_LETTER_KIND = "dicom-metadata"
REJECTED_FOLDER = ".rejected"


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def looks_like_dicom(data: bytes) -> bool:
    """True if ``data`` has the DICOM Part 10 preamble (``DICM`` at offset 128)."""
    return len(data) >= 132 and data[128:132] == b"DICM"


class DicomIntake:
    """Spools and commits DICOM instances; thread-safe (one call per instance)."""

    def __init__(
        self,
        store: Store,
        ingestor: Ingestor,
        spool_dir: Path,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.store = store
        self.ingestor = ingestor
        self.spool_dir = Path(spool_dir)
        self.max_bytes = max_bytes
        try:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(
                f"cannot create the spool folder {self.spool_dir}: {exc.strerror}; "
                "set [dicom] spool_dir to a writable folder"
            ) from exc

    # ---- the one path ------------------------------------------------------------

    def accept(self, data: bytes, position: SourcePosition) -> IntakeResult:
        """Spool ``data`` (a DICOM Part 10 file) and commit its header rows.

        Returns STORED, DUPLICATE (already committed earlier; the new copy is
        dropped) or REJECTED (dead-lettered with the reason). Raises
        IntakeUnavailable when the spool or the database failed; then nothing
        was kept and the caller should retry later.
        """
        try:
            if len(data) > self.max_bytes:
                raise InvalidRecord(f"instance is {len(data)} bytes; the limit is {self.max_bytes}")
            try:
                header = parse_header(data)
            except NotDicom as exc:
                raise InvalidRecord("not a DICOM Part 10 file (no DICM preamble)") from exc
            try:
                batch, spool = self._records(header, position)
            except (InvalidRecord, MemoryError):
                raise
            except Exception as exc:  # pydicom converts values lazily, raising anything
                raise InvalidRecord(
                    f"malformed value in the DICOM header ({type(exc).__name__})"
                ) from exc
        except InvalidRecord as exc:
            self.reject(data, position, exc.reason)
            return IntakeResult(Outcome.REJECTED, exc.reason)

        name = self._write_spool_file(data)
        batch.spool.append(
            SpoolRecord(
                study_uid_pseudonym=spool[0],
                sop_instance_pseudonym=spool[1],
                file_name=name,
                size_bytes=len(data),
                transfer_syntax=spool[2],
            )
        )
        try:
            counts = self.store.events.write_batch(batch)
        except StoreError as exc:
            self._remove(name)
            raise IntakeUnavailable(f"database: {exc}") from exc
        if counts.spooled_duplicate:
            self._remove(name)
            return IntakeResult(Outcome.DUPLICATE)
        return IntakeResult(Outcome.STORED, file_name=name)

    def reject(self, data: bytes, position: SourcePosition, reason: str) -> None:
        """Record a dead letter for ``data`` (hash and size only)."""
        batch = IngestBatch()
        batch.dead_letters.append(
            self.ingestor.dead_letter(RawRecord(data, position, DEAD_LETTER_KIND), reason)
        )
        try:
            self.store.events.write_batch(batch)
        except StoreError as exc:
            raise IntakeUnavailable(f"database: {exc}") from exc

    def _records(
        self, header: Dataset, position: SourcePosition
    ) -> tuple[IngestBatch, tuple[str, str, str | None]]:
        event = metadata_from_dataset(header, position)
        sop_uid = str(header.get("SOPInstanceUID", "") or "").strip()
        if not sop_uid:
            sop_uid = str(header.file_meta.get("MediaStorageSOPInstanceUID", "") or "").strip()
        if not sop_uid:
            raise InvalidRecord("DICOM header has no SOPInstanceUID (0008,0018)")
        syntax = str(header.file_meta.get("TransferSyntaxUID", "") or "").strip() or None
        batch = IngestBatch()
        self.ingestor.add(event, batch)
        study = self.ingestor.pseudonym("study", event.study_instance_uid)
        return batch, (study, self.ingestor.pseudonym("instance", sop_uid), syntax)

    # ---- the spool ---------------------------------------------------------------

    def _write_spool_file(self, data: bytes) -> str:
        name = uuid.uuid4().hex + SPOOL_SUFFIX
        part = self.spool_dir / (name + PART_SUFFIX)
        try:
            fd = os.open(
                part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600
            )
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(part, self.spool_dir / name)
            _fsync_dir(self.spool_dir)
        except OSError as exc:
            for leftover in (part, self.spool_dir / name):
                leftover.unlink(missing_ok=True)
            raise IntakeUnavailable(f"spool folder {self.spool_dir}: {exc.strerror}") from exc
        return name

    def _remove(self, name: str) -> None:
        try:
            (self.spool_dir / name).unlink(missing_ok=True)
        except OSError as exc:  # left for sweep_spool
            LOG.warning("could not remove unreferenced spool file %s: %s", name, exc.strerror)


@dataclass(frozen=True, slots=True)
class SweepResult:
    partial_removed: int
    orphans_removed: int


def sweep_spool(store: Store, spool_dir: Path, *, older_than_s: float = 300.0) -> SweepResult:
    """Remove spool files no committed row points at (left by a crash).

    Only files older than ``older_than_s`` are touched, so another receiver
    writing into the same folder right now is not disturbed.
    """
    folder = Path(spool_dir)
    if not folder.is_dir():
        return SweepResult(0, 0)
    cutoff = time.time() - older_than_s
    partial: list[Path] = []
    finals: dict[str, Path] = {}
    for entry in os.scandir(folder):
        if not entry.is_file(follow_symlinks=False):
            continue
        if entry.stat(follow_symlinks=False).st_mtime > cutoff:
            continue
        if entry.name.endswith(SPOOL_SUFFIX + PART_SUFFIX):
            partial.append(Path(entry.path))
        elif entry.name.endswith(SPOOL_SUFFIX):
            finals[entry.name] = Path(entry.path)
    referenced = store.events.referenced_spool_files(finals)
    orphans = [p for n, p in finals.items() if n not in referenced]
    for path in (*partial, *orphans):
        path.unlink(missing_ok=True)
    if partial or orphans:
        _fsync_dir(folder)
        LOG.info(
            "spool sweep: removed %d partial and %d unreferenced file(s)",
            len(partial),
            len(orphans),
        )
    return SweepResult(len(partial), len(orphans))


# ---- files and folders ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FolderCounts:
    stored: int = 0
    duplicate: int = 0
    rejected: int = 0
    not_dicom: int = 0

    def describe(self) -> str:
        return (
            f"{self.stored} instance(s) stored, {self.duplicate} already stored, "
            f"{self.rejected} dead letter(s), {self.not_dicom} not DICOM (skipped)"
        )


def _file_position(path: Path) -> SourcePosition:
    return SourcePosition("file", str(path.absolute()))


def ingest_file(intake: DicomIntake, path: Path) -> Outcome | None:
    """One file through the intake; None if it is not DICOM (left alone)."""
    position = _file_position(path)
    try:
        read = read_regular_file(path, intake.max_bytes)
    except InvalidRecord as exc:  # a link, a special file or too big
        intake.reject(b"", position, exc.reason)
        return Outcome.REJECTED
    if not looks_like_dicom(read.data):
        return None
    return intake.accept(read.data, position).outcome


def ingest_paths(intake: DicomIntake, paths: list[Path]) -> dict[Path, FolderCounts]:
    """Every DICOM file under ``paths`` (recursively), counted per given path."""
    results: dict[Path, FolderCounts] = {}
    for root in paths:
        tally: Counter[str] = Counter()
        for path in iter_candidate_files([root]):
            try:
                outcome = ingest_file(intake, path)
            except OSError as exc:  # vanished or unreadable: say so and go on
                LOG.warning("cannot read %s: %s", path, exc.strerror)
                tally["not_dicom"] += 1
                continue
            tally[outcome.value if outcome is not None else "not_dicom"] += 1
        results[root] = FolderCounts(
            stored=tally["stored"],
            duplicate=tally["duplicate"],
            rejected=tally["rejected"],
            not_dicom=tally["not_dicom"],
        )
    return results


def intake_for(app: Any, *, max_bytes: int = DEFAULT_MAX_BYTES) -> DicomIntake:
    """The intake for a CLI context (``surveillance.cli.AppContext``)."""
    store = app.store()
    ingestor = Ingestor(store, app.pseudonymizer())
    return DicomIntake(store, ingestor, app.settings.dicom.spool_dir, max_bytes=max_bytes)


def ingest_dicom_paths(app: Any, paths: list[Path]) -> None:
    """``surveillance ingest``: DICOM files/folders once, one summary line per path."""
    import click

    intake = intake_for(app)
    try:
        for root, counts in ingest_paths(intake, paths).items():
            click.echo(f"{root}: {counts.describe()}")
            intake.store.audit.record(
                actor="ingest",
                action="ingest.dicom",
                entity="path",
                entity_id=str(root),
                detail={
                    "stored": counts.stored,
                    "duplicate": counts.duplicate,
                    "dead_letters": counts.rejected,
                    "not_dicom": counts.not_dicom,
                },
            )
    except IntakeUnavailable as exc:
        raise StoreError(f"DICOM ingest stopped: {exc}; run it again to resume") from exc
    finally:
        intake.store.close()


# ---- the drop folder -----------------------------------------------------------------


class DropFolderWatcher:
    """Polls a folder; ingests files once their size and mtime stop changing.

    A committed file (stored or already stored) is deleted from the drop
    folder; a rejected one is moved to ``<folder>/.rejected/`` for a person to
    look at; a non-DICOM file is moved there too (and dead-lettered). If the
    intake is unavailable the file stays and is tried again at the next poll.
    """

    def __init__(self, intake: DicomIntake, folder: Path, poll_seconds: float = 2.0) -> None:
        if poll_seconds <= 0:
            raise ValueError(f"'poll_seconds' must be > 0, got {poll_seconds}")
        self.intake = intake
        self.folder = Path(folder)
        self.poll_seconds = poll_seconds
        self.counts: Counter[str] = Counter()
        self._seen: dict[Path, tuple[int, int]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.folder.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the drop-folder watcher is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="dicom-drop-folder", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # keep watching; the next poll retries
                LOG.exception("drop-folder poll failed")
            self._stop.wait(self.poll_seconds)

    def poll_once(self) -> Counter[str]:
        """One pass: ingest the files that were unchanged since the last pass."""
        done: Counter[str] = Counter()
        current: dict[Path, tuple[int, int]] = {}
        for path in iter_candidate_files([self.folder]):
            if REJECTED_FOLDER in path.relative_to(self.folder).parts:
                continue
            try:
                info = path.lstat()
            except FileNotFoundError:
                continue
            signature = (info.st_size, info.st_mtime_ns)
            if self._seen.get(path) != signature or not stat.S_ISREG(info.st_mode):
                current[path] = signature  # new or still being written: next pass
                continue
            try:
                outcome = ingest_file(self.intake, path)
            except IntakeUnavailable as exc:
                LOG.warning("drop folder: %s stays for the next pass: %s", path.name, exc)
                current[path] = signature
                done["retry"] += 1
                continue
            except OSError as exc:
                LOG.warning("drop folder: cannot read %s: %s", path.name, exc.strerror)
                continue
            if outcome is None:
                self.intake.reject(b"", _file_position(path), "not a DICOM Part 10 file")
                outcome = Outcome.REJECTED
            if outcome is Outcome.REJECTED:
                self._quarantine(path)
            else:
                path.unlink(missing_ok=True)
            done[outcome.value] += 1
        self._seen = current
        self.counts.update(done)
        return done

    def _quarantine(self, path: Path) -> None:
        target_dir = self.folder / REJECTED_FOLDER
        target_dir.mkdir(exist_ok=True)
        target = target_dir / f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}-{path.name}"
        shutil.move(str(path), target)


__all__ = [
    "DicomIntake",
    "DropFolderWatcher",
    "FolderCounts",
    "SweepResult",
    "ingest_dicom_paths",
    "ingest_file",
    "ingest_paths",
    "intake_for",
    "looks_like_dicom",
    "sweep_spool",
]
