"""The plan's services as Docker Engine API bodies (``POST /containers/create``).

A pure translation: the local engine sends exactly this body, and the equivalence test
compares it with what the Pulumi program declares, so the two engines cannot drift.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ccoas.plan import LABEL_PREFIX, HealthCheck, Logs, Network, Plan, Service
from ccoas.state import StackPaths

SPEC_LABEL = f"{LABEL_PREFIX}.spec"
NS = 1_000_000_000


def healthcheck_body(check: HealthCheck) -> dict[str, Any]:
    return {
        "Test": list(check.test),
        "Interval": check.interval_s * NS,
        "Timeout": check.timeout_s * NS,
        "Retries": check.retries,
        "StartPeriod": check.start_period_s * NS,
    }


def mounts(plan: Plan, service: Service, paths: StackPaths) -> list[dict[str, Any]]:
    """Volumes, the read-only config dir, secret files and runtime dirs, in a fixed order."""
    result: list[dict[str, Any]] = [
        {"Type": "volume", "Source": plan.volume(m.volume).engine_name, "Target": m.target, "ReadOnly": m.read_only}
        for m in service.volumes
    ]
    if service.config is not None:
        result.append(
            {"Type": "bind", "Source": str(paths.config_dir(service.config.source)), "Target": service.config.target, "ReadOnly": True}
        )
    result += [
        {"Type": "bind", "Source": str(paths.secret_file(service.name, s.secret)), "Target": s.target, "ReadOnly": True}
        for s in service.secrets
    ]
    result += [
        {"Type": "bind", "Source": str(paths.runtime_mount(m.name)), "Target": m.target, "ReadOnly": False}
        for m in service.runtime_mounts
    ]
    return result


def log_options(logs: Logs) -> dict[str, str]:
    """The log cap as the engines' log options. The driver stays the engine's own (``""``):
    ``k8s-file`` under rootless Podman (its containers.conf), ``json-file`` under Docker;
    both read a plain number as bytes and keep one file."""
    return {"max-size": str(logs.max_size_bytes), "max-file": str(logs.max_files)}


def network_for(plan: Plan, name: str) -> Network:
    return plan.network(name)


def container_create_body(plan: Plan, service: Service, paths: StackPaths) -> dict[str, Any]:
    """The body of ``POST /containers/create`` for ``service`` (without the spec label)."""
    networks = sorted(service.networks)
    primary = plan.network(networks[0]).engine_name
    host_config: dict[str, Any] = {
        "ReadonlyRootfs": service.read_only,
        "CapDrop": list(service.cap_drop),
        "CapAdd": list(service.cap_add),
        "SecurityOpt": list(service.security_opt),
        "Tmpfs": {t.target: t.options for t in service.tmpfs},
        "Mounts": mounts(plan, service, paths),
        "PortBindings": {
            f"{p.container_port}/{p.protocol}": [{"HostIp": p.host_ip, "HostPort": str(p.host_port) if p.host_port else ""}]
            for p in service.ports
        },
        "RestartPolicy": {"Name": service.restart.policy, "MaximumRetryCount": service.restart.max_retries},
        "LogConfig": {"Type": "", "Config": log_options(service.logs)},
        "NetworkMode": primary,
    }
    if service.limits.memory_bytes is not None:
        host_config["Memory"] = service.limits.memory_bytes
    if service.limits.nano_cpus is not None:
        host_config["NanoCpus"] = service.limits.nano_cpus
    if service.limits.pids is not None:
        host_config["PidsLimit"] = service.limits.pids
    body: dict[str, Any] = {
        "Image": service.image.ref,
        "User": service.user,
        "Env": [f"{key}={value}" for key, value in sorted(service.environment.items())],
        "Labels": dict(sorted(service.labels.items())),
        "Healthcheck": healthcheck_body(service.healthcheck),
        "StopSignal": service.stop.signal,
        "StopTimeout": service.stop.timeout_s,
        "ExposedPorts": {f"{port}/tcp": {} for port in service.expose},
        "HostConfig": host_config,
        "NetworkingConfig": {
            "EndpointsConfig": {
                plan.network(n).engine_name: {"Aliases": list(service.networks[n])} for n in networks
            }
        },
    }
    if service.entrypoint is not None:
        body["Entrypoint"] = list(service.entrypoint)
    if service.command is not None:
        body["Cmd"] = list(service.command)
    return body


def spec_hash(body: dict[str, Any], extra: dict[str, str] | None = None) -> str:
    """Content hash of a container's desired state: a changed hash means recreate."""
    document = json.dumps({"body": body, "extra": extra or {}}, sort_keys=True)
    return hashlib.sha256(document.encode()).hexdigest()[:16]
