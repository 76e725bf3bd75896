"""PSUR inputs: device identification on the model, FSCAs, complaints, report sign-offs.

* ``model`` gains ``udi_di``, ``basic_udi_di``, ``device_class``, ``notified_body``
  and ``certificate`` (MDCG 2022-21 Annex I, device identification), all nullable.
* ``fsca``: field safety corrective actions recorded with ``surveillance fsca add``.
* ``complaint``: complaints and user feedback imported with
  ``surveillance complaints import FILE.csv``.
* ``report_signoff``: a PMS report's conclusions as signed by a person
  (``surveillance report signoff``); the next report quotes them.

SQLite adds the model columns through ``batch_alter_table``; comments are
PostgreSQL-only (SQLite ignores them).

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
WHEN = sa.DateTime(timezone=True)

MODEL_COLUMNS: list[tuple[str, int, str]] = [
    ("udi_di", 128, "UDI-DI of the device version"),
    ("basic_udi_di", 128, "Basic UDI-DI (the device model's key in EUDAMED)"),
    ("device_class", 32, "Risk class, e.g. IIa (MDR Annex VIII) or FDA class II"),
    ("notified_body", 256, "Notified body name and number, e.g. 'TUV SUD (0123)'"),
    ("certificate", 256, "Certificate number(s) under which the device is marketed"),
]


def _model_fk(table: str) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(
        "model_id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        sa.ForeignKey("model.id", name=f"fk_{table}_model_id_model", ondelete="CASCADE"),
        nullable=False,
        comment="The registered model (model.id)",
    )


def upgrade() -> None:
    with op.batch_alter_table("model") as batch:
        for name, length, comment in MODEL_COLUMNS:
            batch.add_column(sa.Column(name, sa.String(length), nullable=True, comment=comment))
    op.create_table(
        "fsca",
        sa.Column("id", ID, nullable=False, comment="Surrogate primary key"),
        _model_fk("fsca"),
        sa.Column("reference", sa.String(128), nullable=False, comment="FSCA reference in the QMS"),
        sa.Column(
            "title", sa.String(512), nullable=False, comment="What the action does, in words"
        ),
        sa.Column("started_at", WHEN, nullable=False, comment="When the action started (UTC)"),
        sa.Column("closed_at", WHEN, nullable=True, comment="When it was closed (UTC)"),
        sa.Column("status", sa.String(16), nullable=False, comment="open | closed"),
        sa.Column(
            "field_safety_notice",
            sa.Text(),
            nullable=True,
            comment="Reference of the field safety notice sent to users, if any",
        ),
        sa.Column("recorded_by", sa.String(128), nullable=False, comment="Who recorded it (--by)"),
        sa.Column("recorded_at", WHEN, nullable=False, comment="When recorded (UTC)"),
        sa.PrimaryKeyConstraint("id", name="pk_fsca"),
        sa.UniqueConstraint("model_id", "reference", name="uq_fsca_reference"),
        sa.CheckConstraint("status IN ('open', 'closed')", name="ck_fsca_status_valid"),
    )
    op.create_table(
        "complaint",
        sa.Column("id", ID, nullable=False, comment="Surrogate primary key"),
        _model_fk("complaint"),
        sa.Column("reference", sa.String(128), nullable=False, comment="Complaint id in the QMS"),
        sa.Column(
            "received_at", WHEN, nullable=False, comment="When the complaint was received (UTC)"
        ),
        sa.Column(
            "category",
            sa.String(128),
            nullable=False,
            comment="Category, e.g. false negative, usability, performance",
        ),
        sa.Column(
            "serious",
            sa.Boolean(),
            nullable=False,
            comment="Whether it was assessed as related to a serious incident",
        ),
        sa.Column("summary", sa.Text(), nullable=False, comment="What was reported, without PHI"),
        sa.Column("outcome", sa.Text(), nullable=True, comment="Investigation outcome, if closed"),
        sa.Column(
            "source_file",
            sa.String(256),
            nullable=False,
            comment="Name of the CSV file it was imported from",
        ),
        sa.Column("imported_at", WHEN, nullable=False, comment="When imported (UTC)"),
        sa.PrimaryKeyConstraint("id", name="pk_complaint"),
        sa.UniqueConstraint("model_id", "reference", name="uq_complaint_reference"),
    )
    op.create_table(
        "report_signoff",
        sa.Column("id", ID, nullable=False, comment="Surrogate primary key"),
        _model_fk("report_signoff"),
        sa.Column(
            "period_label", sa.String(64), nullable=False, comment="Report period, e.g. 2026Q3"
        ),
        sa.Column("period_start", WHEN, nullable=False, comment="Period start, inclusive (UTC)"),
        sa.Column("period_end", WHEN, nullable=False, comment="Period end, exclusive (UTC)"),
        sa.Column(
            "psur_reference",
            sa.String(128),
            nullable=True,
            comment="PSUR reference and version as printed on the report",
        ),
        sa.Column(
            "conclusions", sa.Text(), nullable=False, comment="The signed conclusions, verbatim"
        ),
        sa.Column(
            "signed_by", sa.String(128), nullable=False, comment="Name and role of the signatory"
        ),
        sa.Column("signed_at", WHEN, nullable=False, comment="When it was signed (UTC)"),
        sa.Column(
            "report_sha256",
            sa.String(64),
            nullable=True,
            comment="SHA-256 of the signed PDF, when given",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_report_signoff"),
        sa.UniqueConstraint("model_id", "period_label", name="uq_report_signoff_period"),
    )


def downgrade() -> None:
    op.drop_table("report_signoff")
    op.drop_table("complaint")
    op.drop_table("fsca")
    with op.batch_alter_table("model") as batch:
        for name, _, _ in reversed(MODEL_COLUMNS):
            batch.drop_column(name)
