"""Keyed HMAC-SHA256 pseudonyms for identifiers.

The key lives in a file outside the database (``SURVEILLANCE_PSEUDONYM_KEY_FILE``):
whoever holds only a database dump cannot reverse or recompute the pseudonyms.
Each identifier kind is domain-separated (``"study:" + uid``), so the same string
used as a PatientID and as an AccessionNumber yields unrelated pseudonyms.

In production mode a key file that its group or others may read or write
(``mode & 0o077``) is refused, as ssh refuses such a private key: the fix is
``chmod 600 FILE``. Demo mode only warns. The same holds for the audit key
(:func:`load_audit_key`), which keys the audit chain's HMAC; by default it is
derived from the pseudonym key (domain-separated), so no second file is needed.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
from pathlib import Path
from typing import Any

from surveillance.core.errors import PseudonymKeyError

LOG = logging.getLogger(__name__)

KEY_BYTES = 32
MIN_KEY_BYTES = 16
AUDIT_KEY_CONTEXT = b"surveillance audit chain v1"
MEMO_SIZE = 4096  # remembered pseudonyms of repeating identifiers (Pseudonymizer.repeated)


def check_key_file_permissions(path: Path, *, mode: str = "production") -> None:
    """Refuse (production) or warn about (demo) a key file group/others may access."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return  # the reader says it is missing
    loose = stat.S_IMODE(info.st_mode) & 0o077
    if not loose:
        return
    message = (
        f"key file {path} is accessible by group or others (mode "
        f"{stat.S_IMODE(info.st_mode):04o}); run 'chmod 600 {path}'"
    )
    if mode == "production":
        raise PseudonymKeyError(message + " (production mode refuses it, as ssh does)")
    LOG.warning("%s", message)


def read_key_file(path: Path, *, mode: str = "production", what: str = "pseudonym") -> bytes:
    """The hex key in ``path`` (at least MIN_KEY_BYTES), permissions checked."""
    check_key_file_permissions(path, mode=mode)
    try:
        text = path.read_text().strip()
    except FileNotFoundError as exc:
        raise PseudonymKeyError(
            f"{what} key file {path} does not exist; create one with "
            f"'surveillance keys generate {path}' and keep it out of the database backups"
        ) from exc
    except OSError as exc:
        raise PseudonymKeyError(f"cannot read {what} key file {path}: {exc}") from exc
    try:
        key = bytes.fromhex(text)
    except ValueError as exc:
        raise PseudonymKeyError(
            f"{what} key file {path} must hold the key as hex "
            f"(as written by 'surveillance keys generate')"
        ) from exc
    if len(key) < MIN_KEY_BYTES:
        raise PseudonymKeyError(
            f"{what} key is {len(key)} bytes; at least {MIN_KEY_BYTES} are required"
        )
    return key


def load_audit_key(service: Any) -> bytes | None:
    """The audit-chain HMAC key for ``[service]``, or None when no key file is configured.

    ``audit_key_file`` when set (it must exist); else derived from
    ``pseudonym_key_file`` (HMAC(pseudonym key, "surveillance audit chain v1")),
    when that file exists; else None (unkeyed, and ``audit verify`` says so).
    """
    mode = getattr(service, "mode", "production")
    audit_file = getattr(service, "audit_key_file", None)
    if audit_file is not None:
        return read_key_file(Path(audit_file), mode=mode, what="audit")
    pseudonym_file = getattr(service, "pseudonym_key_file", None)
    if pseudonym_file is None:
        return None
    path = Path(pseudonym_file)
    if not path.exists():  # commands that need no pseudonyms still run; ingest says why
        LOG.warning("pseudonym key file %s does not exist: audit events are not keyed", path)
        return None
    key = read_key_file(path, mode=mode)
    return hmac.new(key, AUDIT_KEY_CONTEXT, hashlib.sha256).digest()


class Pseudonymizer:
    """Turns raw identifiers into stable 64-hex-character pseudonyms."""

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise PseudonymKeyError(
                f"pseudonym key is {len(key)} bytes; at least {MIN_KEY_BYTES} are required"
            )
        self._key = key
        # Keyed once: HMAC's key schedule (two SHA-256 blocks) is computed here,
        # and each pseudonym copies the keyed state instead of re-keying.
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)
        self._memo: dict[tuple[str, str], str] = {}

    def __call__(self, kind: str, value: str) -> str:
        mac = self._keyed.copy()
        mac.update(f"{kind}:{value.strip()}".encode())
        return mac.hexdigest()

    def repeated(self, kind: str, value: str) -> str:
        """The same pseudonym, remembered for the few thousand values that repeat on
        nearly every record (institution and station names: one per scanner, not
        per patient). Bounded: the memo is emptied when it is full."""
        key = (kind, value)
        digest = self._memo.get(key)
        if digest is None:
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()
            digest = self._memo[key] = self(kind, value)
        return digest

    def optional(self, kind: str, value: str | None) -> str | None:
        return None if value is None or not value.strip() else self(kind, value)

    @classmethod
    def from_file(cls, path: Path, *, mode: str = "production") -> Pseudonymizer:
        """The key in ``path``; in production mode a loosely permitted file is refused."""
        return cls(read_key_file(path, mode=mode))


def generate_key_file(path: Path, *, overwrite: bool = False) -> Path:
    """Write a new random key (hex) readable only by its owner."""
    if path.exists() and not overwrite:
        raise PseudonymKeyError(
            f"{path} already exists; refusing to replace a pseudonym key "
            f"(every stored pseudonym depends on it)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(KEY_BYTES) + "\n")
    return path


def load_pseudonymizer(
    key_file: Path | None, *, mode: str, demo_dir: Path | None = None
) -> Pseudonymizer:
    """The pseudonymizer for this run.

    Production mode requires a key file. Demo mode generates one (once) under
    ``demo_dir`` so a newcomer needs no setup.
    """
    if key_file is not None:
        return Pseudonymizer.from_file(key_file, mode=mode)
    if mode == "demo":
        path = (demo_dir or Path(".surveillance")) / "pseudonym.key"
        if not path.exists():
            generate_key_file(path)
        return Pseudonymizer.from_file(path, mode=mode)
    raise PseudonymKeyError(
        "no pseudonym key configured: set SURVEILLANCE_PSEUDONYM_KEY_FILE (or "
        "[service] pseudonym_key_file) to a key made with 'surveillance keys generate PATH'"
    )


__all__ = [
    "Pseudonymizer",
    "check_key_file_permissions",
    "generate_key_file",
    "load_audit_key",
    "load_pseudonymizer",
    "read_key_file",
]
