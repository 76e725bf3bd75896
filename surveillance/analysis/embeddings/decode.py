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
"""

from __future__ import annotations

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


def decode_dataset(ds: Dataset, size: int = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """A read dataset (pixels included) -> ``(size, size)`` float32 in [0, 1]."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DecodeError("the instance has no pixel data")
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


def decode_for_embedding(path: str | PathLike[str], size: int = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """Read the DICOM file at ``path`` -> ``(size, size)`` float32 grey image in [0, 1].

    Raises :class:`DecodeError` for anything that is not a decodable image;
    I/O errors (``OSError``) pass through.
    """
    try:
        ds = pydicom.dcmread(path)
    except pydicom.errors.InvalidDicomError as exc:
        raise DecodeError(f"not a DICOM file: {exc}") from exc
    return decode_dataset(ds, size)


__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "DecodeError",
    "decode_dataset",
    "decode_for_embedding",
    "square_resize",
    "to_unit_grey",
    "window",
]
