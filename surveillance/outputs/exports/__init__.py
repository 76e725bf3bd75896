"""Exports for regulators: the Article 72 post-market monitoring bundle.

See :mod:`surveillance.outputs.exports.article72` and its JSON Schema
``article72.schema.json`` (draft 2020-12), shipped with the package.
"""

from surveillance.outputs.exports.article72 import (
    ExportBundle,
    ExportRefused,
    VerifyResult,
    export_article72,
    validate_document,
    verify_export,
)

__all__ = [
    "ExportBundle",
    "ExportRefused",
    "VerifyResult",
    "export_article72",
    "validate_document",
    "verify_export",
]
