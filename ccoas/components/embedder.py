"""The embedding worker: fills every embedded ``vector(N)`` column through Ollama. On the db network (Postgres) and the models network (Ollama).

A small Rust program (``templates/embedder/worker``, built by ccoas from crates.io with the
versions its ``Cargo.lock`` pins). It LISTENs to the change-feed channel of each embedded
table and, on a notification, at start and every :data:`POLL_SECONDS`, embeds the rows whose
embedding IS NULL: it reads their key and source text, asks Ollama's ``/api/embed`` for the
vectors and writes them, only where the source text is still the one it embedded. The rows
to do are read from the tables themselves, so a missed notification or a restart of
Postgres or Ollama loses nothing: it reconnects and finds them again.

Its Postgres role ``embedder`` (password in a secret file) may read only the key, source and
embedding columns of the embedded tables and update only their embedding columns (column
GRANTs), through one named policy ``ccoas_embedder`` per table (the bootstrap). It is enabled
whenever the stack has embedded columns (which need Ollama).
"""

from __future__ import annotations

import json

from ccoas.components.base import Component, Context, Recipe, check
from ccoas.plan import Artifact, Secret, Service, change_channel

ROLE = "embedder"
POLL_SECONDS = 30
CRATE = "embedder/worker"
BINARY = "ccoas-embedder"
CRATE_FILES = (f"{CRATE}/Cargo.toml", f"{CRATE}/Cargo.lock", f"{CRATE}/src/main.rs")


def secrets(ctx: Context) -> list[Secret]:
    return [
        ctx.secret("postgres", f"{ROLE}_password", "password", (ROLE, "postgres"), f"password of the postgres role {ROLE}", client=ROLE),
    ]


def targets(ctx: Context) -> list[dict[str, object]]:
    """What the worker fills: per embedded table, its key, source and embedding columns, the
    Ollama model tag and the change-feed channel."""
    schema = ctx.stack.schema_
    found = []
    for table in schema.embedded_tables():
        column = table.embedded[0]
        assert column.embed is not None
        found.append(
            {
                "schema": schema.name,
                "table": table.name,
                "key": [c.name for c in table.key_columns()],
                "key_types": [c.type for c in table.key_columns()],
                "source": column.embed.source,
                "column": column.name,
                "model": ctx.models[column.embed.model].tag,
                "channel": change_channel(schema.name, table.name),
            }
        )
    return found


def service(ctx: Context) -> Service:
    return ctx.service(
        COMPONENT,
        command=(f"/usr/local/bin/{BINARY}",),
        environment={
            "PGHOST": "postgres",
            "PGPORT": "5432",
            "PGDATABASE": "app",
            "PGUSER": ROLE,
            "CCOAS_PG_PASSWORD_FILE": ctx.secret_file(f"postgres_{ROLE}_password"),
            "CCOAS_OLLAMA_URL": "http://ollama:11434",
            "CCOAS_EMBED_POLL_SECONDS": str(POLL_SECONDS),
            "CCOAS_EMBED_TABLES": json.dumps(targets(ctx), sort_keys=True, separators=(",", ":")),
        },
        healthcheck=check("CMD", f"/usr/local/bin/{BINARY}", "--check", interval=10, start=10),
        liveness=check("CMD", f"/usr/local/bin/{BINARY}", "--check", interval=10, start=10),
    )


COMPONENT = Component(
    name="embedder",
    summary="Embedding worker (Rust): fills embedded vector columns through Ollama",
    uid=10001,
    gid=10001,
    ports=(),
    networks=("db", "models"),  # models: Ollama, whose embeddings it asks for
    registry_image=None,
    recipe=Recipe(
        containerfile="embedder/Containerfile.j2",
        files=CRATE_FILES,
        artifacts=(Artifact(kind="cargo", spec=CRATE, binary=BINARY),),
    ),
    upstream={"local": "ccoas-embedder 0.1.0 (templates/embedder/worker, crates.io deps pinned by Cargo.lock)"},
    default_limits={"memory": "64Mi", "cpus": 0.5, "pids": 64},
    declare_secrets=secrets,
    declare_service=service,
    requires=("postgres", "ollama", "vault"),
)
