"""Incident lifecycle and vigilance reports.

* ``incident.recurrence_of``: a new incident of the same root cause opened by
  windows after the close of an earlier one points at it (the closed incident is
  never reopened by the evidence it was closed on).
* New table ``vigilance_report``: the report made to an authority (``eu-mdr`` or
  ``fda``) for an incident, one per authority, with its reference and time, so
  a deadline shows as met, missed or open.
* ``alert_delivery.kind`` admits ``silence`` (the Alertmanager silence posted on
  acknowledge); on PostgreSQL the CHECK ``ck_alert_delivery_kind_valid`` is
  dropped and recreated (SQLite has no such CHECK: see 0003).

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_KIND_BEFORE = "kind IN ('open', 'resolve')"
_KIND_AFTER = "kind IN ('open', 'resolve', 'silence')"
_KIND_COMMENT_BEFORE = "open | resolve"
_KIND_COMMENT_AFTER = "open | resolve | silence"
_RECURRENCE_COMMENT = (
    "The closed incident of the same root cause this one recurs after (new windows)"
)


def _postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    postgres = _postgres()
    with op.batch_alter_table("incident", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("recurrence_of", _ID, nullable=True, comment=_RECURRENCE_COMMENT)
        )
        batch_op.create_foreign_key(
            op.f("fk_incident_recurrence_of_incident"), "incident", ["recurrence_of"], ["id"]
        )
    op.create_table(
        "vigilance_report",
        sa.Column("id", _ID, nullable=False, comment="Surrogate primary key"),
        sa.Column("incident_id", _ID, nullable=False, comment="The incident (incident.id)"),
        sa.Column("authority", sa.String(length=16), nullable=False, comment="eu-mdr | fda"),
        sa.Column(
            "reference",
            sa.String(length=128),
            nullable=False,
            comment="The authority's or the manufacturer's report reference",
        ),
        sa.Column(
            "reported_at",
            sa.DateTime(timezone=True),
            nullable=False,
            comment="When the report was made (UTC)",
        ),
        sa.Column(
            "recorded_by",
            sa.String(length=128),
            nullable=False,
            comment="Who recorded the report",
        ),
        sa.Column(
            "recorded_at",
            sa.DateTime(timezone=True),
            nullable=False,
            comment="When the report was recorded here (UTC)",
        ),
        sa.CheckConstraint(
            "authority IN ('eu-mdr', 'fda')", name=op.f("ck_vigilance_report_authority_valid")
        ),
        sa.ForeignKeyConstraint(
            ["incident_id"], ["incident.id"], name=op.f("fk_vigilance_report_incident_id_incident")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vigilance_report")),
        sa.UniqueConstraint("incident_id", "authority", name="uq_vigilance_report_authority"),
    )
    with op.batch_alter_table("vigilance_report", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_vigilance_report_incident_id"), ["incident_id"], unique=False
        )
    if postgres:
        op.drop_constraint(op.f("ck_alert_delivery_kind_valid"), "alert_delivery", type_="check")
        op.create_check_constraint(
            op.f("ck_alert_delivery_kind_valid"), "alert_delivery", _KIND_AFTER
        )
        op.alter_column(
            "alert_delivery",
            "kind",
            existing_type=sa.String(length=16),
            existing_nullable=False,
            comment=_KIND_COMMENT_AFTER,
            existing_comment=_KIND_COMMENT_BEFORE,
        )


def downgrade() -> None:
    postgres = _postgres()
    op.execute("DELETE FROM alert_delivery WHERE kind = 'silence'")
    if postgres:
        op.drop_constraint(op.f("ck_alert_delivery_kind_valid"), "alert_delivery", type_="check")
        op.create_check_constraint(
            op.f("ck_alert_delivery_kind_valid"), "alert_delivery", _KIND_BEFORE
        )
        op.alter_column(
            "alert_delivery",
            "kind",
            existing_type=sa.String(length=16),
            existing_nullable=False,
            comment=_KIND_COMMENT_BEFORE,
            existing_comment=_KIND_COMMENT_AFTER,
        )
    with op.batch_alter_table("vigilance_report", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_vigilance_report_incident_id"))
    op.drop_table("vigilance_report")
    with op.batch_alter_table("incident", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("fk_incident_recurrence_of_incident"), type_="foreignkey")
        batch_op.drop_column("recurrence_of")
