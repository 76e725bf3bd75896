-- Read-only PostgreSQL role for Grafana (and anyone who only needs to look).
--
-- Run as the database owner or a superuser, connected to the surveillance database:
--     psql "$SURVEILLANCE_DB_URL" -v ON_ERROR_STOP=1 -f deploy/readonly_role.sql
--     psql "$SURVEILLANCE_DB_URL" -c "ALTER ROLE surveillance_grafana PASSWORD '...'"
-- It is idempotent: run it again after every 'surveillance db upgrade' so new tables
-- are covered (nothing is granted by default on tables created later).
--
-- What the role can read: every table the dashboards use. What it cannot:
--   * study: the pseudonyms of StudyInstanceUID, PatientID and AccessionNumber
--     (column-level grant below), so a dashboard user cannot link studies to patients
--     even with the pseudonym key;
--   * dead_letter.payload (the sanitised record), audit_event, consumer_offset,
--     alert_delivery, embedding, image_spool, apscheduler_jobs.
-- It cannot write: no INSERT/UPDATE/DELETE grants, and every session it opens is
-- read-only by default with a statement timeout, so a runaway panel cannot hold
-- the database.
-- Plain SQL only (no psql meta-commands), so tests can run it through a driver.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'surveillance_grafana') THEN
        CREATE ROLE surveillance_grafana LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
    END IF;
END
$$;

ALTER ROLE surveillance_grafana SET default_transaction_read_only = on;
ALTER ROLE surveillance_grafana SET statement_timeout = '30s';
ALTER ROLE surveillance_grafana CONNECTION LIMIT 20;

DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO surveillance_grafana', current_database());
END
$$;

GRANT USAGE ON SCHEMA public TO surveillance_grafana;
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM surveillance_grafana;

GRANT SELECT ON
    model,
    clearance_baseline,
    site,
    device,
    prediction,
    diagnosis,
    reference_set,
    job_run,
    drift_check,
    performance_check,
    incident,
    incident_event
TO surveillance_grafana;

GRANT SELECT (
    id, site_id, device_id, studied_at, modality, software_versions, convolution_kernel,
    slice_thickness, kvp, pixel_spacing, magnetic_field_strength, body_part, view_position,
    sex, age_band, has_metadata, received_at
) ON study TO surveillance_grafana;

GRANT SELECT (
    id, source, locator, "partition", "offset", kind, reason, payload_sha256, payload_bytes,
    received_at, replayed_at
) ON dead_letter TO surveillance_grafana;
