"""Detached signatures of an Article 72 manifest.

Ed25519 (the default, with the ``cryptography`` package): the manufacturer signs
with a private key that never leaves its QMS; a notified body verifies with the
public key alone, so a valid signature shows *who* produced the bundle (whoever
holds the private key), which a shared-key HMAC cannot. HMAC-SHA256 stays as an
option for a key file of random bytes (``surveillance keys generate``): anyone who
can verify it can also forge it.

Key files:

* ``surveillance keys signing PATH`` writes ``PATH`` (PKCS#8 PEM, mode 0600) and
  ``PATH.pub`` (SubjectPublicKeyInfo PEM).
* a signing key file that starts with ``-----BEGIN`` is read as a PEM private key
  (it must be Ed25519); anything else is an HMAC key of at least 32 bytes.

The signature file (``manifest.json.sig``) is JSON: ``algorithm``, ``signed_file``,
``key_id`` (first 16 hex of the SHA-256 of the raw public key, or of the HMAC key)
and ``signature`` (hex).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from surveillance.core.errors import UsageError

ED25519 = "Ed25519"
HMAC_SHA256 = "HMAC-SHA256"


@dataclass(frozen=True, slots=True)
class KeyPair:
    private: Path
    public: Path
    key_id: str


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: Ed25519PublicKey) -> str:
    return hashlib.sha256(_raw_public(public)).hexdigest()[:16]


def generate_signing_key(path: Path) -> KeyPair:
    """Write a new Ed25519 key pair: ``path`` (private, 0600) and ``path.pub``."""
    public_path = path.with_name(path.name + ".pub")
    for target in (path, public_path):
        if target.exists():
            raise UsageError(
                f"{target} exists: a signing key is never overwritten; choose a new PATH"
            )
    if not path.parent.is_dir():
        raise UsageError(f"folder {path.parent} does not exist; create it first")
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public_path.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return KeyPair(path, public_path, key_id(private.public_key()))


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from exc


def sign(manifest_bytes: bytes, key_file: Path) -> dict[str, str]:
    """The signature document of ``manifest_bytes`` with the key in ``key_file``."""
    data = _read(key_file, "signing key")
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            private: Any = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise UsageError(f"signing key {key_file} is not a readable PEM private key") from exc
        if not isinstance(private, Ed25519PrivateKey):
            raise UsageError(
                f"signing key {key_file} is not an Ed25519 key; make one with "
                "'surveillance keys signing PATH'"
            )
        return {
            "algorithm": ED25519,
            "signed_file": "manifest.json",
            "key_id": key_id(private.public_key()),
            "signature": private.sign(manifest_bytes).hex(),
        }
    key = data.strip()
    if len(key) < 32:
        raise UsageError(
            f"signing key {key_file} holds {len(key)} bytes; make an Ed25519 key pair with "
            "'surveillance keys signing PATH' (or use at least 32 random bytes for HMAC)"
        )
    return {
        "algorithm": HMAC_SHA256,
        "signed_file": "manifest.json",
        "key_id": hashlib.sha256(key).hexdigest()[:16],
        "signature": hmac.new(key, manifest_bytes, hashlib.sha256).hexdigest(),
    }


def check_public(manifest_bytes: bytes, stored: dict[str, Any], public_key_file: Path) -> str:
    """'' when ``stored`` is a valid Ed25519 signature by that public key; else why not."""
    data = _read(public_key_file, "public key")
    try:
        public: Any = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{public_key_file} is not a PEM public key") from exc
    if not isinstance(public, Ed25519PublicKey):
        raise UsageError(f"{public_key_file} is not an Ed25519 public key")
    if stored.get("algorithm") != ED25519:
        return f"signed with {stored.get('algorithm')!r}, not Ed25519"
    try:
        public.verify(bytes.fromhex(str(stored.get("signature", ""))), manifest_bytes)
    except (InvalidSignature, ValueError):
        return "Ed25519 signature does not match manifest.json with this public key"
    return ""


def check_hmac(manifest_bytes: bytes, stored: dict[str, Any], key_file: Path) -> str:
    """'' when ``stored`` is a valid HMAC-SHA256 of the manifest with that key."""
    if stored.get("algorithm") != HMAC_SHA256:
        return f"signed with {stored.get('algorithm')!r}; verify it with --public-key"
    expected = sign(manifest_bytes, key_file)
    if expected["algorithm"] != HMAC_SHA256:
        raise UsageError(f"{key_file} is a private key: verify with the public key (--public-key)")
    if hmac.compare_digest(str(stored.get("signature")), expected["signature"]):
        return ""
    return "HMAC does not match manifest.json with this key"


__all__ = [
    "ED25519",
    "HMAC_SHA256",
    "KeyPair",
    "check_hmac",
    "check_public",
    "generate_signing_key",
    "key_id",
    "sign",
]
