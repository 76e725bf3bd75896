"""Detection users can trust: effect sizes, adjusted p-values, tolerance, change events.

* ``drift_check`` gains ``p_adjusted`` (p-value after the window's multiple-testing
  control), ``effect_size`` + ``effect_name`` (KS D, Cramér's V, normalised MMD) and
  ``min_effect`` (the tolerance the effect had to reach).
* ``drift_check.status`` admits ``below_tolerance`` (significant, smaller than the
  tolerance: shown, never an incident); on PostgreSQL the CHECK constraint
  ``ck_drift_check_status_valid`` is dropped and recreated (SQLite has no such
  CHECK: see 0003).
* New table ``change_event``: a categorical header value (software version,
  kernel) first seen at a stratum, with when.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_STATUS_BEFORE = "status IN ('ok', 'drift', 'insufficient_data')"
_STATUS_AFTER = "status IN ('ok', 'drift', 'below_tolerance', 'insufficient_data')"
_STATUS_COMMENT_BEFORE = "ok | drift | insufficient_data"
_STATUS_COMMENT_AFTER = "ok | drift | below_tolerance | insufficient_data"


def _new_columns() -> list[sa.Column[object]]:
    return [
        sa.Column(
            "p_adjusted",
            sa.Float(),
            nullable=True,
            comment="p-value adjusted across the window's strata and signals ([drift] correction)",
        ),
        sa.Column(
            "effect_size",
            sa.Float(),
            nullable=True,
            comment="How far the distribution moved, on the scale named by effect_name",
        ),
        sa.Column(
            "effect_name",
            sa.String(length=32),
            nullable=True,
            comment="Effect measure: ks_d | cramers_v | mmd_norm",
        ),
        sa.Column(
            "min_effect",
            sa.Float(),
            nullable=True,
            comment="Tolerance the effect had to reach to count as drift ([drift] min_effect)",
        ),
    ]


def _postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    postgres = _postgres()
    with op.batch_alter_table("drift_check", schema=None) as batch_op:
        for column in _new_columns():
            batch_op.add_column(column)
    if postgres:
        op.drop_constraint(op.f("ck_drift_check_status_valid"), "drift_check", type_="check")
        op.create_check_constraint(
            op.f("ck_drift_check_status_valid"), "drift_check", _STATUS_AFTER
        )
        op.alter_column(
            "drift_check",
            "status",
            existing_type=sa.String(length=24),
            existing_nullable=False,
            comment=_STATUS_COMMENT_AFTER,
            existing_comment=_STATUS_COMMENT_BEFORE,
        )
    op.create_table(
        "change_event",
        sa.Column("id", _ID, nullable=False, comment="Surrogate primary key"),
        sa.Column("model_id", _ID, nullable=False, comment="The registered model (model.id)"),
        sa.Column(
            "stratum_kind",
            sa.String(length=32),
            nullable=False,
            comment="overall | site | scanner | sex | age_band",
        ),
        sa.Column(
            "stratum_value",
            sa.String(length=256),
            nullable=False,
            comment="Stratum value (site/scanner label, 'F', ...)",
        ),
        sa.Column(
            "field",
            sa.String(length=64),
            nullable=False,
            comment="Header field, e.g. software_versions or convolution_kernel",
        ),
        sa.Column(
            "old_value",
            sa.String(length=256),
            nullable=True,
            comment="Most frequent value at the stratum before the change; NULL if none",
        ),
        sa.Column(
            "new_value", sa.String(length=256), nullable=False, comment="The value first seen"
        ),
        sa.Column(
            "first_seen_at",
            sa.DateTime(timezone=True),
            nullable=False,
            comment="Time of the first prediction of a study with the new value (UTC)",
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            comment="When the row was written (UTC)",
        ),
        sa.ForeignKeyConstraint(
            ["model_id"], ["model.id"], name=op.f("fk_change_event_model_id_model")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_change_event")),
        sa.UniqueConstraint(
            "model_id",
            "stratum_kind",
            "stratum_value",
            "field",
            "new_value",
            name="uq_change_event_value",
        ),
    )
    with op.batch_alter_table("change_event", schema=None) as batch_op:
        batch_op.create_index(
            "ix_change_event_model_seen", ["model_id", "first_seen_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("change_event", schema=None) as batch_op:
        batch_op.drop_index("ix_change_event_model_seen")
    op.drop_table("change_event")
    # Rows judged below tolerance were not drift: the old schema calls them ok.
    op.execute("UPDATE drift_check SET status = 'ok' WHERE status = 'below_tolerance'")
    if _postgres():
        op.drop_constraint(op.f("ck_drift_check_status_valid"), "drift_check", type_="check")
        op.create_check_constraint(
            op.f("ck_drift_check_status_valid"), "drift_check", _STATUS_BEFORE
        )
        op.alter_column(
            "drift_check",
            "status",
            existing_type=sa.String(length=24),
            existing_nullable=False,
            comment=_STATUS_COMMENT_BEFORE,
            existing_comment=_STATUS_COMMENT_AFTER,
        )
    with op.batch_alter_table("drift_check", schema=None) as batch_op:
        for column in reversed(_new_columns()):
            batch_op.drop_column(column.name)
