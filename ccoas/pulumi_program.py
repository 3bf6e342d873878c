"""The plan as pulumi-docker resources: what ``ccoas up --engine pulumi`` declares.

:func:`declare` is the whole Pulumi program. It reads a :class:`~ccoas.plan.Plan` and
never re-derives a setting: networks, volumes and containers carry exactly the
plan's values, translated into the arguments of ``pulumi_docker`` 5.x. The local engine
translates the same plan into Docker Engine API bodies
(:mod:`ccoas.engine.docker_api`); ``tests/test_engine_equivalence.py`` proves that the
two translations describe the same containers.

Where pulumi-docker's arguments differ from the Docker API, the mapping is exact or the
gap is said out loud:

- memory: ``memory`` is in MiB (the provider multiplies by 1024²); a plan limit that is
  not a whole number of MiB is refused rather than rounded.
- cpus: ``cpus`` is a decimal string the provider parses into ``NanoCpus`` exactly
  (``500000000`` → ``"0.5"``); ``cpu_shares`` (a relative weight) is never used.
- pids: pulumi-docker 5.2's ``Container`` has no pids limit. The program cannot enforce
  the plan's ``limits.pids``; it exports them as ``unenforced`` so the gap is visible in
  every preview and ``up`` (see :func:`unenforced`).
- hooks: the plan's hooks (Vault init/unseal, the Postgres bootstrap) are steps, not
  resources; the Pulumi program does not run them (see :mod:`ccoas.pulumi_engine`).

Stack outputs never carry a secret value: only the Vault KV paths where they live.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pulumi
import pulumi_docker as docker

from ccoas.engine.docker_api import log_options
from ccoas.errors import CcoasError
from ccoas.plan import HealthCheck, Network, Plan, Service, Volume
from ccoas.state import StackPaths

MIB = 1024**2
NANO = Decimal(1_000_000_000)


# -- limits -----------------------------------------------------------------------------------


def memory_mib(service: Service) -> int | None:
    """The plan's memory limit in MiB, the unit of pulumi-docker's ``memory``; exact or refused."""
    value = service.limits.memory_bytes
    if value is None:
        return None
    if value % MIB:
        raise CcoasError(
            f"{service.name}: memory limit {value} bytes is not a whole number of MiB; the Pulumi engine "
            f"(pulumi-docker `memory`, in MiB) cannot express it exactly: use Mi or Gi units in the stack file"
        )
    return value // MIB


def cpus(service: Service) -> str | None:
    """The plan's ``nano_cpus`` as pulumi-docker's ``cpus`` string, which the provider parses back exactly."""
    value = service.limits.nano_cpus
    if value is None:
        return None
    return format((Decimal(value) / NANO).normalize(), "f")


def unenforced(plan: Plan) -> dict[str, list[str]]:
    """Plan settings this program cannot declare, per service (exported, and printed by the driver)."""
    gaps: dict[str, list[str]] = {}
    for service in plan.services:
        if service.limits.pids is not None:
            gaps.setdefault(service.name, []).append(
                f"pids limit {service.limits.pids}: pulumi-docker {_provider_version()} Container has no pids limit"
            )
        if service.hooks:
            gaps.setdefault(service.name, []).extend(
                f"hook {hook.kind} ({hook.stage}): not a resource, not run by the Pulumi program" for hook in service.hooks
            )
    return gaps


def _provider_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pulumi-docker")
    except PackageNotFoundError:  # pragma: no cover - the SDK is a dependency
        return "5"


# -- resources --------------------------------------------------------------------------------


def _labels(labels: dict[str, str], kind: Any) -> list[Any]:
    return [kind(label=key, value=value) for key, value in sorted(labels.items())]


def network(net: Network, opts: pulumi.ResourceOptions) -> docker.Network:
    return docker.Network(
        net.name,
        name=net.engine_name,
        driver="bridge",
        internal=net.internal,
        options={"isolate": "true"} if net.isolate else None,
        labels=_labels(net.labels, docker.NetworkLabelArgs),
        opts=opts,
    )


def volume(vol: Volume, opts: pulumi.ResourceOptions) -> docker.Volume:
    return docker.Volume(
        vol.name,
        name=vol.engine_name,
        labels=_labels(vol.labels, docker.VolumeLabelArgs),
        # Data outlives `pulumi destroy`, as it outlives `ccoas down` (remove with `ccoas down --purge`).
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(retain_on_delete=True)),
    )


def healthcheck(check: HealthCheck) -> docker.ContainerHealthcheckArgs:
    return docker.ContainerHealthcheckArgs(
        tests=list(check.test),
        interval=f"{check.interval_s}s",
        timeout=f"{check.timeout_s}s",
        retries=check.retries,
        start_period=f"{check.start_period_s}s",
    )


def mounts(
    service: Service, paths: StackPaths, volumes: dict[str, docker.Volume]
) -> list[docker.ContainerMountArgs]:
    """Volumes, the read-only config dir, read-only secret files and runtime dirs (the local engine's order)."""
    result = [
        docker.ContainerMountArgs(type="volume", source=volumes[m.volume].name, target=m.target, read_only=m.read_only)
        for m in service.volumes
    ]
    if service.config is not None:
        result.append(
            docker.ContainerMountArgs(
                type="bind", source=str(paths.config_dir(service.config.source)), target=service.config.target, read_only=True
            )
        )
    result += [
        docker.ContainerMountArgs(
            type="bind", source=str(paths.secret_file(service.name, s.secret)), target=s.target, read_only=True
        )
        for s in service.secrets
    ]
    result += [
        docker.ContainerMountArgs(type="bind", source=str(paths.runtime_mount(m.name)), target=m.target, read_only=False)
        for m in service.runtime_mounts
    ]
    return result


def container_args(
    service: Service,
    paths: StackPaths,
    networks: dict[str, docker.Network],
    volumes: dict[str, docker.Volume],
) -> dict[str, Any]:
    """Every plan setting of ``service`` as keyword arguments of ``pulumi_docker.Container``."""
    args: dict[str, Any] = {
        "name": service.container_name,
        "image": service.image.ref,  # present on the host before Pulumi runs: never pulled
        "user": service.user,
        "read_only": service.read_only,
        "capabilities": docker.ContainerCapabilitiesArgs(drops=list(service.cap_drop), adds=list(service.cap_add)),
        "security_opts": list(service.security_opt),
        "tmpfs": {t.target: t.options for t in service.tmpfs},
        "mounts": mounts(service, paths, volumes),
        "envs": [f"{key}={value}" for key, value in sorted(service.environment.items())],
        "labels": _labels(service.labels, docker.ContainerLabelArgs),
        "healthcheck": healthcheck(service.healthcheck),
        "restart": service.restart.policy,
        "stop_signal": service.stop.signal,
        "stop_timeout": service.stop.timeout_s,
        "max_retry_count": service.restart.max_retries,
        # No log_driver: the engine's own (k8s-file under rootless Podman), as the local engine does.
        "log_opts": log_options(service.logs),
        # No network_mode: the provider creates the container, disconnects the default bridge and
        # connects every network below with its aliases before the container starts. (Setting
        # network_mode to one of them too would make that connect fail: already attached.)
        "networks_advanced": [
            docker.ContainerNetworksAdvancedArgs(name=networks[n].name, aliases=list(aliases))
            for n, aliases in sorted(service.networks.items())
        ],
        "must_run": True,
        # Start order comes from depends_on; readiness gating (and the hooks between tiers) is not
        # the provider's: waiting for a sealed Vault to turn healthy would time out.
        "wait": False,
    }
    if service.ports:
        args["ports"] = [
            docker.ContainerPortArgs(
                internal=p.container_port, external=p.host_port or None, ip=p.host_ip, protocol=p.protocol
            )
            for p in service.ports
        ]
    if service.entrypoint is not None:
        args["entrypoints"] = list(service.entrypoint)
    if service.command is not None:
        args["command"] = list(service.command)
    if (memory := memory_mib(service)) is not None:
        args["memory"] = memory
    if (cpu := cpus(service)) is not None:
        args["cpus"] = cpu
    return args


# -- outputs ----------------------------------------------------------------------------------


def vault_paths(plan: Plan) -> dict[str, str]:
    """Secret name → its Vault KV v2 path (``<mount>/data/<prefix>/<path>``). Paths only, never values."""
    if plan.vault is None:
        return {}
    return {s.name: f"{plan.vault.kv_mount}/data/{plan.vault.prefix}/{s.vault_path}" for s in plan.secrets}


def _endpoints(ports: list[Any] | None) -> list[str]:
    """``host_ip:host_port->container_port/protocol`` as the engine published them (host port 0 is resolved)."""
    return [f"{p.ip}:{p.external}->{p.internal}/{p.protocol}" for p in ports or []]


# -- the program ------------------------------------------------------------------------------


def declare(plan: Plan, paths: StackPaths, docker_host: str | None) -> None:
    """Declare ``plan`` as pulumi-docker resources on the engine at ``docker_host`` (None: DOCKER_HOST)."""
    provider = docker.Provider("docker", host=docker_host) if docker_host else docker.Provider("docker")
    opts = pulumi.ResourceOptions(provider=provider)
    networks = {n.name: network(n, opts) for n in plan.networks}
    volumes = {v.name: volume(v, opts) for v in plan.volumes}
    containers: dict[str, docker.Container] = {}
    for service in plan.services:  # start order: every dependency is declared before its dependants
        needs = [containers[d.service] for d in service.depends_on]
        containers[service.name] = docker.Container(
            service.name,
            **container_args(service, paths, networks, volumes),
            opts=pulumi.ResourceOptions(provider=provider, depends_on=needs),
        )
    pulumi.export(
        "endpoints",
        {name: c.ports.apply(_endpoints) for name, c in containers.items() if plan.service(name).ports},
    )
    pulumi.export("secrets", vault_paths(plan))
    pulumi.export("containers", {name: plan.service(name).container_name for name in containers})
    pulumi.export("unenforced", unenforced(plan))
