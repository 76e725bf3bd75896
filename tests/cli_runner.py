"""Run the real CLI in a subprocess, as an operator would, with a clean environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_cli(
    *args: str,
    cwd: Path,
    db_url: str | None = None,
    key_hex: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``python -m surveillance ARGS`` with no inherited SURVEILLANCE_* variables.

    ``key_hex`` writes ``cwd/pseudonym.key`` (once) and points the CLI at it.
    """
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SURVEILLANCE_")}
    if db_url is not None:
        environment["SURVEILLANCE_DB_URL"] = db_url
    if key_hex is not None:
        key = cwd / "pseudonym.key"
        if not key.exists():
            key.write_text(key_hex + "\n")
            key.chmod(0o600)  # production mode refuses a key others may read
        environment["SURVEILLANCE_PSEUDONYM_KEY_FILE"] = str(key)
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "surveillance", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )
