"""Redis: cache and rate-limit store for Directus. On the db network only.

Authentication is by ACL: the ``default`` user is off; the health checks authenticate as
``health``, which may only PING; each client service gets its own user. Every password is a
secret file. A small entrypoint, rendered beside the config, writes the ACL file to a tmpfs
at start, holding each password only as its SHA-256 (``#<hex>``), so it works the same with
the official image and the local one.
"""

from __future__ import annotations

from ccoas.components.base import SECRETS_DIR, Component, Context, Recipe, check
from ccoas.plan import Artifact, Secret, Service, Stop, TmpfsMount, VolumeMount

CLIENTS = ("directus",)
COMPONENT_PORT = 6379
HEALTH_USER = "health"
HEALTH_PASSWORD_FILE = "redis_health_password"


def clients(ctx: Context) -> list[str]:
    return [c for c in CLIENTS if c in ctx.enabled]


def secrets(ctx: Context) -> list[Secret]:
    return [
        ctx.secret("redis", "health_password", "password", ("redis",), f"password of the redis ACL user {HEALTH_USER} (PING only)"),
        *(
            ctx.secret(
                "redis",
                f"{client}_password",
                "password",
                ("redis", client),
                f"password of the redis ACL user {client}",
                # clients get a connection URL: Directus reads no username outside one
                reader_formats={client: f"redis://{client}:{{value}}@redis:{COMPONENT_PORT}"},
                client=client,
            )
            for client in clients(ctx)
        ),
    ]


# The password travels in REDISCLI_AUTH, never on a command line.
PING = (
    f'REDISCLI_AUTH="$(cat {SECRETS_DIR}/{HEALTH_PASSWORD_FILE})" '
    f"redis-cli --no-auth-warning --user {HEALTH_USER} -h 127.0.0.1 ping"
)


def service(ctx: Context) -> Service:
    return ctx.service(
        COMPONENT,
        entrypoint=("sh", "/etc/ccoas/redis/entrypoint.sh"),
        command=("redis-server", "/etc/ccoas/redis/redis.conf"),
        stop=Stop(signal="SIGTERM", timeout_s=30, reason="flushes the append-only file and saves a snapshot before exiting (shutdown-on-sigterm save)"),
        volumes=(VolumeMount(volume="redis-data", target="/data"),),
        tmpfs=(TmpfsMount(target="/run/redis", size="1m"),),
        config_templates=("redis/redis.conf.j2", "redis/entrypoint.sh.j2"),
        healthcheck=check("CMD-SHELL", f"{PING} | grep -q PONG", interval=5),
        liveness=check("CMD-SHELL", PING, interval=5),
    )


COMPONENT = Component(
    name="redis",
    summary="Redis: cache with per-service ACL users",
    uid=999,
    gid=999,
    ports=(COMPONENT_PORT,),
    networks=("db",),
    registry_image="docker.io/library/redis:7.4.6@sha256:a9cc41d6d01da2aa26c219e4f99ecbeead955a7b656c1c499cce8922311b2514",
    registry_digest_source=(
        "a public repository's provenance note: the multi-platform index digest of the official "
        "redis:7.4.6-bookworm, resolved 2026-07-18 with docker buildx imagetools inspect (public code "
        "index, 2026-12-01)"
    ),
    upstream={"local": "Redis 7.0.15 (Debian 12 package)", "registry": "Redis 7.4.6"},
    recipe=Recipe(containerfile="redis/Containerfile.j2", artifacts=(Artifact(kind="deb", spec="redis-server"),)),
    default_limits={"memory": "256Mi", "cpus": 0.5, "pids": 128},
    declare_secrets=secrets,
    declare_service=service,
    requires=("vault",),
)
