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

The delivery log is the ``alert_delivery`` table (``surveillance alerts list``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from surveillance.core.config import AlertChannelConfig, Settings
from surveillance.core.errors import NotFoundError
from surveillance.incidents.alerts.channels import ChannelError, render, send
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
    return build_message(
        incident,
        kind=kind,
        performance=performance,
        drift=drift,
        dashboard_url=settings.service.dashboard_url,
        now=now,
        baseline_source=source,
        model_version=version,
    )


def queue_alerts(store: Store, settings: Settings, *, now: datetime) -> tuple[int, int]:
    """Queue missing open and resolve deliveries; returns (queued, cancelled)."""
    channels = {c.name: c for c in settings.alerts}
    cancelled = store.outbox.cancel_undelivered_opens(now=now)
    queued = 0
    for kind in ("open", "resolve"):
        messages: dict[int, AlertMessage] = {}
        for incident_id, name in store.outbox.missing(list(channels), kind):
            if incident_id not in messages:
                messages[incident_id] = message_for(store, settings, incident_id, kind, now)
            payload = render(channels[name], messages[incident_id], now)
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


def refresh_alertmanager(store: Store, settings: Settings) -> int:
    """Re-post delivered open alerts of still-open incidents to Alertmanager channels."""
    refreshed = 0
    open_ids = {i.id for i in store.incidents.find(status="open")}
    for channel in settings.alerts:
        if channel.type != "alertmanager":
            continue
        for item in store.outbox.find(status="delivered", limit=10_000):
            if item.channel != channel.name or item.kind != "open":
                continue
            if item.incident_id not in open_ids:
                continue
            try:
                send(channel, item.payload)
                refreshed += 1
            except ChannelError as exc:
                LOG.warning("alertmanager refresh via %s failed: %s", channel.name, exc)
    return refreshed


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
        refresh_alertmanager(store, settings)
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
    "message_for",
    "process_alerts",
    "queue_alerts",
    "refresh_alertmanager",
]
