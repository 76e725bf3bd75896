"""Drift windows as work units any replica can claim; baselines remember re-baselining.

* New table ``check_unit``: one row per (model, job, window) queued by a drift
  run; replicas claim pending rows with ``FOR UPDATE SKIP LOCKED`` (a claim
  older than the lease is taken over), judge the window and mark it done. The
  run that queued it (``plan_id``) waits for its units, so ``surveillance
  check`` and the scheduler's drift job return the checks whoever judged them.
* ``clearance_baseline.rebaselined_at``: when the value or alert limit last
  changed; the performance job's CUSUM chart restarts there.

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TIME = sa.DateTime(timezone=True)
_REBASELINED = (
    "When the value or alert limit last changed (UTC); the CUSUM chart restarts there. "
    "NULL: unchanged since registration"
)


def upgrade() -> None:
    with op.batch_alter_table("clearance_baseline") as batch:
        batch.add_column(sa.Column("rebaselined_at", _TIME, nullable=True, comment=_REBASELINED))
    op.create_table(
        "check_unit",
        sa.Column("id", _ID, nullable=False, comment="Surrogate primary key"),
        sa.Column("model_id", _ID, nullable=False, comment="Model whose window this is"),
        sa.Column("job", sa.String(length=16), nullable=False, comment="drift"),
        sa.Column("window_start", _TIME, nullable=False, comment="Window start (UTC, inclusive)"),
        sa.Column("window_end", _TIME, nullable=False, comment="Window end (UTC, exclusive)"),
        sa.Column(
            "reference_set_id",
            _ID,
            nullable=False,
            comment="Reference the window is judged against",
        ),
        sa.Column(
            "plan_id",
            sa.String(length=32),
            nullable=False,
            comment="The run that queued it last (random hex): it waits for its units",
        ),
        sa.Column(
            "job_run_id", _ID, nullable=True, comment="Job run the checks are recorded under"
        ),
        sa.Column(
            "status",
            sa.String(length=16),
            nullable=False,
            comment="pending | running | done | failed",
        ),
        sa.Column("queued_at", _TIME, nullable=False, comment="When queued (UTC)"),
        sa.Column("claimed_at", _TIME, nullable=True, comment="When last claimed (UTC)"),
        sa.Column(
            "claimed_by",
            sa.String(length=128),
            nullable=True,
            comment="host:pid of the replica that claimed it",
        ),
        sa.Column("finished_at", _TIME, nullable=True, comment="When judged or failed (UTC)"),
        sa.Column("attempts", sa.Integer(), nullable=False, comment="Claims so far"),
        sa.Column("error", sa.Text(), nullable=True, comment="Why the last attempt failed"),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'done', 'failed')",
            name=op.f("ck_check_unit_status_valid"),
        ),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["model.id"],
            name=op.f("fk_check_unit_model_id_model"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["reference_set_id"],
            ["reference_set.id"],
            name=op.f("fk_check_unit_reference_set_id_reference_set"),
        ),
        sa.ForeignKeyConstraint(
            ["job_run_id"], ["job_run.id"], name=op.f("fk_check_unit_job_run_id_job_run")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_check_unit")),
        sa.UniqueConstraint(
            "model_id", "job", "window_start", "window_end", name="uq_check_unit_key"
        ),
    )
    op.create_index("ix_check_unit_status", "check_unit", ["status", "claimed_at"])


def downgrade() -> None:
    op.drop_index("ix_check_unit_status", table_name="check_unit")
    op.drop_table("check_unit")
    with op.batch_alter_table("clearance_baseline") as batch:
        batch.drop_column("rebaselined_at")
