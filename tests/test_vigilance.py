"""Vigilance: reporting deadlines, the assessment command, the Article 88 trend flag."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cli_runner import run_cli
from fixtures_store import open_incident
from scipy.stats import binom
from sqlalchemy import update

from surveillance.incidents.trend import assess_trends, trend_test
from surveillance.incidents.vigilance import VigilanceClass, add_work_days, deadlines
from surveillance.store import Store
from surveillance.store.models import IncidentRow
from surveillance.store.types import utcnow

THURSDAY = datetime(2026, 11, 26, 14, 30, tzinfo=UTC)
FRIDAY = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("cls", "mdr_days"),
    [
        pytest.param(VigilanceClass.SERIOUS_INCIDENT, 15, id="serious-incident-15d"),
        pytest.param(VigilanceClass.SERIOUS_PUBLIC_HEALTH_THREAT, 2, id="public-health-2d"),
        pytest.param(VigilanceClass.DEATH_OR_SERIOUS_DETERIORATION, 10, id="death-10d"),
        pytest.param(VigilanceClass.ASSESSMENT_PENDING, 15, id="pending-15d"),
    ],
)
def test_mdr_and_fda_deadlines(cls: VigilanceClass, mdr_days: int) -> None:
    mdr, fda = deadlines(cls, THURSDAY)
    assert mdr == THURSDAY + timedelta(days=mdr_days)
    assert fda == THURSDAY + timedelta(days=30)  # 30 calendar days


def test_fda_remedial_action_is_five_work_days() -> None:
    _, fda = deadlines(VigilanceClass.SERIOUS_INCIDENT, THURSDAY, remedial_action=True)
    assert fda == datetime(2026, 12, 3, 14, 30, tzinfo=UTC)  # Thu -> next Thu
    assert add_work_days(FRIDAY, 5) == datetime(2026, 12, 4, 9, 0, tzinfo=UTC)  # Fri -> Fri
    assert add_work_days(FRIDAY, 1).weekday() == 0  # the weekend does not count


def test_not_reportable_has_no_deadline() -> None:
    assert deadlines(VigilanceClass.NOT_REPORTABLE, THURSDAY) == (None, None)


def _performance_incident(store: Store, stratum: str) -> int:
    return open_incident(
        store,
        stratum=stratum,
        signal_kind="performance",
        signal="pneumothorax:sensitivity",
        severity="high",
    )


def _cli(*args: str, db_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=cwd, db_url=db_url)


@pytest.mark.postgres
def test_assess_and_investigate_commands_change_deadlines_and_timeline(
    pg_store: Store,
    pg_url: str,
    tmp_path: Path,
) -> None:
    store = pg_store
    incident_id = open_incident(
        store,
        stratum="Site A",
        signal_kind="performance",
        signal="pneumothorax:sensitivity",
        severity="high",
    )
    aware = store.incidents.get(incident_id).aware_at

    serious = _cli(
        "incidents", "assess", str(incident_id), "--class", "serious_public_health_threat",
        "--remedial-action", "--by", "qm-anna", "--note", "pattern across sites",
        db_url=pg_url, cwd=tmp_path,
    )  # fmt: skip
    assert serious.returncode == 0, serious.stderr
    assert "EU MDR report due" in serious.stdout and "left" in serious.stdout
    after = store.incidents.get(incident_id)
    assert after.vigilance_class == "serious_public_health_threat"
    assert after.mdr_deadline_at == aware + timedelta(days=2)
    assert after.fda_deadline_at == add_work_days(aware, 5)
    event = after.events[-1]
    assert (event.kind, event.actor) == ("assessed", "qm-anna")
    assert event.note is not None and "pattern across sites" in event.note

    listed = _cli("incidents", "list", "--json", db_url=pg_url, cwd=tmp_path)
    row = next(i for i in json.loads(listed.stdout) if i["id"] == incident_id)
    assert row["mdr_deadline_at"] == (aware + timedelta(days=2)).isoformat()

    cleared = _cli(
        "incidents", "assess", str(incident_id), "--class", "not_reportable", "--by", "qm-anna",
        db_url=pg_url, cwd=tmp_path,
    )  # fmt: skip
    assert cleared.returncode == 0, cleared.stderr
    assert "no reporting deadline" in cleared.stdout
    assert store.incidents.get(incident_id).mdr_deadline_at is None

    investigating = _cli(
        "incidents", "investigate", str(incident_id), "--by", "eng-bo",
        db_url=pg_url, cwd=tmp_path,
    )  # fmt: skip
    assert investigating.returncode == 0, investigating.stderr
    assert store.incidents.get(incident_id).status == "investigating"

    contradictory = _cli(
        "incidents", "assess", str(incident_id), "--class", "not_reportable",
        "--remedial-action", "--by", "x", db_url=pg_url, cwd=tmp_path,
    )  # fmt: skip
    assert contradictory.returncode == 2
    assert "Traceback" not in contradictory.stderr
    missing = _cli(
        "incidents", "assess", "999", "--class", "serious_incident", "--by", "x",
        db_url=pg_url, cwd=tmp_path,
    )  # fmt: skip
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert store.audit.verify().ok


def test_trend_test_hand_computed() -> None:
    # 6 in the last 90 days vs 4 in the 360 before: share 0.2, P(K >= 6 | n=10, p=0.2)
    result = trend_test(6, 4, current_days=90, baseline_days=360)
    assert result.p_value == pytest.approx(binom.sf(5, 10, 0.2))
    assert result.flagged
    steady = trend_test(2, 8, current_days=90, baseline_days=360)
    assert not steady.flagged and steady.p_value > 0.3
    assert not trend_test(2, 0, current_days=90, baseline_days=360).flagged  # below min_count
    assert trend_test(0, 0, current_days=90, baseline_days=360).p_value == 1.0
    with pytest.raises(ValueError, match="must be > 0"):
        trend_test(1, 1, current_days=0, baseline_days=10)


def test_trend_flag_from_stored_non_serious_incidents(store: Store) -> None:
    now = utcnow()
    ids = [
        open_incident(
            store,
            stratum=f"Site {n}",
            signal_kind="performance",
            signal="pneumothorax:sensitivity",
            severity="high",
        )
        for n in range(7)
    ]
    ages = [10, 20, 30, 40, 50, 200, 300]  # days: five in the current quarter, two before
    with store.sessions.scope() as s:
        for incident_id, age in zip(ids, ages, strict=True):
            s.execute(
                update(IncidentRow)
                .where(IncidentRow.id == incident_id)
                .values(
                    opened_at=now - timedelta(days=age),
                    vigilance_class="not_reportable",
                    status="closed",
                )
            )
    pending = _performance_incident(
        store, "Site pending"
    )  # not assessed: not counted, reported beside
    (trend,) = assess_trends(store, now=utcnow())
    assert (trend.result.current, trend.result.baseline) == (5, 2)
    assert trend.result.flagged
    assert trend.pending_assessment == 1
    assert pending
