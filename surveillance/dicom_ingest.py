"""DICOM files and folders into the store (``surveillance ingest DIR``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from surveillance.errors import UsageError


def ingest_dicom_paths(app: Any, paths: list[Path]) -> None:
    """Ingest the DICOM files under ``paths`` (folders are searched recursively)."""
    names = ", ".join(str(p) for p in paths)
    raise UsageError(
        f"{names}: DICOM file ingest is not available in this version yet; "
        "only JSONL event files (*.jsonl) can be ingested"
    )
