"""Engine creation and the one session helper that commits or rolls back.

Driver errors are translated into the project's error family here, with
``raise ... from exc``, so nothing above the store sees SQLAlchemy exceptions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.orm import Session, sessionmaker

from surveillance.core.errors import (
    IntegrityViolation,
    StoreConnectionError,
    StoreError,
    StoreUnavailable,
)


def _redact(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


#: Driver names accepted in a PostgreSQL URL and run on psycopg 3 (see normalise_url).
PSYCOPG2_SCHEMES = ("postgresql+psycopg2://", "postgres+psycopg2://", "postgresql+psycopg2cffi://")


def normalise_url(url: str) -> str:
    """Run every PostgreSQL URL on psycopg 3, the one driver installed.

    ``postgresql://`` and ``postgres://`` get ``+psycopg``. A URL written for
    psycopg2 (``postgresql+psycopg2://``, as in the product brief and many
    existing deployments) is accepted and mapped to psycopg 3 as well: the
    intake's write path needs psycopg 3's COPY API (binary ``copy.write_row``
    into a staging table), the connection parameters and query string mean
    the same to both drivers, and psycopg2 is deliberately not a dependency
    (two drivers in one venv is a known trap). Other URLs are returned as they are.
    """
    for scheme in ("postgresql://", "postgres://", *PSYCOPG2_SCHEMES):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str) -> Engine:
    """An engine for ``url``; raises :class:`StoreConnectionError` with what to fix."""
    url = normalise_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StoreConnectionError(
            f"database URL {url!r} is not a valid SQLAlchemy URL; expected e.g. "
            "'postgresql://user@host:5432/surveillance' or 'sqlite:///surveillance.db'"
        ) from exc
    if parsed.get_backend_name() not in ("postgresql", "sqlite"):
        raise StoreConnectionError(
            f"database URL {_redact(url)}: backend {parsed.get_backend_name()!r} is not "
            "supported; use postgresql:// (production) or sqlite:/// (demo)"
        )
    try:
        engine = create_engine(url, pool_pre_ping=True)
    except (NoSuchModuleError, ImportError) as exc:
        raise StoreConnectionError(f"database URL {_redact(url)}: driver missing: {exc}") from exc
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def check_connection(engine: Engine) -> None:
    """Open one connection now, so a wrong URL fails early with a clear message."""
    try:
        with engine.connect():
            pass
    except (OperationalError, DBAPIError) as exc:
        detail = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise StoreConnectionError(
            f"cannot connect to {_redact(str(engine.url))}: {detail}; "
            "check SURVEILLANCE_DB_URL (or --db-url) and that the server is running"
        ) from exc


class SessionFactory:
    """Hands out sessions bound to one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._maker = sessionmaker(engine, expire_on_commit=False)

    @contextmanager
    def scope(self) -> Iterator[Session]:
        """One transaction: commit on success, roll back on any error."""
        session = self._maker()
        try:
            yield session
            session.commit()
        except IntegrityError as exc:
            session.rollback()
            raise IntegrityViolation(f"database constraint violated: {exc.orig}") from exc
        except OperationalError as exc:
            session.rollback()
            raise StoreUnavailable(f"database unavailable: {exc.orig}") from exc
        except SQLAlchemyError as exc:
            session.rollback()
            raise StoreError(f"database error: {exc}") from exc
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()


__all__ = ["SessionFactory", "check_connection", "make_engine", "normalise_url"]
