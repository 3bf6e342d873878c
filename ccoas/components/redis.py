"""Redis: cache and rate-limit store for Directus. On the db network only.

Authentication is by ACL: the ``default`` user may only PING (health checks); each
client service gets its own user whose password is a secret file. A small entrypoint,
rendered beside the config, writes the ACL file to a tmpfs at start, so it works the
same with the official image and the local one.
"""

from __future__ import annotations

from ccoas.components.base import Component, Context, Recipe, check
from ccoas.plan import Artifact, Secret, Service, TmpfsMount, VolumeMount

CLIENTS = ("directus",)
COMPONENT_PORT = 6379


def clients(ctx: Context) -> list[str]:
    return [c for c in CLIENTS if c in ctx.enabled]


def secrets(ctx: Context) -> list[Secret]:
    return [
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
    ]


def service(ctx: Context) -> Service:
    return ctx.service(
        COMPONENT,
        entrypoint=("sh", "/etc/ccoas/redis/entrypoint.sh"),
        command=("redis-server", "/etc/ccoas/redis/redis.conf"),
        volumes=(VolumeMount(volume="redis-data", target="/data"),),
        tmpfs=(TmpfsMount(target="/run/redis", size="1m"),),
        config_templates=("redis/redis.conf.j2", "redis/entrypoint.sh.j2"),
        healthcheck=check("CMD-SHELL", "redis-cli -h 127.0.0.1 ping | grep -q PONG", interval=5),
        liveness=check("CMD", "redis-cli", "-h", "127.0.0.1", "ping", interval=5),
    )


COMPONENT = Component(
    name="redis",
    summary="Redis: cache with per-service ACL users",
    uid=999,
    gid=999,
    ports=(COMPONENT_PORT,),
    networks=("db",),
    registry_image="docker.io/library/redis:7.4.6@sha256:a9cc41d6d01da2aa26c219e4f99ecbeead955a7b656c1c499cce8922311b2514",
    recipe=Recipe(containerfile="redis/Containerfile.j2", artifacts=(Artifact(kind="deb", spec="redis-server"),)),
    default_limits={"memory": "256Mi", "cpus": 0.5, "pids": 128},
    declare_secrets=secrets,
    declare_service=service,
    requires=("vault",),
)
