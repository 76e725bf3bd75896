"""Image embeddings for drift detection: decode DICOM, embed with a registered backbone.

* :mod:`surveillance.analysis.embeddings.decode`: DICOM pixels -> fixed-size grey image
  (modality LUT, VOI LUT/window, MONOCHROME1, multi-frame, compressed syntaxes);
  ``decode_for_embedding(path)`` is picklable for worker processes.
* :mod:`surveillance.analysis.embeddings.backbones`: ``conv-ae`` (default, seeded and
  untrained), ``bbsd`` (the model's own scores), ``torchscript``, ``torchvision``.
* :mod:`surveillance.analysis.embeddings.extractor`: batched extraction, ``device="auto"``.
* :mod:`surveillance.analysis.embeddings.bench`: the ``surveillance bench drift|embed`` figures.

The job that drains the DICOM spool is :mod:`surveillance.analysis.embed`.

Names are imported lazily, so ``surveillance.analysis.embeddings.bench`` runs where
pydicom is not installed (the alibi-detect comparison venv).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "DEFAULT_BACKBONE": "backbones",
    "Backbone": "backbones",
    "create_backbone": "backbones",
    "get_backbone": "backbones",
    "DEFAULT_IMAGE_SIZE": "decode",
    "DecodeError": "decode",
    "decode_for_embedding": "decode",
    "Extractor": "extractor",
    "FileResult": "extractor",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{module}"), name)
