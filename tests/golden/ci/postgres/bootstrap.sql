-- Rendered by ccoas from the plan of stack pr-42 (ci): do not edit.
\set ON_ERROR_STOP on
BEGIN;
SET LOCAL search_path = pg_catalog, public;
SET LOCAL client_min_messages = warning;

CREATE EXTENSION IF NOT EXISTS vector WITH SCHEMA public;

-- Nobody but the roles below may connect; nobody may create objects in public by default.
REVOKE ALL ON DATABASE "app" FROM PUBLIC;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

-- The owner of the application schema and its tables: never logs in.
DO $ccoas$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'app_owner') THEN
        CREATE ROLE "app_owner" NOLOGIN;
    END IF;
END
$ccoas$;
ALTER ROLE "app_owner" WITH NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
CREATE SCHEMA IF NOT EXISTS "app" AUTHORIZATION "app_owner";
ALTER SCHEMA "app" OWNER TO "app_owner";
REVOKE ALL ON SCHEMA "app" FROM PUBLIC;

-- directus: logs in with the password in /run/secrets/postgres_directus_password.
DO $ccoas$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'directus') THEN
        CREATE ROLE "directus" LOGIN;
    END IF;
END
$ccoas$;
ALTER ROLE "directus" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT CONNECTION LIMIT 50;
-- The statement carries the password: keep it out of the server log even if it fails.
SET LOCAL log_statement = 'none';
SET LOCAL log_min_error_statement = panic;
\set pw `cat /run/secrets/postgres_directus_password`
SELECT :'pw' = '' AS ccoas_pw_missing \gset
\if :ccoas_pw_missing
DO $ccoas$ BEGIN RAISE EXCEPTION 'ccoas: the secret file /run/secrets/postgres_directus_password is missing or empty'; END $ccoas$;
\endif
ALTER ROLE "directus" PASSWORD :'pw';
\unset pw
\unset ccoas_pw_missing
SET LOCAL log_min_error_statement = error;
GRANT CONNECT, TEMPORARY ON DATABASE "app" TO "directus";
GRANT USAGE ON SCHEMA public TO "directus";
GRANT USAGE ON SCHEMA "app" TO "directus";
-- Directus keeps its system tables (directus_*) in public.
GRANT CREATE ON SCHEMA public TO "directus";

-- postgraphile: logs in with the password in /run/secrets/postgres_postgraphile_password.
DO $ccoas$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'postgraphile') THEN
        CREATE ROLE "postgraphile" LOGIN;
    END IF;
END
$ccoas$;
ALTER ROLE "postgraphile" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT CONNECTION LIMIT 50;
-- The statement carries the password: keep it out of the server log even if it fails.
SET LOCAL log_statement = 'none';
SET LOCAL log_min_error_statement = panic;
\set pw `cat /run/secrets/postgres_postgraphile_password`
SELECT :'pw' = '' AS ccoas_pw_missing \gset
\if :ccoas_pw_missing
DO $ccoas$ BEGIN RAISE EXCEPTION 'ccoas: the secret file /run/secrets/postgres_postgraphile_password is missing or empty'; END $ccoas$;
\endif
ALTER ROLE "postgraphile" PASSWORD :'pw';
\unset pw
\unset ccoas_pw_missing
SET LOCAL log_min_error_statement = error;
GRANT CONNECT, TEMPORARY ON DATABASE "app" TO "postgraphile";
GRANT USAGE ON SCHEMA public TO "postgraphile";
GRANT USAGE ON SCHEMA "app" TO "postgraphile";

-- app.notes: owner-only
CREATE TABLE IF NOT EXISTS "app"."notes" (
    "id" uuid NOT NULL DEFAULT gen_random_uuid(),
    "owner_id" uuid NOT NULL,
    "body" text,
    "embedding" vector(384),
    PRIMARY KEY ("id")
);
ALTER TABLE "app"."notes" ADD COLUMN IF NOT EXISTS "owner_id" uuid NOT NULL;
ALTER TABLE "app"."notes" ADD COLUMN IF NOT EXISTS "body" text;
ALTER TABLE "app"."notes" ADD COLUMN IF NOT EXISTS "embedding" vector(384);
ALTER TABLE "app"."notes" OWNER TO "app_owner";
ALTER TABLE "app"."notes" ENABLE ROW LEVEL SECURITY;
ALTER TABLE "app"."notes" FORCE ROW LEVEL SECURITY;
REVOKE ALL ON "app"."notes" FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON "app"."notes" TO "directus", "postgraphile";
DO $ccoas$
DECLARE
    policy record;
BEGIN
    FOR policy IN
        SELECT policyname FROM pg_catalog.pg_policies
        WHERE schemaname = 'app' AND tablename = 'notes' AND policyname LIKE 'ccoas\_%'
    LOOP
        EXECUTE format('DROP POLICY %I ON %I.%I', policy.policyname, 'app', 'notes');
    END LOOP;
END
$ccoas$;
CREATE POLICY ccoas_owner_only ON "app"."notes"
    USING ("owner_id" = NULLIF(current_setting('ccoas.user_id', true), '')::uuid)
    WITH CHECK ("owner_id" = NULLIF(current_setting('ccoas.user_id', true), '')::uuid);


-- ============================================================================================
-- Change feed: every change to an application table is logged and announced.
--
-- A deferred constraint trigger per table runs at commit time. It takes one transaction-level
-- advisory lock (held until the commit ends, so sequence numbers are handed out in commit
-- order: a reader that has seen seq N has seen every entry below N), appends
-- (schema, table, op, key) to ccoas.change_log and NOTIFYs the table's channel with
-- {"schema", "table", "op", "key", "seq"}: never a row value. A listener that was away calls
-- ccoas.changes_since(its last seq) and gets exactly what it missed, each row re-read
-- with its own row-level security; a watermark older than the retained log raises SQLSTATE
-- CC001 (resync). Entries go when older than 168 h or
-- 100000 entries old. Functions pin search_path and qualify every name.
-- ============================================================================================
CREATE SCHEMA IF NOT EXISTS ccoas;
GRANT USAGE ON SCHEMA ccoas TO "app_owner", "directus", "postgraphile";

CREATE TABLE IF NOT EXISTS ccoas.change_log (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    committed_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    schema_name text NOT NULL,
    table_name text NOT NULL,
    op text NOT NULL CHECK (op IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')),
    key jsonb
);
CREATE INDEX IF NOT EXISTS change_log_committed_at ON ccoas.change_log (committed_at);
-- One row: every seq up to pruned_through has been pruned (0: nothing yet).
CREATE TABLE IF NOT EXISTS ccoas.change_log_horizon (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    pruned_through bigint NOT NULL DEFAULT 0
);
INSERT INTO ccoas.change_log_horizon (singleton) VALUES (true) ON CONFLICT (singleton) DO NOTHING;
ALTER TABLE ccoas.change_log OWNER TO "app_owner";
ALTER TABLE ccoas.change_log_horizon OWNER TO "app_owner";
REVOKE ALL ON ccoas.change_log, ccoas.change_log_horizon FROM PUBLIC;
-- Readers see what LISTEN would tell them anyway (schema, table, op, key, seq); rows are
-- re-read through their own row-level security.
GRANT SELECT ON ccoas.change_log, ccoas.change_log_horizon TO "directus", "postgraphile";

-- Drops entries older than the retention (age or count) and moves the horizon past them.
CREATE OR REPLACE FUNCTION ccoas.prune_changes() RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $ccoas$
DECLARE
    newest bigint;
    cut bigint;
    removed bigint;
BEGIN
    SELECT pg_catalog.max(l.seq) INTO newest FROM ccoas.change_log AS l;
    IF newest IS NULL THEN
        RETURN 0;
    END IF;
    SELECT pg_catalog.max(l.seq) INTO cut FROM ccoas.change_log AS l
        WHERE l.seq <= newest - 100000
           OR l.committed_at < pg_catalog.clock_timestamp() - pg_catalog.make_interval(hours => 168);
    IF cut IS NULL THEN
        RETURN 0;
    END IF;
    DELETE FROM ccoas.change_log AS l WHERE l.seq <= cut;
    GET DIAGNOSTICS removed = ROW_COUNT;
    UPDATE ccoas.change_log_horizon AS h SET pruned_through = GREATEST(h.pruned_through, cut);
    RETURN removed;
END
$ccoas$;
ALTER FUNCTION ccoas.prune_changes() OWNER TO "app_owner";
REVOKE ALL ON FUNCTION ccoas.prune_changes() FROM PUBLIC;

-- The trigger: TG_ARGV[0] is the channel, the others the primary key columns.
CREATE OR REPLACE FUNCTION ccoas.record_change() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $ccoas$
DECLARE
    old_key jsonb;
    new_key jsonb;
    change record;
    entry bigint;
    payload_key jsonb;
BEGIN
    IF TG_OP <> 'TRUNCATE' THEN
        IF TG_OP <> 'INSERT' THEN
            SELECT pg_catalog.jsonb_object_agg(k.name, pg_catalog.to_jsonb(OLD) -> k.name) INTO old_key
                FROM pg_catalog.unnest(TG_ARGV[1:]) AS k(name);
        END IF;
        IF TG_OP <> 'DELETE' THEN
            SELECT pg_catalog.jsonb_object_agg(k.name, pg_catalog.to_jsonb(NEW) -> k.name) INTO new_key
                FROM pg_catalog.unnest(TG_ARGV[1:]) AS k(name);
        END IF;
    END IF;
    -- Held until the commit ends: seqs are handed out in commit order.
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('ccoas.change_log'));
    FOR change IN
        SELECT c.op, c.key FROM (VALUES
            -- an UPDATE that moves the key is a DELETE of the old key and an INSERT of the new
            (1, CASE WHEN TG_OP = 'UPDATE' AND old_key IS DISTINCT FROM new_key THEN 'DELETE' WHEN TG_OP = 'DELETE' THEN 'DELETE' END, old_key),
            (2, CASE WHEN TG_OP = 'UPDATE' AND old_key IS DISTINCT FROM new_key THEN 'INSERT' WHEN TG_OP IN ('INSERT', 'UPDATE', 'TRUNCATE') THEN TG_OP END, new_key)
        ) AS c(step, op, key)
        WHERE c.op IS NOT NULL
        ORDER BY c.step
    LOOP
        INSERT INTO ccoas.change_log (schema_name, table_name, op, key)
            VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, change.op, change.key)
            RETURNING seq INTO entry;
        payload_key := CASE WHEN pg_catalog.octet_length(change.key::text) <= 1024 THEN change.key END;
        PERFORM pg_catalog.pg_notify(TG_ARGV[0], pg_catalog.jsonb_build_object(
            'schema', TG_TABLE_SCHEMA, 'table', TG_TABLE_NAME, 'op', change.op, 'key', payload_key, 'seq', entry
        )::text);
        IF entry % 64 = 0 THEN
            PERFORM ccoas.prune_changes();
        END IF;
    END LOOP;
    RETURN NULL;
END
$ccoas$;
ALTER FUNCTION ccoas.record_change() OWNER TO "app_owner";
REVOKE ALL ON FUNCTION ccoas.record_change() FROM PUBLIC;

-- What came after a watermark, oldest first, at most max_entries. "row" is the row as the
-- caller may see it now (its own row-level security), null when deleted or not visible.
CREATE OR REPLACE FUNCTION ccoas.changes_since(after_seq bigint, max_entries integer DEFAULT 1000)
    RETURNS TABLE (seq bigint, schema_name text, table_name text, op text, key jsonb, "row" jsonb)
    LANGUAGE plpgsql STABLE SECURITY INVOKER
    SET search_path = pg_catalog, pg_temp
AS $ccoas$
DECLARE
    horizon bigint;
    newest bigint;
    entry record;
    matches text;
BEGIN
    SELECT h.pruned_through INTO horizon FROM ccoas.change_log_horizon AS h;
    SELECT GREATEST(pg_catalog.max(l.seq), horizon) INTO newest FROM ccoas.change_log AS l;
    IF after_seq IS NULL OR after_seq < horizon OR after_seq > newest THEN
        RAISE EXCEPTION 'ccoas: resync: watermark % is outside the retained change log (%..%)', after_seq, horizon, newest
            USING ERRCODE = 'CC001',
                  HINT = 'reload the current state, then resume from the newest seq it saw';
    END IF;
    FOR entry IN
        SELECT l.seq, l.schema_name, l.table_name, l.op, l.key FROM ccoas.change_log AS l
        WHERE l.seq > after_seq ORDER BY l.seq LIMIT GREATEST(max_entries, 1)
    LOOP
        seq := entry.seq; schema_name := entry.schema_name; table_name := entry.table_name;
        op := entry.op; key := entry.key; "row" := NULL;
        IF entry.op IN ('INSERT', 'UPDATE') THEN
            SELECT pg_catalog.string_agg(pg_catalog.format('t.%I IS NOT DISTINCT FROM k.%I', c, c), ' AND ')
                INTO matches FROM pg_catalog.jsonb_object_keys(entry.key) AS c;
            EXECUTE pg_catalog.format(
                'SELECT pg_catalog.to_jsonb(t) FROM %1$I.%2$I AS t, pg_catalog.jsonb_populate_record(NULL::%1$I.%2$I, $1) AS k WHERE %3$s',
                entry.schema_name, entry.table_name, matches
            ) INTO "row" USING entry.key;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$ccoas$;
ALTER FUNCTION ccoas.changes_since(bigint, integer) OWNER TO "app_owner";
REVOKE ALL ON FUNCTION ccoas.changes_since(bigint, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ccoas.changes_since(bigint, integer) TO "directus", "postgraphile";

-- app.notes → channel ccoas_app_notes
DROP TRIGGER IF EXISTS ccoas_change ON "app"."notes";
CREATE CONSTRAINT TRIGGER ccoas_change AFTER INSERT OR UPDATE OR DELETE ON "app"."notes"
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ccoas.record_change('ccoas_app_notes', 'id');
DROP TRIGGER IF EXISTS ccoas_change_truncate ON "app"."notes";
CREATE TRIGGER ccoas_change_truncate AFTER TRUNCATE ON "app"."notes"
    FOR EACH STATEMENT EXECUTE FUNCTION ccoas.record_change('ccoas_app_notes', 'id');


-- ============================================================================================
-- The GraphQL plane's request roles. PostGraphile logs in as postgraphile and runs every
-- request as one of these NOLOGIN roles (SET LOCAL role): postgraphile_user with a verified
-- token (its claims as ccoas.* settings, so row-level security decides every row), and
-- postgraphile_anonymous without one, which may only read the public-read tables.
-- ============================================================================================
DO $ccoas$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'postgraphile_user') THEN
        CREATE ROLE "postgraphile_user" NOLOGIN;
    END IF;
END
$ccoas$;
ALTER ROLE "postgraphile_user" WITH NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
GRANT "postgraphile_user" TO "postgraphile" WITH INHERIT FALSE, SET TRUE;
GRANT USAGE ON SCHEMA "app" TO "postgraphile_user";
DO $ccoas$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'postgraphile_anonymous') THEN
        CREATE ROLE "postgraphile_anonymous" NOLOGIN;
    END IF;
END
$ccoas$;
ALTER ROLE "postgraphile_anonymous" WITH NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
GRANT "postgraphile_anonymous" TO "postgraphile" WITH INHERIT FALSE, SET TRUE;
GRANT USAGE ON SCHEMA "app" TO "postgraphile_anonymous";
REVOKE ALL ON "app"."notes" FROM "postgraphile_user", "postgraphile_anonymous";
GRANT SELECT, INSERT, UPDATE, DELETE ON "app"."notes" TO "postgraphile_user";

COMMIT;
