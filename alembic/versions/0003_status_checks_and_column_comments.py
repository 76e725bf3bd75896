"""Status CHECK constraints and a comment on every column.

Every status/kind column gets a CHECK constraint built from its StrEnum in
:mod:`surveillance.core.statuses` (values copied here: a migration never imports
the models). Column comments document the schema in the database itself
(``\\d+ table`` in psql). Both are PostgreSQL-only: SQLite (the embedded demo) has no
column comments, and adding a CHECK there means rebuilding each table; the demo
relies on the same enums in the code.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (constraint name, table, condition)
CHECKS: list[tuple[str, str, str]] = [
    (
        "ck_job_run_status_valid",
        "job_run",
        "status IN ('running', 'succeeded', 'failed', 'abandoned')",
    ),
    (
        "ck_incident_vigilance_class_valid",
        "incident",
        "vigilance_class IN ('assessment_pending', 'not_reportable', 'serious_incident', 'serious_public_health_threat', 'death_or_serious_deterioration')",
    ),
    ("ck_incident_signal_kind_valid", "incident", "signal_kind IN ('drift', 'performance')"),
    ("ck_incident_severity_valid", "incident", "severity IN ('low', 'medium', 'high', 'critical')"),
    (
        "ck_performance_check_status_valid",
        "performance_check",
        "status IN ('ok', 'warning', 'breach', 'insufficient_data')",
    ),
    ("ck_reference_set_kind_valid", "reference_set", "kind IN ('clearance', 'rolling')"),
    ("ck_alert_delivery_kind_valid", "alert_delivery", "kind IN ('open', 'resolve')"),
    (
        "ck_alert_delivery_status_valid",
        "alert_delivery",
        "status IN ('pending', 'delivered', 'failed', 'cancelled')",
    ),
    (
        "ck_drift_check_status_valid",
        "drift_check",
        "status IN ('ok', 'drift', 'insufficient_data')",
    ),
    (
        "ck_diagnosis_source_valid",
        "diagnosis",
        "source IN ('pathology', 'consensus', 'report', 'follow-up')",
    ),
]

# (table, column) -> (comment after, comment before)
COMMENTS: dict[tuple[str, str], tuple[str | None, str | None]] = {
    ("apscheduler_jobs", "id"): ("APScheduler job id", None),
    ("apscheduler_jobs", "next_run_time"): (
        "Next run as a POSIX timestamp (APScheduler's format)",
        None,
    ),
    ("apscheduler_jobs", "job_state"): ("Pickled job state (APScheduler's format)", None),
    ("audit_event", "id"): ("Surrogate primary key", None),
    ("audit_event", "at"): ("When the action happened (UTC)", None),
    ("audit_event", "actor"): ("Who acted: --by name, or a service (scheduler, ingest, ...)", None),
    ("audit_event", "action"): ("What happened, e.g. incident.closed", None),
    ("audit_event", "entity"): ("Kind of thing acted on, e.g. incident", None),
    ("audit_event", "entity_id"): ("Id of the thing acted on", None),
    ("audit_event", "detail"): ("What changed (JSON, no PHI)", None),
    ("audit_event", "prev_hash"): ("Hash of the previous event (chain link)", None),
    ("audit_event", "hash"): ("SHA-256 over prev_hash and this row's canonical JSON", None),
    ("consumer_offset", "consumer_group"): ("Kafka consumer group", None),
    ("consumer_offset", "topic"): ("Kafka topic", None),
    ("consumer_offset", "partition"): ("Kafka partition (-1 for files)", None),
    ("consumer_offset", "next_offset"): (
        "Next offset to read, committed with the rows it covers",
        None,
    ),
    ("consumer_offset", "updated_at"): ("When the row last changed (UTC)", None),
    ("dead_letter", "id"): ("Surrogate primary key", None),
    ("dead_letter", "source"): ("kafka | file | dicom | synthetic", None),
    ("dead_letter", "partition"): ("Kafka partition (-1 for files)", None),
    ("dead_letter", "offset"): ("Kafka offset or file line number (-1 when none)", None),
    ("dead_letter", "kind"): (
        "Event kind when known (prediction, dicom-metadata, diagnosis)",
        None,
    ),
    ("dead_letter", "reason"): ("Why the record was rejected, in words", None),
    ("dead_letter", "payload_sha256"): (
        "SHA-256 of the original payload (to match a resend)",
        None,
    ),
    ("dead_letter", "payload_bytes"): ("Size of the original payload in bytes", None),
    ("dead_letter", "received_at"): ("When the row was received (UTC)", None),
    ("dead_letter", "replayed_at"): ("When the record was replayed successfully (UTC)", None),
    ("job_run", "id"): ("Surrogate primary key", None),
    ("job_run", "job_id"): ("Scheduler job id, e.g. checks or embed", None),
    ("job_run", "scheduled_for"): ("The scheduled fire time this run stands for (UTC)", None),
    ("job_run", "started_at"): ("When the run started (UTC)", None),
    ("job_run", "finished_at"): ("When the run finished (UTC); NULL while running", None),
    ("job_run", "status"): (
        "running | succeeded | failed | abandoned",
        "running | succeeded | failed",
    ),
    ("job_run", "error"): ("Error of a failed or abandoned run", None),
    ("model", "id"): ("Surrogate primary key", None),
    ("model", "registered_at"): ("When the model was first registered (UTC)", None),
    ("site", "id"): ("Surrogate primary key", None),
    ("clearance_baseline", "id"): ("Surrogate primary key", None),
    ("clearance_baseline", "model_id"): ("The registered model (model.id)", None),
    ("clearance_baseline", "finding"): ("Finding the figure is about", None),
    ("clearance_baseline", "ci_lower"): ("Lower bound of the confidence interval", None),
    ("clearance_baseline", "ci_upper"): ("Upper bound of the confidence interval", None),
    ("clearance_baseline", "updated_at"): ("When the row last changed (UTC)", None),
    ("device", "id"): ("Surrogate primary key", None),
    ("device", "site_id"): ("The site (site.id)", None),
    ("device", "manufacturer"): ("DICOM Manufacturer", None),
    ("device", "model_name"): ("DICOM ManufacturerModelName", None),
    ("incident", "id"): ("Surrogate primary key", None),
    ("incident", "dedup_key"): ("model|kind|signal|stratum: one open incident per key", None),
    ("incident", "model_id"): ("The registered model (model.id)", None),
    ("incident", "signal"): (
        "Signal or metric that opened it, e.g. score:pneumothorax or sensitivity",
        None,
    ),
    ("incident", "status"): ("open | acknowledged | investigating | closed", None),
    ("incident", "title"): ("One-line title for lists and pages", None),
    ("incident", "opened_at"): ("When the incident was opened (UTC)", None),
    ("incident", "last_evidence_at"): ("End of the latest window that supports it (UTC)", None),
    ("incident", "acknowledged_at"): ("When on-call acknowledged it (UTC)", None),
    ("incident", "acknowledged_by"): ("Who acknowledged it", None),
    ("incident", "closed_at"): ("When it was closed (UTC)", None),
    ("incident", "resolution"): (
        "What was found and done (free text written by staff, no PHI)",
        None,
    ),
    ("incident", "capa_reference"): ("CAPA record in the QMS, if any", None),
    ("incident", "remedial_action"): (
        "Remedial action needed to prevent harm (FDA 5-day rule)",
        None,
    ),
    ("incident", "reported_at"): ("When it was reported to an authority (UTC)", None),
    ("performance_check", "id"): ("Surrogate primary key", None),
    ("performance_check", "model_id"): ("The registered model (model.id)", None),
    ("performance_check", "job_run_id"): (
        "The job run that produced this row (job_run.id); NULL when ad hoc",
        None,
    ),
    ("performance_check", "finding"): (
        "Finding name as registered with the model, e.g. pneumothorax",
        None,
    ),
    ("performance_check", "metric"): ("Metric key (surveillance.core.metrics)", None),
    ("performance_check", "window_start"): ("Start of the judged window, inclusive (UTC)", None),
    ("performance_check", "window_end"): ("End of the judged window, exclusive (UTC)", None),
    ("performance_check", "value"): ("Live (or estimated) value in the window", None),
    ("performance_check", "ci_lower"): ("Lower bound of the confidence interval", None),
    ("performance_check", "ci_upper"): ("Upper bound of the confidence interval", None),
    ("performance_check", "labelled_fraction"): (
        "Share of the window's cases with a confirmed label",
        None,
    ),
    ("performance_check", "baseline_value"): ("Clearance value it is compared with", None),
    ("performance_check", "alert_limit"): ("Limit that decides a breach", None),
    ("performance_check", "details"): ("Detector- or metric-specific extras (JSON, no PHI)", None),
    ("performance_check", "created_at"): ("When the row was written (UTC)", None),
    ("reference_set", "id"): ("Surrogate primary key", None),
    ("reference_set", "model_id"): ("The registered model (model.id)", None),
    ("reference_set", "name"): ("Reference set name, unique per model", None),
    ("reference_set", "period_start"): ("Start of the reference period (UTC)", None),
    ("reference_set", "period_end"): ("End of the reference period (UTC)", None),
    ("reference_set", "frozen"): ("Never changes once created", None),
    ("reference_set", "created_at"): ("When the row was written (UTC)", None),
    ("alert_delivery", "id"): ("Surrogate primary key", None),
    ("alert_delivery", "incident_id"): ("The incident (incident.id)", None),
    ("alert_delivery", "channel"): (
        "Configured channel name (webhook, email, alertmanager, ...)",
        None,
    ),
    ("alert_delivery", "status"): (
        "pending | delivered | failed | cancelled",
        "pending | delivered | failed",
    ),
    ("alert_delivery", "attempts"): ("Attempts so far", None),
    ("alert_delivery", "next_attempt_at"): (
        "When the next attempt is due (UTC); NULL when done",
        None,
    ),
    ("alert_delivery", "delivered_at"): ("When it was delivered (UTC)", None),
    ("alert_delivery", "last_error"): ("Error of the last failed attempt", None),
    ("alert_delivery", "payload"): ("Message as sent (JSON, no PHI)", None),
    ("drift_check", "id"): ("Surrogate primary key", None),
    ("drift_check", "model_id"): ("The registered model (model.id)", None),
    ("drift_check", "reference_set_id"): ("Reference set the window was compared with", None),
    ("drift_check", "job_run_id"): (
        "The job run that produced this row (job_run.id); NULL when ad hoc",
        None,
    ),
    ("drift_check", "detector"): ("Detector key: ks, chi2, mmd, ...", None),
    ("drift_check", "window_start"): ("Start of the judged window, inclusive (UTC)", None),
    ("drift_check", "window_end"): ("End of the judged window, exclusive (UTC)", None),
    ("drift_check", "statistic"): ("Test statistic", None),
    ("drift_check", "p_value"): ("p-value of the test", None),
    ("drift_check", "threshold"): ("Significance level the p-value is compared with", None),
    ("drift_check", "n_reference"): ("Cases in the reference sample", None),
    ("drift_check", "n_window"): ("Cases in the window", None),
    ("drift_check", "details"): ("Detector- or metric-specific extras (JSON, no PHI)", None),
    ("drift_check", "created_at"): ("When the row was written (UTC)", None),
    ("study", "id"): ("Surrogate primary key", None),
    ("study", "patient_pseudonym"): ("HMAC of PatientID", None),
    ("study", "accession_pseudonym"): ("HMAC of AccessionNumber", None),
    ("study", "site_id"): ("The site (site.id)", None),
    ("study", "device_id"): ("The scanner (device.id)", None),
    ("study", "modality"): ("DICOM Modality", None),
    ("study", "software_versions"): ("DICOM SoftwareVersions", None),
    ("study", "convolution_kernel"): ("DICOM ConvolutionKernel", None),
    ("study", "slice_thickness"): ("DICOM SliceThickness (mm)", None),
    ("study", "kvp"): ("DICOM KVP (kV)", None),
    ("study", "pixel_spacing"): ("DICOM PixelSpacing, row spacing (mm)", None),
    ("study", "magnetic_field_strength"): ("DICOM MagneticFieldStrength (T)", None),
    ("study", "body_part"): ("DICOM BodyPartExamined", None),
    ("study", "view_position"): ("DICOM ViewPosition", None),
    ("study", "sex"): ("PatientSex (M, F, O)", None),
    ("study", "age_band"): ("Age band from PatientAge/BirthDate (never the date itself)", None),
    ("study", "has_metadata"): ("A DICOM header has been received for the study", None),
    ("study", "received_at"): ("When the row was received (UTC)", None),
    ("diagnosis", "id"): ("Surrogate primary key", None),
    ("diagnosis", "message_id"): ("Producer's message id: the idempotency key", None),
    ("diagnosis", "study_id"): (
        "The study (study.id); its identifiers exist only as pseudonyms",
        None,
    ),
    ("diagnosis", "finding"): (
        "Finding name as registered with the model, e.g. pneumothorax",
        None,
    ),
    ("diagnosis", "present"): ("Finding confirmed present (true) or absent (false)", None),
    ("diagnosis", "source"): ("pathology | consensus | report | follow-up", None),
    ("diagnosis", "confirmed_at"): ("When the diagnosis was confirmed (UTC)", None),
    ("diagnosis", "ingested_at"): ("When the row was ingested (UTC)", None),
    ("embedding", "id"): ("Surrogate primary key", None),
    ("embedding", "study_id"): (
        "The study (study.id); its identifiers exist only as pseudonyms",
        None,
    ),
    ("embedding", "extractor"): ("Extractor key, e.g. conv-ae", None),
    ("embedding", "extractor_version"): ("Extractor version (weights or seed)", None),
    ("embedding", "dim"): ("Vector length", None),
    ("embedding", "created_at"): ("When the row was written (UTC)", None),
    ("image_spool", "id"): ("Surrogate primary key", None),
    ("image_spool", "study_id"): (
        "The study (study.id); its identifiers exist only as pseudonyms",
        None,
    ),
    ("image_spool", "size_bytes"): ("File size in bytes", None),
    ("image_spool", "transfer_syntax"): ("Transfer syntax UID of the stored file", None),
    ("image_spool", "received_at"): ("When the row was received (UTC)", None),
    ("image_spool", "claimed_by"): ("Worker that holds the claim", None),
    ("image_spool", "claimed_at"): ("When the claim was taken (UTC)", None),
    ("image_spool", "embedded_at"): ("When it was embedded (UTC)", None),
    ("incident_event", "id"): ("Surrogate primary key", None),
    ("incident_event", "incident_id"): ("The incident (incident.id)", None),
    ("incident_event", "at"): ("When it happened (UTC)", None),
    ("incident_event", "kind"): (
        "opened | evidence | acknowledged | investigating | assessed | closed",
        None,
    ),
    ("incident_event", "actor"): ("Who acted", None),
    ("incident_event", "note"): ("Note written by the actor (no PHI)", None),
    ("incident_event", "drift_check_id"): ("Drift check added as evidence", None),
    ("incident_event", "performance_check_id"): ("Performance check added as evidence", None),
    ("prediction", "id"): ("Surrogate primary key", None),
    ("prediction", "message_id"): ("Producer's message id: the idempotency key", None),
    ("prediction", "model_id"): ("The registered model (model.id)", None),
    ("prediction", "model_version"): ("Model version that produced the score", None),
    ("prediction", "study_id"): (
        "The study (study.id); its identifiers exist only as pseudonyms",
        None,
    ),
    ("prediction", "finding"): (
        "Finding name as registered with the model, e.g. pneumothorax",
        None,
    ),
    ("prediction", "score"): ("Score of the finding in [0, 1]", None),
    ("prediction", "predicted_at"): ("When the model ran (UTC)", None),
    ("prediction", "ingested_at"): ("When the row was ingested (UTC)", None),
}


def _comment(table: str, column: str, text: str | None) -> None:
    value = "NULL" if text is None else "'" + text.replace("'", "''") + "'"
    op.execute(f'COMMENT ON COLUMN {table}."{column}" IS {value}')


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, table, condition in CHECKS:
        op.create_check_constraint(op.f(name), table, condition)
    for (table, column), (after, _before) in COMMENTS.items():
        _comment(table, column, after)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for (table, column), (_after, before) in COMMENTS.items():
        _comment(table, column, before)
    for name, table, _condition in reversed(CHECKS):
        op.drop_constraint(op.f(name), table, type_="check")
