"""The audit chain detects edited and deleted events."""

from __future__ import annotations

from sqlalchemy import delete, update

from surveillance.store import Store
from surveillance.store.models import AuditEventRow


def _fill(store: Store, n: int = 5) -> None:
    for i in range(n):
        store.audit.record(
            actor="test",
            action="thing.done",
            entity="thing",
            entity_id=i,
            detail={"i": i, "ratio": 0.1 * i, "note": "ünïcode"},
        )


def test_intact_chain_verifies(store: Store) -> None:
    _fill(store)
    report = store.audit.verify()
    assert report.ok, report.problems
    assert report.events >= 5  # model registration events come first
    assert report.head_hash is not None and len(report.head_hash) == 64


def test_edited_event_is_detected(store: Store) -> None:
    _fill(store)
    with store.sessions.scope() as s:
        target = s.query(AuditEventRow).filter(AuditEventRow.action == "thing.done").first()
        assert target is not None
        s.execute(
            update(AuditEventRow).where(AuditEventRow.id == target.id).values(detail={"i": 999})
        )
        seq = target.seq
    report = store.audit.verify()
    assert not report.ok
    assert any(f"seq {seq} " in p and "edited" in p for p in report.problems)


def test_deleted_event_is_detected(store: Store) -> None:
    _fill(store)
    with store.sessions.scope() as s:
        middle = s.query(AuditEventRow).filter(AuditEventRow.action == "thing.done").all()[2]
        s.execute(delete(AuditEventRow).where(AuditEventRow.id == middle.id))
        seq = middle.seq
    report = store.audit.verify()
    assert not report.ok
    assert any(f"{seq}..{seq}" in p for p in report.problems)


def test_model_and_baseline_changes_are_audited(store: Store, settings) -> None:  # type: ignore[no-untyped-def]
    model = settings.models[0]
    changed = model.model_copy(
        update={
            "baselines": [
                b.model_copy(update={"alert_limit": 0.80}) if b.metric == "sensitivity" else b
                for b in model.baselines
            ]
        }
    )
    store.registry.register_models([changed], actor="qm@example.org")
    with store.sessions.scope() as s:
        actions = [(r.actor, r.action) for r in s.query(AuditEventRow).order_by(AuditEventRow.seq)]
    assert ("test", "model.registered") in actions
    assert ("qm@example.org", "baseline.changed") in actions
    # re-registering the same config changes nothing and audits nothing
    before = store.audit.verify().events
    store.registry.register_models([changed], actor="qm@example.org")
    assert store.audit.verify().events == before
