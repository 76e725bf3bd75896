"""Alert delivery: one page per incident and channel, retried with backoff, logged.

:func:`process_alerts` is what the daemon runs after every check and on the
``alert_retries`` schedule:

1. **queue**: every open incident gets one ``open`` delivery per configured
   channel, every closed incident whose page went out one ``resolve``
   delivery. The unique key (incident, channel, kind) makes this idempotent:
   new evidence on an open incident, a re-run of the checks or a second
   replica never pages again. An open page still undelivered when its
   incident closes is cancelled instead of sent late.
2. **deliver**: claim due deliveries, send, and record the attempt. A failure
   is retried after ``base * factor^(attempt-1)`` seconds (capped), up to
   ``max_attempts``; then the delivery is ``failed`` and audited, and
   ``surveillance alerts retry`` re-arms it.
3. **refresh**: Alertmanager resolves an alert nobody re-sends within its
   ``resolve_timeout`` (5 minutes by default), so the open alerts of incidents
   still open are re-posted (same labels: Alertmanager de-duplicates them and
   does not page again; its own ``repeat_interval`` decides reminders).
   Labels stay those first sent; annotations are re-rendered.
4. **silence**: an acknowledged incident gets one ``silence`` delivery per
   Alertmanager channel (``/api/v2/silences``, matching its ``incident_id``):
   acknowledging stops the re-paging; the close still resolves the alert.

``surveillance check`` and ``incidents ack|assess|close|report`` call
:func:`deliver_now` right after the change; the daemon keeps retrying.

The delivery log is the ``alert_delivery`` table (``surveillance alerts list``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from surveillance.core.config import AlertChannelConfig, Settings
from surveillance.core.errors import NotFoundError
from surveillance.incidents.alerts.channels import ChannelError, render, send, silence_payload
from surveillance.incidents.alerts.messages import AlertMessage, build_message
from surveillance.store import Store
from surveillance.store.types import utcnow

LOG = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff between attempts of one delivery."""

    base_s: float = 30.0
    factor: float = 2.0
    max_delay_s: float = 3600.0
    max_attempts: int = 12
    #: how long a claimed delivery is reserved for its sender (covers the send timeout)
    lease_s: float = 120.0

    def delay(self, attempts: int) -> timedelta:
        """Wait after the ``attempts``-th failed attempt."""
        seconds = self.base_s * self.factor ** max(attempts - 1, 0)
        return timedelta(seconds=min(seconds, self.max_delay_s))


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    queued: int = 0
    delivered: int = 0
    retrying: int = 0
    failed: int = 0
    cancelled: int = 0


def message_for(
    store: Store, settings: Settings, incident_id: int, kind: str, now: datetime
) -> AlertMessage:
    """Build the alert message of an incident from its stored evidence."""
    incident = store.incidents.get(incident_id)
    performance, drift = store.incidents.evidence(incident_id)
    version: str | None = None
    source: str | None = None
    try:
        model = store.registry.model(incident.model)
    except NotFoundError:
        model = None
    if model is not None:
        version = model.version
        if incident.signal_kind == "performance":
            finding, _, metric = incident.signal.partition(":")
            stratum = (
                "overall"
                if incident.stratum_kind == "overall"
                else f"{incident.stratum_kind}={incident.stratum_value}"
            )
            baseline = model.baseline(finding, metric, stratum)
            source = baseline.source_document if baseline else None
    message = build_message(
        incident,
        kind=kind,
        performance=performance,
        drift=drift,
        dashboard_url=settings.service.dashboard_url,
        now=now,
        baseline_source=source,
        model_version=version,
        runbook_url=settings.service.runbook_url,
    )
    anchor = store.audit.anchor()
    return replace(message, audit_head=anchor.head_hash, audit_events=anchor.events)


def _open_labels(store: Store, incident_id: int, channel: str) -> dict[str, str] | None:
    """Labels of the open alert already sent to an Alertmanager channel (its identity)."""
    for item in store.outbox.find(incident_id=incident_id):
        if item.channel == channel and item.kind == "open":
            alerts = item.payload.get("alerts") or [{}]
            labels = alerts[0].get("labels")
            return dict(labels) if labels else None
    return None


def _payload(
    store: Store,
    channel: AlertChannelConfig,
    message: AlertMessage,
    kind: str,
    incident_id: int,
    now: datetime,
) -> dict[str, Any]:
    if kind == "silence":
        by = store.incidents.get(incident_id).acknowledged_by or "surveillance"
        return silence_payload(message, by, now)
    payload = render(channel, message, now)
    if channel.type == "alertmanager" and kind == "resolve":
        labels = _open_labels(store, incident_id, channel.name)
        if labels:  # resolve exactly the alert that was opened
            payload["alerts"][0]["labels"] = labels
    return payload


def queue_alerts(store: Store, settings: Settings, *, now: datetime) -> tuple[int, int]:
    """Queue missing open and resolve deliveries; returns (queued, cancelled)."""
    channels = {c.name: c for c in settings.alerts}
    cancelled = store.outbox.cancel_undelivered_opens(now=now)
    queued = 0
    for kind in ("open", "resolve", "silence"):
        names = [n for n, c in channels.items() if kind != "silence" or c.type == "alertmanager"]
        messages: dict[int, AlertMessage] = {}
        for incident_id, name in store.outbox.missing(names, kind):
            if incident_id not in messages:
                message_kind = "open" if kind == "silence" else kind
                messages[incident_id] = message_for(store, settings, incident_id, message_kind, now)
            payload = _payload(store, channels[name], messages[incident_id], kind, incident_id, now)
            if store.outbox.enqueue(
                incident_id=incident_id,
                channel=name,
                kind=kind,
                payload=payload,
                now=now,
            ):
                queued += 1
    return queued, cancelled


def deliver_due(
    store: Store,
    settings: Settings,
    *,
    now: datetime,
    policy: RetryPolicy = RetryPolicy(),
) -> DeliveryReport:
    """Send every due delivery once; record success, retry time or give-up."""
    channels: dict[str, AlertChannelConfig] = {c.name: c for c in settings.alerts}
    delivered = retrying = failed = 0
    for item in store.outbox.claim_due(now=now, lease=timedelta(seconds=policy.lease_s)):
        channel = channels.get(item.channel)
        error: str | None = None
        if channel is None:
            error = f"channel {item.channel!r} is no longer configured"
        else:
            try:
                send(channel, item.payload)
            except ChannelError as exc:
                error = str(exc)
        if error is None:
            store.outbox.record_attempt(item.id, now=now, error=None, next_attempt_at=None)
            delivered += 1
            LOG.info(
                "alert %s for incident %d delivered via %s",
                item.kind,
                item.incident_id,
                item.channel,
            )
            continue
        give_up = channel is None or item.attempts >= policy.max_attempts
        next_at = None if give_up else now + policy.delay(item.attempts)
        store.outbox.record_attempt(item.id, now=now, error=error, next_attempt_at=next_at)
        if give_up:
            failed += 1
            LOG.error(
                "alert %s for incident %d via %s failed for good after %d attempt(s): %s",
                item.kind,
                item.incident_id,
                item.channel,
                item.attempts,
                error,
            )
        else:
            retrying += 1
            LOG.warning(
                "alert %s for incident %d via %s failed (attempt %d), retry at %s: %s",
                item.kind,
                item.incident_id,
                item.channel,
                item.attempts,
                next_at,
                error,
            )
    return DeliveryReport(delivered=delivered, retrying=retrying, failed=failed)


def refresh_alertmanager(store: Store, settings: Settings, *, now: datetime | None = None) -> int:
    """Re-post the open alerts of still-open incidents to Alertmanager channels.

    Alertmanager resolves an alert nobody re-posts within its ``resolve_timeout``;
    the leader's ``alert_retries`` job (every minute by default) calls this. The
    labels are the ones first sent (the alert's identity); the annotations are
    rendered afresh, so an assessment or new evidence shows at once.
    """
    moment = now or utcnow()
    refreshed = 0
    open_ids = {i.id for i in store.incidents.find(status="open")}
    delivered = [
        d
        for d in store.outbox.find(status="delivered", limit=100_000)
        if d.kind == "open" and d.incident_id in open_ids
    ]
    for channel in settings.alerts:
        if channel.type != "alertmanager":
            continue
        for item in delivered:
            if item.channel != channel.name:
                continue
            message = message_for(store, settings, item.incident_id, "open", moment)
            payload = render(channel, message, moment)
            labels = (item.payload.get("alerts") or [{}])[0].get("labels")
            if labels:
                payload["alerts"][0]["labels"] = dict(labels)
            try:
                send(channel, payload)
                refreshed += 1
            except ChannelError as exc:
                LOG.warning("alertmanager refresh via %s failed: %s", channel.name, exc)
    return refreshed


def deliver_now(store: Store, settings: Settings) -> DeliveryReport:
    """What every state-changing command runs: queue and send what is due, refresh
    Alertmanager. A channel that fails stays queued; the daemon keeps retrying."""
    return process_alerts(store, settings, refresh=True)


def process_alerts(
    store: Store,
    settings: Settings,
    *,
    now: datetime | None = None,
    policy: RetryPolicy = RetryPolicy(),
    refresh: bool = False,
) -> DeliveryReport:
    """Queue, deliver (and optionally refresh Alertmanager); see the module docstring."""
    if not settings.alerts:
        return DeliveryReport()
    moment = now or utcnow()
    queued, cancelled = queue_alerts(store, settings, now=moment)
    sent = deliver_due(store, settings, now=moment, policy=policy)
    if refresh:
        refresh_alertmanager(store, settings, now=moment)
    return DeliveryReport(
        queued=queued,
        delivered=sent.delivered,
        retrying=sent.retrying,
        failed=sent.failed,
        cancelled=cancelled,
    )


__all__ = [
    "DeliveryReport",
    "RetryPolicy",
    "deliver_due",
    "deliver_now",
    "message_for",
    "process_alerts",
    "queue_alerts",
    "refresh_alertmanager",
]
