-- Rendered by ccoas from the plan of stack dev (dev): do not edit.
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
    "created_at" timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY ("id")
);
ALTER TABLE "app"."notes" ADD COLUMN IF NOT EXISTS "owner_id" uuid NOT NULL;
ALTER TABLE "app"."notes" ADD COLUMN IF NOT EXISTS "body" text;
ALTER TABLE "app"."notes" ADD COLUMN IF NOT EXISTS "created_at" timestamptz NOT NULL DEFAULT now();
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

-- app.documents: tenant
CREATE TABLE IF NOT EXISTS "app"."documents" (
    "id" uuid NOT NULL DEFAULT gen_random_uuid(),
    "tenant_id" uuid NOT NULL,
    "title" text NOT NULL,
    "embedding" vector(384),
    PRIMARY KEY ("id")
);
ALTER TABLE "app"."documents" ADD COLUMN IF NOT EXISTS "tenant_id" uuid NOT NULL;
ALTER TABLE "app"."documents" ADD COLUMN IF NOT EXISTS "title" text NOT NULL;
ALTER TABLE "app"."documents" ADD COLUMN IF NOT EXISTS "embedding" vector(384);
ALTER TABLE "app"."documents" OWNER TO "app_owner";
ALTER TABLE "app"."documents" ENABLE ROW LEVEL SECURITY;
ALTER TABLE "app"."documents" FORCE ROW LEVEL SECURITY;
REVOKE ALL ON "app"."documents" FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON "app"."documents" TO "directus";
DO $ccoas$
DECLARE
    policy record;
BEGIN
    FOR policy IN
        SELECT policyname FROM pg_catalog.pg_policies
        WHERE schemaname = 'app' AND tablename = 'documents' AND policyname LIKE 'ccoas\_%'
    LOOP
        EXECUTE format('DROP POLICY %I ON %I.%I', policy.policyname, 'app', 'documents');
    END LOOP;
END
$ccoas$;
CREATE POLICY ccoas_tenant ON "app"."documents"
    USING ("tenant_id" = NULLIF(current_setting('ccoas.tenant_id', true), '')::uuid)
    WITH CHECK ("tenant_id" = NULLIF(current_setting('ccoas.tenant_id', true), '')::uuid);

-- app.articles: public-read
CREATE TABLE IF NOT EXISTS "app"."articles" (
    "id" uuid NOT NULL DEFAULT gen_random_uuid(),
    "owner_id" uuid NOT NULL,
    "title" text NOT NULL,
    "published" boolean NOT NULL DEFAULT false,
    PRIMARY KEY ("id")
);
ALTER TABLE "app"."articles" ADD COLUMN IF NOT EXISTS "owner_id" uuid NOT NULL;
ALTER TABLE "app"."articles" ADD COLUMN IF NOT EXISTS "title" text NOT NULL;
ALTER TABLE "app"."articles" ADD COLUMN IF NOT EXISTS "published" boolean NOT NULL DEFAULT false;
ALTER TABLE "app"."articles" OWNER TO "app_owner";
ALTER TABLE "app"."articles" ENABLE ROW LEVEL SECURITY;
ALTER TABLE "app"."articles" FORCE ROW LEVEL SECURITY;
REVOKE ALL ON "app"."articles" FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON "app"."articles" TO "directus";
DO $ccoas$
DECLARE
    policy record;
BEGIN
    FOR policy IN
        SELECT policyname FROM pg_catalog.pg_policies
        WHERE schemaname = 'app' AND tablename = 'articles' AND policyname LIKE 'ccoas\_%'
    LOOP
        EXECUTE format('DROP POLICY %I ON %I.%I', policy.policyname, 'app', 'articles');
    END LOOP;
END
$ccoas$;
CREATE POLICY ccoas_public_read ON "app"."articles" FOR SELECT
    USING (true);
CREATE POLICY ccoas_owner_insert ON "app"."articles" FOR INSERT
    WITH CHECK ("owner_id" = NULLIF(current_setting('ccoas.user_id', true), '')::uuid);
CREATE POLICY ccoas_owner_update ON "app"."articles" FOR UPDATE
    USING ("owner_id" = NULLIF(current_setting('ccoas.user_id', true), '')::uuid)
    WITH CHECK ("owner_id" = NULLIF(current_setting('ccoas.user_id', true), '')::uuid);
CREATE POLICY ccoas_owner_delete ON "app"."articles" FOR DELETE
    USING ("owner_id" = NULLIF(current_setting('ccoas.user_id', true), '')::uuid);

-- app.documents.embedding: embedding of title by all-minilm-l6-v2
CREATE INDEX IF NOT EXISTS "documents_embedding_hnsw"
    ON "app"."documents" USING hnsw ("embedding" public.vector_cosine_ops);
CREATE OR REPLACE FUNCTION "app"."documents_nearest"(
    query public.vector(384),
    k_max integer DEFAULT 10,
    dynamic_k boolean DEFAULT false,
    min_gap double precision DEFAULT 0.1,
    k_min integer DEFAULT 1
)
RETURNS TABLE ("id" uuid, "title" text, distance double precision)
LANGUAGE sql STABLE SECURITY INVOKER PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
SET hnsw.iterative_scan = strict_order
AS $ccoas$
    WITH nearest AS (
        SELECT t."id", t."title", (t."embedding" OPERATOR(public.<=>) $1)::double precision AS distance
        FROM "app"."documents" AS t
        WHERE t."embedding" IS NOT NULL
        ORDER BY t."embedding" OPERATOR(public.<=>) $1
        LIMIT greatest($2, 0)
    ), ranked AS (
        SELECT n.*, row_number() OVER (ORDER BY n.distance) AS rank,
               lead(n.distance) OVER (ORDER BY n.distance) - n.distance AS gap
        FROM nearest AS n
    ), cut AS (
        SELECT min(r.rank) AS at FROM ranked AS r WHERE $3 AND r.rank >= $5 AND r.gap >= $4
    )
    SELECT r."id", r."title", r.distance
    FROM ranked AS r CROSS JOIN cut AS c
    WHERE c.at IS NULL OR r.rank <= c.at
    ORDER BY r.rank
$ccoas$;
ALTER FUNCTION "app"."documents_nearest"(public.vector, integer, boolean, double precision, integer) OWNER TO "app_owner";
REVOKE ALL ON FUNCTION "app"."documents_nearest"(public.vector, integer, boolean, double precision, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION "app"."documents_nearest"(public.vector, integer, boolean, double precision, integer) TO "directus";

COMMIT;
