"""The CLI end to end in a subprocess: exit codes and one-line errors, never tracebacks."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from cli_runner import run_cli

from surveillance.core.config import EXAMPLE_CONFIG


def surveillance(*args: str, db_url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=tmp_path, db_url=db_url, key_hex="ab" * 32)


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, "expected an error message on stderr"
    return result.stderr


def test_upgrade_load_ingest_check_and_incidents(db_url: str, tmp_path: Path) -> None:
    run = lambda *a: surveillance(*a, db_url=db_url, tmp_path=tmp_path)  # noqa: E731
    first = run("db", "upgrade")
    assert first.returncode == 0, first.stderr
    assert "upgraded" in first.stdout
    assert "already at" in run("db", "upgrade").stdout
    loaded = run("models", "load", str(EXAMPLE_CONFIG))
    assert loaded.returncode == 0, loaded.stderr
    assert "registered cxr-pneumothorax 2.1.0" in loaded.stdout

    events = tmp_path / "e.jsonl"
    events.write_text(
        json.dumps(
            {
                "kind": "prediction",
                "message_id": "m1",
                "model": "cxr-pneumothorax",
                "model_version": "2.1.0",
                "study_instance_uid": "1.2.3",
                "outputs": {"pneumothorax": 0.2},
                "predicted_at": "2026-08-01T00:00:00Z",
            }
        )
        + "\n{not json\n"
    )
    ingested = run("ingest", str(events))
    assert ingested.returncode == 0, ingested.stderr
    assert "1 prediction rows new" in ingested.stdout and "1 dead letter" in ingested.stdout
    letters = json.loads(run("deadletters", "list", "--json").stdout)
    assert len(letters) == 1 and "not valid JSON" in letters[0]["reason"]

    labels = tmp_path / "labels.csv"
    labels.write_text(
        "message_id,study_instance_uid,finding,present,source,confirmed_at\n"
        "dx1,1.2.3,pneumothorax,no,report,2026-08-20T09:00:00+02:00\n"
        "dx2,1.2.4,pneumothorax,maybe,report,2026-08-20T09:00:00+02:00\n"
    )
    labelled = run("ingest", str(labels))
    assert labelled.returncode == 0, labelled.stderr
    assert "1 diagnoses new" in labelled.stdout and "1 dead letter" in labelled.stdout

    checked = run("check", "--json")
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)[0]["model"] == "cxr-pneumothorax"
    assert json.loads(run("incidents", "list", "--json").stdout) == []
    assert run("audit", "verify").returncode == 0

    missing = run("incidents", "show", "42")
    assert missing.returncode == 2
    assert "incident 42 does not exist" in _one_line_error(missing)


def test_daemon_refuses_out_of_date_schema(sqlite_url: str, tmp_path: Path) -> None:
    result = surveillance("run", "--once", db_url=sqlite_url, tmp_path=tmp_path)
    assert result.returncode == 2
    assert "surveillance db upgrade" in _one_line_error(result)


@pytest.mark.parametrize(
    ("args", "db_url", "expected"),
    [
        pytest.param(("incidents", "list"), "mysql://x/y", "not supported", id="wrong-backend"),
        pytest.param(
            ("incidents", "list"), "not a url", "not a valid SQLAlchemy URL", id="unparseable-url"
        ),
        pytest.param(
            ("incidents", "list"),
            "postgresql://nobody@127.0.0.1:1/none",
            "cannot connect",
            id="unreachable-server",
        ),
        pytest.param(
            ("ingest", "missing.jsonl"), "sqlite:///x.db", "does not exist", id="missing-input"
        ),
        pytest.param(
            ("--config", "nope.toml", "incidents", "list"),
            "sqlite:///x.db",
            "nope.toml does not exist",
            id="missing-config",
        ),
        pytest.param(
            ("incidents", "ack", "1"), "sqlite:///x.db", "Missing option '--by'", id="usage"
        ),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(
    args: tuple[str, ...], db_url: str, expected: str, tmp_path: Path
) -> None:
    if "x.db" in db_url:
        surveillance("db", "upgrade", db_url=f"sqlite:///{tmp_path}/x.db", tmp_path=tmp_path)
    result = surveillance(*args, db_url=db_url, tmp_path=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert expected in _one_line_error(result)
