"""Monitoring: Prometheus, Alertmanager and the exporters, in one container that listens on
nothing but its own loopback.

Everything runs in one image on the Debian base: Prometheus 2.42 and Alertmanager 0.25 (Debian
12's packages), the blackbox exporter 0.23 (Debian: liveness of the services that expose no
Prometheus endpoint, and the served certificate's expiry), the redis exporter 1.45 (Debian),
the node exporter 1.5 (Debian, only its filesystem and textfile collectors: free space of the
volume the store lives on, and ccoas's own figures) and postgres_exporter 0.17.1 built from the
Go module proxy (Debian's 0.11.1 fails on Postgres 17+: ``pg_stat_bgwriter`` lost its columns).

Every one of them listens on 127.0.0.1 inside the container, so no metrics endpoint is
reachable from any network: Prometheus scrapes the exporters over loopback and ccoas queries
its API with ``podman exec … curl 127.0.0.1:9090`` (never a published port). The container
joins the networks of what it watches: ``db`` (Postgres, Redis, Ollama), ``edge`` (Nginx,
Directus, the GraphQL plane, MinIO, and the webhook's way out) and ``auth`` (Vault's
unauthenticated metrics). It holds one Postgres role with ``pg_monitor`` and one Redis user
limited to INFO and friends, nothing more. The entrypoint starts the programs and exits when
any of them does, so the restart policy restarts the set.
"""

from __future__ import annotations

from ccoas.components.base import Component, Context, Recipe, check, parse_size
from ccoas.plan import Artifact, RuntimeMount, Secret, Service, Stop, VolumeMount

POSTGRES_EXPORTER = "v0.17.1"
PROMETHEUS_PORT = 9090
ALERTMANAGER_PORT = 9093
DATA = "/prometheus"
TEXTFILE_DIR = "/run/ccoas-metrics"
"""Where ccoas writes its own figures (``ccoas.prom``) at every ``up``: a host directory."""
TEXTFILE_MOUNT = "monitoring-textfile"
WEBHOOK_SECRET = "monitoring_webhook_url"



DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def duration_seconds(duration: str) -> int:
    """A Prometheus duration of one unit (the stack file's pattern): ``"1d"`` → 86400."""
    return int(duration[:-1]) * DURATION_UNITS[duration[-1]]


def secrets(ctx: Context) -> list[Secret]:
    owned = []
    if "postgres" in ctx.enabled:
        owned.append(
            ctx.secret(
                "postgres", "monitoring_password", "password", ("monitoring", "postgres"),
                "password of the postgres role monitoring (pg_monitor)", client="monitoring",
            )
        )
    if "redis" in ctx.enabled:
        owned.append(
            ctx.secret(
                "redis", "monitoring_password", "password", ("monitoring", "redis"),
                "password of the redis ACL user monitoring (INFO and read-only introspection)", client="monitoring",
            )
        )
    if ctx.stack.components.monitoring.webhook is not None:
        owned.append(
            ctx.secret(
                "monitoring", "webhook_url", "supplied", ("monitoring",),
                f"URL of the alert webhook {ctx.stack.components.monitoring.webhook} (set with `ccoas secrets set monitoring/webhook_url URL`)",
            )
        )
    return owned


def networks(ctx: Context) -> tuple[str, ...]:
    """Only the networks of services it watches."""
    wanted = []
    if ctx.enabled & {"nginx", "directus", "hasura", "postgraphile", "minio"}:
        wanted.append("edge")
    if "vault" in ctx.enabled:
        wanted.append("auth")
    if ctx.enabled & {"postgres", "redis", "ollama"}:
        wanted.append("db")
    return tuple(wanted)


def service(ctx: Context) -> Service:
    config = ctx.stack.components.monitoring
    declared = ctx.service(
        COMPONENT,
        entrypoint=("sh", "/etc/ccoas/monitoring/entrypoint.sh"),
        stop=Stop(signal="SIGTERM", timeout_s=30, reason="Prometheus closes its head block and write-ahead log cleanly"),
        environment={
            "SCRAPE_INTERVAL": config.scrape_interval,
            # Prometheus refuses a timeout longer than the interval
            "SCRAPE_TIMEOUT": f"{min(5, duration_seconds(config.scrape_interval))}s",
            "EVALUATION_INTERVAL": config.evaluation_interval,
            "ALERT_FOR": config.alert_for,
            "BACKUP_INTERVAL": config.backup_interval,
            "BACKUP_INTERVAL_SECONDS": str(duration_seconds(config.backup_interval)),
            **({"WEBHOOK_NAME": config.webhook} if config.webhook is not None else {}),
            "RETENTION_TIME": config.retention.time,
            # Prometheus's units are powers of 1024 ("MB" = MiB)
            "RETENTION_SIZE": f"{parse_size(config.retention.size) // 1024**2}MB",
        },
        volumes=(VolumeMount(volume="monitoring-data", target=DATA),),
        runtime_mounts=(RuntimeMount(name=TEXTFILE_MOUNT, target=TEXTFILE_DIR),),
        config_templates=(
            "monitoring/entrypoint.sh.j2",
            "monitoring/prometheus.yml.j2",
            "monitoring/rules.yml.j2",
            "monitoring/alertmanager.yml.j2",
            "monitoring/blackbox.yml.j2",
            "monitoring/postgres-queries.yml.j2",
            "monitoring/alert-log.py.j2",
        ),
        healthcheck=check(
            "CMD-SHELL",
            f"curl -fsS -o /dev/null http://127.0.0.1:{PROMETHEUS_PORT}/-/ready && curl -fsS -o /dev/null http://127.0.0.1:{ALERTMANAGER_PORT}/-/ready",
            interval=5,
            start=20,
        ),
        liveness=check(
            "CMD-SHELL",
            f"curl -fsS -o /dev/null http://127.0.0.1:{PROMETHEUS_PORT}/-/healthy && curl -fsS -o /dev/null http://127.0.0.1:{ALERTMANAGER_PORT}/-/healthy",
            interval=5,
            start=20,
        ),
    )
    return declared.model_copy(update={"networks": {n: ("monitoring",) for n in networks(ctx)}})


COMPONENT = Component(
    name="monitoring",
    summary="Prometheus + Alertmanager + exporters: metrics and alerts, listening on loopback only",
    uid=65532,
    gid=65532,
    ports=(),
    networks=("edge", "auth", "db"),
    registry_image=None,
    recipe=Recipe(
        containerfile="monitoring/Containerfile.j2",
        artifacts=(
            Artifact(kind="deb", spec="prometheus"),
            Artifact(kind="deb", spec="prometheus-alertmanager"),
            Artifact(kind="deb", spec="prometheus-blackbox-exporter"),
            Artifact(kind="deb", spec="prometheus-redis-exporter"),
            Artifact(kind="deb", spec="prometheus-node-exporter"),
            Artifact(
                kind="go",
                spec=f"github.com/prometheus-community/postgres_exporter/cmd/postgres_exporter@{POSTGRES_EXPORTER}",
                binary="postgres_exporter",
                ldflags=(f"-X=github.com/prometheus/common/version.Version={POSTGRES_EXPORTER[1:]}",),
            ),
        ),
    ),
    upstream={"local": f"Prometheus 2.42, Alertmanager 0.25 (Debian 12), postgres_exporter {POSTGRES_EXPORTER} (Go module)"},
    default_limits={"memory": "512Mi", "cpus": 0.5, "pids": 256},
    declare_secrets=secrets,
    declare_service=service,
    # Only Vault (its secret files) comes first: it scrapes the others by name at every scrape,
    # so a service that is replaced never restarts it (a restart would lose its alerts' state,
    # and an alert that resolved meanwhile would never be sent as resolved).
    requires=("vault",),
)
