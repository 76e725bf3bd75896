"""The shared fit/score template, the lazy registry and the torch-free import."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest

import detectors
from detectors import (
    DriftResult,
    FeatureMismatchError,
    InsufficientDataError,
    NotFittedError,
    get_detector,
)
from detectors.base import LAZY_DETECTORS, Detector

KEYS = [
    pytest.param("ks", id="ks"),
    pytest.param("chi2", id="chi2"),
    pytest.param("mmd", id="mmd"),
    pytest.param("ks-pca", id="ks-pca"),
]


def _data(key: str, n: int, d: int = 3, seed: int = 0) -> Any:
    rng = np.random.default_rng(seed)
    if key == "chi2":
        return rng.choice(["GE", "Siemens", "Philips"], size=n)
    return rng.normal(size=(n, d))


def _detector(key: str) -> Detector:
    kwargs: dict[str, Any] = {"min_samples": 30}
    if key == "mmd":
        kwargs.update(n_permutations=20, device="cpu")
    if key == "ks-pca":
        kwargs.update(holdout=0.0, n_components=2)
    return get_detector(key)(**kwargs)


@pytest.mark.parametrize("key", KEYS)
def test_score_before_fit_raises_not_fitted(key: str) -> None:
    detector = _detector(key)
    name = type(detector).__name__
    assert not detector.fitted
    with pytest.raises(
        NotFittedError, match=rf"^{name} has not been fit: call fit\(reference\) first$"
    ):
        detector.score(_data(key, 40))


@pytest.mark.parametrize("key", KEYS)
def test_small_reference_and_window_raise_insufficient_data(key: str) -> None:
    detector = _detector(key)
    with pytest.raises(InsufficientDataError, match=r"^reference has 29 .*min_samples=30"):
        detector.fit(_data(key, 29))
    assert not detector.fitted  # the failed fit left nothing behind
    detector.fit(_data(key, 40))
    with pytest.raises(InsufficientDataError, match=r"^window has 12 .*min_samples=30"):
        detector.score(_data(key, 12, seed=1))


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("ks", id="ks"),
        pytest.param("mmd", id="mmd"),
        pytest.param("ks-pca", id="ks-pca"),
    ],
)
def test_feature_count_mismatch_raises(key: str) -> None:
    detector = _detector(key).fit(_data(key, 40, d=3))
    with pytest.raises(FeatureMismatchError, match="window has 4 features but the reference has 3"):
        detector.score(_data(key, 40, d=4, seed=1))
    assert issubclass(FeatureMismatchError, ValueError)  # callers catching ValueError still do


@pytest.mark.parametrize("key", KEYS)
def test_failed_refit_keeps_the_previous_fit(key: str) -> None:
    detector = _detector(key).fit(_data(key, 40))
    before = detector.score(_data(key, 40, seed=2))
    with pytest.raises(InsufficientDataError):
        detector.fit(_data(key, 5, seed=3))
    assert detector.score(_data(key, 40, seed=2)) == before


@pytest.mark.parametrize("key", KEYS)
def test_result_carries_an_effect_size(key: str) -> None:
    result = _detector(key).fit(_data(key, 60)).score(_data(key, 60, seed=4))
    assert isinstance(result, DriftResult)
    assert result.effect_name in {"ks_d", "cramers_v", "mmd_norm"}
    assert 0.0 <= result.effect_size < 1.0


def test_subclasses_implement_hooks_not_fit_or_score() -> None:
    for cls in Detector.registry.values():
        assert "fit" not in vars(cls), cls
        assert "score" not in vars(cls), cls


def test_no_torch_at_import() -> None:
    code = (
        "import detectors, detectors.ks, detectors.chi2, detectors.cbpe, detectors.cusum, "
        "detectors.performance, detectors.multiplicity, detectors.reduction, "
        "detectors.image_quality; import sys; assert 'torch' not in sys.modules, 'torch imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_mmd_loads_on_demand_in_a_fresh_interpreter() -> None:
    code = (
        "import sys, detectors\n"
        "assert 'torch' not in sys.modules\n"
        "cls = detectors.get_detector('mmd')\n"
        "assert 'torch' in sys.modules and cls.__name__ == 'MMDDetector'\n"
        "from detectors import MMDDetector\n"
        "assert MMDDetector is cls and detectors.MMDDetector is cls\n"
        "assert 'MMDDetector' in dir(detectors)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_unknown_attribute_and_key() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = detectors.Nope
    with pytest.raises(KeyError) as excinfo:
        get_detector("wasserstein")
    known = detectors.known_detectors()
    assert set(LAZY_DETECTORS) <= set(known)
    assert f"known detectors: {', '.join(known)}" in str(excinfo.value)


def test_lazy_key_is_reserved_for_its_module() -> None:
    with pytest.raises(TypeError, match=r"'mmd-alibi' is (reserved for|already registered)"):

        class Impostor(Detector, key="mmd-alibi"):
            pass

    assert "Impostor" not in {cls.__name__ for cls in Detector.registry.values()}
