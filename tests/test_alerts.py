"""Alerts end to end: a breach from the synthetic feed pages each channel once.

Real receivers on loopback: an HTTP server (webhook, Alertmanager, Slack) and an
aiosmtpd SMTP server. The scheduled drift and performance jobs run through the
ledger exactly as the daemon runs them.
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cli_runner import run_cli
from fixtures_ops import HttpReceiver, SmtpSink
from fixtures_store import open_incident

from connectors import synthetic
from surveillance.analysis.windows import floor_day
from surveillance.core.config import AlertChannelConfig, Settings
from surveillance.demo import demo_feed
from surveillance.incidents.alerts import RetryPolicy, process_alerts
from surveillance.intake.ingest import Ingestor
from surveillance.intake.pseudonym import Pseudonymizer
from surveillance.scheduling.jobs import JobContext, build_jobs
from surveillance.scheduling.scheduler import run_once
from surveillance.store import Store
from surveillance.store.ingest_writer import device_label
from surveillance.store.types import utcnow

DASHBOARD = "http://grafana.test/d/surveillance"  # a /d/... suffix is dropped from links
GRAFANA = "http://grafana.test"


def _with_channels(settings: Settings, receiver: HttpReceiver, sink: SmtpSink | None) -> Settings:
    channels = [
        AlertChannelConfig(name="hook", type="webhook", url=receiver.url("/hook")),
        AlertChannelConfig(name="am", type="alertmanager", url=receiver.url("/api/v2/alerts")),
        AlertChannelConfig(name="chat", type="slack", url=receiver.url("/slack")),
    ]
    if sink is not None:
        channels.append(
            AlertChannelConfig(
                name="mail",
                type="smtp",
                smtp_host=sink.host,
                smtp_port=sink.port,
                sender="surveillance@hospital.test",
                recipients=["oncall@hospital.test"],
            )
        )
    service = settings.service.model_copy(update={"dashboard_url": DASHBOARD})
    return settings.model_copy(update={"alerts": channels, "service": service})


def _resolved(alert: dict[str, Any]) -> bool:
    """An Alertmanager alert that ends the incident's alert (its status is closed)."""
    return bool(alert["annotations"]["incident_status"] == "closed")


def _pages(receiver: HttpReceiver, sink: SmtpSink) -> dict[str, Counter[tuple[int, str]]]:
    """Per channel: (incident id, open|resolve) -> number of messages received."""
    return {
        "hook": Counter((b["incident_id"], b["kind"]) for b in receiver.at("/hook")),
        "am": Counter(
            (int(a["labels"]["incident_id"]), "resolve" if _resolved(a) else "open")
            for body in receiver.at("/api/v2/alerts")
            for a in body
        ),
        "chat": Counter(
            (
                int(b["text"].rsplit("#", 1)[1].rstrip(")")),
                "resolve" if "RESOLVED" in b["text"] else "open",
            )
            for b in receiver.at("/slack")
        ),
        "mail": Counter(
            (
                int(m["Subject"].rsplit("#", 1)[1].rstrip(")")),
                "resolve" if "RESOLVED" in m["Subject"] else "open",
            )
            for m in sink.messages
        ),
    }


@pytest.mark.postgres
def test_breach_pages_each_channel_once_and_resolves_once(
    pg_store: Store,
    settings: Settings,
    pseudonymizer: Pseudonymizer,
    http_receiver: HttpReceiver,
    smtp_sink: SmtpSink,
    tmp_path: Path,
) -> None:
    store = pg_store
    now = utcnow()
    feed = demo_feed(days=120, seed=11, start=floor_day(now) - timedelta(days=120))
    truth = synthetic.ground_truth(feed)
    change = truth["changes"][0]
    for site in feed.sites:
        store.registry.set_site_label(
            pseudonymizer("institution", site.institution_name), site.name
        )
    Ingestor(store, pseudonymizer, batch_size=5000).ingest_events(synthetic.events(feed))
    scanner = next(s for s in truth["scanners"] if s["station"] == change["station"])
    changed = device_label(
        scanner["manufacturer"],
        scanner["manufacturer_model_name"],
        pseudonymizer("station", change["station"]),
        change["site"],
    )

    configured = _with_channels(settings, http_receiver, smtp_sink)
    jobs = [j for j in build_jobs(configured) if j.id in ("drift", "performance")]
    context = JobContext(configured, store)
    assert run_once(store, jobs, context, now=now) == ["drift", "performance"]

    incidents = store.incidents.find(status="open")
    keys = [(i.signal_kind, i.signal, i.stratum_kind, i.stratum_value) for i in incidents]
    assert len(keys) == len(set(keys)), "an incident key is open twice"
    # one root cause (the changed scanner) -> one incident with its drift and performance
    # evidence; the roll-ups at its site and overall are evidence, not incidents
    (breach,) = incidents
    assert (breach.stratum_kind, breach.stratum_value) == ("scanner", changed)
    assert breach.signal_kind == "performance" and breach.severity in ("high", "critical")
    performance_evidence, drift_evidence = store.incidents.evidence(breach.id)
    assert {c.metric for c in performance_evidence} >= {"sensitivity"}
    assert drift_evidence, "the scanner's drift is evidence of the same incident"
    assert "Sensitivity" in breach.title and "drift" in breach.title
    open_ids = {i.id for i in incidents}
    pages = _pages(http_receiver, smtp_sink)
    for channel, counted in pages.items():
        assert counted == Counter({(i, "open"): 1 for i in open_ids}), channel

    # the 3 a.m. message: what, where, how much vs which baseline, since when, next, links
    body = next(b for b in http_receiver.at("/hook") if b["incident_id"] == breach.id)
    assert body["schema"] == "surveillance.alert/v1"
    assert body["where"]["site"] == change["site"]
    assert body["where"]["scanner"] == changed.rsplit(" @ ", 1)[0]
    assert body["where"]["model"] == "cxr-pneumothorax 2.1.0"
    # the page went out when the drift job opened it (drift runs before performance)
    assert (
        body["how_much"].startswith("strongest: ") or "below the alert limit" in (body["how_much"])
    )
    assert body["since"] <= now.isoformat()
    assert "EU MDR report due" in body["vigilance"] and "left" in body["vigilance"]
    assert body["incident_command"] == f"surveillance incidents show {breach.id}"
    assert body["dashboard_url"].startswith(GRAFANA + "/d/surveillance-")
    assert (
        "var-scanner=" in body["dashboard_url"]
        and "var-model=cxr-pneumothorax" in (body["dashboard_url"])
    )
    assert any("assess" in step for step in body["next_steps"])
    (alert,) = next(
        a
        for a in http_receiver.at("/api/v2/alerts")
        if a[0]["labels"]["incident_id"] == str(breach.id)
    )
    assert alert["labels"]["scanner"] == body["where"]["scanner"]
    assert alert["labels"]["stratum_kind"] == "scanner"
    assert alert["labels"]["signal"] == "drift"  # what opened it; the identity stays
    assert {"alertname", "severity", "model", "site", "scanner"} <= set(alert["labels"])
    assert alert["labels"]["alertname"] == "SurveillanceIncident"
    assert alert["annotations"]["dashboard_url"] == body["dashboard_url"]
    assert alert["generatorURL"] == body["dashboard_url"] and not _resolved(alert)
    assert alert["endsAt"] > now.isoformat()  # firing for an hour even without re-posts
    mail = next(m for m in smtp_sink.messages if f"#{breach.id})" in m["Subject"])
    text = mail.get_payload()
    assert "Next steps:" in text and DASHBOARD in text and "How much:" in text

    # checks again five minutes later: evidence is added, nobody is paged again
    later = [j for j in build_jobs(configured) if j.id in ("drift", "performance")]
    assert run_once(store, later, context, now=now + timedelta(minutes=5)) == [
        "drift",
        "performance",
    ]
    assert {i.id for i in store.incidents.find(status="open")} == open_ids
    assert _pages(http_receiver, smtp_sink) == pages
    # Alertmanager is refreshed (same labels: it de-duplicates), the others are not
    process_alerts(store, configured, refresh=True)
    refreshed = http_receiver.at("/api/v2/alerts")[len(open_ids) :]
    assert sorted(a[0]["labels"]["incident_id"] for a in refreshed) == sorted(map(str, open_ids))
    assert not any(_resolved(a[0]) for a in refreshed)
    # labels stay those first sent (the alert's identity); annotations are re-rendered and
    # now tell the whole root cause: the breach against the clearance baseline, its source
    assert refreshed[-1][0]["labels"] == alert["labels"]
    fresh = refreshed[-1][0]["annotations"]
    assert "below the alert limit" in fresh["how_much"]
    assert "alert limit 0." in fresh["baseline"] and "CPS-017" in fresh["baseline"]
    assert fresh["dashboard_url"].startswith(GRAFANA + "/d/surveillance-performance?")
    assert len(http_receiver.at("/hook")) == len(open_ids)

    # closing sends one resolve per channel, once
    store.incidents.update(
        breach.id,
        actor="eng-bo",
        kind="closed",
        note="software rolled back",
        status="closed",
        closed_at=utcnow(),
        resolution="software rolled back",
        capa_reference="CAPA-42",
    )
    process_alerts(store, configured)
    process_alerts(store, configured)
    after = _pages(http_receiver, smtp_sink)
    for channel in ("hook", "chat", "mail"):
        assert after[channel][(breach.id, "resolve")] == 1, channel
    resolved = [
        a
        for body in http_receiver.at("/api/v2/alerts")
        for a in body
        if a["labels"]["incident_id"] == str(breach.id) and _resolved(a)
    ]
    assert len(resolved) == 1 and resolved[0]["labels"] == alert["labels"]
    resolve_mail = next(m for m in smtp_sink.messages if m["Subject"].startswith("[RESOLVED]"))
    assert resolve_mail["In-Reply-To"] == mail["Message-ID"]
    assert "software rolled back" in resolve_mail.get_payload()
    log = store.outbox.find(limit=1000)
    assert all(d.status == "delivered" for d in log)
    assert len(log) == 4 * (len(open_ids) + 1)
    assert store.audit.verify().ok


def test_failing_receiver_is_retried_with_backoff_and_logged(
    store: Store,
    settings: Settings,
    http_receiver: HttpReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    incident_id = open_incident(store)
    configured = _with_channels(settings, http_receiver, None).model_copy(
        update={
            "alerts": [
                AlertChannelConfig(name="hook", type="webhook", url=http_receiver.url("/hook"))
            ]
        }
    )
    policy = RetryPolicy(base_s=10, factor=2, max_delay_s=600, max_attempts=5)
    http_receiver.fail_next(2, status=503)
    t0 = utcnow()
    with caplog.at_level(logging.WARNING, logger="surveillance.incidents.alerts"):
        first = process_alerts(store, configured, now=t0, policy=policy)
    assert (first.queued, first.delivered, first.retrying) == (1, 0, 1)
    (d,) = store.outbox.find()
    assert (d.status, d.attempts, d.next_attempt_at) == ("pending", 1, t0 + timedelta(seconds=10))
    assert d.last_error is not None and "HTTP 503" in d.last_error
    assert "failed (attempt 1)" in caplog.text

    assert (
        process_alerts(store, configured, now=t0 + timedelta(seconds=5), policy=policy).delivered
        == 0
    )
    assert store.outbox.find()[0].attempts == 1  # not due yet: no attempt
    process_alerts(store, configured, now=t0 + timedelta(seconds=10), policy=policy)
    (d,) = store.outbox.find()
    assert (d.attempts, d.next_attempt_at) == (2, t0 + timedelta(seconds=30))  # 10 s, then 20 s
    done = process_alerts(store, configured, now=t0 + timedelta(seconds=30), policy=policy)
    assert done.delivered == 1
    (d,) = store.outbox.find()
    assert (d.status, d.attempts, d.last_error) == ("delivered", 3, None)
    assert [b["incident_id"] for b in http_receiver.at("/hook")] == [incident_id]
    assert (
        process_alerts(store, configured, now=t0 + timedelta(hours=1), policy=policy).delivered == 0
    )

    # a receiver down for good: give up after max_attempts, re-arm by hand, then delivered
    second = open_incident(store, stratum="Southgate")
    http_receiver.fail_next(10, status=500)
    stubborn = RetryPolicy(base_s=1, max_attempts=2)
    t1 = t0 + timedelta(hours=2)
    process_alerts(store, configured, now=t1, policy=stubborn)
    report = process_alerts(store, configured, now=t1 + timedelta(seconds=1), policy=stubborn)
    assert report.failed == 1
    failed = store.outbox.find(status="failed")
    assert [f.incident_id for f in failed] == [second]
    http_receiver.clear_failures()
    assert store.outbox.rearm(now=t1 + timedelta(seconds=2), actor="eng-bo") == 1
    assert process_alerts(store, configured, now=t1 + timedelta(seconds=2)).delivered == 1
    assert store.audit.verify().ok


def _cli(*args: str, db_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=cwd, db_url=db_url)


@pytest.mark.postgres
def test_alert_and_scheduler_commands(
    pg_store: Store,
    pg_url: str,
    http_receiver: HttpReceiver,
    tmp_path: Path,
) -> None:
    config = tmp_path / "surveillance.toml"
    config.write_text(
        f'[[alerts]]\nname = "hook"\ntype = "webhook"\nurl = "{http_receiver.url("/hook")}"\n'
        '[schedules]\nretention = "cron 0 3 * * 0"\n'
    )
    sent = _cli("--config", str(config), "alerts", "test", db_url=pg_url, cwd=tmp_path)
    assert sent.returncode == 0, sent.stderr
    (test_body,) = http_receiver.at("/hook")
    assert test_body["title"].startswith("Test alert")

    incident_id = open_incident(pg_store)
    once = _cli("--config", str(config), "run", "--once", db_url=pg_url, cwd=tmp_path)
    assert once.returncode == 0, once.stderr
    assert "ran drift, performance, alert_retries" in once.stdout
    listed = _cli("alerts", "list", "--json", db_url=pg_url, cwd=tmp_path)
    rows: list[dict[str, Any]] = json.loads(listed.stdout)
    assert [(r["incident_id"], r["channel"], r["status"]) for r in rows] == [
        (incident_id, "hook", "delivered")
    ]
    status = _cli(
        "--config", str(config), "scheduler", "status", "--json", db_url=pg_url, cwd=tmp_path
    )
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["leader"]["leader"] is None
    jobs = {j["job"]: j for j in report["jobs"]}
    assert jobs["retention"]["schedule"] == "cron 0 3 * * 0"
    assert jobs["drift"]["last_status"] == "succeeded"
    bad = tmp_path / "bad.toml"
    bad.write_text('[schedules]\ndrift = "every fortnight"\n')
    refused = _cli("--config", str(bad), "run", "--once", db_url=pg_url, cwd=tmp_path)
    assert refused.returncode == 2 and "[schedules] drift" in refused.stderr
    assert "Traceback" not in refused.stderr
