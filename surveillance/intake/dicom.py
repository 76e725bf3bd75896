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

Permanent and transient failures are told apart on every path. Permanent (the
instance itself is bad: not DICOM, a NUL in a used value, a SOP class outside
``[dicom] accepted_sop_classes``, a header declaring more decoded pixels than
``[dicom] max_decoded_bytes``): a dead letter with the reason, a DICOM failure
status over C-STORE (never Out of Resources, so the PACS stops retrying), and
in the drop folder the file moves to ``rejected/`` beside a ``.reason.txt``.
Transient (database or spool disk down): nothing is kept, C-STORE answers Out
of Resources and a drop-folder file stays for the next poll; those log lines are
rate-limited (one per minute per cause, with a count of the ones left out).
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
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import Dataset

from connectors.dicom_files import (
    DEFAULT_ACCEPTED_SOP_CLASSES,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_DECODED_BYTES,
    NotDicom,
    iter_candidate_files,
    parse_header,
    read_regular_file,
    scan_candidate_files,
)
from connectors.dicom_header import metadata_from_dataset
from connectors.dicom_scp import IntakeResult, IntakeUnavailable, Outcome
from surveillance.core.errors import ConfigError, InvalidRecord, StoreError, UsageError
from surveillance.core.events import RawRecord, SourcePosition
from surveillance.intake.ingest import Ingestor
from surveillance.store import IngestBatch, Store
from surveillance.store.domain import SpoolRecord

LOG = logging.getLogger(__name__)

SPOOL_SUFFIX = ".dcm"
PART_SUFFIX = ".part"
DEAD_LETTER_KIND = "dicom-metadata"
REJECTED_FOLDER = "rejected"
REASON_SUFFIX = ".reason.txt"


class RateLimitedLog:
    """Logs a repeated message at most once per ``interval_s`` per key, counting the rest."""

    def __init__(self, logger: logging.Logger, interval_s: float = 60.0) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()
        self._lock = threading.Lock()

    def warning(self, key: str, message: str, *args: object) -> bool:
        """Log ``message`` unless ``key`` was logged within the interval; True if logged."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval_s:
                self._suppressed[key] += 1
                return False
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            message += f" ({suppressed} similar message(s) suppressed)"
        self.logger.warning(message, *args)
        return True


def accepted_sop_classes(setting: object) -> Collection[str] | None:
    """``[dicom] accepted_sop_classes`` as a collection (None: every class)."""
    if setting == "images":
        return DEFAULT_ACCEPTED_SOP_CLASSES
    if setting == "all":
        return None
    if isinstance(setting, list | tuple):
        return tuple(str(uid) for uid in setting)
    raise ConfigError(f"[dicom] accepted_sop_classes: unexpected value {setting!r}")


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
        max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
        accepted_sop_classes: Collection[str] | None = DEFAULT_ACCEPTED_SOP_CLASSES,
    ) -> None:
        self.store = store
        self.ingestor = ingestor
        self.spool_dir = Path(spool_dir)
        self.max_bytes = max_bytes
        self.max_decoded_bytes = max_decoded_bytes
        self.accepted_sop_classes = accepted_sop_classes
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
                header = parse_header(
                    data,
                    max_decoded_bytes=self.max_decoded_bytes,
                    accepted_sop_classes=self.accepted_sop_classes,
                )
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
    skipped_links: int = 0

    def describe(self) -> str:
        links = (
            f", {self.skipped_links} symbolic link(s) not followed" if self.skipped_links else ""
        )
        return (
            f"{self.stored} instance(s) stored, {self.duplicate} already stored, "
            f"{self.rejected} dead letter(s), {self.not_dicom} not DICOM (skipped){links}"
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
        scan = scan_candidate_files([root])
        for path in scan:
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
            skipped_links=scan.skipped_links,
        )
    return results


def intake_for_settings(
    store: Store, pseudonymizer: Any, settings: Any, *, max_bytes: int | None = None
) -> DicomIntake:
    """The intake with the ``[dicom]`` and ``[intake]`` limits of ``settings``."""
    dicom = settings.dicom
    return DicomIntake(
        store,
        Ingestor.for_settings(store, pseudonymizer, settings),
        dicom.spool_dir,
        max_bytes=dicom.max_file_bytes if max_bytes is None else max_bytes,
        max_decoded_bytes=dicom.max_decoded_bytes,
        accepted_sop_classes=accepted_sop_classes(dicom.accepted_sop_classes),
    )


def intake_for(app: Any, *, max_bytes: int | None = None) -> DicomIntake:
    """The intake for a CLI context (``surveillance.cli.AppContext``)."""
    return intake_for_settings(app.store(), app.pseudonymizer(), app.settings, max_bytes=max_bytes)


def check_spool_dir(store: Store, spool_dir: Path) -> None:
    """Refuse to start when the pending spool rows point at files not in ``spool_dir``.

    ``[dicom] spool_dir`` changed while instances were waiting to be embedded:
    the embed job would fail each of them ("file missing") for good. Raises
    ConfigError naming the fix.
    """
    pending = store.events.pending_spool_files(limit=20)
    if not pending:
        return
    folder = Path(spool_dir)
    if any((folder / name).is_file() for name in pending):
        return
    raise ConfigError(
        f"{len(pending)}{'+' if len(pending) == 20 else ''} instance(s) are waiting to be "
        f"embedded but none of their files is in the spool folder {folder} (e.g. {pending[0]}): "
        "did [dicom] spool_dir change? Set it back to the folder that holds them, or move "
        f"them: 'mv OLD_SPOOL/*.dcm {folder}/'"
    )


def ingest_dicom_paths(app: Any, paths: list[Path], *, quiet: bool = False) -> list[dict[str, Any]]:
    """``surveillance ingest``: DICOM files/folders once, one summary line per path."""
    import click

    intake = intake_for(app)
    results: list[dict[str, Any]] = []
    try:
        for root, counts in ingest_paths(intake, paths).items():
            results.append(
                {
                    "path": str(root),
                    "stored": counts.stored,
                    "duplicate": counts.duplicate,
                    "dead_letters": counts.rejected,
                    "not_dicom": counts.not_dicom,
                    "skipped_links": counts.skipped_links,
                }
            )
            if not quiet:
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
                    "skipped_links": counts.skipped_links,
                },
            )
    except IntakeUnavailable as exc:
        raise StoreError(f"DICOM ingest stopped: {exc}; run it again to resume") from exc
    finally:
        intake.store.close()
    return results


# ---- the drop folder -----------------------------------------------------------------


class DropFolderWatcher:
    """Polls a folder; ingests files once their size and mtime stop changing.

    A committed file (stored or already stored) is deleted from the drop
    folder; a rejected one (a permanent failure) is moved to
    ``<folder>/rejected/`` beside ``<name>.reason.txt`` saying why, for a person
    to look at; a non-DICOM file is moved there too (and dead-lettered). If the
    intake is unavailable (transient) the file stays and is tried again at the
    next poll; that warning is rate-limited.
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
        self._log = RateLimitedLog(LOG)
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
            except Exception as exc:  # keep watching; the next poll retries
                self._log.warning(
                    f"poll:{type(exc).__name__}", "drop-folder poll failed: %s", type(exc).__name__
                )
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
            position = _file_position(path)
            reason = "not a DICOM Part 10 file"
            try:
                read = read_regular_file(path, self.intake.max_bytes)
                if not looks_like_dicom(read.data):
                    self.intake.reject(read.data, position, reason)
                    result = IntakeResult(Outcome.REJECTED, reason)
                else:
                    result = self.intake.accept(read.data, position)
            except InvalidRecord as exc:  # a link or special file swapped in, too big
                reason = exc.reason
                try:
                    self.intake.reject(b"", position, reason)
                except IntakeUnavailable as unavailable:
                    self._retry(path, signature, current, done, unavailable)
                    continue
                result = IntakeResult(Outcome.REJECTED, reason)
            except IntakeUnavailable as exc:
                self._retry(path, signature, current, done, exc)
                continue
            except OSError as exc:
                self._log.warning(
                    f"read:{exc.errno}", "drop folder: cannot read a file: %s", exc.strerror
                )
                continue
            outcome = result.outcome
            if outcome is Outcome.REJECTED:
                self._quarantine(path, result.reason or reason)
            else:
                path.unlink(missing_ok=True)
            done[outcome.value] += 1
        self._seen = current
        self.counts.update(done)
        return done

    def _retry(
        self,
        path: Path,
        signature: tuple[int, int],
        current: dict[Path, tuple[int, int]],
        done: Counter[str],
        exc: Exception,
    ) -> None:
        self._log.warning("unavailable", "drop folder: files stay for the next pass: %s", exc)
        current[path] = signature
        done["retry"] += 1

    def _quarantine(self, path: Path, reason: str) -> None:
        target_dir = self.folder / REJECTED_FOLDER
        target_dir.mkdir(exist_ok=True)
        name = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}-{path.name}"
        target = target_dir / name
        if path.is_symlink():  # never move what a link points at: drop the link itself
            path.unlink(missing_ok=True)
        else:
            shutil.move(str(path), target)
        (target_dir / (name + REASON_SUFFIX)).write_text(reason + "\n")


__all__ = [
    "REJECTED_FOLDER",
    "DicomIntake",
    "DropFolderWatcher",
    "FolderCounts",
    "RateLimitedLog",
    "SweepResult",
    "accepted_sop_classes",
    "check_spool_dir",
    "ingest_dicom_paths",
    "ingest_file",
    "ingest_paths",
    "intake_for",
    "intake_for_settings",
    "looks_like_dicom",
    "sweep_spool",
]
