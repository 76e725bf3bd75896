"""The one registry of performance metrics: key, display names, direction, estimability.

Everything that names a metric (config validation, the performance job, CBPE
estimates, incident titles, alert texts, reports) looks it up here instead of
spelling it itself. An unknown key raises with the sorted list of known keys.
"""

from __future__ import annotations

from dataclasses import dataclass


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


SENSITIVITY = register(Metric("sensitivity", "Sensitivity", "sensitivity", estimable=True))
SPECIFICITY = register(Metric("specificity", "Specificity", "specificity", estimable=True))
PPV = register(Metric("ppv", "PPV", "PPV", estimable=True))
NPV = register(Metric("npv", "NPV", "NPV", estimable=True))
AUROC = register(Metric("auroc", "AUROC", "AUROC", thresholded=False))
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
    "title",
]
