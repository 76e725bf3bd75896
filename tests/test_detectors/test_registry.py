"""Registry, shared contract and package boundary of ``detectors``."""

from __future__ import annotations

import ast
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import detectors
from detectors import (
    Chi2Detector,
    Detector,
    DriftResult,
    KSDetector,
    MMDDetector,
    NotFittedError,
    get_detector,
)

PACKAGE_DIR = Path(detectors.__file__).parent
ALLOWED_THIRD_PARTY = {"numpy", "scipy", "torch"}


@pytest.mark.parametrize(
    ("key", "cls"),
    [
        pytest.param("ks", KSDetector, id="ks"),
        pytest.param("chi2", Chi2Detector, id="chi2"),
        pytest.param("mmd", MMDDetector, id="mmd"),
    ],
)
def test_get_detector_returns_registered_class(key: str, cls: type[Detector]) -> None:
    assert get_detector(key) is cls
    assert cls.key == key


def test_unknown_key_lists_sorted_known_keys() -> None:
    with pytest.raises(KeyError) as excinfo:
        get_detector("nope")
    message = str(excinfo.value)
    assert "'nope'" in message
    known = detectors.known_detectors()
    assert known == sorted(known)
    assert f"known detectors: {', '.join(known)}" in message
    # lazy keys (their module imported on first use) are listed too
    assert {"chi2", "ks", "ks-pca", "mmd", "mmd-alibi", "ks-alibi"} <= set(known)


def test_duplicate_key_raises_type_error_and_keeps_original() -> None:
    with pytest.raises(TypeError, match=r"'ks' is already registered by KSDetector"):

        class Duplicate(Detector, key="ks"):
            pass

    assert get_detector("ks") is KSDetector


def _fitted_inputs(key: str) -> tuple[Any, Any]:
    rng = np.random.default_rng(7)
    if key == "chi2":
        return rng.choice(["a", "b", "c"], size=60), rng.choice(["a", "b", "c"], size=60)
    return rng.normal(size=(60, 2)), rng.normal(size=(60, 2))


@pytest.mark.parametrize(
    "key",
    [pytest.param("ks", id="ks"), pytest.param("chi2", id="chi2"), pytest.param("mmd", id="mmd")],
)
def test_score_before_fit_raises_not_fitted(key: str) -> None:
    detector = get_detector(key)()
    _, window = _fitted_inputs(key)
    name = type(detector).__name__
    with pytest.raises(NotFittedError, match=rf"^{name} has not been fit: call fit\(reference\)"):
        detector.score(window)


@pytest.mark.parametrize(
    "key",
    [pytest.param("ks", id="ks"), pytest.param("chi2", id="chi2"), pytest.param("mmd", id="mmd")],
)
def test_result_is_frozen_and_json_serialisable(key: str) -> None:
    reference, window = _fitted_inputs(key)
    detector = get_detector(key)()
    assert detector.fit(reference) is detector
    result = detector.score(window)
    assert isinstance(result, DriftResult)
    assert result.detector == key
    assert result.drifted == (result.p_value < result.threshold)
    assert (result.n_reference, result.n_window) == (60, 60)
    for value in (result.statistic, result.p_value, result.threshold):
        assert type(value) is float
    # Plain Python values only: json round-trips them unchanged.
    assert json.loads(json.dumps(result.details)) == result.details
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.p_value = 0.0  # type: ignore[misc]


def test_public_names_are_the_documented_ones() -> None:
    assert sorted(detectors.__all__) == [
        "BinaryMetrics",
        "Chi2Detector",
        "ComponentKSDetector",
        "Detector",
        "DriftResult",
        "Estimate",
        "FeatureMismatchError",
        "InsufficientDataError",
        "KSDetector",
        "MMDDetector",
        "NotFittedError",
        "PCAReducer",
        "Proportion",
        "adjust_p_values",
        "auroc_delong",
        "binary_metrics",
        "calibration_slope_intercept",
        "expected_calibration_error",
        "get_detector",
        "known_detectors",
        "wilson_interval",
    ]
    for name in detectors.__all__:
        assert hasattr(detectors, name), name


def _top_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize(
    "path",
    [pytest.param(p, id=p.name) for p in sorted(PACKAGE_DIR.glob("*.py"))],
)
def test_package_imports_only_numpy_scipy_torch(path: Path) -> None:
    allowed = ALLOWED_THIRD_PARTY | set(sys.stdlib_module_names) | {"detectors"}
    if path.name == "alibi_backend.py":  # the optional backend, imported by nothing else
        allowed |= {"alibi_detect"}
    assert _top_level_imports(path) - allowed == set()
