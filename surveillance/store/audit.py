"""Hash-chained audit log.

Each event's ``hash`` is SHA-256 over the previous event's hash and the
canonical JSON of the event's own fields, and ``seq`` runs 1, 2, 3, ... without
gaps. Editing any stored field breaks that event's hash; deleting an event
breaks the sequence and the next event's ``prev_hash``. Deleting the newest
events cannot be seen from inside the database alone: ``verify`` reports the
head hash and count so an operator (and every Article 72 export) can record
them outside it.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from surveillance.store.base import Repository
from surveillance.store.domain import AuditReport
from surveillance.store.models import AuditEventRow
from surveillance.store.types import utcnow

GENESIS = "0" * 64
# Any constant works; it only has to be the same for every writer of this database.
AUDIT_LOCK_KEY = 0x5355_5256  # "SURV"


def _canonical(
    seq: int,
    at: datetime,
    actor: str,
    action: str,
    entity: str,
    entity_id: str,
    detail: dict[str, Any],
) -> bytes:
    document = {
        "seq": seq,
        "at": at.isoformat(),
        "actor": actor,
        "action": action,
        "entity": entity,
        "entity_id": entity_id,
        "detail": detail,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), default=str).encode()


def chain_hash(prev_hash: str, payload: bytes) -> str:
    return hashlib.sha256(prev_hash.encode() + payload).hexdigest()


def append(
    session: Session,
    *,
    actor: str,
    action: str,
    entity: str,
    entity_id: str | int,
    detail: dict[str, Any] | None = None,
) -> str:
    """Append one event in the caller's transaction; returns its hash.

    On PostgreSQL a transaction-scoped advisory lock serialises appenders, so
    two replicas can never both extend the chain from the same head.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": AUDIT_LOCK_KEY})
    last = session.execute(
        select(AuditEventRow.seq, AuditEventRow.hash).order_by(AuditEventRow.seq.desc()).limit(1)
    ).first()
    seq = 1 if last is None else last.seq + 1
    prev_hash = GENESIS if last is None else last.hash
    # Round-trip through JSON so what we hash is exactly what the database returns.
    clean_detail: dict[str, Any] = json.loads(json.dumps(detail or {}, default=str))
    at = utcnow()
    entity_id = str(entity_id)
    digest = chain_hash(
        prev_hash, _canonical(seq, at, actor, action, entity, entity_id, clean_detail)
    )
    session.add(
        AuditEventRow(
            seq=seq,
            at=at,
            actor=actor,
            action=action,
            entity=entity,
            entity_id=entity_id,
            detail=clean_detail,
            prev_hash=prev_hash,
            hash=digest,
        )
    )
    session.flush()
    return digest


def verify(session: Session) -> AuditReport:
    """Walk the whole chain and list every inconsistency found."""
    problems: list[str] = []
    expected_seq, prev_hash, count = 1, GENESIS, 0
    rows = session.execute(select(AuditEventRow).order_by(AuditEventRow.seq)).scalars()
    for row in rows:
        count += 1
        if row.seq != expected_seq:
            problems.append(
                f"events {expected_seq}..{row.seq - 1} are missing (deleted?) before seq {row.seq}"
            )
        if row.prev_hash != prev_hash:
            problems.append(f"seq {row.seq}: prev_hash does not match the event before it")
        payload = _canonical(
            row.seq, row.at, row.actor, row.action, row.entity, row.entity_id, row.detail
        )
        if chain_hash(row.prev_hash, payload) != row.hash:
            problems.append(
                f"seq {row.seq} ({row.action} {row.entity} {row.entity_id}): content does "
                "not match its hash (edited?)"
            )
        expected_seq, prev_hash = row.seq + 1, row.hash
    return AuditReport(
        events=count, head_hash=None if count == 0 else prev_hash, problems=tuple(problems)
    )


class AuditRepository(Repository):
    """The hash-chained audit log: append an event, verify the chain."""

    def record(
        self,
        *,
        actor: str,
        action: str,
        entity: str,
        entity_id: str | int,
        detail: dict[str, Any] | None = None,
    ) -> str:
        """Append one event in its own transaction; returns the new chain head."""
        with self._sessions.scope() as s:
            return append(
                s, actor=actor, action=action, entity=entity, entity_id=entity_id, detail=detail
            )

    def verify(self) -> AuditReport:
        with self._sessions.scope() as s:
            return verify(s)


__all__ = ["AuditRepository", "append", "chain_hash", "verify"]
