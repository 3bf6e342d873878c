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

import re
import shlex
from pathlib import PurePosixPath
from typing import Any, Callable

from ccoas.engine.docker_api import log_options
from ccoas.plan import LABEL_PREFIX, PLAN_SCHEMA_VERSION, HealthCheck, Plan, SecretMount, Service
from ccoas.state import secret_file_in

SECRETS_DIR_VARIABLE = "${CCOAS_SECRETS_DIR:?set CCOAS_SECRETS_DIR to the directory ccoas secrets init wrote}"
RUNTIME_DIR_VARIABLE = "${CCOAS_RUNTIME_DIR:?set CCOAS_RUNTIME_DIR to a directory shared with the containers}"
EXTENSION = "x-ccoas"


SECRET_STORE_HOOKS = ("vault-init-unseal", "vault-secrets")
"""Hook kinds that are the secret store's own steps: a service with them is not in Compose mode."""


def compose_services(plan: Plan) -> list[Service]:
    """The services Compose mode runs, in start order: every one but the secret store."""
    return [s for s in plan.services if not any(h.kind in SECRET_STORE_HOOKS for h in s.hooks)]


VARIABLES = {
    "CCOAS_SECRETS_DIR": "the directory `ccoas secrets init STACK --name NAME --out DIR` wrote (absolute path)",
    "CCOAS_RUNTIME_DIR": "a directory shared with the containers for their runtime mounts (unix sockets)",
}
"""Every variable an export may reference, and what to set it to (the header lists those it uses)."""
TESTED_WITH = "podman-compose 1.6.0 on rootless Podman 4.3.1 (Debian 12)"


def compose_text(plan: Plan, dump: Callable[[Any], str]) -> str:
    """``compose.yaml``: a header saying how to run it and which variables it needs, then the
    document (``dump``: the render's deterministic YAML)."""
    document = compose_document(plan)
    body = dump(document)
    used = sorted(set(re.findall(r"(?<!\$)\$\{(\w+)", body)))
    unknown = [name for name in used if name not in VARIABLES]
    if unknown:
        raise ValueError(f"the export references undocumented variables {unknown}: describe them in VARIABLES")
    settles = sorted(name for name in document["services"] if name.endswith(SETTLE_SUFFIX))
    lines = [
        f"# Stack {plan.stack} for Compose, exported from its ccoas plan by `ccoas render`: do not edit.",
        "# Compose mode has no Vault: every secret is a file that `ccoas secrets init` generates, one per",
        "# reader, owned by the uid that reader runs as in a rootless engine (Compose ignores uid/gid/mode).",
        "#",
        "# Variables it needs (it refuses to start without them):",
        *(f"#   {name}: {VARIABLES[name]}" for name in used),
        "#",
        "# Run it from this directory (config directories are relative to it), as the rootless engine's user:",
        f"#   ccoas secrets init STACK --name {plan.stack} --out DIR    (as root, once)",
        "#   CCOAS_SECRETS_DIR=DIR podman-compose up -d",
        "#   podman-compose down -v    (containers, networks and volumes)",
        "#",
        "# One-shots settle a service as `ccoas up` does: they wait until it is alive and ready (bounded)",
        f"# and run its hooks ({', '.join(settles) or 'none here'}); dependants wait for them to complete",
        "# (Podman before 4.6 ignores service_healthy). Images are never pulled (pull_policy: never).",
        f"# Run end to end with {TESTED_WITH}.",
        *(["# Edge: Nginx's ports are published by the engine (no host listener): see x-ccoas.edge."] if EXTENSION in document and "edge" in document[EXTENSION] else []),
    ]
    return "\n".join(lines) + "\n" + body


def compose_document(plan: Plan) -> dict[str, Any]:
    """The whole Compose document for ``plan`` (dump it with ``yaml.safe_dump(sort_keys=True)``)."""
    services = compose_services(plan)
    names = {s.name for s in services}
    settled = settled_services(services)
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
        "services": {service.name: _service(service, names, settled) for service in sorted(services, key=lambda s: s.name)},
    }
    if plan.edge is not None and plan.edge.listener.kind == "host" and "nginx" in names:
        # Compose runs no host listener: Nginx's own ports are published (its TCP listeners),
        # and its PROXY-protocol sockets are on a tmpfs of its own, which nothing else reaches.
        nginx = document["services"]["nginx"]
        nginx["ports"] = [_port(port) for port in plan.edge.listener.ports]
        edge_dir = next(m.target for m in plan.service("nginx").runtime_mounts if m.name == plan.edge.listener.socket_mount)
        nginx["volumes"] = [v for v in nginx["volumes"] if not v.endswith(f":{edge_dir}")]
        # mode 1777 as /tmp: a tmpfs comes up owned by the container's root (only Nginx runs there)
        nginx["tmpfs"] = [*nginx.get("tmpfs", []), f"{edge_dir}:rw,nosuid,nodev,noexec,size=1m,mode=1777"]
        document[EXTENSION]["edge"] = EDGE_NOTE
    for service in services:
        if service.name in settled:
            document["services"][settle_name(service)] = settle_service(service)
            document["services"][settled_name(service)] = gate_service(service)
    mounted = {m.volume for s in services for m in s.volumes}
    volumes = [v for v in sorted(plan.volumes, key=lambda v: v.name) if v.name in mounted]
    document["volumes"] = {volume.name: {"name": volume.engine_name, "labels": dict(sorted(volume.labels.items()))} for volume in volumes}
    if settled:
        document["volumes"][MARKS_VOLUME] = {
            "name": f"{plan.stack}-{MARKS_VOLUME}",
            "labels": dict(sorted(plan.labels.items())),
            "driver_opts": {"type": "tmpfs", "device": "tmpfs", "o": "nosuid,nodev,noexec,mode=1777"},
        }
    if not document["volumes"]:
        del document["volumes"]
    files = {secret_name(s, m): secret_path(s, m) for s in services for m in s.secrets}
    if files:
        document["secrets"] = {name: {"file": path} for name, path in sorted(files.items())}
    return document


EDGE_NOTE = (
    "the plan's edge listener (HAProxy in the host's network namespace, PROXY protocol to Nginx over a unix socket) "
    "is ccoas's, not Compose's: here the engine publishes Nginx's ports itself, so Nginx sees the address the "
    "engine's port forwarder shows it: each client's under a rootful engine, one address for every client under "
    "rootless Podman (its per-client limits then count all clients together). Nginx's PROXY-protocol sockets are "
    "on a tmpfs of its own, which nothing else reaches"
)
"""What the Compose export does instead of the host listener (:mod:`ccoas.listener`)."""

SETTLE_SUFFIX = "-settle"
SETTLED_SUFFIX = "-settled"
SETTLE_TIMEOUT_S = 300
"""How long a one-shot waits for each stage of its service: ``ccoas up``'s default ``--timeout``
(or longer, when the check's own start period and retries take longer, as the engine allows)."""
HOOK_ATTEMPTS = 5
HOOK_RETRY_S = 3
MARKS_VOLUME = "ccoas-settled"
MARKS_DIR = "/run/ccoas-settled"
"""A tmpfs volume the settle containers and their gates share: ``<service>`` once a service
settled, ``<service>.failed`` (with the reason) when it could not; gone with the stack."""


def settled_services(services: list[Service]) -> set[str]:
    """The services that get a settle container and a gate: those with hooks, and those another
    service waits for."""
    waited_for = {d.service for s in services for d in s.depends_on}
    return {s.name for s in services if any(h.kind == "exec" for h in s.hooks) or s.name in waited_for}


def settle_name(service: Service) -> str:
    return f"{service.name}{SETTLE_SUFFIX}"


def settled_name(service: Service) -> str:
    return f"{service.name}{SETTLED_SUFFIX}"


def settle_script(service: Service) -> str:
    """What ``ccoas up`` does once a container started (:meth:`ccoas.steps.Steps.settle`), as a
    shell script: wait until the service is alive (its liveness check), run its ``alive``
    hooks, wait until it is ready (its readiness check), run its ``ready`` hooks; then mark it
    settled and stay up until stopped. Each wait is bounded and says what it waited for; each
    hook (idempotent) is retried a few times; a failure is marked with its reason."""
    mark = f"{MARKS_DIR}/{service.name}"
    lines = [
        f"# ccoas: settle {service.name} as `ccoas up` does: alive, its alive hooks, ready, its ready hooks",
        "set -u",
        f"rm -f {mark} {mark}.failed",
        "fail() {",
        f'	echo "ccoas: {service.name}: $*" >&2',
        f'	echo "$*" > {mark}.failed',
        "	exit 1",
        "}",
        "wait_for() {  # STAGE SECONDS INTERVAL CHECK...",
        "	stage=$1 limit=$2 interval=$3 waited=0",
        "	shift 3",
        '	until "$@" >/dev/null 2>&1; do',
        '		[ "$waited" -lt "$limit" ] || fail "not $stage after ${limit}s (check: $*)"',
        '		sleep "$interval"',
        "		waited=$((waited + interval))",
        "	done",
        f'	echo "ccoas: {service.name} is $stage after ${{waited}}s"',
        "}",
        "run_hook() {  # DESCRIPTION COMMAND...",
        "	description=$1 attempt=1",
        "	shift",
        f'	echo "ccoas: {service.name}: $description"',
        '	until "$@"; do',
        f'		[ "$attempt" -lt {HOOK_ATTEMPTS} ] || fail "$description failed {HOOK_ATTEMPTS} times"',
        "		attempt=$((attempt + 1))",
        f"		sleep {HOOK_RETRY_S}",
        "	done",
        "}",
    ]
    for stage, check in (("alive", service.liveness), ("ready", service.healthcheck)):
        limit = max(SETTLE_TIMEOUT_S, check.start_period_s + check.interval_s * check.retries)
        lines.append(f"wait_for {stage} {limit} {check.interval_s} {shlex.join(check.argv)}")
        for hook in service.hooks:
            if hook.kind == "exec" and hook.stage == stage:
                lines.append(f"run_hook {shlex.quote(hook.description)} {shlex.join(hook.command)}")
    lines += [
        f": > {mark}",
        f'echo "ccoas: {service.name} settled"',
        "trap 'exit 0' TERM INT",
        "while :; do sleep 1; done",
    ]
    return "\n".join(lines) + "\n"


def gate_script(service: Service) -> str:
    """The gate's script: done when ``service`` settled, failed when it could not (bounded)."""
    mark = f"{MARKS_DIR}/{service.name}"
    limit = sum(max(SETTLE_TIMEOUT_S, c.start_period_s + c.interval_s * c.retries) for c in (service.liveness, service.healthcheck))
    limit += HOOK_ATTEMPTS * HOOK_RETRY_S * len(service.hooks) + SETTLE_TIMEOUT_S  # and the hooks' own time
    return "\n".join(
        (
            f"# ccoas: done once {service.name} settled (its hooks ran, it is ready)",
            "waited=0",
            f"until [ -e {mark} ]; do",
            f'	if [ -e {mark}.failed ]; then echo "ccoas: {service.name} did not settle: $(cat {mark}.failed)" >&2; exit 1; fi',
            f'	if [ "$waited" -ge {limit} ]; then echo "ccoas: {service.name} not settled after {limit}s: see the logs of {settle_name(service)}" >&2; exit 1; fi',
            "	sleep 1",
            "	waited=$((waited + 1))",
            "done",
            f'echo "ccoas: {service.name} settled"',
        )
    ) + "\n"


def settle_service(service: Service) -> dict[str, Any]:
    """A container that settles ``service``: its image, user, hardening, environment, config and
    secrets, in its network namespace (``network_mode: service:…``, so the plan's checks and
    hooks reach it on loopback as an exec in its container would), without its data volumes.
    It stays up once done, as a Kubernetes sidecar does: Podman 4.3 cannot start a container
    that requires an exited one whose own dependency runs (its dependency graph misses it)."""
    body = _helper(service, SETTLE_SUFFIX, settle_script(service), f"settles {service.name}: waits until it is alive and ready, runs its hooks, stays up")
    body["network_mode"] = f"service:{service.name}"
    body["depends_on"] = {service.name: {"condition": "service_started"}}
    body["stop_signal"] = "SIGTERM"
    body["stop_grace_period"] = "5s"
    return body


def gate_service(service: Service) -> dict[str, Any]:
    """The one-shot dependants wait for (``service_completed_successfully``): it completes once
    ``service`` settled, and fails with the reason when it could not. Podman before 4.6 ignores
    ``service_healthy``; this condition it honours. It depends on nothing itself (it waits for
    the mark by itself): Podman 4.3 cannot start a container that requires an exited container
    with dependencies of its own ("not found in input list"), and starting a dependant starts
    the gate again, which then finds the mark at once."""
    body = _helper(service, SETTLED_SUFFIX, gate_script(service), f"completes once {service.name} settled (its hooks ran, it is ready)")
    for key in ("environment", "secrets"):
        body.pop(key, None)
    body["volumes"] = [f"{MARKS_VOLUME}:{MARKS_DIR}:ro"]
    body["network_mode"] = "none"
    return body


def _helper(service: Service, suffix: str, script: str, summary: str) -> dict[str, Any]:
    """A container the export adds for ``service``: its image, user and hardening, a script."""
    body = _service(service, set(), set())
    for key in ("networks", "expose", "ports", "depends_on", "stop_signal", "stop_grace_period", "volumes", EXTENSION):
        body.pop(key, None)
    body["container_name"] = f"{service.container_name}{suffix}"
    body["entrypoint"] = ["sh", "-c"]
    body["command"] = [literal(script)]
    body["healthcheck"] = {"disable": True}
    body["restart"] = "no"
    body["labels"] = {**body["labels"], f"{LABEL_PREFIX}.settles": service.name}
    volumes = [f"{MARKS_VOLUME}:{MARKS_DIR}"]
    if service.config is not None:
        volumes.append(f"./{service.config.source}:{service.config.target}:ro")
    body["volumes"] = volumes
    body[EXTENSION] = {"summary": summary}
    return body


def secret_name(service: Service, mount: SecretMount) -> str:
    """The Compose secret for ``service``'s copy of a secret: every reader has its own file."""
    return f"{service.name}.{mount.secret}"


def secret_path(service: Service, mount: SecretMount) -> str:
    """That file, under ``$CCOAS_SECRETS_DIR``, where ``ccoas secrets init`` writes it."""
    return f"{SECRETS_DIR_VARIABLE}/{secret_file_in(PurePosixPath(), service.name, mount.secret)}"


def literal(text: str) -> str:
    """``text`` as a Compose value: Compose interpolates ``$name`` and ``${…}`` everywhere, ``$$`` is a ``$``."""
    return text.replace("$", "$$")


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
        "test": [literal(part) for part in check.test],
        "interval": duration(check.interval_s),
        "timeout": duration(check.timeout_s),
        "retries": check.retries,
        "start_period": duration(check.start_period_s),
    }


def _network(network) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": network.engine_name,
        "internal": network.internal,
        "labels": dict(sorted(network.labels.items())),
        EXTENSION: {
            "isolate": network.isolate,
            "isolation": (
                "this stack's networks must not reach one another: Podman's isolate option (driver_opts) "
                "enforces it under podman-compose; Docker's bridge driver ignores the option and isolates "
                "bridge networks from one another itself"
            ),
            "dns": network.dns,
            "purpose": network.purpose,
        },
    }
    if network.isolate:
        body["driver_opts"] = {"isolate": "true"}
    return body


def _service(service: Service, exported: set[str], settled: set[str]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "container_name": service.container_name,
        "image": service.image.ref,
        "pull_policy": service.image.pull,
        "user": service.user,
        "read_only": service.read_only,
        "cap_drop": list(service.cap_drop),
        "security_opt": list(service.security_opt),
        "environment": {key: literal(value) for key, value in sorted(service.environment.items())},
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
        body["entrypoint"] = [literal(part) for part in service.entrypoint]
    if service.command is not None:
        body["command"] = [literal(part) for part in service.command]
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
    depends_on: dict[str, Any] = {}
    for dependency in service.depends_on:
        if dependency.service in exported:
            # the condition for tools that honour it, and the one-shot that settles the
            # dependency (its hooks run, it answers) for those that do not (Podman < 4.6)
            depends_on[dependency.service] = {"condition": dependency.condition}
            if dependency.service in settled:
                depends_on[f"{dependency.service}{SETTLED_SUFFIX}"] = {"condition": "service_completed_successfully"}
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
