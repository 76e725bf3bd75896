"""The project's exception family.

Every error the CLI can show a person derives from :class:`SurveillanceError`;
third-party errors are translated at the edge with ``raise ... from exc``::

    SurveillanceError
    ├── UsageError              bad input from a person: exit code 2
    │   ├── ConfigError         invalid or missing configuration
    │   ├── PseudonymKeyError   the HMAC key is missing or unreadable
    │   └── NotFoundError       a named model, incident, ... does not exist
    ├── InvalidRecord           one ingested record failed validation (dead-lettered)
    ├── ExportRefused           an Article 72 export cannot be made (e.g. broken audit chain)
    │                           (defined in surveillance.outputs.exports.article72)
    ├── GrafanaPushError        Grafana rejected dashboards or annotations
    │                           (defined in dashboards.provisioning)
    └── StoreError              the database failed: exit code 1
        ├── StoreConnectionError  cannot reach / open the database at start (exit 2: fix the URL)
        ├── StoreUnavailable      the database went away during work (exit 1: retry later)
        ├── SchemaOutOfDateError  the schema is behind the code (exit 2: run the upgrade)
        └── IntegrityViolation    a constraint was violated
"""

from __future__ import annotations


class SurveillanceError(Exception):
    """Base of every error raised on purpose by this project."""

    exit_code = 1


class UsageError(SurveillanceError):
    """The person running the command gave something we cannot use."""

    exit_code = 2


class ConfigError(UsageError):
    """The configuration file, an environment variable or a flag is invalid."""


class PseudonymKeyError(UsageError):
    """The keyed-HMAC pseudonym key is missing or unusable."""


class NotFoundError(UsageError):
    """A named object (model, incident, dead letter) does not exist."""


class InvalidRecord(SurveillanceError):
    """One incoming record is malformed; it goes to the dead-letter table.

    ``reason`` is a short, human-readable sentence saying what was wrong.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StoreError(SurveillanceError):
    """The database could not do what was asked."""


class StoreConnectionError(StoreError):
    """The database URL is wrong or the server cannot be reached."""

    exit_code = 2


class StoreUnavailable(StoreError):
    """The database stopped answering in the middle of the work (a runtime failure)."""


class SchemaOutOfDateError(StoreError):
    """The database schema is not at the revision this code needs."""

    exit_code = 2


class IntegrityViolation(StoreError):
    """A uniqueness or foreign-key constraint rejected a write."""


__all__ = [
    "ConfigError",
    "IntegrityViolation",
    "InvalidRecord",
    "NotFoundError",
    "PseudonymKeyError",
    "SchemaOutOfDateError",
    "StoreConnectionError",
    "StoreError",
    "StoreUnavailable",
    "SurveillanceError",
    "UsageError",
]
