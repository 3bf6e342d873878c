"""The plan as a Compose file (docker compose, podman-compose): a faithful export, nothing added.

:func:`compose_document` translates each plan field into its Compose spelling and never
re-derives a setting. What Compose cannot say is kept, not dropped, in ``x-ccoas``
extension fields, which every Compose implementation ignores and preserves: network
isolation (the plan's ``isolate``: networks of a stack cannot reach one another, which
ccoas's engine enforces and Compose has no key for), liveness checks, hooks (the Postgres
bootstrap, Vault's init and unseal) and why capabilities are what they are.

The document belongs in the render directory (``compose.yaml`` beside the ``<component>/``
config directories it bind-mounts). Secret values are never in it: each secret mount reads
a file under ``$CCOAS_SECRETS_DIR`` named like its target (``/run/secrets/<name>``), which
the operator materialises from Vault (formatted for the reader where the plan says so).
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from ccoas.engine.docker_api import log_options
from ccoas.plan import PLAN_SCHEMA_VERSION, HealthCheck, Plan, SecretMount, Service

SECRETS_DIR_VARIABLE = "${CCOAS_SECRETS_DIR:?run ccoas secrets export}"
RUNTIME_DIR_VARIABLE = "${CCOAS_RUNTIME_DIR:?set CCOAS_RUNTIME_DIR to a directory shared with the containers}"
EXTENSION = "x-ccoas"


def compose_document(plan: Plan) -> dict[str, Any]:
    """The whole Compose document for ``plan`` (dump it with ``yaml.safe_dump(sort_keys=True)``)."""
    document: dict[str, Any] = {
        "name": plan.stack,
        EXTENSION: {
            "schema_version": PLAN_SCHEMA_VERSION,
            "stack": plan.stack,
            "environment": plan.environment,
            "domain": plan.domain,
            "start_order": [list(tier) for tier in plan.start_order],
            "note": (
                "exported from the ccoas plan; config directories are relative to this file; "
                "secrets are files under $CCOAS_SECRETS_DIR; x-ccoas fields hold what Compose cannot express"
            ),
        },
        "networks": {network.name: _network(network) for network in sorted(plan.networks, key=lambda n: n.name)},
        "services": {service.name: _service(service) for service in sorted(plan.services, key=lambda s: s.name)},
    }
    if plan.volumes:
        document["volumes"] = {
            volume.name: {"name": volume.engine_name, "labels": dict(sorted(volume.labels.items()))}
            for volume in sorted(plan.volumes, key=lambda v: v.name)
        }
    files = sorted({secret_file_name(m) for service in plan.services for m in service.secrets})
    if files:
        document["secrets"] = {name: {"file": f"{SECRETS_DIR_VARIABLE}/{name}"} for name in files}
    return document


def secret_file_name(mount: SecretMount) -> str:
    """The file a secret mount reads: named after its target (``/run/secrets/<name>``), which is
    the secret's name, or a per-reader name when the reader gets a formatted value."""
    return PurePosixPath(mount.target).name


def duration(seconds: int) -> str:
    """Compose duration: ``10`` → ``"10s"``."""
    return f"{seconds}s"


def memory(value: int) -> str:
    """Bytes in Compose's units (binary: ``1g`` is 1024³ bytes), exact."""
    for suffix, size in (("g", 1024**3), ("m", 1024**2), ("k", 1024)):
        if value % size == 0:
            return f"{value // size}{suffix}"
    return f"{value}b"


def healthcheck(check: HealthCheck) -> dict[str, Any]:
    return {
        "test": list(check.test),
        "interval": duration(check.interval_s),
        "timeout": duration(check.timeout_s),
        "retries": check.retries,
        "start_period": duration(check.start_period_s),
    }


def _network(network) -> dict[str, Any]:
    return {
        "name": network.engine_name,
        "internal": network.internal,
        "labels": dict(sorted(network.labels.items())),
        EXTENSION: {
            "isolate": network.isolate,
            "isolation": "this stack's networks must not reach one another; ccoas's engine enforces it, Compose does not",
            "dns": network.dns,
            "purpose": network.purpose,
        },
    }


def _service(service: Service) -> dict[str, Any]:
    body: dict[str, Any] = {
        "container_name": service.container_name,
        "image": service.image.ref,
        "pull_policy": service.image.pull,
        "user": service.user,
        "read_only": service.read_only,
        "cap_drop": list(service.cap_drop),
        "security_opt": list(service.security_opt),
        "environment": dict(sorted(service.environment.items())),
        "networks": {network: {"aliases": list(aliases)} for network, aliases in sorted(service.networks.items())},
        "expose": [str(port) for port in service.expose],
        "healthcheck": healthcheck(service.healthcheck),
        "restart": f"{service.restart.policy}:{service.restart.max_retries}",
        "stop_signal": service.stop.signal,
        "stop_grace_period": duration(service.stop.timeout_s),
        "logging": {"options": log_options(service.logs)},
        "labels": dict(sorted(service.labels.items())),
    }
    if service.cap_add:
        body["cap_add"] = list(service.cap_add)
    if service.entrypoint is not None:
        body["entrypoint"] = list(service.entrypoint)
    if service.command is not None:
        body["command"] = list(service.command)
    if service.tmpfs:
        body["tmpfs"] = [f"{t.target}:{t.options}" for t in service.tmpfs]
    if service.ports:
        body["ports"] = [_port(port) for port in service.ports]
    volumes = [f"{m.volume}:{m.target}" + (":ro" if m.read_only else "") for m in service.volumes]
    volumes += [f"{RUNTIME_DIR_VARIABLE}/{m.name}:{m.target}" for m in service.runtime_mounts]
    if service.config is not None:
        volumes.append(f"./{service.config.source}:{service.config.target}:ro")
    if volumes:
        body["volumes"] = volumes
    if service.secrets:
        body["secrets"] = [
            {"source": secret_file_name(m), "target": m.target, "uid": str(m.uid), "gid": str(m.gid), "mode": m.mode}
            for m in sorted(service.secrets, key=lambda m: m.target)
        ]
    if service.depends_on:
        body["depends_on"] = {d.service: {"condition": d.condition} for d in service.depends_on}
    limits: dict[str, Any] = {}
    if service.limits.memory_bytes is not None:
        limits["memory"] = memory(service.limits.memory_bytes)
    if service.limits.nano_cpus is not None:
        limits["cpus"] = service.limits.nano_cpus / 1e9
    if limits:
        body["deploy"] = {"resources": {"limits": limits}}
    if service.limits.pids is not None:
        body["pids_limit"] = service.limits.pids
    extension: dict[str, Any] = {
        "summary": service.summary,
        "liveness": healthcheck(service.liveness),
        "cap_add_reason": service.cap_add_reason,
    }
    if service.image.recipe is not None:
        extension["recipe"] = {"containerfile": service.image.recipe.containerfile, "digest": service.image.recipe.digest}
    if service.hooks:
        extension["hooks"] = [
            {"kind": h.kind, "stage": h.stage, "command": list(h.command), "description": h.description} for h in service.hooks
        ]
    body[EXTENSION] = extension
    return body


def _port(port) -> dict[str, Any]:
    published: dict[str, Any] = {"target": port.container_port, "host_ip": port.host_ip, "protocol": port.protocol}
    if port.host_port:  # 0: the engine picks a free port, which in Compose is "no published port given"
        published["published"] = str(port.host_port)
    return published
