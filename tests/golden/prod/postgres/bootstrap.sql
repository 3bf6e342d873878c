-- Rendered by ccoas from the plan of stack prod (prod): do not edit.
\set ON_ERROR_STOP on
BEGIN;

-- 1. Session. Nothing an app role can create is on the search path of this superuser session.
SET LOCAL search_path = pg_catalog, pg_temp;
SET LOCAL client_min_messages = warning;

-- 2. The database and public. Nobody but the roles below may connect; nobody but the
--    database owner may create schemas, and nobody may create in public.
CREATE EXTENSION IF NOT EXISTS vector WITH SCHEMA public;
REVOKE ALL ON DATABASE "app" FROM PUBLIC;
DO $ccoas$
DECLARE
    grant_ record;
BEGIN
    FOR grant_ IN
        SELECT 'DATABASE' AS kind, d.datname AS object, a.grantee::pg_catalog.regrole::pg_catalog.text AS grantee
        FROM pg_catalog.pg_database AS d, pg_catalog.aclexplode(d.datacl) AS a
        WHERE d.datname = 'app' AND a.privilege_type = 'CREATE' AND a.grantee <> d.datdba AND a.grantee <> 0
        UNION ALL
        SELECT 'SCHEMA', n.nspname, a.grantee::pg_catalog.regrole::pg_catalog.text
        FROM pg_catalog.pg_namespace AS n, pg_catalog.aclexplode(n.nspacl) AS a
        WHERE n.nspname IN ('public', 'ccoas', 'app') AND a.privilege_type = 'CREATE' AND a.grantee <> n.nspowner AND a.grantee <> 0
    LOOP
        RAISE WARNING 'ccoas: revoking CREATE on % % from %', pg_catalog.lower(grant_.kind), grant_.object, grant_.grantee;
        EXECUTE pg_catalog.format('REVOKE CREATE ON %s %I FROM %s', grant_.kind, grant_.object, grant_.grantee);
    END LOOP;
END
$ccoas$;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

-- 3. Roles. The owner of the application schema and its tables never logs in; each app
--    role logs in with its own password and holds no membership in any role.
DO $ccoas$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'app_owner') THEN
        CREATE ROLE "app_owner" NOLOGIN;
    END IF;
END
$ccoas$;
ALTER ROLE "app_owner" WITH NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;

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

-- hasura: logs in with the password in /run/secrets/postgres_hasura_password.
DO $ccoas$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'hasura') THEN
        CREATE ROLE "hasura" LOGIN;
    END IF;
END
$ccoas$;
ALTER ROLE "hasura" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT CONNECTION LIMIT 50;
-- The statement carries the password: keep it out of the server log even if it fails.
SET LOCAL log_statement = 'none';
SET LOCAL log_min_error_statement = panic;
\set pw `cat /run/secrets/postgres_hasura_password`
SELECT :'pw' = '' AS ccoas_pw_missing \gset
\if :ccoas_pw_missing
DO $ccoas$ BEGIN RAISE EXCEPTION 'ccoas: the secret file /run/secrets/postgres_hasura_password is missing or empty'; END $ccoas$;
\endif
ALTER ROLE "hasura" PASSWORD :'pw';
\unset pw
\unset ccoas_pw_missing
SET LOCAL log_min_error_statement = error;
GRANT CONNECT, TEMPORARY ON DATABASE "app" TO "hasura";
GRANT USAGE ON SCHEMA public TO "hasura";

-- monitoring: logs in with the password in /run/secrets/postgres_monitoring_password.
DO $ccoas$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'monitoring') THEN
        CREATE ROLE "monitoring" LOGIN;
    END IF;
END
$ccoas$;
ALTER ROLE "monitoring" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT CONNECTION LIMIT 50;
-- The statement carries the password: keep it out of the server log even if it fails.
SET LOCAL log_statement = 'none';
SET LOCAL log_min_error_statement = panic;
\set pw `cat /run/secrets/postgres_monitoring_password`
SELECT :'pw' = '' AS ccoas_pw_missing \gset
\if :ccoas_pw_missing
DO $ccoas$ BEGIN RAISE EXCEPTION 'ccoas: the secret file /run/secrets/postgres_monitoring_password is missing or empty'; END $ccoas$;
\endif
ALTER ROLE "monitoring" PASSWORD :'pw';
\unset pw
\unset ccoas_pw_missing
SET LOCAL log_min_error_statement = error;
GRANT CONNECT, TEMPORARY ON DATABASE "app" TO "monitoring";
GRANT USAGE ON SCHEMA public TO "monitoring";

-- Memberships: this bootstrap grants none, so every membership of a role it manages
-- (in either direction) was made by someone else, and is revoked.
DO $ccoas$
DECLARE
    membership record;
BEGIN
    FOR membership IN
        SELECT granted.rolname AS granted, member.rolname AS member, grantor.rolname AS grantor
        FROM pg_catalog.pg_auth_members AS m
        JOIN pg_catalog.pg_roles AS granted ON granted.oid = m.roleid
        JOIN pg_catalog.pg_roles AS member ON member.oid = m.member
        JOIN pg_catalog.pg_roles AS grantor ON grantor.oid = m.grantor
        WHERE (granted.rolname IN ('app_owner', 'directus', 'hasura', 'monitoring')
           OR member.rolname IN ('app_owner', 'directus', 'hasura', 'monitoring'))
          -- the one membership this bootstrap grants (below)
          AND NOT (granted.rolname = 'pg_monitor' AND member.rolname = 'monitoring' AND grantor.rolname = 'postgres')
    LOOP
        RAISE WARNING 'ccoas: revoking membership of % in % (granted by %)', membership.member, membership.granted, membership.grantor;
        EXECUTE pg_catalog.format('REVOKE %I FROM %I GRANTED BY %I CASCADE', membership.granted, membership.member, membership.grantor);
    END LOOP;
END
$ccoas$;

-- 4. Schemas. Each is created for its owner, or refused when someone else owns it.
-- ccoas: the identity functions every policy calls; owned by the bootstrap's superuser.
DO $ccoas$
DECLARE
    current_owner name := (SELECT nspowner::pg_catalog.regrole::pg_catalog.name FROM pg_catalog.pg_namespace WHERE nspname = 'ccoas');
BEGIN
    IF current_owner IS NOT NULL AND current_owner <> 'postgres' THEN
        RAISE EXCEPTION 'ccoas: % % exists but is owned by %, not %', 'schema', 'ccoas', current_owner, 'postgres'
            USING HINT = 'ccoas will not adopt an object someone else created: inspect it, then drop it or change its owner by hand';
    END IF;
END
$ccoas$;
CREATE SCHEMA IF NOT EXISTS ccoas;
GRANT USAGE ON SCHEMA ccoas TO PUBLIC;

-- app: the application tables, owned by app_owner; the app roles use it, never create in it.
DO $ccoas$
DECLARE
    current_owner name := (SELECT nspowner::pg_catalog.regrole::pg_catalog.name FROM pg_catalog.pg_namespace WHERE nspname = 'app');
BEGIN
    IF current_owner IS NOT NULL AND current_owner <> 'app_owner' THEN
        RAISE EXCEPTION 'ccoas: % % exists but is owned by %, not %', 'schema', 'app', current_owner, 'app_owner'
            USING HINT = 'ccoas will not adopt an object someone else created: inspect it, then drop it or change its owner by hand';
    END IF;
END
$ccoas$;
CREATE SCHEMA IF NOT EXISTS "app" AUTHORIZATION "app_owner";
REVOKE ALL ON SCHEMA "app" FROM PUBLIC;
GRANT USAGE ON SCHEMA "app" TO "directus", "hasura";

-- directus: Directus's system tables (directus_*), its own schema. Stacks made
-- before it existed kept them in public: they move here, data and all.
DO $ccoas$
DECLARE
    current_owner name := (SELECT nspowner::pg_catalog.regrole::pg_catalog.name FROM pg_catalog.pg_namespace WHERE nspname = 'directus');
BEGIN
    IF current_owner IS NOT NULL AND current_owner <> 'directus' THEN
        RAISE EXCEPTION 'ccoas: % % exists but is owned by %, not %', 'schema', 'directus', current_owner, 'directus'
            USING HINT = 'ccoas will not adopt an object someone else created: inspect it, then drop it or change its owner by hand';
    END IF;
END
$ccoas$;
CREATE SCHEMA IF NOT EXISTS "directus" AUTHORIZATION directus;
REVOKE ALL ON SCHEMA "directus" FROM PUBLIC;
DO $ccoas$
DECLARE
    moved record;
BEGIN
    FOR moved IN
        SELECT c.relname FROM pg_catalog.pg_class AS c
        WHERE c.relnamespace = 'public'::pg_catalog.regnamespace AND c.relkind IN ('r', 'p', 'v')
          AND c.relname LIKE 'directus\_%' AND c.relowner = 'directus'::pg_catalog.regrole
          AND NOT EXISTS (SELECT FROM pg_catalog.pg_class AS d WHERE d.relnamespace = 'directus'::pg_catalog.regnamespace AND d.relname = c.relname)
        ORDER BY c.relname
    LOOP
        RAISE WARNING 'ccoas: moving public.% to the schema directus', moved.relname;
        EXECUTE pg_catalog.format('ALTER TABLE public.%I SET SCHEMA %I', moved.relname, 'directus');
    END LOOP;
END
$ccoas$;

-- hdb_catalog: Hasura's metadata catalog, created for it (it gets no CREATE on the database).
DO $ccoas$
DECLARE
    current_owner name := (SELECT nspowner::pg_catalog.regrole::pg_catalog.name FROM pg_catalog.pg_namespace WHERE nspname = 'hdb_catalog');
BEGIN
    IF current_owner IS NOT NULL AND current_owner <> 'hasura' THEN
        RAISE EXCEPTION 'ccoas: % % exists but is owned by %, not %', 'schema', 'hdb_catalog', current_owner, 'hasura'
            USING HINT = 'ccoas will not adopt an object someone else created: inspect it, then drop it or change its owner by hand';
    END IF;
END
$ccoas$;
CREATE SCHEMA IF NOT EXISTS "hdb_catalog" AUTHORIZATION hasura;
REVOKE ALL ON SCHEMA "hdb_catalog" FROM PUBLIC;

-- 5. Identity: who the current request is for, whatever front door it came through.
--    ccoas.user_id / ccoas.tenant_id (set per transaction by a front door that speaks SQL),
--    else Hasura's hasura.user JSON (x-hasura-user-id, x-hasura-tenant-id), else NULL:
--    and NULL matches no row. Invoker rights, search_path pinned, STABLE (NULLIF and COALESCE
--    are SQL syntax, not functions: nothing can shadow them).
CREATE OR REPLACE FUNCTION ccoas.current_user_id() RETURNS pg_catalog.text
    LANGUAGE sql STABLE PARALLEL SAFE SECURITY INVOKER
    SET search_path = pg_catalog, pg_temp
AS $ccoas$
    SELECT COALESCE(
        NULLIF(pg_catalog.current_setting('ccoas.user_id', true), ''),
        NULLIF(NULLIF(pg_catalog.current_setting('hasura.user', true), '')::pg_catalog.jsonb ->> 'x-hasura-user-id', '')
    )
$ccoas$;
CREATE OR REPLACE FUNCTION ccoas.current_tenant_id() RETURNS pg_catalog.text
    LANGUAGE sql STABLE PARALLEL SAFE SECURITY INVOKER
    SET search_path = pg_catalog, pg_temp
AS $ccoas$
    SELECT COALESCE(
        NULLIF(pg_catalog.current_setting('ccoas.tenant_id', true), ''),
        NULLIF(NULLIF(pg_catalog.current_setting('hasura.user', true), '')::pg_catalog.jsonb ->> 'x-hasura-tenant-id', '')
    )
$ccoas$;
COMMENT ON FUNCTION ccoas.current_user_id() IS 'The user id of the current request: ccoas.user_id, else x-hasura-user-id of hasura.user, else NULL (no rows).';
COMMENT ON FUNCTION ccoas.current_tenant_id() IS 'The tenant id of the current request: ccoas.tenant_id, else x-hasura-tenant-id of hasura.user, else NULL (no rows).';
GRANT EXECUTE ON FUNCTION ccoas.current_user_id(), ccoas.current_tenant_id() TO PUBLIC;

-- 6. Tables.

-- app.notes: owner-only
DO $ccoas$
DECLARE
    current_owner name := (SELECT relowner::pg_catalog.regrole::pg_catalog.name FROM pg_catalog.pg_class WHERE relnamespace = 'app'::pg_catalog.regnamespace AND relname = 'notes');
BEGIN
    IF current_owner IS NOT NULL AND current_owner <> 'app_owner' THEN
        RAISE EXCEPTION 'ccoas: % % exists but is owned by %, not %', 'table', 'app.notes', current_owner, 'app_owner'
            USING HINT = 'ccoas will not adopt an object someone else created: inspect it, then drop it or change its owner by hand';
    END IF;
END
$ccoas$;
CREATE TABLE IF NOT EXISTS "app"."notes" (
    "id" uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    "owner_id" uuid NOT NULL,
    "body" text,
    "created_at" timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY ("id")
);
ALTER TABLE "app"."notes" OWNER TO "app_owner";
ALTER TABLE "app"."notes" ADD COLUMN IF NOT EXISTS "owner_id" uuid NOT NULL;
ALTER TABLE "app"."notes" ADD COLUMN IF NOT EXISTS "body" text;
ALTER TABLE "app"."notes" ADD COLUMN IF NOT EXISTS "created_at" timestamptz NOT NULL DEFAULT pg_catalog.now();
ALTER TABLE "app"."notes" ENABLE ROW LEVEL SECURITY;
ALTER TABLE "app"."notes" FORCE ROW LEVEL SECURITY;
REVOKE ALL ON "app"."notes" FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON "app"."notes" TO "directus", "hasura";
-- Every policy on the table is dropped, whoever made it, and the preset's recreated.
DO $ccoas$
DECLARE
    policy record;
BEGIN
    FOR policy IN
        SELECT p.polname FROM pg_catalog.pg_policy AS p
        JOIN pg_catalog.pg_class AS c ON c.oid = p.polrelid
        WHERE c.relnamespace = 'app'::pg_catalog.regnamespace AND c.relname = 'notes'
    LOOP
        EXECUTE pg_catalog.format('DROP POLICY %I ON %I.%I', policy.polname, 'app', 'notes');
    END LOOP;
END
$ccoas$;
CREATE POLICY ccoas_owner_only ON "app"."notes"
    USING ("owner_id" = CAST(ccoas.current_user_id() AS pg_catalog.uuid))
    WITH CHECK ("owner_id" = CAST(ccoas.current_user_id() AS pg_catalog.uuid));
-- Directus's control plane: its one role serves every Directus user and enforces their
-- permissions itself (the app-user policy, provisioned from the same preset).
CREATE POLICY ccoas_directus_control_plane ON "app"."notes" TO directus
    USING (true)
    WITH CHECK (true);

-- app.documents: tenant
DO $ccoas$
DECLARE
    current_owner name := (SELECT relowner::pg_catalog.regrole::pg_catalog.name FROM pg_catalog.pg_class WHERE relnamespace = 'app'::pg_catalog.regnamespace AND relname = 'documents');
BEGIN
    IF current_owner IS NOT NULL AND current_owner <> 'app_owner' THEN
        RAISE EXCEPTION 'ccoas: % % exists but is owned by %, not %', 'table', 'app.documents', current_owner, 'app_owner'
            USING HINT = 'ccoas will not adopt an object someone else created: inspect it, then drop it or change its owner by hand';
    END IF;
END
$ccoas$;
CREATE TABLE IF NOT EXISTS "app"."documents" (
    "id" uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    "tenant_id" uuid NOT NULL,
    "title" text NOT NULL,
    "embedding" public.vector(384),
    PRIMARY KEY ("id")
);
ALTER TABLE "app"."documents" OWNER TO "app_owner";
ALTER TABLE "app"."documents" ADD COLUMN IF NOT EXISTS "tenant_id" uuid NOT NULL;
ALTER TABLE "app"."documents" ADD COLUMN IF NOT EXISTS "title" text NOT NULL;
ALTER TABLE "app"."documents" ADD COLUMN IF NOT EXISTS "embedding" public.vector(384);
ALTER TABLE "app"."documents" ENABLE ROW LEVEL SECURITY;
ALTER TABLE "app"."documents" FORCE ROW LEVEL SECURITY;
REVOKE ALL ON "app"."documents" FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON "app"."documents" TO "directus", "hasura";
-- Every policy on the table is dropped, whoever made it, and the preset's recreated.
DO $ccoas$
DECLARE
    policy record;
BEGIN
    FOR policy IN
        SELECT p.polname FROM pg_catalog.pg_policy AS p
        JOIN pg_catalog.pg_class AS c ON c.oid = p.polrelid
        WHERE c.relnamespace = 'app'::pg_catalog.regnamespace AND c.relname = 'documents'
    LOOP
        EXECUTE pg_catalog.format('DROP POLICY %I ON %I.%I', policy.polname, 'app', 'documents');
    END LOOP;
END
$ccoas$;
CREATE POLICY ccoas_tenant ON "app"."documents"
    USING ("tenant_id" = CAST(ccoas.current_tenant_id() AS pg_catalog.uuid))
    WITH CHECK ("tenant_id" = CAST(ccoas.current_tenant_id() AS pg_catalog.uuid));
-- Directus's control plane: its one role serves every Directus user and enforces their
-- permissions itself (the app-user policy, provisioned from the same preset).
CREATE POLICY ccoas_directus_control_plane ON "app"."documents" TO directus
    USING (true)
    WITH CHECK (true);


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
GRANT USAGE ON SCHEMA ccoas TO "app_owner", "directus", "hasura";

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
GRANT SELECT ON ccoas.change_log, ccoas.change_log_horizon TO "directus", "hasura";

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
GRANT EXECUTE ON FUNCTION ccoas.changes_since(bigint, integer) TO "directus", "hasura";

-- app.notes → channel ccoas_app_notes
DROP TRIGGER IF EXISTS ccoas_change ON "app"."notes";
CREATE CONSTRAINT TRIGGER ccoas_change AFTER INSERT OR UPDATE OR DELETE ON "app"."notes"
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ccoas.record_change('ccoas_app_notes', 'id');
DROP TRIGGER IF EXISTS ccoas_change_truncate ON "app"."notes";
CREATE TRIGGER ccoas_change_truncate AFTER TRUNCATE ON "app"."notes"
    FOR EACH STATEMENT EXECUTE FUNCTION ccoas.record_change('ccoas_app_notes', 'id');

-- app.documents → channel ccoas_app_documents
DROP TRIGGER IF EXISTS ccoas_change ON "app"."documents";
CREATE CONSTRAINT TRIGGER ccoas_change AFTER INSERT OR UPDATE OR DELETE ON "app"."documents"
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ccoas.record_change('ccoas_app_documents', 'id');
DROP TRIGGER IF EXISTS ccoas_change_truncate ON "app"."documents";
CREATE TRIGGER ccoas_change_truncate AFTER TRUNCATE ON "app"."documents"
    FOR EACH STATEMENT EXECUTE FUNCTION ccoas.record_change('ccoas_app_documents', 'id');



-- ============================================================================================
-- Monitoring: the role monitoring (postgres_exporter) reads the statistics views through
-- pg_monitor and ccoas's own figures through ccoas.monitoring_*(), which count rows (never
-- read a value) as their owner, the superuser: row-level security would hide rows from it.
-- ============================================================================================
GRANT pg_monitor TO "monitoring" GRANTED BY "postgres";
CREATE OR REPLACE FUNCTION ccoas.monitoring_embedding_backlog()
    RETURNS TABLE (table_name text, backlog_rows bigint)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $ccoas$
    SELECT NULL::text, NULL::bigint WHERE false
$ccoas$;
CREATE OR REPLACE FUNCTION ccoas.monitoring_change_log()
    RETURNS TABLE (entries bigint, oldest_age_seconds double precision, newest_seq bigint)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $ccoas$
    SELECT pg_catalog.count(*),
           COALESCE(EXTRACT(EPOCH FROM pg_catalog.clock_timestamp() - pg_catalog.min(l.committed_at))::double precision, 0),
           COALESCE(pg_catalog.max(l.seq), 0)
    FROM ccoas.change_log AS l
$ccoas$;
REVOKE ALL ON FUNCTION ccoas.monitoring_embedding_backlog(), ccoas.monitoring_change_log() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ccoas.monitoring_embedding_backlog(), ccoas.monitoring_change_log() TO "monitoring";

COMMIT;
