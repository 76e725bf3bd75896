"""Alert channels: render an :class:`AlertMessage` for a receiver, and send it.

Four channel types (``[[alerts]]`` in the config):

``webhook``       POST of a JSON document (``schema`` ``surveillance.alert/v1``)
``alertmanager``  POST to Alertmanager's ``/api/v2/alerts``: a list with one alert
                  whose labels identify the incident (alertname, severity, model,
                  finding, signal, metric, stratum_kind, site, scanner); the
                  annotations carry summary, description, runbook_url and
                  dashboard_url. The resolve message sends the same labels with
                  ``endsAt``; acknowledging posts a silence to ``/api/v2/silences``.
                  An open alert is sent with ``endsAt`` one hour ahead (refreshed by
                  every re-post), so it outlives Alertmanager's resolve_timeout when
                  no daemon runs
``slack``         POST to a Slack-compatible incoming webhook (``text`` + blocks)
``smtp``          one plain-text e-mail via ``smtplib`` (no TLS/auth settings
                  yet: use a local relay); the resolve mail replies to the open one

Rendering happens when a delivery is queued and the rendered payload is stored
with it, so every retry sends exactly what the delivery log shows. Every
network call has a timeout (:data:`TIMEOUT_S`); any failure is raised as
:class:`ChannelError` with a one-line reason for the log.
"""

from __future__ import annotations

import smtplib
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

import requests

from surveillance.core.config import AlertChannelConfig
from surveillance.core.errors import SurveillanceError
from surveillance.incidents.alerts.messages import AlertMessage

TIMEOUT_S = 10.0
WEBHOOK_SCHEMA = "surveillance.alert/v1"


class ChannelError(SurveillanceError):
    """A channel could not deliver a message (the delivery is retried)."""


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


#: how long the Alertmanager silence posted on acknowledge lasts (the resolve ends the alert)
SILENCE_DAYS = 90


def alert_labels(message: AlertMessage) -> dict[str, str]:
    """Alertmanager labels: the alert's identity (kept for its whole life)."""
    labels = {"alertname": message.alertname, "model": message.model, "severity": message.severity}
    if message.incident_id > 0:  # 0: `surveillance alerts test`, not an incident
        labels["incident_id"] = str(message.incident_id)
    if message.signal_kind:
        labels["signal"] = message.signal_kind
    if message.signal_kind == "performance":
        finding, _, metric = message.signal.partition(":")
        labels["finding"], labels["metric"] = finding, metric
    elif "finding" in message.where:
        labels["finding"] = message.where["finding"]
    if message.stratum_kind:
        labels["stratum_kind"] = message.stratum_kind
    for key in ("site", "scanner", "sex", "age_band"):
        if key in message.where:
            labels[key] = message.where[key]
    return labels


def alert_annotations(message: AlertMessage) -> dict[str, str]:
    """Alertmanager annotations: what a person reads (refreshed on every re-post)."""
    annotations = {
        "summary": message.subject,
        "description": message.text(),
        "what": message.what,
        "how_much": message.how_much,
        "baseline": message.baseline,
        "since": message.since.isoformat(),
        "vigilance": message.vigilance,
        "incident": message.incident_command,
        "incident_status": message.status,
    }
    if message.runbook_url:
        annotations["runbook_url"] = message.runbook_url
    if message.dashboard_url:
        annotations["dashboard_url"] = message.dashboard_url
    if message.audit_head:
        annotations["audit_head"] = message.audit_head
        annotations["audit_events"] = str(message.audit_events)
    return annotations


def _alertmanager(message: AlertMessage, now: datetime) -> list[dict[str, Any]]:
    alert: dict[str, Any] = {
        "labels": alert_labels(message),
        "annotations": alert_annotations(message),
        "startsAt": _iso(message.opened_at),
    }
    if message.dashboard_url:
        alert["generatorURL"] = message.dashboard_url
    if message.kind == "resolve":
        alert["endsAt"] = _iso(message.closed_at or now)
    elif message.kind == "test":
        alert["endsAt"] = _iso(now + timedelta(minutes=5))
    return [alert]


#: an open alert is posted with ``endsAt`` this far after the moment it is sent, so it
#: stays firing without the daemon's re-posts (``surveillance check`` run by hand)
#: instead of Alertmanager resolving it after its ``resolve_timeout`` (5 minutes)
OPEN_ALERT_TTL = timedelta(hours=1)


def _stamped(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Open alerts get ``endsAt`` = now + :data:`OPEN_ALERT_TTL` at send time (a retry
    hours later must not post an alert that has already ended)."""
    ends = _iso(datetime.now(UTC) + OPEN_ALERT_TTL)
    return [a if "endsAt" in a else {**a, "endsAt": ends} for a in alerts]


def silence_payload(message: AlertMessage, by: str, now: datetime) -> dict[str, Any]:
    """An Alertmanager silence of the incident's alert (posted when on-call acknowledges)."""
    return {
        "silence": {
            "matchers": [
                {"name": "alertname", "value": message.alertname, "isRegex": False},
                {"name": "incident_id", "value": str(message.incident_id), "isRegex": False},
            ],
            "startsAt": _iso(now),
            "endsAt": _iso(now + timedelta(days=SILENCE_DAYS)),
            "createdBy": by,
            "comment": f"incident {message.incident_id} acknowledged by {by} "
            f"({message.incident_command})",
        }
    }


def silences_url(alerts_url: str) -> str:
    """``.../api/v2/alerts`` -> ``.../api/v2/silences``."""
    base = alerts_url.rstrip("/")
    if base.endswith("/alerts"):
        base = base[: -len("/alerts")]
    return f"{base}/silences"


def _slack(message: AlertMessage) -> dict[str, Any]:
    fields = [
        f"*What:* {message.what}",
        f"*Where:* {message.where_text()}",
        f"*How much:* {message.how_much}",
        f"*Baseline:* {message.baseline}",
        f"*Since:* {message.since:%Y-%m-%d}",
        f"*Vigilance:* {message.vigilance}",
    ]
    if message.kind == "resolve":
        fields.insert(0, f"*Resolution:* {message.resolution or '-'}")
    else:
        fields.append("*Next:* " + " | ".join(message.next_steps))
    links = [f"`{message.incident_command}`"]
    if message.dashboard_url:
        links.append(f"<{message.dashboard_url}|dashboard>")
    return {
        "text": message.subject,
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": message.subject[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(fields)}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": " · ".join(links)}]},
        ],
    }


def _message_id(message: AlertMessage, kind: str, sender: str) -> str:
    domain = sender.rpartition("@")[2] or "surveillance.invalid"
    return f"<surveillance-incident-{message.incident_id}-{kind}@{domain}>"


def _smtp(message: AlertMessage, channel: AlertChannelConfig) -> dict[str, Any]:
    sender = channel.sender or ""
    payload: dict[str, Any] = {
        "subject": message.subject,
        "from": sender,
        "to": list(channel.recipients),
        "body": message.text(),
        "message_id": _message_id(message, message.kind, sender),
    }
    if message.kind == "resolve":
        payload["in_reply_to"] = _message_id(message, "open", sender)
    return payload


def render(channel: AlertChannelConfig, message: AlertMessage, now: datetime) -> dict[str, Any]:
    """The stored payload of ``message`` for ``channel`` (a JSON-able dict)."""
    if channel.type == "webhook":
        return {"schema": WEBHOOK_SCHEMA, **message.as_dict(), "text": message.text()}
    if channel.type == "alertmanager":
        return {"alerts": _alertmanager(message, now)}
    if channel.type == "slack":
        return _slack(message)
    return _smtp(message, channel)


def _post(url: str, body: Any) -> None:
    try:
        response = requests.post(url, json=body, timeout=TIMEOUT_S)
    except requests.RequestException as exc:
        raise ChannelError(f"POST {url}: {type(exc).__name__}: {exc}") from exc
    if response.status_code >= 300:
        raise ChannelError(f"POST {url}: HTTP {response.status_code} {response.text[:200]!r}")


def _send_mail(channel: AlertChannelConfig, payload: dict[str, Any]) -> None:
    mail = EmailMessage()
    mail["Subject"] = payload["subject"]
    mail["From"] = payload["from"]
    mail["To"] = ", ".join(payload["to"])
    mail["Date"] = formatdate(usegmt=True)
    mail["Message-ID"] = payload["message_id"]
    if payload.get("in_reply_to"):
        mail["In-Reply-To"] = payload["in_reply_to"]
        mail["References"] = payload["in_reply_to"]
    mail.set_content(payload["body"])
    host = channel.smtp_host or "localhost"
    try:
        with smtplib.SMTP(host, channel.smtp_port, timeout=TIMEOUT_S) as smtp:
            smtp.send_message(mail)
    except (OSError, smtplib.SMTPException) as exc:
        raise ChannelError(f"SMTP {host}:{channel.smtp_port}: {type(exc).__name__}: {exc}") from exc


def send(channel: AlertChannelConfig, payload: dict[str, Any]) -> None:
    """Deliver a rendered payload; :class:`ChannelError` on any failure."""
    if channel.type == "smtp":
        _send_mail(channel, payload)
    elif channel.type == "alertmanager" and "silence" in payload:
        _post(silences_url(channel.url or ""), payload["silence"])
    elif channel.type == "alertmanager":
        _post(channel.url or "", _stamped(payload["alerts"]))
    else:
        _post(channel.url or "", payload)


__all__ = [
    "TIMEOUT_S",
    "WEBHOOK_SCHEMA",
    "ChannelError",
    "alert_annotations",
    "alert_labels",
    "render",
    "send",
    "silence_payload",
    "silences_url",
]
