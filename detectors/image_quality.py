"""Image-quality fingerprint of one 2-D image, for drift checks on acquisition.

A reconstruction change (a new kernel, an iterative-reconstruction level, a
dose-reduction programme) changes how the images *look* without changing any
header a metadata check would compare, and it can move a model's output. The
fingerprint condenses one image into a few numbers that such a change moves;
fingerprints of a reference period and of a recent window are then compared
feature by feature (e.g. :class:`~detectors.ks.KSDetector` with a Holm
correction, one column per name in :data:`IMAGE_FEATURES`).

Input: one 2-D image in physical units (Hounsfield units for CT: apply
``RescaleSlope`` and ``RescaleIntercept`` first), and the pixel spacing in mm
``(row spacing, column spacing)`` as in DICOM ``PixelSpacing``, when known.

Body mask
    The largest connected region (8-connectivity) of pixels above
    ``body_threshold`` (-500 HU by default: soft tissue and bone, not air),
    with its holes filled (so the lungs inside the chest count as body). When
    that region covers less than 1 % of the image, or ``body_threshold=None``
    (images not in HU), the threshold becomes the image's 20th percentile.

Features (:data:`IMAGE_FEATURES`)
    ``noise``
        Robust spread of the high-pass residual in flat regions:
        ``1.4826 x MAD`` of ``image - median3x3(image)`` over the pixels of the
        eroded body whose gradient magnitude (Sobel on the 3x3-median-filtered
        image) is at or below its median inside the body. Flat regions keep
        anatomy edges out; the median filter keeps a single bright pixel from
        counting as structure. In image units (HU) and proportional to the
        pixel noise, not equal to it: white Gaussian noise of standard
        deviation sigma on a uniform region gives about 0.7 sigma.
    ``sharpness``
        Edge sharpness, free of contrast and noise: the 99th percentile of the
        gradient magnitude (Sobel) inside the dilated body after Gaussian
        smoothing with sigma = 1 pixel, divided by the same after smoothing with
        sigma = 2 pixels. An edge blurred to a Gaussian width ``s`` (pixels)
        has peak gradients in the ratio ``sqrt((s² + 4) / (s² + 1))``: 2 for a
        perfectly sharp edge, 1.58 for ``s = 1``, 1.26 for ``s = 2``, towards 1
        for a very soft one. Dimensionless and independent of the intensity
        scale; it depends on the pixel size (edge width is counted in pixels).
        The smoothing and the high percentile make it follow edges, not noise:
        on pydicom's CT slices, 4x the pixel noise moves it by < 1 %, an unsharp
        mask (amount 0.7, sigma 1 pixel) raises it by 5-9 %. (A gradient divided
        by the intensity range was tried and rejected: the overshoot of edge
        enhancement widens ``q95 - q05`` about as much as it steepens edges.)
    ``hf_energy``
        Share of the image's spectral power above half the Nyquist frequency
        (radial frequency > 0.25 cycles/pixel), DC excluded, after subtracting
        the mean and applying a 2-D Hann window. Moves with *both* sharper
        kernels and more noise (white noise is mostly high-frequency).
    ``q05``, ``q50``, ``q95``
        Intensity quantiles inside the body mask (HU for CT): calibration,
        contrast phase, patient mix.
    ``rows``, ``cols``
        Matrix size.
    ``fov_mm``
        Field of view across the columns, ``cols x column spacing``; ``nan``
        when the spacing is unknown.

Pure numpy/scipy; no I/O.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

IMAGE_FEATURES: tuple[str, ...] = (
    "noise",
    "sharpness",
    "hf_energy",
    "q05",
    "q50",
    "q95",
    "rows",
    "cols",
    "fov_mm",
)

#: Default body threshold: above air and lung, in HU.
CT_BODY_THRESHOLD = -500.0
_MAD_TO_SIGMA = 1.4826
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def body_mask(
    pixels: ArrayLike, body_threshold: float | None = CT_BODY_THRESHOLD, min_fraction: float = 0.01
) -> np.ndarray:
    """Boolean mask of the body: see the module docstring."""
    img = np.asarray(pixels, dtype=np.float64)
    candidates = None
    if body_threshold is not None:
        candidates = _largest_region(img > body_threshold)
        if candidates.sum() < min_fraction * img.size:
            candidates = None
    if candidates is None:
        candidates = _largest_region(img > np.percentile(img, 20))
    if not candidates.any():  # a constant image: everything is "body"
        return np.ones(img.shape, dtype=bool)
    return np.asarray(ndimage.binary_fill_holes(candidates), dtype=bool)


def _largest_region(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    if count == 0:
        return np.zeros(mask.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return np.asarray(labels == int(np.argmax(sizes)), dtype=bool)


def _gradient_magnitude(img: np.ndarray) -> np.ndarray:
    return np.hypot(ndimage.sobel(img, axis=0), ndimage.sobel(img, axis=1)) / 8.0


def _noise(img: np.ndarray, body: np.ndarray) -> float:
    smooth = ndimage.median_filter(img, size=3, mode="reflect")
    residual = img - smooth
    interior = ndimage.binary_erosion(body, structure=_EIGHT_CONNECTED, iterations=2)
    if interior.sum() < 50:
        interior = body
    grad = _gradient_magnitude(smooth)
    flat = interior & (grad <= np.median(grad[interior]))
    r = residual[flat]
    return float(_MAD_TO_SIGMA * np.median(np.abs(r - np.median(r))))


def _sharpness(img: np.ndarray, body: np.ndarray) -> float:
    region = ndimage.binary_dilation(body, structure=_EIGHT_CONNECTED, iterations=2)

    def edge_gradient(sigma: float) -> float:
        smoothed = ndimage.gaussian_filter(img, sigma=sigma, mode="reflect")
        return float(np.percentile(_gradient_magnitude(smoothed)[region], 99))

    coarse = edge_gradient(2.0)
    return edge_gradient(1.0) / coarse if coarse > 0.0 else math.nan


def _hf_energy(img: np.ndarray) -> float:
    rows, cols = img.shape
    window = np.outer(np.hanning(rows), np.hanning(cols))
    power = np.abs(np.fft.rfft2((img - img.mean()) * window)) ** 2
    fy = np.fft.fftfreq(rows)[:, None]
    fx = np.fft.rfftfreq(cols)[None, :]
    radius = np.hypot(fy, fx)
    power[0, 0] = 0.0
    # rfft2 keeps the non-negative column frequencies only: every column but the
    # first (and the Nyquist one, for an even width) stands for two mirror
    # frequencies of the full spectrum, so it counts twice.
    weight = np.full(power.shape[1], 2.0)
    weight[0] = 1.0
    if cols % 2 == 0:
        weight[-1] = 1.0
    weighted = power * weight[None, :]
    total = float(weighted.sum())
    if total <= 0.0:
        return 0.0
    return float(weighted[radius > 0.25].sum() / total)


def image_fingerprint(
    pixels: ArrayLike,
    pixel_spacing_mm: tuple[float, float] | None = None,
    *,
    body_threshold: float | None = CT_BODY_THRESHOLD,
) -> dict[str, float]:
    """The :data:`IMAGE_FEATURES` of one 2-D image (module docstring), as floats."""
    img = np.asarray(pixels, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"image_fingerprint needs one 2-D image, got shape {img.shape}")
    if min(img.shape) < 8:
        raise ValueError(f"image_fingerprint needs at least 8 x 8 pixels, got {img.shape}")
    if not np.isfinite(img).all():
        raise ValueError("image_fingerprint needs finite pixel values")
    spacing: tuple[float, float] | None = None
    if pixel_spacing_mm is not None:
        row_mm, col_mm = (float(v) for v in pixel_spacing_mm)
        if not (math.isfinite(row_mm) and math.isfinite(col_mm) and row_mm > 0 and col_mm > 0):
            raise ValueError(
                f"'pixel_spacing_mm' must be two positive numbers, got {pixel_spacing_mm!r}"
            )
        spacing = (row_mm, col_mm)

    body = body_mask(img, body_threshold)
    inside = img[body]
    q05, q50, q95 = (float(v) for v in np.percentile(inside, [5, 50, 95]))
    rows, cols = img.shape
    return {
        "noise": _noise(img, body),
        "sharpness": _sharpness(img, body),
        "hf_energy": _hf_energy(img),
        "q05": q05,
        "q50": q50,
        "q95": q95,
        "rows": float(rows),
        "cols": float(cols),
        "fov_mm": float(cols * spacing[1]) if spacing is not None else math.nan,
    }


def fingerprint_matrix(fingerprints: list[dict[str, float]]) -> np.ndarray:
    """Stack fingerprints into an ``(n, len(IMAGE_FEATURES))`` array, in that column order."""
    return np.array(
        [[fp[name] for name in IMAGE_FEATURES] for fp in fingerprints], dtype=np.float64
    ).reshape(len(fingerprints), len(IMAGE_FEATURES))


__all__ = [
    "CT_BODY_THRESHOLD",
    "IMAGE_FEATURES",
    "body_mask",
    "fingerprint_matrix",
    "image_fingerprint",
]
