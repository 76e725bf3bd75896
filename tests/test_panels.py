"""`surveillance bench panels`: every dashboard query under EXPLAIN ANALYZE on PostgreSQL.

A small synthetic history (COPYed by the bench generator) stands in for the
1M-prediction run, whose figures are in the README; here the point is that
every query of every dashboard is found, interpolated and planned, and that
the overview's time-filtered panels can use the 0008 indexes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text

from dashboards.sql import interpolate, panel_queries
from surveillance.cli.bench import panel_figures
from surveillance.store import Store
from surveillance.store.bench import SyntheticFigures
from surveillance.store.models import DiagnosisRow, PredictionRow, StudyRow

pytestmark = pytest.mark.postgres

MODEL = "cxr-pneumothorax"


def _build(store: Store, predictions: int, seed: int = 11) -> SyntheticFigures:
    model = store.registry.model(MODEL)
    return store.bench.build_synthetic(
        model_id=model.id,
        model_version=model.version,
        findings=sorted(model.findings),
        predictions=predictions,
        scanners=30,
        sites=5,
        days=120,
        end=datetime.now(UTC),
        tag=f"t{seed}",
        seed=seed,
    )


def _count(store: Store, table: type) -> int:
    with store.sessions.scope() as s:
        return int(s.scalar(select(func.count()).select_from(table)) or 0)


def test_synthetic_history_is_copied_as_described(pg_store: Store) -> None:
    figures = _build(pg_store, 6000)
    assert _count(pg_store, PredictionRow) == figures.predictions == 6000
    assert _count(pg_store, StudyRow) == figures.studies
    labelled = _count(pg_store, DiagnosisRow)
    assert labelled == figures.diagnoses
    assert 0.4 * 6000 < labelled < 0.6 * 6000  # 60% of the studies older than two weeks


def test_every_dashboard_query_is_explained(pg_store: Store) -> None:
    _build(pg_store, 20000)
    figures = panel_figures(pg_store, MODEL, datetime.now(UTC), random_page_cost=1.1)
    assert len(figures) == len(list(panel_queries())) > 20
    by_title = {f["panel"]: f for f in figures}
    assert by_title["Ingest rate: predictions stored"]["rows"] > 0
    assert by_title["Freshness per site"]["rows"] == 5
    for f in figures:
        assert f["execution_ms"] >= 0 and f["planning_ms"] >= 0, f
    # 7 of 120 days: the time-filtered overview panels read the 0008 index, no seq scan
    for title in ("Ingest rate: predictions stored", "Freshness per site"):
        assert "prediction" not in by_title[title]["large_seq_scans"], title


def test_plans_use_the_ingested_at_index(pg_store: Store) -> None:
    _build(pg_store, 20000)
    [query] = [q for q in panel_queries() if q.title == "Ingest rate: predictions stored"]
    now = datetime.now(UTC)
    sql = interpolate(query.sql, {}, now - timedelta(days=3), now)
    with pg_store.sessions.scope() as s:
        plan = "\n".join(r[0] for r in s.execute(text("EXPLAIN " + sql)))
    # prediction is partitioned by month on PostgreSQL (0010): each partition carries
    # its copy of ix_prediction_ingested_at, named <partition>_ingested_at_predicted_at_idx
    assert "ingested_at_predicted_at_idx" in plan or "ix_prediction_ingested_at" in plan, plan


def test_a_variable_left_over_is_an_error() -> None:
    now = datetime.now(UTC)
    with pytest.raises(ValueError, match=r"uninterpolated \['\$model'\]"):
        interpolate("SELECT 1 WHERE name = '$model'", {}, now, now)
    assert interpolate("SELECT $x IN ($y)", {"x": "1", "y": ["a", "b'c"]}, now, now) == (
        "SELECT 1 IN ('a','b''c')"
    )
