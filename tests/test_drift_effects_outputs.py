"""Effect sizes where people read drift results: the PMS report and the Article 72 export.

The demo's changes are all large, so none of its checks is "significant but below
tolerance"; the fixture re-judges three stored drift checks that way (tolerance set just
above their effect), and the tests find those stored figures in the report and the export.
"""

from __future__ import annotations

import csv
import html as html_lib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fixtures_reports import MODEL, ReportDemo
from sqlalchemy import select, update

from surveillance.outputs.exports import export_article72, validate_document
from surveillance.outputs.reports import write_pms_report
from surveillance.outputs.reports.pms import date_range
from surveillance.outputs.rules import DRIFT_RULE
from surveillance.store import DriftCheck, Store
from surveillance.store.models import DriftCheckRow

pytestmark = pytest.mark.postgres

MARGIN = 0.05  # the re-judged checks' tolerance lies this far above their effect


@dataclass(frozen=True)
class Rejudged:
    store: Store
    picked: list[tuple[int, float]]  # (check id, effect size) now below tolerance
    drift: list[DriftCheck]  # every check of the model, as stored after the change


@pytest.fixture
def rejudged(report_demo_clone: str, report_demo: ReportDemo) -> Iterator[Rejudged]:
    store = Store.open(report_demo_clone)
    try:
        with store.sessions.scope() as s:
            rows = s.execute(
                select(DriftCheckRow.id, DriftCheckRow.effect_size)
                .where(
                    DriftCheckRow.status == "drift",
                    DriftCheckRow.stratum_kind == "overall",
                    DriftCheckRow.effect_size.is_not(None),
                )
                .order_by(DriftCheckRow.id)
                .limit(3)
            ).all()
            picked = [(int(i), float(e)) for i, e in rows]
            assert len(picked) == 3
            for check_id, effect in picked:
                s.execute(
                    update(DriftCheckRow)
                    .where(DriftCheckRow.id == check_id)
                    .values(status="below_tolerance", min_effect=effect + MARGIN)
                )
        model = store.registry.model(MODEL)
        drift = store.checks.drift(
            model.id,
            report_demo.first_prediction,
            report_demo.now + (report_demo.now - report_demo.first_prediction),
        )
        yield Rejudged(store, picked, drift)
    finally:
        store.close()


def test_report_shows_effects_tolerances_and_below_tolerance_checks(
    rejudged: Rejudged, report_demo: ReportDemo, tmp_path: Path
) -> None:
    period = date_range(report_demo.first_prediction.date(), report_demo.now.date())
    files = write_pms_report(
        rejudged.store,
        MODEL,
        period,
        tmp_path,
        settings=report_demo.settings,
        now=report_demo.now,
        attach_evidently=False,
    )
    text = html_lib.unescape(files.html.read_text())
    drift_part = text[text.index("<h2>10. Data drift</h2>") : text.index("<h2>11. ")]
    # the rule in one sentence, and the tolerances of the settings
    assert DRIFT_RULE in drift_part
    tolerances = report_demo.settings.drift.min_effect
    assert f"tolerances: scores {tolerances.score} (KS D)" in drift_part
    # the count, in the executive summary and in the drift part
    assert "; 3 significant but below tolerance (no incident)" in text
    assert "3 check(s) in this period were significant but below tolerance" in drift_part
    # each re-judged check listed with its stored effect and tolerance
    by_id = {c.id: c for c in rejudged.drift}
    for check_id, effect in rejudged.picked:
        check = by_id[check_id]
        assert check.status == "below_tolerance"
        row = (
            f"<td>{check.signal}</td><td>{check.p_value:.1e}</td>"
            f"<td>{check.p_adjusted:.1e}</td><td>{effect:.3f} {check.effect_name}</td>"
            f"<td>{effect + MARGIN:.2f}</td>"
        )
        assert row in re.sub(r"\s+<", "<", drift_part), row
    # the strata table: the largest effect among each stratum's drifted checks
    for header in ("smallest adj. p", "largest effect (tolerance)", "below tolerance"):
        assert f"<th>{header}</th>" in drift_part
    scanner = [c for c in rejudged.drift if c.status == "drift" and c.stratum_kind == "scanner"]
    largest = max(scanner, key=lambda c: (c.effect_size or 0.0) / (c.min_effect or 1.0))
    assert largest.effect_size is not None and largest.min_effect is not None
    assert largest.effect_size >= largest.min_effect  # drift: the effect reached the tolerance
    cell = (
        f"<td>{largest.effect_size:.2f} {largest.effect_name} (tol. {largest.min_effect:.2f})</td>"
    )
    assert cell in re.sub(r"\s+<", "<", drift_part), cell


def test_export_carries_effects_tolerances_and_below_tolerance_counts(
    rejudged: Rejudged, report_demo: ReportDemo, tmp_path: Path
) -> None:
    out = tmp_path / "bundle"
    bundle = export_article72(
        rejudged.store,
        MODEL,
        report_demo.first_prediction.date(),
        report_demo.now.date(),
        out,
        settings=report_demo.settings,
    )
    document = json.loads(bundle.document.read_text())
    assert validate_document(document) == []
    below = document["results"]["drift_below_tolerance"]
    assert below["rule"] == DRIFT_RULE
    assert below["checks"] == document["analyses_performed"]["drift_below_tolerance"] == 3
    assert below["strata"] == 1  # all three at the overall stratum
    assert sum(s["below_tolerance"] for s in document["analyses_performed"]["by_signal"]) == 3
    for entry in below["by_signal"]:
        assert entry["max_effect_size"] < entry["min_effect"]  # below its tolerance
    # drifted strata: every signal's largest effect reached its tolerance, adjusted p < alpha
    alpha = report_demo.settings.drift.alpha
    for stratum in document["results"]["drift"]:
        assert stratum["min_p_adjusted"] is not None and stratum["min_p_adjusted"] < alpha
        assert {e["signal"] for e in stratum["effects"]} == set(stratum["signals"])
        for effect in stratum["effects"]:
            assert effect["max_effect_size"] >= effect["min_effect"], effect
    # the indicators state the rule with the configured tolerance
    tolerances = report_demo.settings.drift.min_effect
    indicators = {i["id"]: i for i in document["monitoring_plan"]["indicators"]}
    assert indicators["drift:metadata"]["min_effect"] == tolerances.metadata
    assert indicators["drift:metadata"]["effect_name"] == "cramers_v"
    assert "never an incident" in indicators["drift:acquisition"]["threshold"]
    # the CSV holds every check's adjusted p, effect and tolerance as stored
    with (out / "drift_checks.csv").open() as handle:
        rows = {int(r["check_id"]): r for r in csv.DictReader(handle)}
    for check_id, effect in rejudged.picked:
        row = rows[check_id]
        assert row["status"] == "below_tolerance"
        assert float(row["effect_size"]) == pytest.approx(effect)
        assert float(row["min_effect"]) == pytest.approx(effect + MARGIN)
        assert row["effect_name"] and float(row["p_adjusted"]) < alpha
