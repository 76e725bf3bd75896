"""Real CT images for the synthetic feed, with a reconstruction change the header does not name.

The synthetic deployment (:mod:`connectors.synthetic`) emits headers and
scores only. For the image path, one scanner can be given real pixels: the CT
slices that ship with pydicom (``CT_small.dcm`` and two JPEG 2000 slices,
reduced to about 128 x 128), one per study, each a plausible re-acquisition
(a shift of up to 6 pixels, a left-right flip, a calibration jitter of ~3 HU,
5 HU of pixel noise). From a chosen moment the scanner's reconstruction
changes: an edge-enhancing kernel (unsharp mask, amount 0.7, sigma 1 pixel)
and 1.75x the pixel noise. Nothing in the header or the model's scores says so.

:func:`ct_instance` wraps an image as a real CT instance (int16 stored values,
Rescale Slope 1 / Intercept -1024, Pixel Spacing), as a PACS would send it.
Seeded: the same generator gives the same images.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from scipy import ndimage

#: pydicom's CT slices that decode offline, and the block-mean reduction to ~128 x 128.
CT_SOURCES = (("CT_small.dcm", 1), ("693_J2KI.dcm", 4), ("J2K_pixelrep_mismatch.dcm", 4))
UNSHARP_AMOUNT = 0.7
NOISE_HU = 5.0
NOISE_FACTOR_AFTER = 1.75


@dataclass(frozen=True, slots=True)
class CTSlice:
    hu: np.ndarray
    spacing: tuple[float, float]


@lru_cache(maxsize=1)
def ct_slices() -> tuple[CTSlice, ...]:
    """The source slices in HU (those available offline)."""
    slices = []
    for name, factor in CT_SOURCES:
        path = get_testdata_file(name)
        if path is None:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's notes on its odd test files
            ds = pydicom.dcmread(path)
            raw = ds.pixel_array
        hu = raw.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        spacing = np.array([float(v) for v in ds.PixelSpacing]) * factor
        if factor > 1:
            rows, cols = hu.shape
            hu = hu.reshape(rows // factor, factor, cols // factor, factor).mean(axis=(1, 3))
        slices.append(CTSlice(hu, (float(spacing[0]), float(spacing[1]))))
    if not slices:
        raise RuntimeError("pydicom's CT test files are not available")
    return tuple(slices)


def ct_acquisition(
    rng: np.random.Generator, *, reconstruction_change: bool = False
) -> tuple[np.ndarray, tuple[float, float]]:
    """One study's image in HU and its pixel spacing (module docstring)."""
    slices = ct_slices()
    source = slices[int(rng.integers(len(slices)))]
    shift = tuple(int(v) for v in rng.integers(-6, 7, size=2))
    img = np.roll(source.hu, shift, axis=(0, 1))
    if rng.random() < 0.5:
        img = img[:, ::-1]
    img = img + rng.normal(0.0, 3.0)
    noise = NOISE_HU
    if reconstruction_change:
        img = img + UNSHARP_AMOUNT * (img - ndimage.gaussian_filter(img, 1.0))
        noise *= NOISE_FACTOR_AFTER
    return img + rng.normal(scale=noise, size=img.shape), source.spacing


@lru_cache(maxsize=1)
def _template() -> Dataset:
    path = get_testdata_file("CT_small.dcm")
    if path is None:
        raise RuntimeError("pydicom's CT_small.dcm is not available")
    return pydicom.dcmread(path)


def ct_instance(hu: np.ndarray, spacing: tuple[float, float]) -> Dataset:
    """``hu`` as a CT instance (explicit VR little endian, int16, intercept -1024)."""
    ds = copy.deepcopy(_template())
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    stored = np.clip(np.rint(hu + 1024.0), -32768, 32767).astype(np.int16)
    ds.Rows, ds.Columns = stored.shape
    ds.PixelRepresentation = 1
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelSpacing = [f"{spacing[0]:.4f}", f"{spacing[1]:.4f}"]
    ds.PixelData = stored.tobytes()
    return ds


__all__ = [
    "CT_SOURCES",
    "NOISE_FACTOR_AFTER",
    "UNSHARP_AMOUNT",
    "CTSlice",
    "ct_acquisition",
    "ct_instance",
    "ct_slices",
]
