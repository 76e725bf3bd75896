"""Pixel decoding in a capped child process: bombs and broken streams fail cleanly."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames

from connectors.pixel_guard import PixelDecodeError, PixelGuard

CAP = 256 * 1024**2


@pytest.fixture(scope="module")
def guard() -> Iterator[PixelGuard]:
    with PixelGuard(timeout_s=60, memory_bytes=CAP) as g:
        yield g


def _testfile(name: str) -> Path:
    found = get_testdata_file(name)
    assert found is not None
    return Path(found)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("CT_small.dcm", id="uncompressed"),
        pytest.param("MR_small_RLE.dcm", id="rle"),
        pytest.param("JPEG2000.dcm", id="jpeg2000"),
    ],
)
def test_normal_files_decode_like_in_process(guard: PixelGuard, name: str) -> None:
    path = _testfile(name)
    array = guard.decode(path)
    assert np.array_equal(array, dcmread(path).pixel_array)


def test_declared_bomb_is_refused_before_allocating(guard: PixelGuard, tmp_path: Path) -> None:
    ds = dcmread(_testfile("MR_small_RLE.dcm"))
    ds.Rows = ds.Columns = 65535
    ds.NumberOfFrames = 1000
    ds.save_as(tmp_path / "bomb.dcm")
    with pytest.raises(PixelDecodeError, match="declares"):
        guard.decode(tmp_path / "bomb.dcm")
    assert guard.decode(_testfile("CT_small.dcm")).shape == (128, 128)  # worker still fine


def _set_j2k_size(codestream: bytes, width: int, height: int) -> bytes:
    """Rewrite the SIZ marker (image and tile size) of a JPEG 2000 codestream."""
    at = codestream.index(b"\xff\x51")
    size = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    origin = bytes(8)  # XOsiz, YOsiz
    return codestream[: at + 6] + size + origin + size + codestream[at + 6 + 24 :]


def test_codestream_bomb_and_garbage_fail_cleanly(guard: PixelGuard, tmp_path: Path) -> None:
    ds = dcmread(_testfile("JPEG2000.dcm"))
    frame = next(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    # The DICOM header says 1024 x 256; the codestream claims 60000 x 60000.
    bomb = _set_j2k_size(frame, 60000, 60000)
    ds.PixelData = _encapsulated(bomb)
    ds.NumberOfFrames = 1
    ds.save_as(tmp_path / "j2k_bomb.dcm")
    with pytest.raises(PixelDecodeError):
        guard.decode(tmp_path / "j2k_bomb.dcm")

    garbage = bytearray(frame)
    garbage[len(garbage) // 3 :] = os.urandom(len(garbage) - len(garbage) // 3)
    ds.PixelData = _encapsulated(bytes(garbage))
    ds.save_as(tmp_path / "j2k_garbage.dcm")
    with contextlib.suppress(PixelDecodeError):  # openjpeg may also decode noise to an image
        guard.decode(tmp_path / "j2k_garbage.dcm")
    assert guard.decode(_testfile("CT_small.dcm")).shape == (128, 128)


def _encapsulated(fragment: bytes) -> bytes:
    """Empty basic offset table, one fragment, sequence delimiter."""
    if len(fragment) % 2:
        fragment += b"\x00"
    item = b"\xfe\xff\x00\xe0" + len(fragment).to_bytes(4, "little") + fragment
    return b"\xfe\xff\x00\xe0" + bytes(4) + item + b"\xfe\xff\xdd\xe0" + bytes(4)


def test_allocation_past_the_cap_fails_in_the_child(tmp_path: Path) -> None:
    """The rlimit, not the header check: 128 x 128 declared, 48 MiB of pixel data read."""
    ds = dcmread(_testfile("CT_small.dcm"))
    ds.PixelData = bytes(48 * 1024**2)
    ds.save_as(tmp_path / "fat.dcm")
    with PixelGuard(timeout_s=60, memory_bytes=16 * 1024**2) as small:
        with pytest.raises(PixelDecodeError, match="memory cap"):
            small.decode(tmp_path / "fat.dcm")
        assert small.decode(_testfile("CT_small.dcm")).shape == (128, 128)


def test_timeout_and_a_killed_worker_are_recovered(guard: PixelGuard) -> None:
    path = _testfile("examples_jpeg2k.dcm")
    guard.decode(_testfile("CT_small.dcm"))  # the worker is up
    restarts = guard.restarts
    guard.timeout_s = 0.001  # no JPEG 2000 decode of 640 x 480 finishes in a millisecond
    try:
        with pytest.raises(PixelDecodeError, match="longer than"):
            guard.decode(path)
    finally:
        guard.timeout_s = 60
    assert guard.restarts == restarts + 1

    guard.decode(_testfile("CT_small.dcm"))
    assert guard._process is not None and guard._process.pid is not None
    os.kill(guard._process.pid, signal.SIGKILL)
    with pytest.raises(PixelDecodeError, match="died"):
        guard.decode(path)
    assert guard.decode(path).shape == dcmread(path).pixel_array.shape
