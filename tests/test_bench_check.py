"""`surveillance bench check` end to end on PostgreSQL, at a size a test can afford.

Its figures go into the README, so the command itself must work: it builds a
history by COPY, runs `check` three times in child processes and reports each
child's own time, peak memory and summary.
"""

from __future__ import annotations

import json
from pathlib import Path

from cli_runner import run_cli

from surveillance.store import Store


def test_bench_check_times_three_runs_and_reports_each_childs_own_figures(
    pg_store: Store, pg_url: str, tmp_path: Path
) -> None:
    result = run_cli(
        "bench", "check", "--predictions", "3000", "--scanners", "6", "--sites", "2",
        "--days", "60", "--json",
        cwd=tmp_path, db_url=pg_url, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout)
    assert figures["built"]["predictions"] == 3000
    runs = figures["runs"]
    assert [runs[n]["exit_code"] for n in ("first", "next_day", "same_day_again")] == [0, 0, 0]
    first = runs["first"]["summary"][0]
    assert first["windows_judged"]["drift"] > 0 and first["drift_checks"] > 0
    assert runs["same_day_again"]["summary"][0]["windows_judged"] == {
        "drift": 0,
        "performance": 0,
    }
    for name, run in runs.items():
        # the child's own peak (VmHWM): more than an interpreter, less than a GB here
        assert 30 < run["peak_rss_mb"] < 1024
        assert run["wall_seconds"] >= figures["job_seconds"][name] >= 0
    assert set(figures["goals"]) == {
        "first_wall_lt_60s",
        "next_day_wall_lt_5s",
        "peak_rss_lt_500mb",
    }
