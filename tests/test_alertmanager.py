"""Against the real Prometheus Alertmanager (Debian's prometheus-alertmanager, started
here on loopback; scripts/ensure_alertmanager.sh installs it for `make test`).

Alertmanager receives the incident's alert with its labels and annotations,
silences it when on-call acknowledges, shows refreshed annotations after an
assessment, and resolves it on close; `surveillance alerts test` posts an alert
named SurveillanceTest, never an incident alert.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cli_runner import run_cli
from fixtures_ops import HttpReceiver
from fixtures_store import open_incident

from surveillance.core.config import AlertChannelConfig, Settings
from surveillance.incidents.alerts.delivery import deliver_now
from surveillance.store import Store
from surveillance.store.types import utcnow

RUNBOOK = "https://wiki.example.org/surveillance/runbook"
GRAFANA = "https://grafana.example.org"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def alertmanager(tmp_path: Path, http_receiver: HttpReceiver) -> Iterator[str]:
    """A real Alertmanager on loopback routing to ``http_receiver`` at ``/am``; its URL."""
    binary = shutil.which("prometheus-alertmanager")
    if binary is None:
        pytest.fail(
            "prometheus-alertmanager is missing: run scripts/ensure_alertmanager.sh", pytrace=False
        )
    port = _free_port()
    config = tmp_path / "am.yml"
    config.write_text(
        "route:\n  receiver: hook\n  group_by: [incident_id]\n  group_wait: 1s\n"
        "  group_interval: 1s\n  repeat_interval: 1h\n"
        "receivers:\n  - name: hook\n    webhook_configs:\n"
        f"      - url: {http_receiver.url('/am')}\n        send_resolved: true\n"
    )
    log = (tmp_path / "alertmanager.log").open("w")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert process.poll() is None, (tmp_path / "alertmanager.log").read_text()
        try:
            return requests.get(f"{url}/-/ready", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    try:
        _wait(up, "Alertmanager to start")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _alerts(url: str, incident_id: int) -> list[dict[str, Any]]:
    found = requests.get(f"{url}/api/v2/alerts", timeout=5).json()
    return [a for a in found if a["labels"].get("incident_id") == str(incident_id)]


def test_alertmanager_receives_silences_on_ack_and_resolves_on_close(
    pg_store: Store, settings: Settings, alertmanager: str, http_receiver: HttpReceiver
) -> None:
    store = pg_store
    service = settings.service.model_copy(update={"runbook_url": RUNBOOK, "dashboard_url": GRAFANA})
    configured = settings.model_copy(
        update={
            "service": service,
            "alerts": [
                AlertChannelConfig(
                    name="am", type="alertmanager", url=f"{alertmanager}/api/v2/alerts"
                )
            ],
        }
    )
    incident_id = open_incident(store, severity="high")
    report = deliver_now(store, configured)
    assert report.delivered == 1
    (alert,) = _alerts(alertmanager, incident_id)
    assert alert["status"]["state"] == "active"
    labels = alert["labels"]
    assert labels["alertname"] == "SurveillanceIncident"
    assert labels["severity"] == "high" and labels["model"] == "cxr-pneumothorax"
    assert labels["stratum_kind"] == "site" and labels["site"] == "Northgate"
    assert labels["signal"] == "drift"
    notes = alert["annotations"]
    assert notes["runbook_url"] == RUNBOOK
    assert notes["dashboard_url"].startswith(f"{GRAFANA}/d/surveillance-drift?")
    assert notes["summary"].startswith("[HIGH] cxr-pneumothorax")
    assert "assessment pending" in notes["description"]
    # Alertmanager routes it to the on-call receiver
    firing = _wait(
        lambda: [b for b in http_receiver.at("/am") if b["status"] == "firing"], "the page"
    )
    assert firing[0]["alerts"][0]["labels"]["incident_id"] == str(incident_id)

    # ack: one silence, the alert is suppressed; a second ack posts nothing more
    store.incidents.ack(incident_id, actor="eng-ana")
    deliver_now(store, configured)
    store.incidents.ack(incident_id, actor="eng-bo")
    deliver_now(store, configured)
    (alert,) = _alerts(alertmanager, incident_id)
    assert alert["status"]["state"] == "suppressed" and alert["status"]["silencedBy"]
    silences = [
        s
        for s in requests.get(f"{alertmanager}/api/v2/silences", timeout=5).json()
        if s["status"]["state"] == "active"
    ]
    assert len(silences) == 1 and silences[0]["createdBy"] == "eng-ana"
    assert {"name": "incident_id", "value": str(incident_id)} in [
        {"name": m["name"], "value": m["value"]} for m in silences[0]["matchers"]
    ]

    # assess: the re-post carries the new vigilance text (same labels, same alert)
    store.incidents.update(
        incident_id, actor="qm", kind="assessed", vigilance_class="serious_incident"
    )
    deliver_now(store, configured)
    (alert,) = _alerts(alertmanager, incident_id)
    assert "serious incident" in alert["annotations"]["description"]
    assert alert["labels"] == labels

    # close: resolved in Alertmanager (no longer listed as active or suppressed)
    store.incidents.update(
        incident_id,
        actor="eng-bo",
        kind="closed",
        status="closed",
        closed_at=utcnow(),
        resolution="fixed",
    )
    deliver_now(store, configured)
    assert _wait(lambda: _alerts(alertmanager, incident_id) == [], "the resolve")
    kinds = {(d.kind, d.status) for d in store.outbox.find(incident_id=incident_id)}
    assert kinds == {("open", "delivered"), ("silence", "delivered"), ("resolve", "delivered")}


def test_alerts_test_posts_surveillance_test(
    alertmanager: str, tmp_path: Path, http_receiver: HttpReceiver
) -> None:
    config = tmp_path / "surveillance.toml"
    config.write_text(
        f'[[alerts]]\nname = "am"\ntype = "alertmanager"\nurl = "{alertmanager}/api/v2/alerts"\n'
    )
    done = run_cli("--config", str(config), "alerts", "test", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    found = requests.get(f"{alertmanager}/api/v2/alerts", timeout=5).json()
    assert [a["labels"]["alertname"] for a in found] == ["SurveillanceTest"]
    assert "incident_id" not in found[0]["labels"]


def test_cli_changes_deliver_at_once(
    pg_store: Store, pg_url: str, alertmanager: str, tmp_path: Path
) -> None:
    """No daemon runs: `incidents ack` pages and silences, `incidents close` resolves."""
    incident_id = open_incident(pg_store)
    config = tmp_path / "surveillance.toml"
    config.write_text(
        f'[[alerts]]\nname = "am"\ntype = "alertmanager"\nurl = "{alertmanager}/api/v2/alerts"\n'
    )

    def cli(*args: str) -> None:
        done = run_cli("--config", str(config), *args, cwd=tmp_path, db_url=pg_url)
        assert done.returncode == 0, done.stdout + done.stderr

    cli("incidents", "ack", str(incident_id), "--by", "eng-ana")
    (alert,) = _alerts(alertmanager, incident_id)
    assert alert["status"]["state"] == "suppressed"
    cli("incidents", "close", str(incident_id), "--resolution", "fixed", "--by", "eng-ana")
    assert _alerts(alertmanager, incident_id) == []
