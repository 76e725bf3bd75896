"""Queries about the DICOM image spool that the intake needs (not the embed job's claims)."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select

from surveillance.store.models import ImageSpoolRow
from surveillance.store.repository import Store

_CHUNK = 500


def referenced_spool_files(store: Store, names: Iterable[str]) -> set[str]:
    """The subset of ``names`` that some ``image_spool`` row points at."""
    wanted = sorted(set(names))
    found: set[str] = set()
    with store.sessions.scope() as s:
        for start in range(0, len(wanted), _CHUNK):
            part = wanted[start : start + _CHUNK]
            found.update(
                s.scalars(select(ImageSpoolRow.file_name).where(ImageSpoolRow.file_name.in_(part)))
            )
    return found


__all__ = ["referenced_spool_files"]
