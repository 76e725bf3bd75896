"""DICOM pixels -> one fixed-size grey image in [0, 1], ready for an embedding backbone.

:func:`decode_for_embedding` is a top-level, picklable function of a path, so it
runs unchanged in a DataLoader worker, a ``ProcessPoolExecutor`` or a guarded
child process (timeout + memory cap). It imports numpy, pydicom and Pillow only.

The display pipeline follows DICOM PS3.3/PS3.4 in order:

1. **Frame.** Single-frame images as they are; for a multi-frame instance the
   middle frame (``NumberOfFrames // 2``), decoded on its own.
2. **Modality LUT.** Rescale Slope/Intercept or a Modality LUT Sequence
   (stored values -> e.g. Hounsfield units); for enhanced multi-frame objects the
   Pixel Value Transformation of the frame's functional groups.
3. **VOI.** A VOI LUT Sequence (its output range scaled to [0, 1]) or the first
   Window Center/Width (LINEAR, LINEAR_EXACT or SIGMOID, PS3.3 C.11.2.1.2) as
   written by the modality. Without either, the 0.5th..99.5th percentiles of
   the frame are stretched to [0, 1] (a linear contrast change is then
   invisible; a non-linear one is not).
4. **Presentation.** MONOCHROME1 (minimum = white) is inverted, so every image
   reaches the backbone with "bright = dense". Colour (RGB, YBR_*, PALETTE
   COLOR) becomes grey by ITU-R BT.601 luma.
5. **Geometry.** Padded with black to a square (aspect ratio kept), then
   resized to ``size x size`` with Pillow's antialiased bilinear filter.

Compressed transfer syntaxes decode through pydicom's pixel handlers with the
pylibjpeg plugins (JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, RLE),
all offline.

Decompression bombs (issue 12): before any pixel is decoded, the size the
header declares (Rows x Columns x NumberOfFrames x SamplesPerPixel x bytes per
sample) is checked against ``max_decoded_bytes`` (default 2 GiB, ``[dicom]
max_decoded_bytes``); a larger instance is a :class:`DecodeError`. In a worker
process (a DataLoader or pool worker, never the main process) the first decode
also caps the process's address space (``RLIMIT_AS``) at its current size plus
``ADDRESS_SPACE_HEADROOM`` x the budget, so a decoder that allocates more than
the header said fails with MemoryError in that worker instead of taking the host.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from os import PathLike
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, pixel_array

#: Side of the square image handed to the backbones unless they ask otherwise.
DEFAULT_IMAGE_SIZE = 128
#: Pixel budget: the most decoded bytes one instance may declare (as [dicom] max_decoded_bytes).
DEFAULT_MAX_DECODED_BYTES = 2 * 1024**3
#: A worker's address space may grow by this many pixel budgets (decoded array, float copies).
ADDRESS_SPACE_HEADROOM = 4
_capped: list[int] = []  # the cap set in this process (once)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


class DecodeError(ValueError):
    """A DICOM file has no usable image (no pixels, unsupported layout, broken data)."""


def _frame_groups(ds: Dataset, frame: int) -> list[Dataset]:
    """Functional-group items that apply to ``frame``: per-frame first, then shared."""
    groups: list[Dataset] = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and frame < len(per_frame):
        groups.append(per_frame[frame])
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    return groups


def _from_groups(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    for group in _frame_groups(ds, frame):
        items = group.get(sequence)
        if items:
            return items[0]
    return None


def _modality(ds: Dataset, arr: np.ndarray, frame: int) -> np.ndarray:
    """Stored values -> modality values (rescale or Modality LUT)."""
    if "RescaleSlope" in ds or "ModalityLUTSequence" in ds:
        return np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    transform = _from_groups(ds, frame, "PixelValueTransformationSequence")
    if transform is not None and "RescaleSlope" in transform:
        slope = float(transform.RescaleSlope)
        intercept = float(transform.get("RescaleIntercept", 0.0))
        return arr.astype(np.float64) * slope + intercept
    return arr.astype(np.float64)


def _first(value: Any) -> float:
    """First value of a DS element that may be multi-valued."""
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return float(value[0])
    return float(value)


def window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """PS3.3 C.11.2.1.2 windowing, output scaled to [0, 1] instead of the display range."""
    function = function.strip().upper() or "LINEAR"
    if function == "LINEAR":
        if width < 1:
            raise DecodeError(f"Window Width {width} must be >= 1 for LINEAR windowing")
        out = (values - (center - 0.5)) / (width - 1) + 0.5
    elif function == "LINEAR_EXACT":
        if width <= 0:
            raise DecodeError(f"Window Width {width} must be > 0 for LINEAR_EXACT windowing")
        out = (values - center) / width + 0.5
    elif function == "SIGMOID":
        if width <= 0:
            raise DecodeError(f"Window Width {width} must be > 0 for SIGMOID windowing")
        return np.asarray(1.0 / (1.0 + np.exp(-4.0 * (values - center) / width)))
    else:
        raise DecodeError(f"unsupported VOI LUT Function {function!r}")
    return np.clip(out, 0.0, 1.0)


def _stretch(values: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(values, [0.5, 99.5])
    if not hi > lo:
        lo, hi = float(values.min()), float(values.max())
    if not hi > lo:
        return np.zeros_like(values)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0)


def _voi(ds: Dataset, values: np.ndarray, frame: int) -> np.ndarray:
    """Modality values -> [0, 1] by the VOI LUT, the window, or a percentile stretch."""
    if ds.get("VOILUTSequence"):
        item = ds.VOILUTSequence[0]
        bits = int(item.LUTDescriptor[2])
        # apply_voi indexes the LUT with the input values, so it needs integers.
        out = apply_voi(np.rint(values).astype(np.int64), ds)
        return np.clip(np.asarray(out, dtype=np.float64) / float(2**bits - 1), 0.0, 1.0)
    source: Dataset | None = ds if "WindowCenter" in ds and "WindowWidth" in ds else None
    if source is None:
        source = _from_groups(ds, frame, "FrameVOILUTSequence")
        if source is not None and not ("WindowCenter" in source and "WindowWidth" in source):
            source = None
    if source is not None:
        function = str(source.get("VOILUTFunction", "LINEAR") or "LINEAR")
        return window(values, _first(source.WindowCenter), _first(source.WindowWidth), function)
    return _stretch(values)


def to_unit_grey(ds: Dataset, arr: np.ndarray, frame: int = 0) -> np.ndarray:
    """One decoded frame ``arr`` of ``ds`` -> float64 grey image in [0, 1] (steps 2-4)."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        photometric = "RGB"
    if arr.ndim == 3:  # colour: pydicom has already converted YBR_* to RGB
        if arr.shape[-1] != 3:
            raise DecodeError(f"expected 3 colour samples per pixel, got shape {arr.shape}")
        grey = arr.astype(np.float64) @ _LUMA
        return _stretch(grey)
    if arr.ndim != 2:
        raise DecodeError(f"expected one 2-D frame, got an array of shape {arr.shape}")
    values = _modality(ds, arr, frame)
    out = _voi(ds, values, frame)
    if photometric == "MONOCHROME1":
        out = 1.0 - out
    return out


def square_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Pad ``image`` with 0 to a centred square, then resize to ``size x size`` (float32)."""
    rows, cols = image.shape
    side = max(rows, cols)
    padded = np.zeros((side, side), dtype=np.float32)
    top, left = (side - rows) // 2, (side - cols) // 2
    padded[top : top + rows, left : left + cols] = image
    if side == size:
        return padded
    resized = Image.fromarray(padded, mode="F").resize(
        (size, size), resample=Image.Resampling.BILINEAR
    )
    return np.array(resized, dtype=np.float32)  # a writable copy


def _header_int(ds: Dataset, keyword: str, default: int) -> int:
    try:
        value = ds.get(keyword, default)
        return max(int(default if value in (None, "") else value), 0)
    except (TypeError, ValueError) as exc:
        raise DecodeError(f"{keyword} is not an integer") from exc


def declared_pixel_bytes(ds: Dataset) -> int:
    """Rows x Columns x NumberOfFrames x SamplesPerPixel x bytes per sample, from the header."""
    rows = _header_int(ds, "Rows", 0)
    columns = _header_int(ds, "Columns", 0)
    frames = max(_header_int(ds, "NumberOfFrames", 1), 1)
    samples = max(_header_int(ds, "SamplesPerPixel", 1), 1)
    bits = _header_int(ds, "BitsAllocated", 8)
    return rows * columns * frames * samples * max((bits + 7) // 8, 1)


def check_pixel_budget(ds: Dataset, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> int:
    """The declared decoded size of ``ds``; DecodeError when it exceeds the budget."""
    declared = declared_pixel_bytes(ds)
    if declared > max_decoded_bytes:
        raise DecodeError(
            f"declared pixel data of {declared} bytes exceeds max_decoded_bytes {max_decoded_bytes}"
        )
    return declared


def _virtual_size() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def cap_worker_address_space(max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> int | None:
    """In a child process, cap RLIMIT_AS at the current size + headroom x budget (once).

    Returns the cap in bytes, or None in the main process / where it cannot be set.
    """
    if _capped:
        return _capped[0]
    if multiprocessing.parent_process() is None:
        return None
    try:
        import resource
    except ImportError:  # not POSIX
        return None
    current = _virtual_size()
    if current is None:
        return None
    cap = current + ADDRESS_SPACE_HEADROOM * max_decoded_bytes
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    if soft != resource.RLIM_INFINITY and soft <= cap:
        _capped.append(soft)
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    except (ValueError, OSError):
        return None
    _capped.append(cap)
    return cap


def decode_dataset(
    ds: Dataset,
    size: int = DEFAULT_IMAGE_SIZE,
    *,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> np.ndarray:
    """A read dataset (pixels included) -> ``(size, size)`` float32 in [0, 1].

    The header's declared pixel size is checked against ``max_decoded_bytes``
    before anything is decoded.
    """
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DecodeError("the instance has no pixel data")
    check_pixel_budget(ds, max_decoded_bytes)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    frame = frames // 2 if frames > 1 else 0
    try:
        arr = pixel_array(ds, index=frame) if frames > 1 else ds.pixel_array
    except (ValueError, RuntimeError, NotImplementedError, AttributeError, KeyError) as exc:
        raise DecodeError(f"cannot decode pixel data: {type(exc).__name__}: {exc}") from exc
    image = to_unit_grey(ds, np.asarray(arr), frame)
    if not np.isfinite(image).all():
        raise DecodeError("decoded image holds NaN or infinite values")
    return square_resize(image.astype(np.float32), size)


def physical_pixels(ds: Dataset) -> np.ndarray:
    """One frame (the middle one of a multi-frame instance) in modality units, float64.

    Steps 1-2 only (frame, Modality LUT): Hounsfield units for CT, no VOI
    window, no resize; colour images become grey by BT.601 luma. This is what an
    image-quality fingerprint must see (a display window would clip the noise).
    """
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DecodeError("the instance has no pixel data")
    check_pixel_budget(ds)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    frame = frames // 2 if frames > 1 else 0
    try:
        arr = np.asarray(pixel_array(ds, index=frame) if frames > 1 else ds.pixel_array)
    except (ValueError, RuntimeError, NotImplementedError, AttributeError, KeyError) as exc:
        raise DecodeError(f"cannot decode pixel data: {type(exc).__name__}: {exc}") from exc
    if arr.ndim == 3 and arr.shape[-1] == 3:
        values = arr.astype(np.float64) @ _LUMA
    elif arr.ndim == 2:
        values = _modality(ds, arr, frame)
    else:
        raise DecodeError(f"expected one 2-D frame, got an array of shape {arr.shape}")
    if not np.isfinite(values).all():
        raise DecodeError("decoded image holds NaN or infinite values")
    return values


def decode_for_embedding(
    path: str | PathLike[str],
    size: int = DEFAULT_IMAGE_SIZE,
    *,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> np.ndarray:
    """Read the DICOM file at ``path`` -> ``(size, size)`` float32 grey image in [0, 1].

    Raises :class:`DecodeError` for anything that is not a decodable image
    (including a header declaring more than ``max_decoded_bytes`` of pixels, or
    a decoder running out of the worker's capped address space); I/O errors
    (``OSError``) pass through.
    """
    cap_worker_address_space(max_decoded_bytes)
    try:
        ds = pydicom.dcmread(path)
    except pydicom.errors.InvalidDicomError as exc:
        raise DecodeError(f"not a DICOM file: {exc}") from exc
    try:
        return decode_dataset(ds, size, max_decoded_bytes=max_decoded_bytes)
    except MemoryError as exc:
        raise DecodeError("decoding ran out of the worker's memory cap") from exc


__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_MAX_DECODED_BYTES",
    "DecodeError",
    "cap_worker_address_space",
    "check_pixel_budget",
    "declared_pixel_bytes",
    "decode_dataset",
    "decode_for_embedding",
    "physical_pixels",
    "square_resize",
    "to_unit_grey",
    "window",
]
