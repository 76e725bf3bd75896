"""Image spool (DICOM files waiting for the embedding job) and APScheduler's job store.

The job store table has the exact shape APScheduler 3.x creates, so that Alembic,
not the scheduler, owns the schema.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 19:35:19.733294
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "apscheduler_jobs",
        sa.Column("id", sa.String(length=191), nullable=False),
        sa.Column("next_run_time", sa.Float(precision=25), nullable=True),
        sa.Column("job_state", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_apscheduler_jobs")),
    )
    with op.batch_alter_table("apscheduler_jobs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_apscheduler_jobs_next_run_time"), ["next_run_time"], unique=False
        )

    op.create_table(
        "image_spool",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("study_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "sop_instance_pseudonym",
            sa.String(length=64),
            nullable=False,
            comment="HMAC of SOPInstanceUID",
        ),
        sa.Column(
            "file_name",
            sa.String(length=64),
            nullable=False,
            comment="Generated name inside the spool",
        ),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("transfer_syntax", sa.String(length=64), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_by", sa.String(length=128), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("embedded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True, comment="Why the file could not be embedded"),
        sa.ForeignKeyConstraint(
            ["study_id"], ["study.id"], name=op.f("fk_image_spool_study_id_study")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_image_spool")),
        sa.UniqueConstraint("sop_instance_pseudonym", name="uq_image_spool_sop_instance_pseudonym"),
    )
    with op.batch_alter_table("image_spool", schema=None) as batch_op:
        batch_op.create_index("ix_image_spool_pending", ["embedded_at", "claimed_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_image_spool_study_id"), ["study_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("image_spool", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_image_spool_study_id"))
        batch_op.drop_index("ix_image_spool_pending")

    op.drop_table("image_spool")
    with op.batch_alter_table("apscheduler_jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_apscheduler_jobs_next_run_time"))

    op.drop_table("apscheduler_jobs")
