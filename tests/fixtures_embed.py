"""Fixtures and helpers of the embedding tests: DICOM files, spool rows, image shifts.

Images are real: pydicom's shipped CT (``CT_small.dcm``, GE) and MR
(``MR_small.dcm``) with their own headers; "acquisitions" are seeded small
variations of them (shift, flip, exposure), and scanner-style shifts (noise,
blur, sharpening, contrast curve) are applied to the stored pixel values.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from scipy import ndimage

from surveillance.store import IngestBatch, Store
from surveillance.store.domain import SpoolRecord

REAL_IMAGES = ("CT_small.dcm", "MR_small.dcm")


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "spool"
    folder.mkdir()
    return folder


def real_dataset(name: str) -> Dataset:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} is missing"
    return pydicom.dcmread(path)


def make_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    **attributes: object,
) -> Path:
    """A minimal DX-like instance with ``pixels`` (2-D, or 3-D for multi-frame)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # secondary capture
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.set_pixel_data(pixels, photometric, bits_stored)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_real(path: Path, source: Dataset, pixels: np.ndarray) -> Path:
    """``source`` with new stored ``pixels`` (same dtype) and a new SOP Instance UID."""
    ds = copy.deepcopy(source)  # Dataset.copy() is shallow: it would share PixelData
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    info = np.iinfo(source.pixel_array.dtype)
    stored = np.clip(np.rint(pixels), info.min, info.max).astype(source.pixel_array.dtype)
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


# ---- acquisitions and scanner-style shifts on stored values ----------------------


def acquisition(base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One plausible re-acquisition of ``base``: small shift, flip, exposure and noise."""
    img = base.astype(np.float64)
    img = np.roll(img, tuple(rng.integers(-6, 7, size=2)), axis=(0, 1))
    if rng.random() < 0.5:
        img = img[:, ::-1]
    mean = img.mean()
    img = mean + (img - mean) * rng.uniform(0.95, 1.05)
    return img + rng.normal(0.0, 0.004 * float(np.ptp(base.astype(np.float64))), size=img.shape)


def noise(img: np.ndarray, base: np.ndarray) -> np.ndarray:
    return img + np.random.default_rng(int(img.sum()) % 2**32).normal(
        0.0, 0.03 * float(np.ptp(base.astype(np.float64))), size=img.shape
    )


def blur(img: np.ndarray, base: np.ndarray) -> np.ndarray:
    return ndimage.gaussian_filter(img, sigma=1.2)


def sharpen(img: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Unsharp mask: what a sharper reconstruction kernel does to the image."""
    return img + 1.5 * (img - ndimage.gaussian_filter(img, sigma=1.0))


def contrast(img: np.ndarray, base: np.ndarray) -> np.ndarray:
    """A new tone curve (gamma 0.7 over the stored range): not undone by re-windowing."""
    lo, hi = float(base.min()), float(base.max())
    unit = np.clip((img - lo) / (hi - lo), 0.0, 1.0)
    return lo + (hi - lo) * unit**0.7


Shift = Callable[[np.ndarray, np.ndarray], np.ndarray]


def real_image_files(
    folder: Path,
    count: int,
    rng: np.random.Generator,
    shift: Shift | None = None,
    names: Sequence[str] = REAL_IMAGES,
) -> list[Path]:
    """``count`` files: acquisitions of the real CT/MR images (alternating), shifted or not."""
    sources = [real_dataset(n) for n in names]
    bases = [ds.pixel_array.copy() for ds in sources]
    paths = []
    for i in range(count):
        source, base = sources[i % len(sources)], bases[i % len(sources)]
        img = acquisition(base, rng)
        if shift is not None:
            img = shift(img, base)
        paths.append(write_real(folder / f"{uuid.uuid4().hex}.dcm", source, img))
    return paths


def spool_files(
    store: Store, files: Sequence[tuple[str, Path]], *, transfer_syntax: str | None = None
) -> None:
    """Spool rows for ``(study pseudonym, file in the spool dir)`` pairs, as the receiver does."""
    batch = IngestBatch(
        spool=[
            SpoolRecord(
                study_uid_pseudonym=study,
                sop_instance_pseudonym=uuid.uuid4().hex + uuid.uuid4().hex,
                file_name=path.name,
                size_bytes=path.stat().st_size,
                transfer_syntax=transfer_syntax,
            )
            for study, path in files
        ]
    )
    store.events.write_batch(batch)
