"""The base of every repository: one area of the store over one session factory."""

from __future__ import annotations

from surveillance.store.engine import SessionFactory


class Repository:
    """An area of the store (``store.incidents``, ``store.checks``, ...).

    Every public method is one transaction (``self._sessions.scope()``) that
    returns domain objects; ORM rows never leave the repository.
    """

    def __init__(self, sessions: SessionFactory) -> None:
        self._sessions = sessions


__all__ = ["Repository"]
