"""detectors.multiplicity: Holm and Benjamini-Hochberg against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

import detectors
import detectors.ks
from detectors.multiplicity import adjust_p_values

P = [0.01, 0.02, 0.03, 0.04, 0.20]


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        # k = 5: 0.01*5, 0.02*4, 0.03*3, 0.04*2, 0.20*1 = 0.05, 0.08, 0.09, 0.08, 0.20
        # running max -> 0.05, 0.08, 0.09, 0.09, 0.20
        pytest.param("holm", [0.05, 0.08, 0.09, 0.09, 0.20], id="holm"),
        # p*k/i: 0.05, 0.05, 0.05, 0.05, 0.20; running min from the top leaves them.
        pytest.param("fdr_bh", [0.05, 0.05, 0.05, 0.05, 0.20], id="fdr-bh"),
        pytest.param("bonferroni", [0.05, 0.10, 0.15, 0.20, 1.0], id="bonferroni"),
    ],
)
def test_hand_computed(method: str, expected: list[float]) -> None:
    np.testing.assert_allclose(adjust_p_values(P, method), expected, rtol=1e-12)  # type: ignore[arg-type]


def test_bh_step_up_lowers_an_earlier_p_value() -> None:
    # sorted 0.01, 0.04, 0.045: p*k/i = 0.03, 0.06, 0.045 -> running min from the top
    # gives 0.03, 0.045, 0.045: the second hypothesis is rescued by the third.
    adjusted = adjust_p_values([0.045, 0.01, 0.04], "fdr_bh")
    np.testing.assert_allclose(adjusted, [0.045, 0.03, 0.045], rtol=1e-12)


def test_holm_order_is_restored_and_ties_kept() -> None:
    adjusted = adjust_p_values([0.04, 0.01, 0.04, 0.5], "holm")
    # sorted 0.01, 0.04, 0.04, 0.5 -> 0.04, 0.12, 0.08, 0.5 -> max-acc 0.04, 0.12, 0.12, 0.5
    np.testing.assert_allclose(adjusted, [0.12, 0.04, 0.12, 0.5], rtol=1e-12)


def test_one_implementation_everywhere() -> None:
    assert detectors.ks.adjust_p_values is adjust_p_values
    assert detectors.adjust_p_values is adjust_p_values


@pytest.mark.parametrize(
    ("p_values", "method", "match"),
    [
        pytest.param([[0.1, 0.2]], "holm", "must be 1-D", id="two-d"),
        pytest.param([0.1], "sidak", "'method' must be one of", id="unknown-method"),
    ],
)
def test_rejects_bad_input(p_values: object, method: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        adjust_p_values(p_values, method)  # type: ignore[arg-type]


def test_empty_family() -> None:
    assert adjust_p_values([], "fdr_bh").size == 0
