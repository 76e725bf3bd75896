"""Read DICOM files from untrusted folders safely.

The folder ingester (``surveillance ingest DIR``) and the drop-folder watcher
read files that anyone with write access to a share could have put there, so:

* only regular files are read; symbolic links are never followed (neither to
  files nor into other folders), and a file is opened with ``O_NOFOLLOW`` and
  checked again with ``fstat`` on the open descriptor, so a file swapped for a
  link between listing and opening is refused;
* a file larger than ``max_bytes`` is refused without reading it whole;
* the header is parsed with ``force=False`` (a file without the ``DICM``
  preamble is *not DICOM*, never guessed at) and ``stop_before_pixels``;
  pydicom converts values lazily, so only the allow-listed values we read are
  ever converted (a malformed one there is a dead letter; one elsewhere is
  never looked at); pixel data is decoded later, in a child process
  (``connectors.pixel_guard``);
* deflated transfer syntaxes are refused: pydicom inflates the whole data set
  in memory while reading the header, a decompression bomb by construction;
* no path is ever built from a DICOM value: files are named by the folder they
  sit in, and copies go to the spool under generated names;
* the pixel budget (:func:`check_pixel_budget`): the size the header declares
  (Rows x Columns x NumberOfFrames x SamplesPerPixel x ceil(BitsAllocated / 8))
  is checked before anything is decoded, so a few hundred bytes of RLE that
  declare 60000 x 60000 pixels are refused at receipt, not in a decoder;
* accepted SOP classes (:data:`DEFAULT_ACCEPTED_SOP_CLASSES`,
  :func:`sop_class_accepted`): image storage classes only; an RT plan or a
  structured report (free text, no pixels) is refused.

:func:`header_event` runs all of it on one instance's bytes and raises only
InvalidRecord; :func:`scan_candidate_files` walks folders and counts the
symbolic links it skipped.
"""

from __future__ import annotations

import errno
import os
import stat
import warnings
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from connectors.dicom_header import metadata_from_dataset
from connectors.untrusted import control_character_reason
from surveillance.core.errors import InvalidRecord
from surveillance.core.events import DicomMetadataEvent, SourcePosition

#: Default upper bound for one DICOM instance (files and C-STORE data sets).
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
#: Deflated Explicit VR Little Endian: pydicom inflates it whole while reading.
DEFLATED_TRANSFER_SYNTAXES = frozenset({"1.2.840.10008.1.2.1.99"})
#: Suffixes the DICOM walker never opens (JSONL goes to the event ingester;
#: partial files are still being written by someone).
# Event and diagnosis files that may sit beside DICOM files in a folder.
SKIPPED_SUFFIXES = frozenset({".jsonl", ".part", ".tmp", ".csv", ".json", ".ndjson"})
#: Default pixel budget: the most decoded pixel bytes one instance may declare
#: (the same as the decoder's memory cap, ``connectors.pixel_guard``).
DEFAULT_MAX_DECODED_BYTES = 2 * 1024**3

#: Image storage SOP classes accepted by default (what an imaging model reads).
DEFAULT_ACCEPTED_SOP_CLASSES: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
    "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
    "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image Storage - For Processing
    "1.2.840.10008.5.1.4.1.1.1.2",  # Digital Mammography X-Ray - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.2.1",  # Digital Mammography X-Ray - For Processing
    "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image Storage
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image Storage
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.12.1",  # X-Ray Angiographic Image Storage
    "1.2.840.10008.5.1.4.1.1.12.1.1",  # Enhanced XA Image Storage
    "1.2.840.10008.5.1.4.1.1.20",  # Nuclear Medicine Image Storage
    "1.2.840.10008.5.1.4.1.1.128",  # Positron Emission Tomography Image Storage
    "1.2.840.10008.5.1.4.1.1.130",  # Enhanced PET Image Storage
)


class NotDicom(Exception):
    """The file is not a DICOM Part 10 file (no ``DICM`` preamble)."""


@dataclass(frozen=True, slots=True)
class FileRead:
    """The bytes of one regular file, read through a descriptor we checked."""

    path: Path
    data: bytes


def read_regular_file(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> FileRead:
    """The content of ``path`` if it is a regular file of at most ``max_bytes``.

    Raises InvalidRecord for links, special files and files over the limit;
    OSError for files that vanished or cannot be read.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InvalidRecord(f"{path} is a symbolic link; links are not followed") from exc
        raise
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise InvalidRecord(f"{path} is not a regular file")
        if info.st_size > max_bytes:
            raise InvalidRecord(
                f"{path} is {info.st_size} bytes; the limit for one DICOM file is {max_bytes}"
            )
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew while we read it
        raise InvalidRecord(f"{path} is over the limit of {max_bytes} bytes")
    return FileRead(path, data)


def sop_class_accepted(
    uid: object, accepted: Collection[str] | None = DEFAULT_ACCEPTED_SOP_CLASSES
) -> bool:
    """True if SOP class ``uid`` is in ``accepted`` (``None`` accepts every class).

    Trailing NUL/space padding of the UID is ignored; anything that is not a
    string (a missing value) is not accepted.
    """
    if accepted is None:
        return True
    if not isinstance(uid, str):
        return False
    return uid.rstrip("\x00 ") in accepted


def _header_int(ds: Any, keyword: str, default: int) -> int:
    value = ds.get(keyword, None)
    if value is None or value == "":
        return default
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        if len(value) != 1:
            raise InvalidRecord(f"{keyword} must have one value to compute the pixel budget")
        value = value[0]
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidRecord(f"{keyword} is not an integer, so the pixel size is unknown") from exc
    if number < 0:
        raise InvalidRecord(f"{keyword} is negative ({number})")
    return number


def declared_pixel_bytes(ds: Any) -> int:
    """Rows x Columns x NumberOfFrames x SamplesPerPixel x ceil(BitsAllocated / 8).

    From the header alone (no pixel data is read or decoded); 0 for an instance
    without pixel data. Raises InvalidRecord for values that cannot be counted.
    """
    has_pixels = any(
        keyword in ds for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
    )
    rows = _header_int(ds, "Rows", 0)
    columns = _header_int(ds, "Columns", 0)
    if not has_pixels and not (rows and columns):
        return 0
    frames = max(_header_int(ds, "NumberOfFrames", 1), 1)
    samples = max(_header_int(ds, "SamplesPerPixel", 1), 1)
    bits = _header_int(ds, "BitsAllocated", 8)
    return rows * columns * frames * samples * max((bits + 7) // 8, 1)


def check_pixel_budget(ds: Any, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> int:
    """The declared decoded pixel size of ``ds`` if it is within ``max_decoded_bytes``.

    Checked on the header before any decode (a few hundred bytes of RLE can
    declare gigabytes); raises InvalidRecord("declared pixel data of N bytes
    exceeds max_decoded_bytes M").
    """
    declared = declared_pixel_bytes(ds)
    if declared > max_decoded_bytes:
        raise InvalidRecord(
            f"declared pixel data of {declared} bytes exceeds max_decoded_bytes {max_decoded_bytes}"
        )
    return declared


def parse_header(
    data: bytes,
    *,
    max_decoded_bytes: int | None = DEFAULT_MAX_DECODED_BYTES,
    accepted_sop_classes: Collection[str] | None = None,
) -> Dataset:
    """The header of a DICOM Part 10 file (everything before the pixel data).

    Raises NotDicom when there is no ``DICM`` preamble and InvalidRecord when
    the header cannot be parsed, uses a deflated transfer syntax, declares more
    than ``max_decoded_bytes`` of pixels (``None``: no budget) or has a SOP class
    outside ``accepted_sop_classes`` (``None``, the default: every class).
    """
    if len(data) < 132 or data[128:132] != b"DICM":
        raise NotDicom("no DICM preamble")
    with warnings.catch_warnings():
        # pydicom warns (quoting the value) about every invalid value it meets; the
        # values we use are validated by us, the others are never looked at.
        warnings.simplefilter("ignore")
        return _parse_header(data, max_decoded_bytes, accepted_sop_classes)


def _parse_header(
    data: bytes, max_decoded_bytes: int | None, accepted_sop_classes: Collection[str] | None
) -> Dataset:
    try:
        ds = dcmread(BytesIO(data), stop_before_pixels=True, force=False)
        syntax = str(ds.file_meta.get("TransferSyntaxUID", "") or "")
        if syntax in DEFLATED_TRANSFER_SYNTAXES:
            raise InvalidRecord(
                "deflated transfer syntax is not accepted (it would be inflated in memory "
                "unbounded); send it uncompressed or with a pixel compression syntax"
            )
        if accepted_sop_classes is not None:
            sop_class = _sop_class(ds)
            if not sop_class_accepted(sop_class, accepted_sop_classes):
                raise InvalidRecord(_sop_class_reason(sop_class))
        if max_decoded_bytes is not None:
            # stop_before_pixels leaves PixelData out: count Rows x Columns anyway
            check_pixel_budget(ds, max_decoded_bytes)
    except InvalidRecord:
        raise
    except InvalidDicomError as exc:
        raise NotDicom(str(exc)) from exc
    except RecursionError as exc:
        raise InvalidRecord("DICOM header nests sequences too deeply") from exc
    except MemoryError:
        raise
    except Exception as exc:  # pydicom raises many types for malformed files
        raise InvalidRecord(f"malformed DICOM header: {type(exc).__name__}") from exc
    return ds


def _sop_class(ds: Dataset) -> str | None:
    for value in (ds.get("SOPClassUID"), ds.file_meta.get("MediaStorageSOPClassUID")):
        if value:
            return str(value)
    return None


def _sop_class_reason(uid: str | None) -> str:
    if uid is None:
        return "DICOM header has no SOP Class UID"
    if control_character_reason(uid, "SOPClassUID") is not None or len(uid) > 64:
        return "SOP class UID is malformed; not an accepted image storage class"
    return f"SOP class {uid} is not an accepted image storage class"


def header_event(
    data: bytes,
    position: SourcePosition | None = None,
    *,
    max_decoded_bytes: int | None = DEFAULT_MAX_DECODED_BYTES,
    accepted_sop_classes: Collection[str] | None = DEFAULT_ACCEPTED_SOP_CLASSES,
) -> DicomMetadataEvent:
    """The allow-listed header of one DICOM Part 10 instance; raises only InvalidRecord.

    Everything :func:`parse_header` checks (a missing preamble becomes "not a
    DICOM Part 10 file"), the SOP class (default: image storage only), the
    pixel budget, then :func:`~connectors.dicom_header.metadata_from_dataset`.
    """
    try:
        ds = parse_header(
            data, max_decoded_bytes=max_decoded_bytes, accepted_sop_classes=accepted_sop_classes
        )
    except NotDicom as exc:
        raise InvalidRecord("not a DICOM Part 10 file (no DICM preamble)") from exc
    return metadata_from_dataset(ds, position)


@dataclass
class CandidateScan:
    """The candidate files under some paths, plus what was skipped on the way.

    Iterate it (once) for the files, as with :func:`iter_candidate_files`; after
    (or during) the iteration ``skipped_links`` counts the symbolic links that
    were not followed and ``skipped_link_paths`` lists the first 100 of them.
    """

    paths: Iterable[Path]
    skipped_links: int = 0
    skipped_link_paths: list[Path] = field(default_factory=list)

    def __iter__(self) -> Iterator[Path]:
        return iter_candidate_files(self.paths, on_skipped_link=self._skipped)

    def _skipped(self, path: Path) -> None:
        self.skipped_links += 1
        if len(self.skipped_link_paths) < 100:
            self.skipped_link_paths.append(path)


def scan_candidate_files(paths: Iterable[Path]) -> CandidateScan:
    """Like :func:`iter_candidate_files`, counting the symbolic links it skips.

    >>> scan = scan_candidate_files([folder])
    >>> files = list(scan)
    >>> scan.skipped_links
    """
    return CandidateScan(paths)


def iter_candidate_files(
    paths: Iterable[Path],
    *,
    on_skipped_link: Callable[[Path], None] | None = None,
) -> Iterator[Path]:
    """Regular files under ``paths`` (folders recursively), sorted, links skipped.

    Hidden names (``.x``), ``*.jsonl`` and partial files (``*.part``, ``*.tmp``)
    are skipped. A path given explicitly is yielded even if it has one of
    those suffixes, except links, which are never followed: each skipped link
    (a file or a folder) is passed to ``on_skipped_link``, if given (see
    :func:`scan_candidate_files` for a counter). A file that vanishes while the
    folder is walked is skipped.
    """
    for root in paths:
        info = root.lstat()
        if stat.S_ISLNK(info.st_mode):
            if on_skipped_link is not None:
                on_skipped_link(root)
            continue
        if stat.S_ISREG(info.st_mode):
            yield root
            continue
        if not stat.S_ISDIR(info.st_mode):
            continue
        for folder, dirs, files in os.walk(root, followlinks=False):
            base = Path(folder)
            if on_skipped_link is not None:
                for name in sorted(dirs):  # os.walk lists links to folders as dirs
                    if not name.startswith(".") and (base / name).is_symlink():
                        on_skipped_link(base / name)
            dirs[:] = sorted(
                d for d in dirs if not d.startswith(".") and not (base / d).is_symlink()
            )
            for name in sorted(files):
                if name.startswith(".") or Path(name).suffix.lower() in SKIPPED_SUFFIXES:
                    continue
                candidate = base / name
                try:
                    mode = candidate.lstat().st_mode
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(mode):
                    yield candidate
                elif stat.S_ISLNK(mode) and on_skipped_link is not None:
                    on_skipped_link(candidate)


__all__ = [
    "DEFAULT_ACCEPTED_SOP_CLASSES",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_DECODED_BYTES",
    "DEFLATED_TRANSFER_SYNTAXES",
    "CandidateScan",
    "FileRead",
    "NotDicom",
    "check_pixel_budget",
    "declared_pixel_bytes",
    "header_event",
    "iter_candidate_files",
    "parse_header",
    "read_regular_file",
    "scan_candidate_files",
    "sop_class_accepted",
]
