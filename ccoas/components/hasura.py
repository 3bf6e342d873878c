"""Hasura GraphQL engine over Postgres. On edge and db (it never calls Vault: its secrets are files). Registry image only.

No package ships Hasura, so there is no local recipe: on hosts without a registry
ccoas renders and validates its configuration (metadata from the stack's tables, with
permissions that mirror the row-level security) but cannot run it. Hasura reads
secrets only from the environment, so a rendered entrypoint exports them from the
secret files just before ``exec``: nothing secret is in the container's config.

The plain image serves (no Hasura CLI in it): once the engine answers, ccoas's hook posts the
rendered metadata (``replace_metadata.json``) to Hasura's own metadata API, the way Directus
and MinIO are provisioned after start; readiness is ``/healthz`` (strict: consistent metadata).
"""

from __future__ import annotations

from ccoas.components.base import Component, Context, check
from ccoas.plan import Hook, Secret, Service

PORT = 8080


def secrets(ctx: Context) -> list[Secret]:
    return [
        ctx.secret("postgres", "hasura_password", "password", ("hasura", "postgres"), "password of the postgres role hasura", client="hasura"),
        ctx.secret("hasura", "admin_secret", "token", ("hasura",), "Hasura admin secret", length=48),
    ]


def service(ctx: Context) -> Service:
    return ctx.service(
        COMPONENT,
        entrypoint=("sh", "/etc/ccoas/hasura/entrypoint.sh"),
        command=("graphql-engine", "serve"),
        environment={
            "HASURA_GRAPHQL_SERVER_PORT": str(PORT),
            "HASURA_GRAPHQL_ENABLE_CONSOLE": "false",
            "HASURA_GRAPHQL_ENABLE_TELEMETRY": "false",
            "HASURA_GRAPHQL_DEV_MODE": "false",
            "HASURA_GRAPHQL_ENABLED_APIS": "graphql,metadata",
            "HASURA_GRAPHQL_UNAUTHORIZED_ROLE": "anonymous",
            "HASURA_GRAPHQL_ENABLE_ALLOWLIST": "false",
            "HASURA_GRAPHQL_LOG_LEVEL": "warn",
            # Subscriptions are live queries: refetched every second, multiplexed per query
            # shape, each subscriber's row permissions applied to its own rows.
            "HASURA_GRAPHQL_LIVE_QUERIES_MULTIPLEXED_REFETCH_INTERVAL": "1000",
            "HASURA_GRAPHQL_LIVE_QUERIES_MULTIPLEXED_BATCH_SIZE": "100",
            "HASURA_GRAPHQL_WEBSOCKET_KEEPALIVE": "5",
            "HASURA_GRAPHQL_WEBSOCKET_CONNECTION_INIT_TIMEOUT": "3",
        },
        config_templates=(
            "hasura/entrypoint.sh.j2",
            "hasura/hasura.env.j2",
            "hasura/replace_metadata.json.j2",
            "hasura/apply-metadata.sh.j2",
        ),
        hooks=(
            Hook(
                kind="exec",
                stage="alive",
                command=("sh", "/etc/ccoas/hasura/apply-metadata.sh"),
                description="replace Hasura's metadata with the rendered one through its metadata API (idempotent)",
            ),
        ),
        healthcheck=check("CMD", "curl", "-fsS", "-o", "/dev/null", f"http://127.0.0.1:{PORT}/healthz", interval=5, start=30),
        liveness=check("CMD", "curl", "-fsS", "-o", "/dev/null", f"http://127.0.0.1:{PORT}/healthz?strict=false", interval=10, start=30),
    )


COMPONENT = Component(
    name="hasura",
    summary="Hasura GraphQL engine v2 with metadata mirroring the row-level security",
    uid=1001,
    gid=1001,
    ports=(PORT,),
    networks=("edge", "db"),
    registry_image="docker.io/hasura/graphql-engine:v2.51.0@sha256:5d435a6756de53709bf48c15b822cabab38d57acd22e656cf633cc2df67df150",
    registry_digest_source=(
        "public record of hasura/graphql-engine:v2.51.0@<this digest> (the plain image, recorded beside "
        "the earlier v2.33.1.cli-migrations-v3 pin) (public code index, 2026-12-01)"
    ),
    registry_note=(
        "v2.51.0 includes the fix of GHSA-r27x-gc74-qmxh (v2.49.2). The plain image has no Hasura CLI: "
        "ccoas applies the metadata itself (hook: POST /v1/metadata replace_metadata). Not run here (no "
        "registry): tests/e2e/test_hasura_metadata_api.py runs it where a registry is reachable"
    ),
    upstream={"registry": "Hasura GraphQL Engine v2.51.0"},
    recipe=None,
    default_limits={"memory": "1Gi", "cpus": 1.0, "pids": 512},
    declare_secrets=secrets,
    declare_service=service,
    requires=("postgres", "vault", "directus"),
    # directus: the identity provider, whose signing key Hasura verifies tokens with.
)
