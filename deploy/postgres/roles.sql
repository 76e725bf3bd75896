-- Who may do what: PostgreSQL roles and grants that enforce it (21 CFR 11.10(d)/(g)).
--
-- Run as the database owner (the role that ran 'surveillance db upgrade') or a
-- superuser, connected to the surveillance database, after every upgrade:
--     psql "$SURVEILLANCE_DB_URL" -v ON_ERROR_STOP=1 -f deploy/postgres/roles.sql
-- It is idempotent. It creates four group roles (NOLOGIN); give people and services
-- their own login roles in them, so the audit log's db_user names a person:
--     CREATE ROLE alice LOGIN PASSWORD '...' IN ROLE surveillance_oncall;
--     CREATE ROLE qm_bob LOGIN PASSWORD '...' IN ROLE surveillance_quality;
--     CREATE ROLE daemon LOGIN PASSWORD '...' IN ROLE surveillance_daemon;
--
--   surveillance_daemon   the daemon, ingest, checks, alerts: reads and writes every table
--   surveillance_oncall   on-call: reads everything; may acknowledge and investigate
--                         incidents (incident.status/acknowledged_*, a timeline row, an
--                         audit event of those two actions) and nothing else
--   surveillance_quality  quality: reads everything; may assess, close, report to an
--                         authority, write PMS reports and Article 72 exports (any audited
--                         action), never delete
--   surveillance_grafana  read-only, for the dashboards: deploy/readonly_role.sql
--
-- Enforced by the database, whatever '--by' says: column grants on incident, and
-- row-level security on incident (on-call can never set a closed status or touch a
-- closed incident) and audit_event (each role may append only the actions it is
-- allowed; the export and report commands append theirs, so on-call's attempt fails).
-- Every audit event records current_user (audit_event.db_user) beside --by.
-- The owner of the tables bypasses row-level security (not FORCEd): run migrations
-- as the owner, everything else as a member of one of the roles above.
-- SQLite (the demo) has no roles: it is single-user.
-- Plain SQL only (no psql meta-commands), so tests can run it through a driver.

DO $$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY['surveillance_daemon', 'surveillance_oncall',
                                'surveillance_quality'] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = name) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE', name);
        END IF;
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), name);
    END LOOP;
END
$$;

GRANT USAGE ON SCHEMA public TO surveillance_daemon, surveillance_oncall, surveillance_quality;

-- everyone in these roles reads everything (the CLI lists, shows and exports)
GRANT SELECT ON ALL TABLES IN SCHEMA public
    TO surveillance_daemon, surveillance_oncall, surveillance_quality;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public
    TO surveillance_daemon, surveillance_oncall, surveillance_quality;

-- the daemon writes everything
GRANT INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO surveillance_daemon;

-- quality: adds and changes, never deletes
REVOKE DELETE ON ALL TABLES IN SCHEMA public FROM surveillance_quality;
GRANT INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO surveillance_quality;

-- on-call: acknowledge and investigate only
REVOKE INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public FROM surveillance_oncall;
GRANT UPDATE (status, acknowledged_at, acknowledged_by) ON incident TO surveillance_oncall;
GRANT INSERT ON incident_event, audit_event TO surveillance_oncall;

-- tables created later by the owner get the same table-wide grants
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT SELECT ON TABLES TO surveillance_daemon, surveillance_oncall, surveillance_quality;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT INSERT, UPDATE, DELETE ON TABLES TO surveillance_daemon;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT INSERT, UPDATE ON TABLES TO surveillance_quality;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES
    TO surveillance_daemon, surveillance_oncall, surveillance_quality;

-- row-level security: incident
ALTER TABLE incident ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS incident_read ON incident;
CREATE POLICY incident_read ON incident FOR SELECT TO PUBLIC USING (true);
DROP POLICY IF EXISTS incident_write ON incident;
CREATE POLICY incident_write ON incident FOR ALL
    TO surveillance_daemon, surveillance_quality USING (true) WITH CHECK (true);
DROP POLICY IF EXISTS incident_oncall ON incident;
CREATE POLICY incident_oncall ON incident FOR UPDATE TO surveillance_oncall
    USING (status <> 'closed')
    WITH CHECK (status IN ('open', 'acknowledged', 'investigating'));

-- row-level security: audit_event (append-only for everyone but the owner)
REVOKE UPDATE, DELETE ON audit_event FROM surveillance_daemon, surveillance_quality;
ALTER TABLE audit_event ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS audit_read ON audit_event;
CREATE POLICY audit_read ON audit_event FOR SELECT TO PUBLIC USING (true);
DROP POLICY IF EXISTS audit_append ON audit_event;
CREATE POLICY audit_append ON audit_event FOR INSERT
    TO surveillance_daemon, surveillance_quality WITH CHECK (db_user = current_user);
DROP POLICY IF EXISTS audit_append_oncall ON audit_event;
CREATE POLICY audit_append_oncall ON audit_event FOR INSERT TO surveillance_oncall
    WITH CHECK (
        db_user = current_user
        AND action IN ('incident.acknowledged', 'incident.investigating')
    );

-- partition maintenance (migration 0010): the daemon creates monthly partitions and
-- drops expired ones through two SECURITY DEFINER functions, never as table owner
DO $$
BEGIN
    IF to_regprocedure('surveillance_ensure_partitions(text, timestamptz, timestamptz)')
            IS NOT NULL THEN
        GRANT EXECUTE ON FUNCTION
            surveillance_ensure_partitions(text, timestamptz, timestamptz),
            surveillance_drop_partitions(text, timestamptz)
        TO surveillance_daemon;
    END IF;
END
$$;
