"""Extractor names shared by the embed job and the drift job (no torch import)."""

from __future__ import annotations

import hashlib

from detectors.image_quality import IMAGE_FEATURES

IMAGE_QUALITY_EXTRACTOR = "image-quality"
#: Changes when the features or their definitions change (a new reference then starts).
IMAGE_QUALITY_VERSION = f"1.f{len(IMAGE_FEATURES)}"


def bbsd_name(model_name: str) -> str:
    """The extractor name of a model's BBSD vectors (fits the 64-character column)."""
    name = f"bbsd:{model_name}"
    if len(name) <= 64:
        return name
    return "bbsd:" + hashlib.sha256(model_name.encode()).hexdigest()[:32]


def image_feature_names(dim: int) -> tuple[str, ...]:
    """Feature names of a stored fingerprint of length ``dim`` (IMAGE_FEATURES order)."""
    if dim != len(IMAGE_FEATURES):
        raise ValueError(
            f"an {IMAGE_QUALITY_EXTRACTOR} vector has {len(IMAGE_FEATURES)} values, got {dim}"
        )
    return IMAGE_FEATURES


__all__ = ["IMAGE_QUALITY_EXTRACTOR", "IMAGE_QUALITY_VERSION", "bbsd_name", "image_feature_names"]
