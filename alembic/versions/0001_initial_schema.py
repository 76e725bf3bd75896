"""Initial schema: every table named in DESIGN.md ("Store").

Types are spelled out here (not imported from surveillance.store) so that this
migration keeps meaning the same thing when the models change later.

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-24 19:17:28.268451
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# JSON documents: JSONB on PostgreSQL (indexable), JSON text on SQLite.
JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "audit_event",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False, comment="1, 2, 3, ... without gaps"),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("entity", sa.String(length=64), nullable=False),
        sa.Column("entity_id", sa.String(length=128), nullable=False),
        sa.Column("detail", JSON_DOC, nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_event")),
        sa.UniqueConstraint("seq", name="uq_audit_event_seq"),
    )
    op.create_table(
        "consumer_offset",
        sa.Column("consumer_group", sa.String(length=128), nullable=False),
        sa.Column("topic", sa.String(length=256), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("next_offset", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(
            "consumer_group", "topic", "partition", name=op.f("pk_consumer_offset")
        ),
    )
    op.create_table(
        "dead_letter",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column(
            "locator", sa.String(length=1024), nullable=False, comment="Topic or local file path"
        ),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column(
            "payload",
            sa.Text(),
            nullable=True,
            comment="Record with identifiers pseudonymised and PHI removed; NULL if unparseable",
        ),
        sa.Column("payload_sha256", sa.String(length=64), nullable=False),
        sa.Column("payload_bytes", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("replayed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letter")),
        sa.UniqueConstraint(
            "source", "locator", "partition", "offset", name="uq_dead_letter_position"
        ),
    )
    op.create_table(
        "job_run",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("scheduled_for", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "status", sa.String(length=16), nullable=False, comment="running | succeeded | failed"
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_run")),
        sa.UniqueConstraint("job_id", "scheduled_for", name="uq_job_run_key"),
    )
    op.create_table(
        "model",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False, comment="Registered model name"),
        sa.Column(
            "version", sa.String(length=64), nullable=False, comment="Version cleared and deployed"
        ),
        sa.Column(
            "manufacturer", sa.String(length=256), nullable=True, comment="Legal manufacturer"
        ),
        sa.Column("intended_use", sa.Text(), nullable=False, comment="Intended use statement"),
        sa.Column(
            "findings",
            JSON_DOC,
            nullable=False,
            comment="Finding name -> operating threshold on the score",
        ),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model")),
        sa.UniqueConstraint("name", name=op.f("uq_model_name")),
    )
    op.create_table(
        "site",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "pseudonym", sa.String(length=64), nullable=False, comment="HMAC of InstitutionName"
        ),
        sa.Column(
            "label",
            sa.String(length=128),
            nullable=False,
            comment="Display name chosen by the operator",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_site")),
        sa.UniqueConstraint("pseudonym", name=op.f("uq_site_pseudonym")),
    )
    op.create_table(
        "clearance_baseline",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("model_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("finding", sa.String(length=128), nullable=False),
        sa.Column(
            "metric",
            sa.String(length=32),
            nullable=False,
            comment="sensitivity, specificity, auroc, ...",
        ),
        sa.Column(
            "stratum", sa.String(length=128), nullable=False, comment="'overall' or e.g. 'sex=F'"
        ),
        sa.Column(
            "value", sa.Float(), nullable=False, comment="Point estimate in the clearance study"
        ),
        sa.Column("ci_lower", sa.Float(), nullable=True),
        sa.Column("ci_upper", sa.Float(), nullable=True),
        sa.Column(
            "alert_limit", sa.Float(), nullable=False, comment="Live value below this breaches"
        ),
        sa.Column(
            "source_document", sa.Text(), nullable=False, comment="Where the figure is documented"
        ),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "alert_limit >= 0 AND alert_limit <= 1",
            name=op.f("ck_clearance_baseline_alert_limit_range"),
        ),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["model.id"],
            name=op.f("fk_clearance_baseline_model_id_model"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_clearance_baseline")),
        sa.UniqueConstraint("model_id", "finding", "metric", "stratum", name="uq_baseline_key"),
    )
    op.create_table(
        "device",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("site_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "station_pseudonym", sa.String(length=64), nullable=False, comment="HMAC of StationName"
        ),
        sa.Column("manufacturer", sa.String(length=128), nullable=False),
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column(
            "label",
            sa.String(length=256),
            nullable=False,
            comment="Display name: vendor model @ site",
        ),
        sa.ForeignKeyConstraint(["site_id"], ["site.id"], name=op.f("fk_device_site_id_site")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_device")),
        sa.UniqueConstraint(
            "site_id", "station_pseudonym", "manufacturer", "model_name", name="uq_device_key"
        ),
    )
    op.create_table(
        "incident",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("dedup_key", sa.String(length=512), nullable=False),
        sa.Column("model_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "signal_kind", sa.String(length=16), nullable=False, comment="drift | performance"
        ),
        sa.Column("signal", sa.String(length=128), nullable=False),
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
            "severity",
            sa.String(length=16),
            nullable=False,
            comment="low | medium | high | critical",
        ),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("title", sa.String(length=512), nullable=False),
        sa.Column(
            "summary", sa.Text(), nullable=False, comment="Generated from check results, no PHI"
        ),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "aware_at",
            sa.DateTime(timezone=True),
            nullable=False,
            comment="When the manufacturer became aware",
        ),
        sa.Column("last_evidence_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acknowledged_by", sa.String(length=128), nullable=True),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolution", sa.Text(), nullable=True),
        sa.Column("capa_reference", sa.String(length=128), nullable=True),
        sa.Column(
            "vigilance_class",
            sa.String(length=48),
            nullable=False,
            comment="assessment_pending | not_reportable | serious_incident | serious_public_health_threat | death_or_serious_deterioration",
        ),
        sa.Column("remedial_action", sa.Boolean(), nullable=False),
        sa.Column(
            "mdr_deadline_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="EU MDR Art. 87 deadline",
        ),
        sa.Column(
            "fda_deadline_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="21 CFR 803 deadline",
        ),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('open', 'acknowledged', 'investigating', 'closed')",
            name=op.f("ck_incident_status_valid"),
        ),
        sa.ForeignKeyConstraint(
            ["model_id"], ["model.id"], name=op.f("fk_incident_model_id_model")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_incident")),
    )
    with op.batch_alter_table("incident", schema=None) as batch_op:
        batch_op.create_index(
            "uq_incident_open_dedup_key",
            ["dedup_key"],
            unique=True,
            postgresql_where=sa.text("status <> 'closed'"),
            sqlite_where=sa.text("status <> 'closed'"),
        )

    op.create_table(
        "performance_check",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("model_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "job_run_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("finding", sa.String(length=128), nullable=False),
        sa.Column("metric", sa.String(length=32), nullable=False),
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
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("estimated", sa.Boolean(), nullable=False, comment="Label-free estimate"),
        sa.Column(
            "status",
            sa.String(length=24),
            nullable=False,
            comment="ok | warning | breach | insufficient_data",
        ),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("ci_lower", sa.Float(), nullable=True),
        sa.Column("ci_upper", sa.Float(), nullable=True),
        sa.Column("n", sa.Integer(), nullable=False, comment="Cases in the metric's denominator"),
        sa.Column("labelled_fraction", sa.Float(), nullable=True),
        sa.Column("baseline_value", sa.Float(), nullable=True),
        sa.Column("alert_limit", sa.Float(), nullable=True),
        sa.Column("details", JSON_DOC, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_run_id"], ["job_run.id"], name=op.f("fk_performance_check_job_run_id_job_run")
        ),
        sa.ForeignKeyConstraint(
            ["model_id"], ["model.id"], name=op.f("fk_performance_check_model_id_model")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_performance_check")),
        sa.UniqueConstraint(
            "model_id",
            "finding",
            "metric",
            "stratum_kind",
            "stratum_value",
            "window_start",
            "window_end",
            "estimated",
            name="uq_performance_check_window",
        ),
    )
    with op.batch_alter_table("performance_check", schema=None) as batch_op:
        batch_op.create_index(
            "ix_performance_check_model_window", ["model_id", "window_end"], unique=False
        )

    op.create_table(
        "reference_set",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("model_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False, comment="clearance | rolling"),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("frozen", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"], ["model.id"], name=op.f("fk_reference_set_model_id_model")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reference_set")),
        sa.UniqueConstraint("model_id", "name", name="uq_reference_set_name"),
    )
    op.create_table(
        "alert_delivery",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "incident_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False, comment="open | resolve"),
        sa.Column(
            "status", sa.String(length=16), nullable=False, comment="pending | delivered | failed"
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("payload", JSON_DOC, nullable=False),
        sa.ForeignKeyConstraint(
            ["incident_id"], ["incident.id"], name=op.f("fk_alert_delivery_incident_id_incident")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_delivery")),
        sa.UniqueConstraint("incident_id", "channel", "kind", name="uq_alert_delivery_key"),
    )
    op.create_table(
        "drift_check",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("model_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "reference_set_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column(
            "job_run_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("detector", sa.String(length=32), nullable=False),
        sa.Column(
            "signal",
            sa.String(length=128),
            nullable=False,
            comment="What was tested, e.g. score:pneumothorax",
        ),
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
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "status", sa.String(length=24), nullable=False, comment="ok | drift | insufficient_data"
        ),
        sa.Column("statistic", sa.Float(), nullable=True),
        sa.Column("p_value", sa.Float(), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("n_reference", sa.Integer(), nullable=False),
        sa.Column("n_window", sa.Integer(), nullable=False),
        sa.Column("details", JSON_DOC, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_run_id"], ["job_run.id"], name=op.f("fk_drift_check_job_run_id_job_run")
        ),
        sa.ForeignKeyConstraint(
            ["model_id"], ["model.id"], name=op.f("fk_drift_check_model_id_model")
        ),
        sa.ForeignKeyConstraint(
            ["reference_set_id"],
            ["reference_set.id"],
            name=op.f("fk_drift_check_reference_set_id_reference_set"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_drift_check")),
        sa.UniqueConstraint(
            "model_id",
            "detector",
            "signal",
            "stratum_kind",
            "stratum_value",
            "window_start",
            "window_end",
            name="uq_drift_check_window",
        ),
    )
    with op.batch_alter_table("drift_check", schema=None) as batch_op:
        batch_op.create_index(
            "ix_drift_check_model_window", ["model_id", "window_end"], unique=False
        )

    op.create_table(
        "study",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "uid_pseudonym",
            sa.String(length=64),
            nullable=False,
            comment="HMAC of StudyInstanceUID",
        ),
        sa.Column("patient_pseudonym", sa.String(length=64), nullable=True),
        sa.Column("accession_pseudonym", sa.String(length=64), nullable=True),
        sa.Column("site_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("device_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column(
            "studied_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="Study date (or first prediction)",
        ),
        sa.Column("modality", sa.String(length=16), nullable=True),
        sa.Column("software_versions", sa.String(length=128), nullable=True),
        sa.Column("convolution_kernel", sa.String(length=64), nullable=True),
        sa.Column("slice_thickness", sa.Float(), nullable=True),
        sa.Column("kvp", sa.Float(), nullable=True),
        sa.Column("pixel_spacing", sa.Float(), nullable=True),
        sa.Column("magnetic_field_strength", sa.Float(), nullable=True),
        sa.Column("body_part", sa.String(length=64), nullable=True),
        sa.Column("view_position", sa.String(length=16), nullable=True),
        sa.Column("sex", sa.String(length=1), nullable=True),
        sa.Column("age_band", sa.String(length=8), nullable=True),
        sa.Column("has_metadata", sa.Boolean(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["device.id"], name=op.f("fk_study_device_id_device")
        ),
        sa.ForeignKeyConstraint(["site_id"], ["site.id"], name=op.f("fk_study_site_id_site")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_study")),
        sa.UniqueConstraint("uid_pseudonym", name=op.f("uq_study_uid_pseudonym")),
    )
    with op.batch_alter_table("study", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_study_device_id"), ["device_id"], unique=False)
        batch_op.create_index("ix_study_site_studied", ["site_id", "studied_at"], unique=False)

    op.create_table(
        "diagnosis",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("message_id", sa.String(length=256), nullable=False),
        sa.Column("study_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("finding", sa.String(length=128), nullable=False),
        sa.Column("present", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ingested_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["study_id"], ["study.id"], name=op.f("fk_diagnosis_study_id_study")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_diagnosis")),
        sa.UniqueConstraint("message_id", name="uq_diagnosis_message_id"),
    )
    with op.batch_alter_table("diagnosis", schema=None) as batch_op:
        batch_op.create_index("ix_diagnosis_study_finding", ["study_id", "finding"], unique=False)

    op.create_table(
        "embedding",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("study_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("extractor", sa.String(length=64), nullable=False),
        sa.Column("extractor_version", sa.String(length=32), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False, comment="float32 little-endian"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["study_id"], ["study.id"], name=op.f("fk_embedding_study_id_study")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_embedding")),
        sa.UniqueConstraint("study_id", "extractor", "extractor_version", name="uq_embedding_key"),
    )
    op.create_table(
        "incident_event",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "incident_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column(
            "drift_check_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column(
            "performance_check_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=True,
        ),
        sa.ForeignKeyConstraint(
            ["drift_check_id"],
            ["drift_check.id"],
            name=op.f("fk_incident_event_drift_check_id_drift_check"),
        ),
        sa.ForeignKeyConstraint(
            ["incident_id"], ["incident.id"], name=op.f("fk_incident_event_incident_id_incident")
        ),
        sa.ForeignKeyConstraint(
            ["performance_check_id"],
            ["performance_check.id"],
            name=op.f("fk_incident_event_performance_check_id_performance_check"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_incident_event")),
    )
    with op.batch_alter_table("incident_event", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_incident_event_incident_id"), ["incident_id"], unique=False
        )

    op.create_table(
        "prediction",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("message_id", sa.String(length=256), nullable=False),
        sa.Column("model_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("study_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("finding", sa.String(length=128), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("predicted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ingested_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("score >= 0 AND score <= 1", name=op.f("ck_prediction_score_range")),
        sa.ForeignKeyConstraint(
            ["model_id"], ["model.id"], name=op.f("fk_prediction_model_id_model")
        ),
        sa.ForeignKeyConstraint(
            ["study_id"], ["study.id"], name=op.f("fk_prediction_study_id_study")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prediction")),
        sa.UniqueConstraint("message_id", "finding", name="uq_prediction_message_finding"),
    )
    with op.batch_alter_table("prediction", schema=None) as batch_op:
        batch_op.create_index(
            "ix_prediction_model_time", ["model_id", "predicted_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_prediction_study_id"), ["study_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("prediction", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_prediction_study_id"))
        batch_op.drop_index("ix_prediction_model_time")

    op.drop_table("prediction")
    with op.batch_alter_table("incident_event", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_incident_event_incident_id"))

    op.drop_table("incident_event")
    op.drop_table("embedding")
    with op.batch_alter_table("diagnosis", schema=None) as batch_op:
        batch_op.drop_index("ix_diagnosis_study_finding")

    op.drop_table("diagnosis")
    with op.batch_alter_table("study", schema=None) as batch_op:
        batch_op.drop_index("ix_study_site_studied")
        batch_op.drop_index(batch_op.f("ix_study_device_id"))

    op.drop_table("study")
    with op.batch_alter_table("drift_check", schema=None) as batch_op:
        batch_op.drop_index("ix_drift_check_model_window")

    op.drop_table("drift_check")
    op.drop_table("alert_delivery")
    op.drop_table("reference_set")
    with op.batch_alter_table("performance_check", schema=None) as batch_op:
        batch_op.drop_index("ix_performance_check_model_window")

    op.drop_table("performance_check")
    with op.batch_alter_table("incident", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_incident_open_dedup_key",
            postgresql_where=sa.text("status <> 'closed'"),
            sqlite_where=sa.text("status <> 'closed'"),
        )

    op.drop_table("incident")
    op.drop_table("device")
    op.drop_table("clearance_baseline")
    op.drop_table("site")
    op.drop_table("model")
    op.drop_table("job_run")
    op.drop_table("dead_letter")
    op.drop_table("consumer_offset")
    op.drop_table("audit_event")
