"""Hash-chained audit log.

Each event's ``hash`` is SHA-256 over the previous event's hash and the
canonical JSON of the event's own fields, and ``seq`` runs 1, 2, 3, ... without
gaps. Editing any stored field breaks that event's hash; deleting an event
breaks the sequence and the next event's ``prev_hash``. Deleting the newest
events cannot be seen from inside the database alone: ``verify`` reports the
head hash and count so an operator (and every Article 72 export) can record
them outside it, and ``verify(expect_head=..., expect_count=...)`` checks a
recorded anchor (``surveillance audit verify --expect-head HASH --expect-count N``).

Keyed chain: with an audit key (a file outside the database; see
:meth:`AuditRepository.use_key`) each hash is HMAC-SHA256(key, prev_hash +
payload) and ``key_id`` names the key, so someone who can edit the table but
not read the key cannot recompute a chain that verifies. Events written before
a key was configured stay plain SHA-256 (``key_id`` NULL); when verifying with
a key, such an unkeyed event *after* a keyed one is a problem (a downgrade),
and unkeyed ones before the first keyed one are counted and reported.

Identity: on PostgreSQL each event records ``db_user`` = ``current_user``, the
authenticated database role, beside the free-text actor (``--by``); it is part
of the hashed payload. SQLite (the demo) is single-user: ``db_user`` is NULL.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import weakref
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from surveillance.store.base import Repository
from surveillance.store.domain import AuditReport
from surveillance.store.models import AuditEventRow
from surveillance.store.types import utcnow

GENESIS = "0" * 64
# Any constant works; it only has to be the same for every writer of this database.
AUDIT_LOCK_KEY = 0x5355_5256  # "SURV"
MIN_AUDIT_KEY_BYTES = 16

# engine -> (key, key id): set by AuditRepository.use_key, read by append()
_KEYS: weakref.WeakKeyDictionary[Engine, tuple[bytes, str]] = weakref.WeakKeyDictionary()


def key_id(key: bytes) -> str:
    """A short public id of an audit key (16 hex digits; reveals nothing of the key)."""
    return hashlib.sha256(b"surveillance-audit-key-id:" + key).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class AuditAnchor:
    """The chain head and length: record them outside the database (alerts, exports)."""

    head_hash: str | None
    events: int


def _canonical(
    seq: int,
    at: datetime,
    actor: str,
    action: str,
    entity: str,
    entity_id: str,
    detail: dict[str, Any],
    db_user: str | None = None,
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
    if db_user is not None:  # events written before 0006 have none: same payload as then
        document["db_user"] = db_user
    return json.dumps(document, sort_keys=True, separators=(",", ":"), default=str).encode()


def chain_hash(prev_hash: str, payload: bytes, key: bytes | None = None) -> str:
    """SHA-256 (unkeyed) or HMAC-SHA256 with ``key`` over ``prev_hash + payload``."""
    if key is None:
        return hashlib.sha256(prev_hash.encode() + payload).hexdigest()
    return hmac.new(key, prev_hash.encode() + payload, hashlib.sha256).hexdigest()


def _db_user(session: Session) -> str | None:
    if session.get_bind().dialect.name != "postgresql":
        return None
    return str(session.execute(text("SELECT current_user")).scalar_one())


def _key_for(session: Session) -> tuple[bytes, str] | None:
    bind = session.get_bind()
    engine = bind if isinstance(bind, Engine) else getattr(bind, "engine", None)
    return None if engine is None else _KEYS.get(engine)


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
    db_user = _db_user(session)
    keyed = _key_for(session)
    if db_user is not None:
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
        prev_hash,
        _canonical(seq, at, actor, action, entity, entity_id, clean_detail, db_user),
        None if keyed is None else keyed[0],
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
            db_user=db_user,
            key_id=None if keyed is None else keyed[1],
        )
    )
    session.flush()
    return digest


def verify(
    session: Session,
    *,
    key: bytes | None = None,
    expect_head: str | None = None,
    expect_count: int | None = None,
) -> AuditReport:
    """Walk the whole chain and list every inconsistency found.

    ``key`` verifies keyed events (without it their links are checked and they
    are counted as ``unverified_events``; ``surveillance audit verify`` refuses
    that). ``expect_head``/``expect_count`` compare the chain with an anchor
    recorded outside the database, which catches deleting the newest events and
    rewriting the whole chain.
    """
    problems: list[str] = []
    expected_seq, prev_hash, count = 1, GENESIS, 0
    own_id = None if key is None else key_id(key)
    seen_keyed = False
    unkeyed_prefix = 0
    unverified = 0
    anchor_seen = expect_head is None
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
            row.seq,
            row.at,
            row.actor,
            row.action,
            row.entity,
            row.entity_id,
            row.detail,
            row.db_user,
        )
        where = f"seq {row.seq} ({row.action} {row.entity} {row.entity_id})"
        if row.key_id is None:
            if seen_keyed:
                problems.append(
                    f"{where}: not keyed although keyed events precede it (rewritten "
                    "without the audit key?)"
                )
            elif not seen_keyed:
                unkeyed_prefix += 1
            if chain_hash(row.prev_hash, payload) != row.hash:
                problems.append(f"{where}: content does not match its hash (edited?)")
        else:
            seen_keyed = True
            if key is None:
                unverified += 1
            elif row.key_id != own_id:
                problems.append(
                    f"{where}: keyed with audit key {row.key_id}, not the configured {own_id}"
                )
            elif chain_hash(row.prev_hash, payload, key) != row.hash:
                problems.append(f"{where}: content does not match its keyed hash (edited?)")
        if expect_head is not None and row.hash == expect_head:
            anchor_seen = True
            if expect_count is not None and row.seq != expect_count:
                problems.append(
                    f"the expected head {expect_head[:16]}... is event {row.seq}, "
                    f"not event {expect_count}"
                )
        expected_seq, prev_hash = row.seq + 1, row.hash
    if not anchor_seen:
        problems.append(
            f"the expected head {expect_head} is not in the chain (events deleted, or the "
            "chain was rewritten)"
        )
    if expect_count is not None and count < expect_count:
        problems.append(
            f"the chain has {count} events, fewer than the {expect_count} recorded (the "
            "newest events were deleted?)"
        )
    if key is not None and unkeyed_prefix and not seen_keyed and count:
        problems.append(
            f"none of the {count} events is keyed although an audit key is configured "
            "(written before the key, or rewritten without it); record this head outside "
            "the database and keep the key configured from now on"
        )
    return AuditReport(
        events=count,
        head_hash=None if count == 0 else prev_hash,
        problems=tuple(problems),
        unkeyed_events=unkeyed_prefix,
        unverified_events=unverified,
    )


def anchor(session: Session) -> AuditAnchor:
    """The current head hash and event count (cheap: the newest row and count)."""
    last = session.execute(
        select(AuditEventRow.seq, AuditEventRow.hash).order_by(AuditEventRow.seq.desc()).limit(1)
    ).first()
    if last is None:
        return AuditAnchor(None, 0)
    total = int(session.scalar(select(func.count()).select_from(AuditEventRow)) or 0)
    return AuditAnchor(str(last.hash), total)


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

    def use_key(self, key: bytes | None) -> str | None:
        """Key every event this store appends from now on (HMAC); returns the key id.

        ``None`` forgets the key (events are then plain SHA-256, as before 0006).
        The key must come from outside the database (``[service] audit_key_file``).
        """
        engine = self._sessions.engine
        if key is None:
            _KEYS.pop(engine, None)
            return None
        if len(key) < MIN_AUDIT_KEY_BYTES:
            raise ValueError(f"the audit key must be at least {MIN_AUDIT_KEY_BYTES} bytes")
        _KEYS[engine] = (key, key_id(key))
        return _KEYS[engine][1]

    @property
    def key(self) -> bytes | None:
        keyed = _KEYS.get(self._sessions.engine)
        return None if keyed is None else keyed[0]

    def verify(
        self,
        *,
        key: bytes | None = None,
        expect_head: str | None = None,
        expect_count: int | None = None,
    ) -> AuditReport:
        """Verify the chain; ``key`` defaults to the key given to :meth:`use_key`."""
        with self._sessions.scope() as s:
            return verify(
                s,
                key=self.key if key is None else key,
                expect_head=expect_head,
                expect_count=expect_count,
            )

    def anchor(self) -> AuditAnchor:
        """Head hash and event count, to put into alerts and exports (kept outside the DB)."""
        with self._sessions.scope() as s:
            return anchor(s)


__all__ = [
    "AuditAnchor",
    "AuditRepository",
    "anchor",
    "append",
    "chain_hash",
    "key_id",
    "verify",
]
