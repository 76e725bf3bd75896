"""Image-quality fingerprints: what the embed job stores so the drift job can see acquisition.

A reconstruction change on one scanner (a sharper kernel, ~2x pixel noise)
leaves the header and often the model's scores unchanged, and an untrained
embedding of a 128 x 128 display image dilutes it. The fingerprint of
:func:`detectors.image_quality.image_fingerprint` measures it directly, from
the decoded pixels **in physical units** (Hounsfield units for CT: Rescale
Slope/Intercept or the Modality LUT applied, no VOI window, no resize):
noise, sharpness, high-frequency energy, body intensity quantiles, matrix and
field of view.

The embed job stores one fingerprint per study (the first instance that
decodes, like the other extractors) as an embedding row of extractor
:data:`IMAGE_QUALITY_EXTRACTOR` (``image-quality``, version
:data:`IMAGE_QUALITY_VERSION`), one float per feature in
:data:`~detectors.image_quality.IMAGE_FEATURES` order (``nan`` where a feature
is unknown, e.g. the field of view without Pixel Spacing). The drift job tests
each feature per stratum and window as an ``image:<feature>`` signal.

For CT the body mask uses the -500 HU threshold; for other modalities (no
calibrated units) the image's own 20th percentile.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from detectors.image_quality import CT_BODY_THRESHOLD, IMAGE_FEATURES, image_fingerprint
from surveillance.analysis.embeddings.decode import DecodeError, physical_pixels
from surveillance.analysis.embeddings.extractor import FileResult, describe_error
from surveillance.analysis.embeddings.names import (
    IMAGE_QUALITY_EXTRACTOR,
    IMAGE_QUALITY_VERSION,
    image_feature_names,
)


def _spacing(ds: Dataset) -> tuple[float, float] | None:
    value = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    try:
        if value is not None and len(value) == 2:
            row, col = float(value[0]), float(value[1])
            if row > 0 and col > 0:
                return row, col
    except (TypeError, ValueError):
        return None
    return None


def fingerprint_dataset(ds: Dataset) -> np.ndarray:
    """The fingerprint of one read dataset (pixels included), as a float32 vector."""
    pixels = physical_pixels(ds)
    modality = str(ds.get("Modality", "")).upper()
    threshold = CT_BODY_THRESHOLD if modality == "CT" else None
    try:
        features = image_fingerprint(pixels, _spacing(ds), body_threshold=threshold)
    except ValueError as exc:
        raise DecodeError(f"no fingerprint: {exc}") from exc
    return np.array([features[name] for name in IMAGE_FEATURES], dtype=np.float32)


def fingerprint_file(path: str | PathLike[str]) -> np.ndarray:
    """Read the DICOM file at ``path`` and fingerprint it (:class:`DecodeError` if unusable)."""
    try:
        ds = pydicom.dcmread(path)
    except pydicom.errors.InvalidDicomError as exc:
        raise DecodeError(f"not a DICOM file: {exc}") from exc
    return fingerprint_dataset(ds)


class ImageQualityExtractor:
    """The embed job's second extractor: one fingerprint per file, no torch.

    Same surface as :class:`~surveillance.analysis.embeddings.extractor.Extractor`
    for the job (``name``, ``version``, ``embed_files``).
    """

    name = IMAGE_QUALITY_EXTRACTOR
    version = IMAGE_QUALITY_VERSION
    dim = len(IMAGE_FEATURES)

    def embed_files(self, paths: Sequence[Path]) -> list[FileResult]:
        results = []
        for index, path in enumerate(paths):
            try:
                results.append(FileResult(index, fingerprint_file(path), None))
            except (DecodeError, OSError) as exc:
                results.append(FileResult(index, None, describe_error(exc)))
        return results


__all__ = [
    "IMAGE_QUALITY_EXTRACTOR",
    "IMAGE_QUALITY_VERSION",
    "ImageQualityExtractor",
    "fingerprint_dataset",
    "fingerprint_file",
    "image_feature_names",
]
