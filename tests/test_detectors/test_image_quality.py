"""Image-quality fingerprint: unit behaviour, and evidence on pydicom's real CT images.

The evidence tests build synthetic "studies" from the CT slices shipped with
pydicom (random crops, shifts and left-right flips, a per-study calibration
jitter and mild pixel noise), a reference of 60 studies and weekly windows of
25, and compare fingerprints feature by feature with a Holm-corrected KS test.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from scipy import ndimage
from scipy.stats import binom

from detectors import KSDetector
from detectors.image_quality import (
    IMAGE_FEATURES,
    body_mask,
    fingerprint_matrix,
    image_fingerprint,
)

ALPHA = 0.05
#: pydicom's CT slices that decode offline, and the block-mean downsampling
#: that brings each to about 128 x 128 (keeps the tests quick).
CT_FILES = (("CT_small.dcm", 1), ("693_J2KI.dcm", 4), ("J2K_pixelrep_mismatch.dcm", 4))

Image = tuple[np.ndarray, tuple[float, float]]


def _load_hu(name: str, factor: int) -> Image:
    path = get_testdata_file(name)
    assert path is not None, f"{name} is not among pydicom's local test files"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's notes on odd test files
        ds = pydicom.dcmread(path)
        raw = ds.pixel_array
    hu = raw.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    spacing = np.array([float(v) for v in ds.PixelSpacing])
    if factor > 1:
        rows, cols = hu.shape
        hu = hu.reshape(rows // factor, factor, cols // factor, factor).mean(axis=(1, 3))
        spacing = spacing * factor
    return hu, (float(spacing[0]), float(spacing[1]))


@pytest.fixture(scope="module")
def ct_images() -> list[Image]:
    return [_load_hu(name, factor) for name, factor in CT_FILES]


def _unsharp(img: np.ndarray, amount: float = 0.7, sigma: float = 1.0) -> np.ndarray:
    return img + amount * (img - ndimage.gaussian_filter(img, sigma))


def _study(
    images: list[Image], rng: np.random.Generator, changed: bool = False
) -> dict[str, float]:
    """One synthetic study's fingerprint; ``changed``: the new reconstruction."""
    hu, spacing = images[int(rng.integers(len(images)))]
    size = int(rng.integers(104, 121))
    r0 = int(rng.integers(0, hu.shape[0] - size + 1))
    c0 = int(rng.integers(0, hu.shape[1] - size + 1))
    img = hu[r0 : r0 + size, c0 : c0 + size]
    if rng.random() < 0.5:
        img = img[:, ::-1]
    img = img + rng.normal(0.0, 3.0)  # per-study calibration jitter, HU
    noise = 5.0
    if changed:  # edge-enhancing kernel, and 1.75 x the added pixel noise
        img = _unsharp(img)
        noise *= 1.75
    return image_fingerprint(img + rng.normal(scale=noise, size=img.shape), spacing)


def _ks() -> KSDetector:
    return KSDetector(alpha=ALPHA, correction="holm", feature_names=IMAGE_FEATURES, min_samples=20)


# ------------------------------------------------------------------ unit behaviour


def test_features_are_named_and_finite(ct_images: list[Image]) -> None:
    hu, spacing = ct_images[0]
    fp = image_fingerprint(hu, spacing)
    assert tuple(fp) == IMAGE_FEATURES
    assert all(type(v) is float and math.isfinite(v) for v in fp.values())
    assert (fp["rows"], fp["cols"]) == (128.0, 128.0)
    assert fp["fov_mm"] == pytest.approx(128 * spacing[1])
    assert fp["q05"] < fp["q50"] < fp["q95"]
    assert math.isnan(image_fingerprint(hu, None)["fov_mm"])


@pytest.mark.parametrize(
    "index", [pytest.param(i, id=name) for i, (name, _) in enumerate(CT_FILES)]
)
def test_noise_follows_added_noise_and_sharpness_does_not(
    ct_images: list[Image], index: int
) -> None:
    hu, spacing = ct_images[index]
    rng = np.random.default_rng(60)
    # CT_small has about 15 HU of its own noise: 10 -> 20 HU added is ~1.4x in total.
    base = image_fingerprint(hu + rng.normal(scale=10.0, size=hu.shape), spacing)
    noisy = image_fingerprint(hu + rng.normal(scale=20.0, size=hu.shape), spacing)
    assert noisy["noise"] > 1.3 * base["noise"]
    assert noisy["hf_energy"] > base["hf_energy"]
    assert noisy["sharpness"] == pytest.approx(base["sharpness"], rel=0.02)


@pytest.mark.parametrize(
    "index", [pytest.param(i, id=name) for i, (name, _) in enumerate(CT_FILES)]
)
def test_edge_enhancement_raises_sharpness(ct_images: list[Image], index: int) -> None:
    hu, spacing = ct_images[index]
    rng = np.random.default_rng(61)
    noise = rng.normal(scale=5.0, size=hu.shape)
    base = image_fingerprint(hu + noise, spacing)
    sharper = image_fingerprint(_unsharp(hu) + noise, spacing)
    assert sharper["sharpness"] > 1.05 * base["sharpness"]


def test_noise_on_a_uniform_region_is_proportional_to_sigma() -> None:
    rng = np.random.default_rng(62)
    ratios = [
        image_fingerprint(40.0 + rng.normal(scale=sigma, size=(128, 128)))["noise"] / sigma
        for sigma in (5.0, 10.0, 20.0)
    ]
    assert max(ratios) - min(ratios) < 0.05
    assert ratios[0] == pytest.approx(0.7, abs=0.05)  # the documented factor


def test_body_mask_is_the_largest_region_with_holes_filled() -> None:
    img = np.full((64, 64), -1000.0)
    img[10:50, 10:50] = 40.0  # the body
    img[20:30, 20:30] = -800.0  # lung inside it
    img[55:60, 55:60] = 40.0  # the table: a smaller separate region
    mask = body_mask(img)
    assert mask[25, 25] and mask[12, 12]
    assert not mask[57, 57] and not mask[2, 2]
    assert mask.sum() == 40 * 40


def test_body_mask_falls_back_to_the_20th_percentile() -> None:
    img = np.zeros((64, 64))  # e.g. MR magnitudes, no HU
    img[8:56, 8:56] = 300.0
    mask = body_mask(img, body_threshold=None)
    assert mask.sum() == 48 * 48
    # an HU threshold that nothing passes falls back too
    assert body_mask(img - 2000.0).sum() == 48 * 48


@pytest.mark.parametrize(
    ("pixels", "spacing", "match"),
    [
        pytest.param(np.zeros((4, 64, 64)), None, "one 2-D image", id="3d"),
        pytest.param(np.zeros((4, 64)), None, "at least 8 x 8", id="tiny"),
        pytest.param(np.full((16, 16), np.nan), None, "finite", id="nan"),
        pytest.param(np.zeros((16, 16)), (0.0, 1.0), "two positive numbers", id="spacing"),
    ],
)
def test_input_rules(pixels: np.ndarray, spacing: tuple[float, float] | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        image_fingerprint(pixels, spacing)


# ------------------------------------------------------------------ evidence


def _windows(
    images: list[Image], seed: int, n_windows: int, changed: bool
) -> tuple[KSDetector, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    reference = fingerprint_matrix([_study(images, rng) for _ in range(60)])
    make: Callable[[], dict[str, float]] = lambda: _study(images, rng, changed)  # noqa: E731
    windows = [fingerprint_matrix([make() for _ in range(25)]) for _ in range(n_windows)]
    return _ks().fit(reference), windows


def test_reconstruction_change_is_flagged(ct_images: list[Image]) -> None:
    runs = 20
    flagged = 0
    features: list[str] = []
    for run in range(runs):
        detector, (window,) = _windows(ct_images, 100 + run, 1, changed=True)
        result = detector.score(window)
        flagged += result.drifted
        features.append(result.details["feature"])
    rate = flagged / runs
    assert rate >= 0.9, f"reconstruction change flagged in {flagged}/{runs} runs ({rate:.0%})"
    assert set(features) <= {"noise", "sharpness", "hf_energy", "q05", "q95"}, features


@pytest.mark.slow
def test_null_twins_false_alarm_rate(ct_images: list[Image]) -> None:
    """200 null windows: 10 references of 60 studies, 20 windows of 25 against each."""
    alarms = total = 0
    for reference_seed in range(10):
        detector, windows = _windows(ct_images, 1000 + reference_seed, 20, changed=False)
        for window in windows:
            alarms += detector.score(window).drifted
            total += 1
    low, high = binom.interval(0.99, total, ALPHA)
    message = (
        f"{alarms}/{total} null windows flagged ({alarms / total:.1%}); "
        f"99% binomial interval at alpha={ALPHA}: [{low:.0f}, {high:.0f}]"
    )
    # KS with Holm over 9 features is conservative: only too many alarms is a failure.
    assert alarms <= high, message
