"""The outbox: alert deliveries, queued in the transaction that decides them.

Alert deliveries (table ``alert_delivery``) are unique per (incident, channel,
kind): the open page of an incident can exist once per channel, whatever the
number of check runs that add evidence to it, and so can its resolve message.
A sender *claims* a due delivery with a conditional UPDATE (it bumps
``attempts`` and pushes ``next_attempt_at`` one lease ahead) before it sends, so
two threads or replicas never send the same attempt; a sender that dies
mid-send leaves the claim to expire and the delivery is tried again (at least
once: a crash between sending and recording can repeat one message).

Statuses: ``pending`` (waiting for its next attempt), ``delivered``,
``failed`` (gave up after the last attempt; ``surveillance alerts retry``
re-arms it), ``cancelled`` (the incident closed before its open page went out).

Kinds: ``open`` (the page), ``resolve`` (the all-clear on close) and ``silence``
(an Alertmanager silence posted once when on-call acknowledges)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, select, update

from surveillance.core.errors import NotFoundError
from surveillance.core.statuses import (
    OPEN_INCIDENT_STATUSES,
    DeliveryKind,
    DeliveryStatus,
    IncidentStatus,
)
from surveillance.store import audit
from surveillance.store.base import Repository
from surveillance.store.domain import (
    AlertDelivery,
)
from surveillance.store.ingest_writer import _insert
from surveillance.store.models import (
    AlertDeliveryRow,
    IncidentRow,
)


def _delivery(row: AlertDeliveryRow) -> AlertDelivery:
    return AlertDelivery(
        id=row.id,
        incident_id=row.incident_id,
        channel=row.channel,
        kind=row.kind,
        status=row.status,
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        delivered_at=row.delivered_at,
        last_error=row.last_error,
        payload=dict(row.payload),
    )


class OutboxRepository(Repository):
    """One delivery per (incident, channel, kind)."""

    def enqueue(
        self,
        *,
        incident_id: int,
        channel: str,
        kind: str,
        payload: dict[str, Any],
        now: datetime,
    ) -> int | None:
        """Create the delivery; ``None`` when this (incident, channel, kind) already has one."""
        with self._sessions.scope() as s:
            stmt = (
                _insert(s, AlertDeliveryRow)
                .values(
                    incident_id=incident_id,
                    channel=channel,
                    kind=kind,
                    status=DeliveryStatus.PENDING,
                    attempts=0,
                    next_attempt_at=now,
                    payload=payload,
                )
                .on_conflict_do_nothing()
                .returning(AlertDeliveryRow.id)
            )
            return s.execute(stmt).scalar_one_or_none()

    def missing(self, channels: Sequence[str], kind: str) -> list[tuple[int, str]]:
        """(incident id, channel) pairs that need a delivery of ``kind`` and have none.

        ``open``: incidents not closed. ``resolve``: closed incidents whose open
        page was delivered on that channel. ``silence``: acknowledged incidents
        not closed.
        """
        if not channels:
            return []
        pairs: list[tuple[int, str]] = []
        with self._sessions.scope() as s:
            for channel in channels:
                same = (
                    (AlertDeliveryRow.incident_id == IncidentRow.id)
                    & (AlertDeliveryRow.channel == channel)
                    & (AlertDeliveryRow.kind == kind)
                )
                stmt = select(IncidentRow.id).where(~exists().where(same))
                if kind == DeliveryKind.OPEN:
                    stmt = stmt.where(IncidentRow.status.in_(OPEN_INCIDENT_STATUSES))
                elif kind == DeliveryKind.SILENCE:
                    stmt = stmt.where(
                        IncidentRow.status.in_(OPEN_INCIDENT_STATUSES),
                        IncidentRow.acknowledged_at.is_not(None),
                    )
                else:
                    opened = (
                        (AlertDeliveryRow.incident_id == IncidentRow.id)
                        & (AlertDeliveryRow.channel == channel)
                        & (AlertDeliveryRow.kind == DeliveryKind.OPEN)
                        & (AlertDeliveryRow.status == DeliveryStatus.DELIVERED)
                    )
                    stmt = stmt.where(
                        IncidentRow.status == IncidentStatus.CLOSED, exists().where(opened)
                    )
                pairs.extend((i, channel) for i in s.scalars(stmt.order_by(IncidentRow.id)))
        return pairs

    def cancel_undelivered_opens(self, *, now: datetime) -> int:
        """Open pages (and silences) of closed incidents that never went out: cancelled."""
        with self._sessions.scope() as s:
            closed = select(IncidentRow.id).where(IncidentRow.status == IncidentStatus.CLOSED)
            result = s.execute(
                update(AlertDeliveryRow)
                .where(
                    AlertDeliveryRow.kind.in_((DeliveryKind.OPEN, DeliveryKind.SILENCE)),
                    AlertDeliveryRow.status.in_((DeliveryStatus.PENDING, DeliveryStatus.FAILED)),
                    AlertDeliveryRow.incident_id.in_(closed),
                )
                .values(
                    status=DeliveryStatus.CANCELLED,
                    next_attempt_at=None,
                    last_error="incident closed first",
                )
                .execution_options(synchronize_session=False)
            )
            return int(getattr(result, "rowcount", 0) or 0)

    def claim_due(
        self, *, now: datetime, lease: timedelta, limit: int = 100
    ) -> list[AlertDelivery]:
        """Claim due pending deliveries (one attempt each); see the module docstring."""
        claimed: list[AlertDelivery] = []
        with self._sessions.scope() as s:
            due = s.execute(
                select(AlertDeliveryRow.id, AlertDeliveryRow.attempts)
                .where(
                    AlertDeliveryRow.status == DeliveryStatus.PENDING,
                    AlertDeliveryRow.next_attempt_at <= now,
                )
                .order_by(AlertDeliveryRow.next_attempt_at, AlertDeliveryRow.id)
                .limit(limit)
            ).all()
        for delivery_id, attempts in due:
            with self._sessions.scope() as s:
                result = s.execute(
                    update(AlertDeliveryRow)
                    .where(
                        AlertDeliveryRow.id == delivery_id,
                        AlertDeliveryRow.status == DeliveryStatus.PENDING,
                        AlertDeliveryRow.attempts == attempts,
                    )
                    .values(attempts=attempts + 1, next_attempt_at=now + lease)
                    .execution_options(synchronize_session=False)
                )
                if getattr(result, "rowcount", 0) == 1:
                    row = s.get(AlertDeliveryRow, delivery_id)
                    if row is not None:
                        s.refresh(row)
                        claimed.append(_delivery(row))
        return claimed

    def record_attempt(
        self,
        delivery_id: int,
        *,
        now: datetime,
        error: str | None,
        next_attempt_at: datetime | None,
        actor: str = "alerts",
    ) -> AlertDelivery:
        """Record an attempt: delivered (``error`` None), retry later, or given up
        (``next_attempt_at`` None). Deliveries and give-ups are audited."""
        with self._sessions.scope() as s:
            row = s.get(AlertDeliveryRow, delivery_id)
            if row is None:
                raise NotFoundError(f"alert delivery {delivery_id} does not exist")
            if error is None:
                row.status = DeliveryStatus.DELIVERED
                row.delivered_at = now
                row.next_attempt_at = None
                row.last_error = None
            else:
                row.last_error = error[:2000]
                row.next_attempt_at = next_attempt_at
                row.status = (
                    DeliveryStatus.PENDING if next_attempt_at is not None else DeliveryStatus.FAILED
                )
            if row.status in (DeliveryStatus.DELIVERED, DeliveryStatus.FAILED):
                audit.append(
                    s,
                    actor=actor,
                    action=f"alert.{row.status}",
                    entity="incident",
                    entity_id=row.incident_id,
                    detail={
                        "channel": row.channel,
                        "kind": row.kind,
                        "attempts": row.attempts,
                        "error": row.last_error,
                    },
                )
            s.flush()
            return _delivery(row)

    def rearm(self, *, now: datetime, delivery_id: int | None = None, actor: str) -> int:
        """Put failed deliveries (or one, any non-delivered status) back to pending now."""
        with self._sessions.scope() as s:
            stmt = update(AlertDeliveryRow).values(
                status=DeliveryStatus.PENDING, next_attempt_at=now
            )
            if delivery_id is not None:
                row = s.get(AlertDeliveryRow, delivery_id)
                if row is None:
                    raise NotFoundError(
                        f"alert delivery {delivery_id} does not exist; "
                        "list them with 'surveillance alerts list'"
                    )
                stmt = stmt.where(
                    AlertDeliveryRow.id == delivery_id,
                    AlertDeliveryRow.status != DeliveryStatus.DELIVERED,
                )
            else:
                stmt = stmt.where(AlertDeliveryRow.status == DeliveryStatus.FAILED)
            result = s.execute(stmt.execution_options(synchronize_session=False))
            count = int(getattr(result, "rowcount", 0) or 0)
            if count:
                audit.append(
                    s,
                    actor=actor,
                    action="alert.rearmed",
                    entity="alert_delivery",
                    entity_id=delivery_id if delivery_id is not None else "failed",
                    detail={"count": count},
                )
            return count

    def find(
        self,
        *,
        incident_id: int | None = None,
        status: str | None = None,
        limit: int = 200,
    ) -> list[AlertDelivery]:
        stmt = select(AlertDeliveryRow).order_by(AlertDeliveryRow.id.desc()).limit(limit)
        if incident_id is not None:
            stmt = stmt.where(AlertDeliveryRow.incident_id == incident_id)
        if status is not None:
            stmt = stmt.where(AlertDeliveryRow.status == status)
        with self._sessions.scope() as s:
            return [_delivery(r) for r in s.scalars(stmt)]
