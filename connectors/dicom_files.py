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
  sit in, and copies go to the spool under generated names.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from surveillance.errors import InvalidRecord

#: Default upper bound for one DICOM instance (files and C-STORE data sets).
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
#: Deflated Explicit VR Little Endian: pydicom inflates it whole while reading.
DEFLATED_TRANSFER_SYNTAXES = frozenset({"1.2.840.10008.1.2.1.99"})
#: Suffixes the DICOM walker never opens (JSONL goes to the event ingester;
#: partial files are still being written by someone).
# Event and diagnosis files that may sit beside DICOM files in a folder.
SKIPPED_SUFFIXES = frozenset({".jsonl", ".part", ".tmp", ".csv", ".json", ".ndjson"})


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


def parse_header(data: bytes) -> Dataset:
    """The header of a DICOM Part 10 file (everything before the pixel data).

    Raises NotDicom when there is no ``DICM`` preamble and InvalidRecord when
    the header cannot be parsed or uses a deflated transfer syntax.
    """
    if len(data) < 132 or data[128:132] != b"DICM":
        raise NotDicom("no DICM preamble")
    try:
        ds = dcmread(BytesIO(data), stop_before_pixels=True, force=False)
        syntax = str(ds.file_meta.get("TransferSyntaxUID", "") or "")
        if syntax in DEFLATED_TRANSFER_SYNTAXES:
            raise InvalidRecord(
                "deflated transfer syntax is not accepted (it would be inflated in memory "
                "unbounded); send it uncompressed or with a pixel compression syntax"
            )
    except InvalidRecord:
        raise
    except InvalidDicomError as exc:
        raise NotDicom(str(exc)) from exc
    except RecursionError as exc:
        raise InvalidRecord("DICOM header nests sequences too deeply") from exc
    except Exception as exc:  # pydicom raises many types for malformed files
        raise InvalidRecord(f"malformed DICOM header: {type(exc).__name__}") from exc
    return ds


def iter_candidate_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Regular files under ``paths`` (folders recursively), sorted, links skipped.

    Hidden names (``.x``), ``*.jsonl`` and partial files (``*.part``, ``*.tmp``)
    are skipped. A path given explicitly is yielded even if it has one of
    those suffixes, except links, which are never followed.
    """
    for root in paths:
        info = root.lstat()
        if stat.S_ISLNK(info.st_mode):
            continue
        if stat.S_ISREG(info.st_mode):
            yield root
            continue
        if not stat.S_ISDIR(info.st_mode):
            continue
        for folder, dirs, files in os.walk(root, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            base = Path(folder)
            for name in sorted(files):
                if name.startswith(".") or Path(name).suffix.lower() in SKIPPED_SUFFIXES:
                    continue
                candidate = base / name
                if stat.S_ISREG(candidate.lstat().st_mode):
                    yield candidate


__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFLATED_TRANSFER_SYNTAXES",
    "FileRead",
    "NotDicom",
    "iter_candidate_files",
    "parse_header",
    "read_regular_file",
]
