"""Intake hardening, keyed audit chain, database identity.

* ``diagnosis.withdrawn_at`` / ``withdrawn_by``: a FHIR ``entered-in-error``
  report withdraws the label an earlier version gave; the row stays (evidence)
  but no check reads it any more.
* ``audit_event.db_user``: the authenticated database user (``current_user``)
  recorded beside the free-text ``--by`` name (21 CFR 11.10(d)/(g)).
* ``audit_event.key_id``: which audit key's HMAC made ``hash`` (NULL: plain
  SHA-256, written before a key was configured), so a chain recomputed by
  someone without the key no longer verifies.
* ``incident.signal_kind`` admits ``intake`` (Kafka offsets out of range, ...):
  the CHECK constraint is rebuilt on PostgreSQL (SQLite has none, see 0003).

The PostgreSQL roles and grants are not created here (roles are cluster-wide
and need CREATEROLE): ``deploy/postgres/roles.sql`` creates them, idempotently.

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SIGNAL_KIND_BEFORE = "signal_kind IN ('drift', 'performance')"
_SIGNAL_KIND_AFTER = "signal_kind IN ('drift', 'performance', 'intake')"


def _columns() -> list[tuple[str, sa.Column]]:  # type: ignore[type-arg]
    return [
        (
            "diagnosis",
            sa.Column(
                "withdrawn_at",
                sa.DateTime(timezone=True),
                nullable=True,
                comment="When a later entered-in-error report withdrew this label (UTC); "
                "NULL: valid",
            ),
        ),
        (
            "diagnosis",
            sa.Column(
                "withdrawn_by",
                sa.String(length=64),
                nullable=True,
                comment="Keyed hash of the entered-in-error report that withdrew it",
            ),
        ),
        (
            "audit_event",
            sa.Column(
                "db_user",
                sa.String(length=128),
                nullable=True,
                comment="Authenticated database user (current_user) beside the --by name; "
                "NULL on SQLite",
            ),
        ),
        (
            "audit_event",
            sa.Column(
                "key_id",
                sa.String(length=16),
                nullable=True,
                comment="Id of the audit key whose HMAC made hash (NULL: plain SHA-256, unkeyed)",
            ),
        ),
    ]


def _postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    for table, column in _columns():
        op.add_column(table, column)
    if _postgres():
        op.drop_constraint(op.f("ck_incident_signal_kind_valid"), "incident", type_="check")
        op.create_check_constraint(
            op.f("ck_incident_signal_kind_valid"), "incident", sa.text(_SIGNAL_KIND_AFTER)
        )


def downgrade() -> None:
    if _postgres():
        intake = op.get_bind().scalar(
            sa.text("SELECT count(*) FROM incident WHERE signal_kind = 'intake'")
        )
        if intake:
            raise RuntimeError(
                f"{intake} intake incident(s) exist, which revision 0005 cannot hold; "
                "close and export them, then delete them by hand before downgrading"
            )
        op.drop_constraint(op.f("ck_incident_signal_kind_valid"), "incident", type_="check")
        op.create_check_constraint(
            op.f("ck_incident_signal_kind_valid"), "incident", sa.text(_SIGNAL_KIND_BEFORE)
        )
        for table, column in reversed(_columns()):
            op.drop_column(table, column.name)
        return
    for table in ("audit_event", "diagnosis"):
        with op.batch_alter_table(table) as batch:
            for owner, column in reversed(_columns()):
                if owner == table:
                    batch.drop_column(column.name)
