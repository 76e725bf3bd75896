"""``surveillance bench detection``: false-alarm rate and power per signal family, seeded.

Each family is simulated the way the drift and performance jobs decide it
(the product's detectors, a Holm correction over the family's tests of one
window, then the family's ``[drift.min_effect]`` tolerance), ``runs`` times
without a change (false alarms) and with a change worth catching (power),
and printed beside the goal from issue 9. A benchmark, not a test: figures
vary with ``runs`` and ``seed``, never with the clock.

==============  ==============================================  =====================
family          change simulated (power)                        window
==============  ==============================================  =====================
image           unsharp mask (0.7) + 1.75x noise on pydicom's   60 reference vs 25
                real CT slices (HU), header and scores same     studies, 9 features
score           scores Beta(1.2, 6) -> Beta(1.2, 4.5)           500 vs 200
metadata        a new software version on 30 % of the window    500 vs 200
embedding       32-d embeddings, covariance x 1.3 (spread)      100 vs 100
                (MMD over 5 bandwidths and KS on PCA)
performance     sensitivity 0.905 -> 0.36, 11 positives         one window
cusum           error 0.095 -> 0.30 at 40 positives a day       90 days in control
==============  ==============================================  =====================

"Small, clinically irrelevant" shifts (``tolerance`` entries): a 3-point move
of one age band in 5,000 studies (Cramér's V ~0.03) and a 1 kV shift of kVp
(KS D ~0.05 on 5,000 studies): significant, below tolerance, never drift.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import ndimage

from detectors import (
    Chi2Detector,
    ComponentKSDetector,
    KSDetector,
    adjust_p_values,
    wilson_interval,
)
from detectors.cusum import cusum, decision_interval_for_time
from detectors.image_quality import IMAGE_FEATURES, image_fingerprint
from surveillance.analysis.performance import judge
from surveillance.core.config import DriftConfig

GOALS: dict[str, str] = {
    "image": "power >= 0.90 at ~25 studies/window vs ~60 reference; false alarms <= alpha",
    "score": "false alarms <= alpha",
    "metadata": "false alarms <= alpha",
    "embedding": "spread changes caught (MMD over several bandwidths)",
    "performance": "an 11-positive drop with the interval below the limit is a breach",
    "cusum": "false alarm in 90 in-control days ~1 - exp(-90/365) = 0.22 (not 0.96)",
    "tolerance": "small shifts significant but below tolerance: 0 drift",
}


def _decide(p_values: list[float], effects: list[float], alpha: float, tolerance: float) -> bool:
    adjusted = adjust_p_values(np.array(p_values), "holm")
    return any(p < alpha and e >= tolerance for p, e in zip(adjusted, effects, strict=True))


def _rates(
    trial: Callable[[np.random.Generator, bool], bool], runs: int, seed: int
) -> dict[str, Any]:
    null = sum(trial(np.random.default_rng(seed + i), False) for i in range(runs))
    power = sum(trial(np.random.default_rng(seed + 10_000 + i), True) for i in range(runs))
    return {"runs": runs, "false_alarm_rate": null / runs, "power": power / runs}


def _ct_images() -> list[tuple[np.ndarray, tuple[float, float]]]:
    import pydicom
    from pydicom.data import get_testdata_file

    images = []
    for name, factor in (
        ("CT_small.dcm", 1),
        ("693_J2KI.dcm", 4),
        ("J2K_pixelrep_mismatch.dcm", 4),
    ):
        path = get_testdata_file(name)
        if path is None:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
            raw = ds.pixel_array
        hu = raw.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        spacing = np.array([float(v) for v in ds.PixelSpacing]) * factor
        if factor > 1:
            rows, cols = hu.shape
            hu = hu.reshape(rows // factor, factor, cols // factor, factor).mean(axis=(1, 3))
        images.append((hu, (float(spacing[0]), float(spacing[1]))))
    return images


def _image_trial(
    images: list[tuple[np.ndarray, tuple[float, float]]], cfg: DriftConfig
) -> Callable[[np.random.Generator, bool], bool]:
    def study(rng: np.random.Generator, changed: bool) -> list[float]:
        hu, spacing = images[int(rng.integers(len(images)))]
        img = np.roll(hu, tuple(int(v) for v in rng.integers(-6, 7, size=2)), axis=(0, 1))
        if rng.random() < 0.5:
            img = img[:, ::-1]
        img = img + rng.normal(0.0, 3.0)
        noise = 5.0
        if changed:
            img = img + 0.7 * (img - ndimage.gaussian_filter(img, 1.0))
            noise *= 1.75
        fp = image_fingerprint(img + rng.normal(scale=noise, size=img.shape), spacing)
        return [fp[name] for name in IMAGE_FEATURES]

    def trial(rng: np.random.Generator, changed: bool) -> bool:
        ref = np.array([study(rng, False) for _ in range(60)])
        win = np.array([study(rng, changed) for _ in range(25)])
        p, e = [], []
        for j in range(ref.shape[1]):
            r = KSDetector(alpha=cfg.alpha, min_samples=20).fit(ref[:, j]).score(win[:, j])
            p.append(r.p_value)
            e.append(r.effect_size)
        return _decide(p, e, cfg.alpha, cfg.min_effect.image)

    return trial


def _score_trial(cfg: DriftConfig) -> Callable[[np.random.Generator, bool], bool]:
    def trial(rng: np.random.Generator, changed: bool) -> bool:
        ref = rng.beta(1.2, 6.0, 500)
        win = rng.beta(1.2, 4.5 if changed else 6.0, 200)
        r = KSDetector(alpha=cfg.alpha, min_samples=30).fit(ref).score(win)
        return _decide([r.p_value], [r.effect_size], cfg.alpha, cfg.min_effect.score)

    return trial


def _metadata_trial(cfg: DriftConfig) -> Callable[[np.random.Generator, bool], bool]:
    def trial(rng: np.random.Generator, changed: bool) -> bool:
        versions = np.array(["VF11A", "VF10C"])
        ref = rng.choice(versions, 500, p=[0.8, 0.2])
        win = rng.choice(versions, 200, p=[0.8, 0.2]).astype(object)
        if changed:
            win[rng.random(200) < 0.3] = "VF12B"
        r = Chi2Detector(alpha=cfg.alpha, min_samples=30).fit(ref).score(win)
        return _decide([r.p_value], [r.effect_size], cfg.alpha, cfg.min_effect.metadata)

    return trial


def _embedding_trial(cfg: DriftConfig) -> Callable[[np.random.Generator, bool], bool]:
    from detectors import MMDDetector

    def trial(rng: np.random.Generator, changed: bool) -> bool:
        ref = rng.normal(size=(100, 32))
        win = rng.normal(size=(100, 32)) * (math.sqrt(1.3) if changed else 1.0)
        seed = int(rng.integers(1 << 30))
        mmd = MMDDetector(
            alpha=cfg.alpha, n_permutations=500, seed=seed, min_samples=20, bandwidth="multi"
        )
        m = mmd.fit(ref).score(win)
        k = ComponentKSDetector(alpha=cfg.alpha, min_samples=20).fit(ref).score(win)
        return _decide(
            [m.p_value, k.p_value],
            [m.effect_size, k.effect_size],
            cfg.alpha,
            cfg.min_effect.embedding,
        )

    return trial


def _performance(runs: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)

    def breach(sens: float) -> float:
        hits = 0
        for _ in range(runs):
            positives = 11
            detected = int(rng.binomial(positives, sens))
            lower, upper = wilson_interval(detected, positives, 0.95)
            hits += (
                judge("sensitivity", detected / positives, lower, upper, positives, 0.85, 30)
                == "breach"
            )
        return hits / runs

    return {"runs": runs, "false_alarm_rate": breach(0.905), "power": breach(0.36)}


def _cusum(runs: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    per_day, p0, p1 = 40.0, 0.095, 0.15
    h = decision_interval_for_time(p0, p1, per_day, 365.0)
    from detectors.cusum import bernoulli_reference, decision_interval

    k = bernoulli_reference(p0, p1)
    h_cases = decision_interval(p0, k, 1000.0)
    n = int(90 * per_day)
    in_control = [rng.random(n) < p0 for _ in range(runs)]
    false_time = np.mean(
        [cusum(x.astype(float), p0, k, h, restart=True).alarmed for x in in_control]
    )
    false_cases = np.mean([cusum(x.astype(float), p0, k, h_cases).alarmed for x in in_control])
    shifted = [rng.random(n) < 0.30 for _ in range(runs)]
    delays = [cusum(x.astype(float), p0, k, h, restart=True).alarm_index for x in shifted]
    caught = [d for d in delays if d is not None]
    return {
        "runs": runs,
        "false_alarm_rate": float(false_time),
        "false_alarm_rate_arl0_1000_cases": float(false_cases),
        "power": len(caught) / runs,
        "median_delay_days": float(np.median(caught)) / per_day if caught else None,
        "h": h,
    }


def _tolerance(cfg: DriftConfig, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    bands = np.array(["18-39", "40-59", "60-79", "80+"])
    ref = rng.choice(bands, 5000, p=[0.30, 0.35, 0.25, 0.10])
    win = rng.choice(bands, 5000, p=[0.27, 0.38, 0.25, 0.10])
    age = Chi2Detector(alpha=cfg.alpha, min_samples=30).fit(ref).score(win)
    kvp_ref = rng.normal(120.0, 8.0, 5000)
    kvp_win = rng.normal(121.0, 8.0, 5000)
    kvp = KSDetector(alpha=cfg.alpha, min_samples=30).fit(kvp_ref).score(kvp_win)

    def status(p: float, effect: float, tolerance: float) -> str:
        if p >= cfg.alpha:
            return "ok"
        return "drift" if effect >= tolerance else "below_tolerance"

    return {
        "age_band_3_points": {
            "p_value": age.p_value,
            "cramers_v": age.effect_size,
            "status": status(age.p_value, age.effect_size, cfg.min_effect.metadata),
        },
        "kvp_1kv": {
            "p_value": kvp.p_value,
            "ks_d": kvp.effect_size,
            "status": status(kvp.p_value, kvp.effect_size, cfg.min_effect.acquisition),
        },
    }


def run_detection_bench(
    runs: int = 20, seed: int = 0, config: DriftConfig | None = None
) -> dict[str, Any]:
    """Figures per family (module docstring), with the goals beside them."""
    cfg = config or DriftConfig()
    families: dict[str, Any] = {}
    images = _ct_images()
    if images:
        families["image"] = _rates(_image_trial(images, cfg), runs, seed)
    families["score"] = _rates(_score_trial(cfg), runs, seed + 1)
    families["metadata"] = _rates(_metadata_trial(cfg), runs, seed + 2)
    families["embedding"] = _rates(_embedding_trial(cfg), runs, seed + 3)
    families["performance"] = _performance(max(runs, 200), seed + 4)
    families["cusum"] = _cusum(runs, seed + 5)
    families["tolerance"] = _tolerance(cfg, seed + 6)
    for name, figures in families.items():
        figures["goal"] = GOALS[name]
    return {
        "alpha": cfg.alpha,
        "correction": "holm within the family",
        "seed": seed,
        "families": families,
    }


__all__ = ["GOALS", "run_detection_bench"]
