"""The plan as a Compose file (docker compose, podman-compose): Compose mode.

:func:`compose_document` translates each plan field into its Compose spelling and never
re-derives a setting. What Compose cannot say is kept, not dropped, in ``x-ccoas``
extension fields, which every Compose implementation ignores and preserves: network
isolation (the plan's ``isolate``: networks of a stack cannot reach one another, which
ccoas's engine enforces and Compose has no key for), liveness checks, hooks and why
capabilities are what they are.

Compose mode has no Vault (see the README, "Compose"): the service whose hooks are the
secret store's own steps is left out, with what only it used (its network, volume and
runtime dir), and every secret is a file ``ccoas secrets init`` made under
``$CCOAS_SECRETS_DIR``: one per reader (``<service>/<secret>``), owned by that reader's uid,
because Compose ignores ``uid``/``gid``/``mode`` on file secrets.

The document belongs in the render directory (``compose.yaml`` beside the ``<component>/``
config directories it bind-mounts). Secret values are never in it.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from ccoas.engine.docker_api import log_options
from ccoas.plan import PLAN_SCHEMA_VERSION, HealthCheck, Plan, SecretMount, Service
from ccoas.state import secret_file_in

SECRETS_DIR_VARIABLE = "${CCOAS_SECRETS_DIR:?set CCOAS_SECRETS_DIR to the directory ccoas secrets init wrote}"
RUNTIME_DIR_VARIABLE = "${CCOAS_RUNTIME_DIR:?set CCOAS_RUNTIME_DIR to a directory shared with the containers}"
EXTENSION = "x-ccoas"


SECRET_STORE_HOOKS = ("vault-init-unseal", "vault-secrets")
"""Hook kinds that are the secret store's own steps: a service with them is not in Compose mode."""


def compose_services(plan: Plan) -> list[Service]:
    """The services Compose mode runs, in start order: every one but the secret store."""
    return [s for s in plan.services if not any(h.kind in SECRET_STORE_HOOKS for h in s.hooks)]


def compose_document(plan: Plan) -> dict[str, Any]:
    """The whole Compose document for ``plan`` (dump it with ``yaml.safe_dump(sort_keys=True)``)."""
    services = compose_services(plan)
    names = {s.name for s in services}
    used_networks = {n for s in services for n in s.networks}
    document: dict[str, Any] = {
        "name": plan.stack,
        EXTENSION: {
            "schema_version": PLAN_SCHEMA_VERSION,
            "stack": plan.stack,
            "environment": plan.environment,
            "domain": plan.domain,
            "start_order": [[name for name in tier if name in names] for tier in plan.start_order if set(tier) & names],
            "note": (
                "exported from the ccoas plan; config directories are relative to this file; "
                "secrets are files under $CCOAS_SECRETS_DIR (ccoas secrets init); no Vault in Compose mode; "
                "x-ccoas fields hold what Compose cannot express"
            ),
        },
        "networks": {n.name: _network(n) for n in sorted(plan.networks, key=lambda n: n.name) if n.name in used_networks},
        "services": {service.name: _service(service, names) for service in sorted(services, key=lambda s: s.name)},
    }
    mounted = {m.volume for s in services for m in s.volumes}
    volumes = [v for v in sorted(plan.volumes, key=lambda v: v.name) if v.name in mounted]
    if volumes:
        document["volumes"] = {volume.name: {"name": volume.engine_name, "labels": dict(sorted(volume.labels.items()))} for volume in volumes}
    files = {secret_name(s, m): secret_path(s, m) for s in services for m in s.secrets}
    if files:
        document["secrets"] = {name: {"file": path} for name, path in sorted(files.items())}
    return document


def secret_name(service: Service, mount: SecretMount) -> str:
    """The Compose secret for ``service``'s copy of a secret: every reader has its own file."""
    return f"{service.name}.{mount.secret}"


def secret_path(service: Service, mount: SecretMount) -> str:
    """That file, under ``$CCOAS_SECRETS_DIR``, where ``ccoas secrets init`` writes it."""
    return f"{SECRETS_DIR_VARIABLE}/{secret_file_in(PurePosixPath(), service.name, mount.secret)}"


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


def _service(service: Service, exported: set[str]) -> dict[str, Any]:
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
        # no uid/gid/mode: Compose ignores them on file secrets; the files carry their owner and mode
        body["secrets"] = [{"source": secret_name(service, m), "target": m.target} for m in sorted(service.secrets, key=lambda m: m.target)]
    depends_on = {d.service: {"condition": d.condition} for d in service.depends_on if d.service in exported}
    if depends_on:
        body["depends_on"] = depends_on
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
