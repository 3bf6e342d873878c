"""Nginx: the only published service. On the edge network only; terminates TLS.

It routes ``/`` and ``/directus/`` to Directus (``/directus/websocket`` held open for
realtime), ``/graphql`` to the stack's GraphQL plane (Hasura or PostGraphile, queries and
websocket subscriptions), ``/v1/graphql`` to Hasura and
``/storage/<bucket>/`` to MinIO's S3 API for public buckets only, each only when that
component is enabled. Only the stack's domain is served: other Host names are refused. The
certificate is the user's (``tls.mode: supplied``) or, for dev and ci stacks, one ccoas
generates; either way it is stored in Vault and reaches nginx as files.
"""

from __future__ import annotations

import math

from ccoas.components.base import Component, Context, Recipe, check
from ccoas.plan import Artifact, EdgeLimits, EdgeListener, EdgePlan, RuntimeMount, Secret, Service, Stop

HTTP_PORT = 8080
HTTPS_PORT = 8443
HEALTH_PORT = 8081
UPSTREAMS = {"directus": 8055, "hasura": 8080, "postgraphile": 5678, "minio": 9000}
EDGE_MOUNT = "edge"
EDGE_DIR = "/run/ccoas-edge"
"""Where Nginx's PROXY-protocol sockets are inside its container (the runtime mount ``edge``)."""
EDGE_SOCKETS = {HTTP_PORT: "http.sock", HTTPS_PORT: "https.sock"}
WORKER_CONNECTION_MARGIN = 64
"""Per worker, beyond two per client connection: listening sockets, upstream keepalives, logs."""


def workers(ctx: Context) -> int:
    """One Nginx worker per CPU the stack gives nginx (at least one)."""
    cpus = ctx.stack.components.nginx.limits.cpus or COMPONENT.default_limits["cpus"]
    return max(math.ceil(cpus), 1)


def edge(ctx: Context) -> EdgePlan:
    """How clients reach Nginx (``edge.listener``) and what one client address may take."""
    settings = ctx.stack.edge
    limits = EdgeLimits(**settings.limits.model_dump())
    listener = EdgeListener(
        kind=settings.listener,
        ports=ctx.published_ports(COMPONENT),
        sockets=dict(EDGE_SOCKETS) if settings.listener == "host" else {},
    )
    per_worker = math.ceil(2 * limits.total_connections / workers(ctx)) + WORKER_CONNECTION_MARGIN
    return EdgePlan(listener=listener, limits=limits, workers=workers(ctx), worker_connections=per_worker)


def upstreams(ctx: Context) -> dict[str, int]:
    return {name: port for name, port in UPSTREAMS.items() if name in ctx.enabled}


def secrets(ctx: Context) -> list[Secret]:
    return [
        ctx.secret("nginx", "tls_cert", "tls-cert", ("nginx",), f"TLS certificate chain for {ctx.stack.domain}"),
        ctx.secret("nginx", "tls_key", "tls-key", ("nginx",), f"TLS private key for {ctx.stack.domain}"),
    ]


def service(ctx: Context) -> Service:
    behind_listener = ctx.stack.edge.listener == "host"
    return ctx.service(
        COMPONENT,
        publish=not behind_listener,
        runtime_mounts=(RuntimeMount(name=EDGE_MOUNT, target=EDGE_DIR, engine_user_traverses=True),) if behind_listener else (),
        # Behind the listener, sockets a killed Nginx left would make its next start fail to bind.
        command=(
            ("sh", "-c", f'rm -f {EDGE_DIR}/*.sock && exec nginx -c /etc/ccoas/nginx/nginx.conf -g "daemon off;"')
            if behind_listener
            else ("nginx", "-c", "/etc/ccoas/nginx/nginx.conf", "-g", "daemon off;")
        ),
        stop=Stop(signal="SIGQUIT", timeout_s=15, reason="graceful shutdown: open requests are answered first"),
        config_templates=("nginx/nginx.conf.j2",),
        # through the named server (the default one refuses unknown names), on loopback
        healthcheck=check(
            "CMD", "curl", "-fsSk", "-o", "/dev/null", "--resolve", f"{ctx.stack.domain}:{HTTPS_PORT}:127.0.0.1",
            f"https://{ctx.stack.domain}:{HTTPS_PORT}/healthz", interval=5,
        ),
        liveness=check("CMD", "curl", "-fsS", "-o", "/dev/null", f"http://127.0.0.1:{HEALTH_PORT}/healthz", interval=5),
    )


COMPONENT = Component(
    name="nginx",
    summary="Nginx: TLS termination, rate limits, security headers, routes to the apps",
    uid=101,
    gid=101,
    ports=(HTTP_PORT, HTTPS_PORT),
    networks=("edge",),
    registry_image="docker.io/nginxinc/nginx-unprivileged:1.29.1@sha256:451ec1db67978686908d931cc090ac9f6649a5dfbde0d7d3b33756f7c6303f7e",
    registry_digest_source=(
        "a public repository's Dockerfile, FROM nginxinc/nginx-unprivileged:1.29.1@<this digest> (public "
        "code index, 2026-12-01)"
    ),
    upstream={"local": "nginx 1.22.1 (Debian 12 package)", "registry": "nginx 1.29.1 (nginxinc/nginx-unprivileged)"},
    recipe=Recipe(containerfile="nginx/Containerfile.j2", artifacts=(Artifact(kind="deb", spec="nginx"),)),
    default_limits={"memory": "128Mi", "cpus": 0.5, "pids": 128},
    declare_secrets=secrets,
    declare_service=service,
    requires=("vault",),
    after=tuple(UPSTREAMS),
    port_schemes={HTTP_PORT: "http", HTTPS_PORT: "https"},
)
