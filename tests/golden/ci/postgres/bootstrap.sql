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
GRANT SELECT, INSERT, UPDATE, DELETE ON "app"."notes" TO "directus";
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

COMMIT;
