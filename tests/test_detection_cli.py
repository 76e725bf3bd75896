"""The CLI faces of issue 9: undecided counts in ``check``, and ``bench detection``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from cli_runner import run_cli

from connectors import synthetic
from surveillance.core.config import EXAMPLE_CONFIG


@pytest.mark.slow
def test_check_json_reports_undecided_and_below_tolerance_counts(
    sqlite_url: str, tmp_path: Path
) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, cwd=tmp_path, db_url=sqlite_url, key_hex="ab" * 32, timeout=300)

    assert run("db", "upgrade").returncode == 0
    assert run("models", "load", str(EXAMPLE_CONFIG)).returncode == 0
    feed = synthetic.default_config(days=42, seed=5)
    events = tmp_path / "feed.jsonl"
    synthetic.write_jsonl(feed, events)
    assert run("ingest", str(events)).returncode == 0
    result = run("check", "--json")
    assert result.returncode == 0, result.stderr
    (summary,) = json.loads(result.stdout)
    for key in ("drift_undecided", "performance_undecided", "below_tolerance"):
        assert isinstance(summary[key], int), key
    assert summary["drift_checks"] >= summary["drift_undecided"] + summary["drifted"]
    text = run("check")
    assert "undecided" in text.stdout and "below tolerance" in text.stdout


def test_bench_detection_prints_rates_beside_the_goals(tmp_path: Path) -> None:
    result = run_cli("bench", "detection", "--runs", "2", "--json", cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    families = figures["families"]
    assert {"image", "score", "metadata", "embedding", "performance", "cusum"} <= set(families)
    for name in ("image", "score", "metadata", "embedding", "performance", "cusum"):
        assert 0.0 <= families[name]["false_alarm_rate"] <= 1.0
        assert 0.0 <= families[name]["power"] <= 1.0
        assert families[name]["goal"]
    assert families["tolerance"]["kvp_1kv"]["status"] == "below_tolerance"
