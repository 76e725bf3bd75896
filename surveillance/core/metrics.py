"""The one registry of performance metrics: key, display names, direction, estimability.

Everything that names a metric (config validation, the performance job, CBPE
estimates, incident titles, alert texts, reports) looks it up here instead of
spelling it itself. An unknown key raises with the sorted list of known keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Metric:
    """One performance metric.

    ``title`` starts a sentence or a table header ("Sensitivity"); ``phrase``
    sits inside a sentence ("sensitivity", "AUROC"). ``higher_is_better`` is
    False for errors (ECE), where the alert limit is a ceiling, not a floor.
    ``thresholded`` metrics come from the confusion matrix at the model's
    operating threshold; ``estimable`` ones can be estimated before labels
    arrive (CBPE).
    """

    key: str
    title: str
    phrase: str
    #: What the metric's ``n`` counts ("positives" for sensitivity, ...).
    denominator: str = "cases"
    higher_is_better: bool = True
    thresholded: bool = True
    estimable: bool = False


_REGISTRY: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Add ``metric``; a second metric with the same key is a programming error."""
    if metric.key in _REGISTRY:
        raise ValueError(f"metric {metric.key!r} is already registered")
    _REGISTRY[metric.key] = metric
    return metric


SENSITIVITY = register(
    Metric("sensitivity", "Sensitivity", "sensitivity", "positives", estimable=True)
)
SPECIFICITY = register(
    Metric("specificity", "Specificity", "specificity", "negatives", estimable=True)
)
PPV = register(Metric("ppv", "PPV", "PPV", "flagged cases", estimable=True))
NPV = register(Metric("npv", "NPV", "NPV", "unflagged cases", estimable=True))
AUROC = register(Metric("auroc", "AUROC", "AUROC", "positives", thresholded=False))
ECE = register(
    Metric(
        "ece",
        "Calibration error (ECE)",
        "calibration error (ECE)",
        higher_is_better=False,
        thresholded=False,
    )
)


def metric(key: str) -> Metric:
    """The metric registered under ``key``."""
    try:
        return _REGISTRY[key]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise KeyError(f"unknown metric {key!r}; known metrics: {known}") from None


def sample_phrase(key: str, n: int, details: Mapping[str, Any] | None = None) -> str:
    """What a check's ``n`` is, in words: ``40 positives``; AUROC names both classes.

    AUROC's stored ``n`` is the smaller class, so "n=40" would mislead; with the
    class counts in ``details`` it reads ``40 positives, 1,203 negatives``.
    """
    details = details or {}
    if key == "auroc" and "n_positive" in details and "n_negative" in details:
        return f"{int(details['n_positive']):,} positives, {int(details['n_negative']):,} negatives"
    found = _REGISTRY.get(key)
    return f"{n:,} {found.denominator if found else 'cases'}"


def metric_keys() -> tuple[str, ...]:
    """Every registered key, in registration order (the order tables show them in)."""
    return tuple(_REGISTRY)


def title(key: str) -> str:
    """Display title of ``key``; an unregistered key is shown as it is."""
    found = _REGISTRY.get(key)
    return found.title if found else key


def phrase(key: str) -> str:
    """In-sentence name of ``key``; an unregistered key is shown as it is."""
    found = _REGISTRY.get(key)
    return found.phrase if found else key


__all__ = [
    "AUROC",
    "ECE",
    "NPV",
    "PPV",
    "SENSITIVITY",
    "SPECIFICITY",
    "Metric",
    "metric",
    "metric_keys",
    "phrase",
    "register",
    "sample_phrase",
    "title",
]
