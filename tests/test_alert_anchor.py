"""Every alert carries the audit chain's head and count (a copy outside the database)."""

from __future__ import annotations

from fixtures_store import open_incident

from surveillance.core.config import Settings
from surveillance.incidents.alerts.channels import alert_annotations
from surveillance.incidents.alerts.delivery import message_for
from surveillance.store import Store
from surveillance.store.types import utcnow


def test_alert_message_carries_the_audit_anchor(store: Store, settings: Settings) -> None:
    incident_id = open_incident(store)
    anchor = store.audit.anchor()
    assert anchor.events > 0 and anchor.head_hash

    message = message_for(store, settings, incident_id, "open", utcnow())

    assert (message.audit_head, message.audit_events) == (anchor.head_hash, anchor.events)
    assert f"{anchor.events} events, head {anchor.head_hash}" in message.text()
    annotations = alert_annotations(message)
    assert annotations["audit_head"] == anchor.head_hash
    assert annotations["audit_events"] == str(anchor.events)
    # the anchor is what `audit verify --expect-head/--expect-count` checks against
    report = store.audit.verify()
    assert report.ok
