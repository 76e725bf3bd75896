"""Incident lifecycle: one incident per root cause, no reopen loop, recurrences, ack once,
vigilance reports with met / missed / open deadlines.

The policy runs on checks stored in the real database (SQLite and PostgreSQL);
the grouping rules are also tested as pure logic on hand-made signals.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cli_runner import run_cli

from surveillance.core.config import Settings
from surveillance.core.errors import UsageError
from surveillance.incidents.policy import Signal, apply_policy, find_roots
from surveillance.store import Store
from surveillance.store.domain import DriftCheckDraft, PerformanceCheckDraft, VigilanceReport
from surveillance.store.incidents import deadline_state
from surveillance.store.types import utcnow

MODEL = "cxr-pneumothorax"
SCANNER = "GE Discovery XR656 #9f3c14 @ Northgate"
WEEK = timedelta(days=7)


def _signal(kind: str, value: str, name: str = "score:pneumothorax", sev: str = "medium") -> Signal:
    t = datetime(2026, 10, 1, tzinfo=UTC)
    return Signal("drift", name, kind, value, sev, f"{name} at {value}", t, t + WEEK)


@pytest.mark.parametrize(
    ("signals", "roots"),
    [
        pytest.param(
            [("scanner", SCANNER), ("site", "Northgate"), ("overall", "all")],
            {("scanner", SCANNER): 3},
            id="scanner-explains-site-and-overall",
        ),
        pytest.param(
            [("scanner", SCANNER), ("site", "Southgate")],
            {("scanner", SCANNER): 1, ("site", "Southgate"): 1},
            id="other-site-is-its-own-root",
        ),
        pytest.param(
            [("site", "Northgate"), ("overall", "all")],
            {("site", "Northgate"): 2},
            id="site-without-scanner",
        ),
        pytest.param([("overall", "all")], {("overall", "all"): 1}, id="overall-only"),
        pytest.param(
            [("sex", "F"), ("overall", "all")],
            {("sex", "F"): 1, ("overall", "all"): 1},
            id="sex-is-separate",
        ),
    ],
)
def test_root_cause_grouping(
    signals: list[tuple[str, str]], roots: dict[tuple[str, str], int]
) -> None:
    grouped = find_roots([_signal(k, v) for k, v in signals])
    assert {root: len(items) for root, items in grouped.items()} == roots
    for root, items in grouped.items():  # the root's own signals come first
        assert (items[0].stratum_kind, items[0].stratum_value) == root


def _drift(
    store: Store, model_id: int, start: datetime, windows: int, kind: str, value: str
) -> None:
    drafts = [
        DriftCheckDraft(
            model_id=model_id,
            reference_set_id=None,
            detector="chi2",
            signal="metadata:software_versions",
            stratum_kind=kind,
            stratum_value=value,
            window_start=start + n * WEEK,
            window_end=start + (n + 1) * WEEK,
            status="drift",
            statistic=50.0,
            p_value=1e-9,
            threshold=0.01,
            n_reference=300,
            n_window=100,
            details={},
        )
        for n in range(windows)
    ]
    store.checks.save_drift(drafts, job_run_id=None, actor="test")


def _breach(store: Store, model_id: int, start: datetime, kind: str, value: str) -> None:
    store.checks.save_performance(
        [
            PerformanceCheckDraft(
                model_id=model_id,
                finding="pneumothorax",
                metric="sensitivity",
                stratum_kind=kind,
                stratum_value=value,
                window_start=start,
                window_end=start + 4 * WEEK,
                estimated=False,
                status="breach",
                value=0.70,
                ci_lower=0.62,
                ci_upper=0.78,
                n=120,
                labelled_fraction=0.9,
                baseline_value=0.92,
                alert_limit=0.85,
                details={},
            )
        ],
        job_run_id=None,
        actor="test",
    )


def _policy(store: Store, settings: Settings) -> tuple[list[int], list[int]]:
    model = store.registry.model(MODEL)
    outcome = apply_policy(store, model, [], [], settings.drift, now=utcnow())
    return [i.id for i in outcome.opened], [i.id for i in outcome.updated]


def test_scanner_change_gives_one_incident_with_all_its_evidence(
    store: Store, settings: Settings
) -> None:
    model = store.registry.model(MODEL)
    start = datetime(2026, 9, 1, tzinfo=UTC)
    _drift(store, model.id, start, 3, "scanner", SCANNER)
    _drift(store, model.id, start, 3, "site", "Northgate")
    _breach(store, model.id, start, "scanner", SCANNER)
    _breach(store, model.id, start, "site", "Northgate")
    _breach(store, model.id, start, "overall", "all")
    opened, _ = _policy(store, settings)
    assert len(opened) == 1
    incident = store.incidents.get(opened[0])
    assert (incident.stratum_kind, incident.stratum_value) == ("scanner", SCANNER)
    assert incident.severity == "critical"  # the worst signal: the overall breach rolls up
    performance, drift = store.incidents.evidence(incident.id)
    assert {c.stratum_kind for c in performance} == {"scanner", "site", "overall"}
    assert {c.stratum_kind for c in drift} == {"scanner", "site"}
    kinds = {e.kind for e in incident.events}
    assert {"opened", "evidence", "rollup"} <= kinds
    # the same checks again: evidence is not added twice, nothing new opens
    assert _policy(store, settings) == ([], [incident.id])
    assert len(store.incidents.get(incident.id).events) == len(incident.events)


def test_close_and_recheck_opens_nothing_then_new_windows_open_a_recurrence(
    store: Store, settings: Settings
) -> None:
    model = store.registry.model(MODEL)
    closed_at = utcnow()
    start = closed_at - 8 * WEEK
    _drift(store, model.id, start, 3, "scanner", SCANNER)
    (first,), _ = _policy(store, settings)
    store.incidents.update(
        first,
        actor="eng-bo",
        kind="closed",
        status="closed",
        closed_at=closed_at,
        resolution="accepted: vendor firmware, performance unaffected",
    )
    # close + re-check, twice: the evidence it was closed on never reopens it
    assert _policy(store, settings) == ([], [])
    assert _policy(store, settings) == ([], [])
    assert [i.id for i in store.incidents.find()] == [first]
    # a single drifted window after the close is not persistent: still nothing
    _drift(store, model.id, closed_at, 1, "scanner", SCANNER)
    assert _policy(store, settings) == ([], [])
    # two windows after the close: a recurrence, linked, with its own awareness date
    _drift(store, model.id, closed_at, 2, "scanner", SCANNER)
    (second,), _ = _policy(store, settings)
    recurrence = store.incidents.get(second)
    assert recurrence.recurrence_of == first
    assert recurrence.aware_at >= closed_at
    assert recurrence.mdr_deadline_at == recurrence.aware_at + timedelta(days=15)
    _, drift = store.incidents.evidence(second)
    assert drift and all(c.window_end > closed_at for c in drift)
    assert store.incidents.get(first).status == "closed"
    assert store.audit.verify().ok


def test_ack_is_idempotent(store: Store, settings: Settings) -> None:
    model = store.registry.model(MODEL)
    _drift(store, model.id, datetime(2026, 9, 1, tzinfo=UTC), 2, "site", "Northgate")
    (incident_id,), _ = _policy(store, settings)
    _, changed = store.incidents.ack(incident_id, actor="eng-ana")
    again, changed_again = store.incidents.ack(incident_id, actor="eng-bo")
    assert (changed, changed_again) == (True, False)
    assert again.acknowledged_by == "eng-ana" and again.status == "acknowledged"
    assert [e.kind for e in again.events].count("acknowledged") == 1


def test_vigilance_report_meets_its_deadline_and_is_recorded_once(
    store: Store, settings: Settings
) -> None:
    model = store.registry.model(MODEL)
    _breach(store, model.id, datetime(2026, 9, 1, tzinfo=UTC), "site", "Northgate")
    (incident_id,), _ = _policy(store, settings)
    incident = store.incidents.get(incident_id)
    at = incident.aware_at + timedelta(days=3)
    now = at + timedelta(hours=1)
    store.incidents.record_report(
        incident_id,
        authority="eu-mdr",
        reference="MIR-2026-001",
        reported_at=at,
        actor="qm",
        now=now,
    )
    states = {d.authority: d for d in store.incidents.deadlines(incident_id, now=now)}
    assert states["eu-mdr"].status == "met" and states["eu-mdr"].reference == "MIR-2026-001"
    assert states["fda"].status == "open"
    late = incident.fda_deadline_at + timedelta(days=1)  # type: ignore[operator]
    assert {d.authority: d.status for d in store.incidents.deadlines(incident_id, now=late)} == {
        "eu-mdr": "met",
        "fda": "missed",
    }
    with pytest.raises(UsageError, match="already recorded"):
        store.incidents.record_report(
            incident_id, authority="eu-mdr", reference="again", reported_at=at, actor="qm", now=now
        )
    with pytest.raises(UsageError, match="future"):
        store.incidents.record_report(
            incident_id,
            authority="fda",
            reference="MW-1",
            reported_at=utcnow() + timedelta(days=1),
            actor="qm",
        )
    assert [e.kind for e in store.incidents.get(incident_id).events].count("reported") == 1


@pytest.mark.parametrize(
    ("report_after", "now_after", "cls", "status"),
    [
        pytest.param(1, 2, "serious_incident", "met", id="reported-in-time"),
        pytest.param(20, 21, "serious_incident", "missed", id="reported-late"),
        pytest.param(None, 16, "serious_incident", "missed", id="not-reported-past-due"),
        pytest.param(None, 3, "serious_incident", "open", id="not-reported-running"),
        pytest.param(None, 30, "not_reportable", "not_applicable", id="not-reportable"),
    ],
)
def test_deadline_state(report_after: int | None, now_after: int, cls: str, status: str) -> None:
    aware = datetime(2026, 10, 1, tzinfo=UTC)
    due = aware + timedelta(days=15)
    report = (
        None
        if report_after is None
        else VigilanceReport(1, "eu-mdr", "R", aware + timedelta(days=report_after), "qm", aware)
    )
    state = deadline_state("eu-mdr", due, report, cls, aware + timedelta(days=now_after))
    assert state.status == status


def test_cli_changes_need_by_take_json_and_report(
    store: Store, settings: Settings, db_url: str, tmp_path: Path
) -> None:
    model = store.registry.model(MODEL)
    _drift(store, model.id, datetime(2026, 9, 1, tzinfo=UTC), 2, "scanner", SCANNER)
    (incident_id,), _ = _policy(store, settings)

    def cli(*args: str) -> tuple[int, str]:
        done = run_cli(*args, cwd=tmp_path, db_url=db_url)
        return done.returncode, done.stdout + done.stderr

    code, out = cli("incidents", "close", str(incident_id), "--resolution", "x")
    assert code == 2 and "Missing option '--by'" in out
    code, out = cli("incidents", "ack", str(incident_id), "--by", "ana", "--json")
    assert code == 0, out
    assert json.loads(out)["changed"] is True
    code, out = cli("incidents", "ack", str(incident_id), "--by", "ana", "--json")
    assert code == 0 and json.loads(out)["changed"] is False
    code, out = cli(
        "incidents", "report", str(incident_id), "--authority", "eu-mdr",
        "--reference", "MIR-7", "--by", "qm", "--json",
    )  # fmt: skip
    assert code == 0, out
    deadlines = {d["authority"]: d for d in json.loads(out)["incident"]["deadlines"]}
    assert deadlines["eu-mdr"]["status"] == "met" and deadlines["fda"]["status"] == "open"
    code, out = cli("incidents", "list", "--json")
    (listed,) = json.loads(out)
    assert {d["status"] for d in listed["deadlines"]} == {"met", "open"}
    code, out = cli("incidents", "list")
    assert "met: reported" in out and "open:" in out
    code, out = cli(
        "incidents", "close", str(incident_id), "--resolution", "vendor fix", "--by", "bo",
        "--json",
    )  # fmt: skip
    assert code == 0 and json.loads(out)["incident"]["status"] == "closed"
    code, out = cli("results", "drift", "--stratum", "scanner", "--json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 2 and {r["stratum_value"] for r in rows} == {SCANNER}
    code, out = cli("results", "drift", "--stratum", "site=Nowhere", "--json")
    assert json.loads(out) == []
    code, out = cli("results", "performance", "--stratum", "=x")
    assert code == 2 and "--stratum" in out


def test_below_tolerance_and_single_warnings_never_open_an_incident(
    store: Store, settings: Settings
) -> None:
    model = store.registry.model(MODEL)
    start = datetime(2026, 9, 1, tzinfo=UTC)
    _drift(store, model.id, start, 4, "scanner", SCANNER)
    with store.engine.begin() as conn:  # the same windows judged significant but small
        conn.exec_driver_sql("UPDATE drift_check SET status = 'below_tolerance'")
    assert _policy(store, settings) == ([], [])


def _warning(store: Store, model_id: int, start: datetime, alarm: bool) -> None:
    store.checks.save_performance(
        [
            PerformanceCheckDraft(
                model_id=model_id, finding="pneumothorax", metric="sensitivity",
                stratum_kind="site", stratum_value="Northgate", window_start=start,
                window_end=start + 4 * WEEK, estimated=False, status="warning", value=0.84,
                ci_lower=0.78, ci_upper=0.90, n=120, labelled_fraction=0.9,
                baseline_value=0.92, alert_limit=0.85, details={"cusum": {"alarm": alarm}},
            )
        ],
        job_run_id=None,
        actor="test",
    )  # fmt: skip


def test_persistent_cusum_warning_opens_a_medium_incident(store: Store, settings: Settings) -> None:
    model = store.registry.model(MODEL)
    start = datetime(2026, 7, 1, tzinfo=UTC)
    _warning(store, model.id, start, alarm=True)
    _warning(store, model.id, start + 4 * WEEK, alarm=False)  # breaks the run
    _warning(store, model.id, start + 8 * WEEK, alarm=True)
    assert _policy(store, settings) == ([], [])  # never two alarmed windows in a row
    _warning(store, model.id, start + 12 * WEEK, alarm=True)
    (opened,), _ = _policy(store, settings)
    incident = store.incidents.get(opened)
    assert incident.severity == "medium" and incident.signal == "pneumothorax:sensitivity"
    assert (incident.stratum_kind, incident.stratum_value) == ("site", "Northgate")
