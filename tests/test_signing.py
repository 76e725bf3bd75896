"""Ed25519 signing keys for Article 72 exports: the key pair, sign, verify, one byte off fails."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cli_runner import run_cli
from click.testing import CliRunner

from surveillance.cli import cli
from surveillance.core.errors import UsageError
from surveillance.outputs.exports import signing

MANIFEST = b'{"files": [{"path": "article72.json", "sha256": "00"}]}\n'


def test_keys_signing_writes_a_private_0600_and_a_public_key(tmp_path: Path) -> None:
    path = tmp_path / "qms-signing"
    result = CliRunner().invoke(cli, ["keys", "signing", str(path)])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    public = tmp_path / "qms-signing.pub"
    assert public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    # what it prints is about this key pair, not the pseudonym key's environment variable
    assert "SURVEILLANCE_PSEUDONYM_KEY_FILE" not in result.output
    assert "--public-key" in result.output
    again = run_cli("keys", "signing", str(path), cwd=tmp_path)
    assert again.returncode == 2 and "never overwritten" in again.stderr + again.stdout


def test_ed25519_signature_verifies_with_the_public_key_only(tmp_path: Path) -> None:
    pair = signing.generate_signing_key(tmp_path / "k")
    stored = signing.sign(MANIFEST, pair.private)
    assert stored["algorithm"] == "Ed25519" and stored["key_id"] == pair.key_id
    assert signing.check_public(MANIFEST, stored, pair.public) == ""
    # one byte changed in the signed manifest: refused
    flipped = bytearray(MANIFEST)
    flipped[10] ^= 0x01
    assert "does not match" in signing.check_public(bytes(flipped), stored, pair.public)
    # somebody else's public key: refused
    other = signing.generate_signing_key(tmp_path / "other")
    assert "does not match" in signing.check_public(MANIFEST, stored, other.public)


def test_hmac_stays_an_option_and_is_not_mistaken_for_a_public_key_signature(
    tmp_path: Path,
) -> None:
    key = tmp_path / "hmac.key"
    key.write_bytes(b"s" * 48)
    stored = signing.sign(MANIFEST, key)
    assert stored["algorithm"] == "HMAC-SHA256"
    assert signing.check_hmac(MANIFEST, stored, key) == ""
    assert "does not match" in signing.check_hmac(MANIFEST + b" ", stored, key)
    pair = signing.generate_signing_key(tmp_path / "k")
    assert "not Ed25519" in signing.check_public(MANIFEST, stored, pair.public)


def test_bad_keys_are_usage_errors(tmp_path: Path) -> None:
    short = tmp_path / "short.key"
    short.write_bytes(b"abc")
    with pytest.raises(UsageError, match="keys signing PATH"):
        signing.sign(MANIFEST, short)
    with pytest.raises(UsageError, match="cannot read"):
        signing.sign(MANIFEST, tmp_path / "missing.key")
    pair = signing.generate_signing_key(tmp_path / "k")
    with pytest.raises(UsageError, match="not a PEM public key"):
        signing.check_public(MANIFEST, {}, pair.private)
