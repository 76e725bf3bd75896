"""Every Grafana panel's SQL runs on real PostgreSQL as the read-only role.

No Grafana server can run here, so the test does what Grafana's PostgreSQL data
source does before it sends a query: it interpolates the template variables
(a multi-value variable becomes a quoted, comma-separated list; ``$__interval``
becomes a duration) and expands the macros (``$__timeFilter``,
``$__timeGroupAlias``, ...) the way Grafana's SQL macro engine writes them. Then
it runs the query connected as ``surveillance_grafana`` (created by
deploy/readonly_role.sql) on a database holding the demo's data, and checks
that rows come back with the columns the panel needs.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import psycopg
import pytest
from fixtures_reports import MODEL, ReportDemo
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sqlalchemy.engine import make_url

from dashboards.provisioning import (
    DASHBOARD_DIR,
    DataSource,
    dashboards,
    export_provisioning,
    push,
)
from surveillance.store import Store

ROOT = Path(__file__).resolve().parents[1]
READONLY_SQL = ROOT / "deploy" / "readonly_role.sql"
ROLE = "surveillance_grafana"

# What each panel needs from its query. Time series panels need a "time" column;
# a "metric" column names the series in long format.
EXPECTED: dict[str, dict[str, set[str]]] = {
    "surveillance-overview": {
        "Ingest rate: predictions stored": {"time", "predictions"},
        "Ingest lag: prediction to stored (p50, p95)": {"time", "p50_seconds", "p95_seconds"},
        "Freshness per site": {"site", "last_prediction", "minutes_since_last"},
        "Dead letters by kind": {"time", "metric", "value"},
        "Unreplayed dead letters": {"id", "received_at", "kind", "reason"},
        "Check runs": {"job_id", "status", "scheduled_for", "seconds", "error"},
    },
    "surveillance-drift": {
        "Drifted signals per window, by scanner": {"time", "metric", "value"},
        "Drifted signals per window, by site": {"time", "metric", "value"},
        "Overall: -log10(p) per signal": {"time", "metric", "value"},
        "Drifted checks": {
            "window_end",
            "stratum_kind",
            "stratum_value",
            "signal",
            "p_value",
            "p_adjusted",
            "effect_name",
            "effect_size",
            "tolerance",
        },
        "Checks by outcome: drift vs significant but below tolerance": {
            "drift",
            "below_tolerance",
            "ok",
            "insufficient_data",
        },
        "Significant but below tolerance, per window": {"time", "metric", "value"},
        "Significant but below tolerance (no incident)": {
            "window_end",
            "stratum_value",
            "signal",
            "p_value",
            "p_adjusted",
            "effect_name",
            "effect_size",
            "tolerance",
            "short_of_tolerance",
        },
        "annotation: Drift incidents": {"time", "text", "tags"},
    },
    "surveillance-performance": {
        "Overall $metric with 95% CI, clearance value and alert limit": {
            "time",
            "value",
            "ci_lower",
            "ci_upper",
            "clearance_value",
            "alert_limit",
        },
        "$metric per site": {"time", "metric", "value"},
        "$metric per scanner": {"time", "metric", "value"},
        "Latest judged window per stratum": {
            "stratum_kind",
            "stratum_value",
            "value",
            "ci_lower",
            "ci_upper",
            "status",
        },
        "Breaches and warnings": {"window_end", "stratum_value", "status", "value"},
    },
    "surveillance-incidents": {
        "Open incidents and reporting deadlines": {
            "id",
            "title",
            "severity",
            "mdr_deadline_at",
            "hours_to_mdr_deadline",
            "fda_deadline_at",
            "hours_to_fda_deadline",
        },
        "Open incidents by severity": {"severity", "incidents"},
        "Incidents opened": {"time", "metric", "value"},
        "Incident timeline": {"incident_id", "at", "kind", "actor", "note"},
    },
}

# Panels that may rightly show nothing on the demo's data: the demo's changes are all
# large, so no check is significant but below tolerance there (the query must still run;
# test_below_tolerance_panels_show_the_stored_checks gives it rows).
MAY_BE_EMPTY = {("surveillance-drift", "Significant but below tolerance (no incident)")}

UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _seconds(duration: str) -> int:
    match = re.fullmatch(r"'?(\d+)([smhdw])'?", duration.strip())
    assert match, f"unsupported interval {duration!r}"
    return int(match.group(1)) * UNIT_SECONDS[match.group(2)]


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def interpolate(
    sql: str, variables: dict[str, str | list[str]], start: datetime, end: datetime
) -> str:
    """Template variables first, then macros, as Grafana does."""
    out = sql.replace("$__interval", "1h")
    for name in sorted(variables, key=len, reverse=True):  # $scanner before $s...
        value = variables[name]
        text = ",".join(_quote(v) for v in value) if isinstance(value, list) else value
        out = re.sub(rf"\$\{{{name}\}}|\${name}\b", lambda _m, t=text: t, out)
    frm, to = (f"'{t:%Y-%m-%dT%H:%M:%SZ}'" for t in (start, end))

    def group(match: re.Match[str], alias: bool) -> str:
        column, interval = (a.strip() for a in match.group(1).split(",")[:2])
        seconds = _seconds(interval)
        expr = f"floor(extract(epoch from {column})/{seconds})*{seconds}"
        return f'{expr} AS "time"' if alias else expr

    out = re.sub(r"\$__timeGroupAlias\(([^()]*)\)", lambda m: group(m, True), out)
    out = re.sub(r"\$__timeGroup\(([^()]*)\)", lambda m: group(m, False), out)
    out = re.sub(
        r"\$__timeFilter\(([^()]*)\)", lambda m: f"{m.group(1)} BETWEEN {frm} AND {to}", out
    )
    out = out.replace("$__timeFrom()", frm).replace("$__timeTo()", to)
    leftover = re.findall(r"\$\w+", out)
    assert not leftover, f"uninterpolated {leftover} in {out}"
    return out


def _queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            yield panel["title"], target
    for annotation in dashboard["annotations"]["list"]:
        if "target" in annotation:
            yield f"annotation: {annotation['name']}", annotation["target"]


@pytest.fixture
def grafana_conn(report_demo_clone: str) -> Iterator[psycopg.Connection[Any]]:
    """The demo database with deploy/readonly_role.sql applied, connected as the role."""
    url = make_url(report_demo_clone)
    admin = make_conninfo(
        host=url.host, port=url.port, user=url.username, dbname=url.database, connect_timeout=10
    )
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(READONLY_SQL.read_text())  # type: ignore[arg-type]
    params = conninfo_to_dict(admin) | {"user": ROLE}
    with psycopg.connect(make_conninfo(**params)) as conn:  # type: ignore[arg-type]
        yield conn


def _variables(conn: psycopg.Connection[Any]) -> dict[str, str | list[str]]:
    """Values as Grafana would offer them: the demo model, 'All' sites and scanners."""
    sites = [r[0] for r in conn.execute("SELECT label FROM site ORDER BY label")]
    scanners = [r[0] for r in conn.execute("SELECT label FROM device ORDER BY label")]
    conn.rollback()
    return {"model": MODEL, "site": sites, "scanner": scanners, "metric": "sensitivity"}


def test_every_dashboard_is_covered() -> None:
    found = {d["uid"]: {title for title, _ in _queries(d)} for d in dashboards()}
    assert found == {uid: set(panels) for uid, panels in EXPECTED.items()}


@pytest.mark.postgres
def test_every_panel_query_runs_as_the_read_only_role(
    grafana_conn: psycopg.Connection[Any],
    report_demo: ReportDemo,
) -> None:
    start = report_demo.first_prediction - timedelta(days=1)
    end = report_demo.now + timedelta(days=1)
    variables = _variables(grafana_conn)
    failures = []
    checked = 0
    for dashboard in dashboards():
        # template variable queries must run too (they fill the drop-downs)
        for var in dashboard["templating"]["list"]:
            if var["type"] == "query":
                sql = interpolate(var["query"], variables, start, end)
                assert grafana_conn.execute(sql).fetchall(), f"variable {var['name']}: no values"
                grafana_conn.rollback()
        for title, target in _queries(dashboard):
            sql = interpolate(target["rawSql"], variables, start, end)
            try:
                cursor = grafana_conn.execute(sql)
                rows = cursor.fetchall()
                columns = {c.name for c in cursor.description or ()}
            except psycopg.Error as exc:
                failures.append(f"{dashboard['uid']} / {title}: {exc}".strip())
                grafana_conn.rollback()
                continue
            grafana_conn.rollback()
            missing = EXPECTED[dashboard["uid"]][title] - columns
            if missing or (not rows and (dashboard["uid"], title) not in MAY_BE_EMPTY):
                failures.append(
                    f"{dashboard['uid']} / {title}: {len(rows)} row(s), missing {sorted(missing)}"
                )
            if target.get("format") == "time_series" and "time" in columns:
                assert rows[0][[c.name for c in cursor.description or ()].index("time")] is not None
            checked += 1
    assert not failures, "\n".join(failures)
    assert checked == sum(len(p) for p in EXPECTED.values())


def _panel_rows(
    conn: psycopg.Connection[Any], title: str, start: datetime, end: datetime
) -> list[dict[str, Any]]:
    [board] = [d for d in dashboards() if d["uid"] == "surveillance-drift"]
    [sql] = [t["rawSql"] for name, t in _queries(board) if name == title]
    cursor = conn.execute(interpolate(sql, _variables(conn), start, end))
    names = [c.name for c in cursor.description or ()]
    rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    conn.rollback()
    return rows


@pytest.mark.postgres
def test_below_tolerance_panels_show_the_stored_checks(
    report_demo_clone: str,
    grafana_conn: psycopg.Connection[Any],
    report_demo: ReportDemo,
) -> None:
    """Three stored drift checks re-judged below tolerance move from the drift panels
    to the below-tolerance ones, with their effect, tolerance and adjusted p."""
    start = report_demo.first_prediction - timedelta(days=1)
    end = report_demo.now + timedelta(days=1)
    before = _panel_rows(
        grafana_conn, "Checks by outcome: drift vs significant but below tolerance", start, end
    )
    assert before[0]["below_tolerance"] == 0 and before[0]["drift"] >= 3
    drifted = _panel_rows(grafana_conn, "Drifted checks", start, end)
    assert drifted and all(r["effect_name"] for r in drifted)
    # drift means the effect reached the tolerance and the adjusted p is below alpha
    assert all(r["effect_size"] >= r["tolerance"] for r in drifted)
    assert all(r["p_adjusted"] < report_demo.settings.drift.alpha for r in drifted)
    url = make_url(report_demo_clone)
    admin = make_conninfo(host=url.host, port=url.port, user=url.username, dbname=url.database)
    with psycopg.connect(admin) as conn:
        picked = conn.execute(
            "SELECT id, effect_size FROM drift_check WHERE status = 'drift' "
            "AND stratum_kind = 'overall' AND effect_size IS NOT NULL ORDER BY id LIMIT 3"
        ).fetchall()
        assert len(picked) == 3
        for check_id, effect in picked:
            conn.execute(
                "UPDATE drift_check SET status = 'below_tolerance', min_effect = %s WHERE id = %s",
                (effect + 0.05, check_id),
            )
    after = _panel_rows(
        grafana_conn, "Checks by outcome: drift vs significant but below tolerance", start, end
    )
    assert after[0]["below_tolerance"] == 3
    assert after[0]["drift"] == before[0]["drift"] - 3
    table = _panel_rows(grafana_conn, "Significant but below tolerance (no incident)", start, end)
    assert sorted((r["effect_size"], r["tolerance"]) for r in table) == sorted(
        (e, e + 0.05) for _, e in picked
    )
    assert all(r["short_of_tolerance"] == pytest.approx(0.05) for r in table)
    assert all(r["stratum_kind"] == "overall" and r["p_adjusted"] is not None for r in table)
    series = _panel_rows(grafana_conn, "Significant but below tolerance, per window", start, end)
    assert sum(r["value"] for r in series) == 3
    assert {r["metric"] for r in series if r["value"]} == {"overall"}


@pytest.mark.postgres
def test_read_only_role_cannot_write_or_read_identifiers(
    grafana_conn: psycopg.Connection[Any],
) -> None:
    for statement in (
        "DELETE FROM incident",
        "UPDATE model SET version = 'x'",
        "SELECT patient_pseudonym FROM study LIMIT 1",
        "SELECT payload FROM dead_letter LIMIT 1",
        "SELECT hash FROM audit_event LIMIT 1",
    ):
        with pytest.raises(psycopg.Error) as caught:
            grafana_conn.execute(statement)
        grafana_conn.rollback()
        assert isinstance(
            caught.value,
            psycopg.errors.InsufficientPrivilege | psycopg.errors.ReadOnlySqlTransaction,
        ), statement


def test_provisioning_export_writes_datasource_and_dashboards(tmp_path: Path) -> None:
    written = export_provisioning(
        tmp_path, DataSource(host="db.example", port=5433, database="surv", user=ROLE)
    )
    names = {p.relative_to(tmp_path).as_posix() for p in written}
    assert "datasources/surveillance.yaml" in names
    assert "dashboards/surveillance.yaml" in names
    for source in DASHBOARD_DIR.glob("*.json"):
        copied = tmp_path / "dashboards" / "surveillance" / source.name
        assert json.loads(copied.read_text()) == json.loads(source.read_text())
    datasource = (tmp_path / "datasources" / "surveillance.yaml").read_text()
    assert "uid: surveillance-pg" in datasource
    assert "url: db.example:5433" in datasource
    assert f"user: {ROLE}" in datasource
    assert "$SURVEILLANCE_GRAFANA_DB_PASSWORD" in datasource  # no secret in the file


class _FakeGrafana(BaseHTTPRequestHandler):
    """Records requests; answers like Grafana's HTTP API for the calls push() makes.

    No Grafana server can be installed here; this checks what we send, not what
    Grafana does with it.
    """

    requests: ClassVar[list[tuple[str, str, Any]]] = []
    annotations: ClassVar[list[dict[str, Any]]] = []

    def log_message(self, *args: Any) -> None:  # keep the test output quiet
        pass

    def _reply(self, body: Any, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.requests.append(("GET", self.path, self.headers.get("Authorization")))
        if self.path.startswith("/api/folders"):
            self._reply([])
        elif self.path.startswith("/api/annotations"):
            tag = self.path.split("tags=")[-1].split("&")[0]
            self._reply([a for a in self.annotations if tag in a["tags"]])
        else:
            self._reply({"message": "not found"}, 404)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append(("POST", self.path, body))
        if self.path == "/api/folders":
            self._reply({"uid": body["uid"], "title": body["title"], "id": 1})
        elif self.path == "/api/dashboards/db":
            self._reply({"id": 7, "uid": body["dashboard"]["uid"], "status": "success"})
        elif self.path == "/api/annotations":
            self.annotations.append(body)
            self._reply({"id": len(self.annotations), "message": "Annotation added"})
        else:
            self._reply({"message": "not found"}, 404)


@pytest.mark.postgres
def test_push_uploads_dashboards_and_annotates_drift_once(report_demo_clone: str) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeGrafana)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    store = Store.open(report_demo_clone)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        first = push(url, "t0ken", store=store)
        second = push(url, "t0ken", store=store)
    finally:
        store.close()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert set(first.dashboards) == set(EXPECTED)
    drift_incidents = _incidents_with_drift(report_demo_clone)
    assert first.annotations == len(drift_incidents) >= 1
    assert second.annotations == 0  # already there: not duplicated
    uploads = [b for method, path, b in _FakeGrafana.requests if path == "/api/dashboards/db"]
    assert all(b["overwrite"] and b["folderUid"] == "surveillance" for b in uploads)
    assert all(b["dashboard"]["id"] is None for b in uploads)
    note = _FakeGrafana.annotations[0]
    assert note["dashboardUID"] == "surveillance-drift" and "drift" in note["tags"]
    auth = {b for method, _, b in _FakeGrafana.requests if method == "GET"}
    assert auth == {"Bearer t0ken"}


def _incidents_with_drift(url: str) -> list[int]:
    store = Store.open(url)
    try:
        return [i.id for i in store.incidents.find() if store.incidents.evidence(i.id)[1]]
    finally:
        store.close()


# ---------------------------------------------------------------------------
# Links in alerts land on a real dashboard with real template variables.

SCANNER_LABEL = "GE XR656 #9f3c14 @ Northgate"


def _incident(signal_kind: str, signal: str, kind: str, value: str) -> Any:
    from surveillance.store import Incident

    at = datetime(2026, 10, 1, tzinfo=UTC)
    return Incident(
        id=7, model=MODEL, signal_kind=signal_kind, signal=signal, stratum_kind=kind,
        stratum_value=value, severity="high", status="open", title="t", summary="s",
        opened_at=at, aware_at=at, last_evidence_at=at + timedelta(days=14),
        acknowledged_at=None, acknowledged_by=None, closed_at=None, resolution=None,
        capa_reference=None, vigilance_class="assessment_pending", mdr_deadline_at=None,
        fda_deadline_at=None,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("signal_kind", "signal", "kind", "value"),
    [
        pytest.param("drift", "drift", "scanner", SCANNER_LABEL, id="drift-scanner"),
        pytest.param("drift", "drift", "site", "Northgate", id="drift-site"),
        pytest.param("drift", "drift", "overall", "all", id="drift-overall"),
        pytest.param(
            "performance", "pneumothorax:sensitivity", "scanner", SCANNER_LABEL,
            id="performance-scanner",
        ),
        pytest.param("performance", "pneumothorax:auroc", "overall", "all", id="perf-overall"),
        pytest.param("intake", "kafka", "overall", "all", id="other-kind"),
    ],
)  # fmt: skip
@pytest.mark.parametrize(
    "base",
    ["https://grafana.example.org", "https://grafana.example.org/d/surveillance-overview"],
)
def test_every_alert_link_resolves_against_the_dashboards(
    signal_kind: str, signal: str, kind: str, value: str, base: str
) -> None:
    from urllib.parse import parse_qsl, urlsplit

    from surveillance.incidents.alerts.messages import dashboard_link

    boards = {
        d["uid"]: d for d in (json.loads(p.read_text()) for p in DASHBOARD_DIR.glob("*.json"))
    }
    link = dashboard_link(base, _incident(signal_kind, signal, kind, value))
    assert link is not None
    parts = urlsplit(link)
    assert f"{parts.scheme}://{parts.netloc}" == "https://grafana.example.org"
    prefix, uid = parts.path.rsplit("/", 1)
    assert prefix == "/d" and uid in boards, link
    variables = {v["name"]: v for v in boards[uid].get("templating", {}).get("list", [])}
    params = parse_qsl(parts.query)
    for name, val in params:
        if name in ("from", "to"):
            assert val.isdigit()
            continue
        assert name.startswith("var-") and name[4:] in variables, (name, uid)
        variable = variables[name[4:]]
        if val == "$__all":
            assert variable.get("includeAll"), name
        if variable.get("type") == "custom":
            assert val in variable["query"].split(","), (name, val)
    given = {name for name, _ in params}
    if signal_kind in ("drift", "performance"):
        assert {"var-model", "var-site", "var-scanner", "from", "to"} <= given
        start, end = int(dict(params)["from"]), int(dict(params)["to"])
        assert start < datetime(2026, 10, 1, tzinfo=UTC).timestamp() * 1000 < end
