"""Keyed HMAC-SHA256 pseudonyms for identifiers.

The key lives in a file outside the database (``SURVEILLANCE_PSEUDONYM_KEY_FILE``):
whoever holds only a database dump cannot reverse or recompute the pseudonyms.
Each identifier kind is domain-separated (``"study:" + uid``), so the same string
used as a PatientID and as an AccessionNumber yields unrelated pseudonyms.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from surveillance.core.errors import PseudonymKeyError

KEY_BYTES = 32
MIN_KEY_BYTES = 16


class Pseudonymizer:
    """Turns raw identifiers into stable 64-hex-character pseudonyms."""

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise PseudonymKeyError(
                f"pseudonym key is {len(key)} bytes; at least {MIN_KEY_BYTES} are required"
            )
        self._key = key

    def __call__(self, kind: str, value: str) -> str:
        message = f"{kind}:{value.strip()}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def optional(self, kind: str, value: str | None) -> str | None:
        return None if value is None or not value.strip() else self(kind, value)

    @classmethod
    def from_file(cls, path: Path) -> Pseudonymizer:
        try:
            text = path.read_text().strip()
        except FileNotFoundError as exc:
            raise PseudonymKeyError(
                f"pseudonym key file {path} does not exist; create one with "
                f"'surveillance keys generate {path}' and keep it out of the database backups"
            ) from exc
        except OSError as exc:
            raise PseudonymKeyError(f"cannot read pseudonym key file {path}: {exc}") from exc
        try:
            key = bytes.fromhex(text)
        except ValueError as exc:
            raise PseudonymKeyError(
                f"pseudonym key file {path} must hold the key as hex "
                f"(as written by 'surveillance keys generate')"
            ) from exc
        return cls(key)


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
        return Pseudonymizer.from_file(key_file)
    if mode == "demo":
        path = (demo_dir or Path(".surveillance")) / "pseudonym.key"
        if not path.exists():
            generate_key_file(path)
        return Pseudonymizer.from_file(path)
    raise PseudonymKeyError(
        "no pseudonym key configured: set SURVEILLANCE_PSEUDONYM_KEY_FILE (or "
        "[service] pseudonym_key_file) to a key made with 'surveillance keys generate PATH'"
    )


__all__ = ["Pseudonymizer", "generate_key_file", "load_pseudonymizer"]
