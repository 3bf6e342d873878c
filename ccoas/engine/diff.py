"""The diff: what must happen to turn an observed state into the plan, each with its cause.

A pure function — no engine, no file — of the plan, the desired hashes
(:class:`Desired`, computed by the engine from the plan, the image ids, the rendered
config and the secret versions) and the :class:`~ccoas.engine.observed.ObservedState`.
It returns :class:`Operation`\\ s in the order they are applied: images, networks, volumes,
containers of the stack that the plan no longer has, then each service in start order
(its container, then the steps of its own whose inputs changed). ``ccoas up --dry-run``
prints them; :meth:`ccoas.engine.local.LocalEngine.apply` carries them out.

A service whose container is created, recreated, started or restarted settles again
(health gating, every hook): those steps are implied, not listed. A step is listed alone
only when its container is untouched but its inputs changed (an interrupted ``up``, a
sealed Vault, a secret file gone, a rotated secret).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ccoas.engine.observed import ObservedContainer, ObservedState
from ccoas.errors import EngineError
from ccoas.plan import Plan, Service

CAUSES = {"image": "image changed", "config": "config changed", "secrets": "secret rotated", "body": "settings changed"}
"""Part of a container's desired state → what a recreate says when it changed."""


@dataclass(frozen=True)
class Operation:
    action: str
    """``build``, ``create``, ``recreate``, ``start``, ``restart``, ``remove``, ``run``, ``unseal``…"""
    kind: str
    """``image``, ``network``, ``volume``, ``container`` or ``step``."""
    resource: str
    """A service name (containers, images, steps) or an engine name (networks, volumes, extra containers)."""
    cause: str
    step: str = ""
    """For ``kind == "step"``: the step's key (see :func:`hook_step`)."""

    def __str__(self) -> str:
        what = f"{self.kind} {self.resource}" if self.kind in ("image", "network", "volume") else self.resource
        return f"{self.action} {what}: {self.cause}"


@dataclass(frozen=True)
class DesiredService:
    spec: str
    """The hash a converged container carries in its ``io.ccoas.spec`` label."""
    parts: dict[str, str] = field(default_factory=dict)
    """The hashes of its parts (:data:`CAUSES`)."""


@dataclass(frozen=True)
class Desired:
    services: dict[str, DesiredService]
    steps: dict[str, str] = field(default_factory=dict)
    """Step key → hash of the inputs it would run with now."""


def hook_step(service: str, index: int) -> str:
    return f"hook:{service}:{index}"


VAULT_BOOTSTRAP = "vault:bootstrap"
VAULT_SECRETS = "vault:secrets"
CONTAINER_STEP_HOOKS = ("vault-init-unseal", "vault-secrets")
"""Hooks with a step of their own (:data:`VAULT_BOOTSTRAP`, :data:`VAULT_SECRETS`)."""


def recreate_cause(desired: DesiredService, current: ObservedContainer) -> str:
    if not current.parts:
        return "desired state changed"
    changed = [CAUSES[p] for p in CAUSES if desired.parts.get(p) != current.parts.get(p)]
    return ", ".join(changed) or "desired state changed"


UNISOLATED = (
    "the engine holds it without isolation (a Docker-API client listed or inspected it: Podman 4.3 then drops "
    "`isolate` from its in-memory copy); read again from its file, and its running containers restart"
)


def unisolated(plan: Plan, observed: ObservedState) -> frozenset[str]:
    """Networks of the plan (by name) that the engine holds, or runs, without the isolation the plan asks for."""
    return frozenset(
        n.name
        for n in plan.networks
        if n.isolate and (held := observed.networks.get(n.engine_name)) is not None and not (held.isolate and held.enforced)
    )


def container_operation(
    service: Service, desired: DesiredService, current: ObservedContainer | None, replaced: set[str], lost: frozenset[str] = frozenset()
) -> Operation | None:
    """What ``service``'s container needs, given which of its dependencies got a new container
    and which of the plan's networks the engine held without isolation (``lost``): netavark
    applies a network's isolation when a container on it starts."""
    if current is None:
        return Operation("create", "container", service.name, "container missing")
    if current.spec != desired.spec:
        return Operation("recreate", "container", service.name, recreate_cause(desired, current))
    if current.state != "running":
        return Operation("start", "container", service.name, f"container {current.state}")
    moved = [d.service for d in service.depends_on if d.service in replaced]
    if moved:
        # a dependency got a new container (and address): restart so it resolves and connects afresh
        return Operation("restart", "container", service.name, f"dependency {', '.join(moved)} replaced")
    regained = sorted(set(service.networks) & lost)
    if regained:
        return Operation("restart", "container", service.name, f"network {', '.join(regained)} started without isolation")
    return None


def step_operations(plan: Plan, service: Service, desired: Desired, observed: ObservedState) -> list[Operation]:
    """Steps of an untouched ``service`` whose inputs changed since they last ran."""
    ops = []
    current = observed.containers.get(service.container_name)
    if current is not None and current.health not in ("", "healthy"):
        ops.append(Operation("wait", "step", service.name, f"health is {current.health}", f"health:{service.name}"))
    for index, hook in enumerate(service.hooks):
        if hook.kind in CONTAINER_STEP_HOOKS:
            continue
        key = hook_step(service.name, index)
        if observed.steps.get(key) != desired.steps.get(key):
            ops.append(Operation("run", "step", service.name, f"{hook.description}: not run on this container with these inputs", key))
    if service.name == "vault" and plan.vault is not None:
        ops += vault_operations(plan, desired, observed)
    return ops


def vault_operations(plan: Plan, desired: Desired, observed: ObservedState) -> list[Operation]:
    """Vault's own steps when its container is untouched. While Vault cannot be read (sealed,
    silent, ccoas's token refused) the secret versions are unknown: the bootstrap op implies
    writing the secret files again once it is readable."""
    vault = observed.vault
    if vault is None or vault.sealed is None:
        return [Operation("unseal", "step", "vault", "Vault does not answer on its socket", VAULT_BOOTSTRAP)]
    if vault.sealed:
        return [Operation("unseal", "step", "vault", "sealed", VAULT_BOOTSTRAP)]
    if not vault.token_valid:
        return [Operation("bootstrap", "step", "vault", "ccoas's Vault token does not work", VAULT_BOOTSTRAP)]
    ops = []
    if observed.steps.get(VAULT_BOOTSTRAP) != desired.steps.get(VAULT_BOOTSTRAP):
        ops.append(Operation("bootstrap", "step", "vault", "not bootstrapped on this container", VAULT_BOOTSTRAP))
    elif vault.stack_ca_missing:
        ops.append(Operation("bootstrap", "step", "vault", "no stack CA yet (a stack from before it)", VAULT_BOOTSTRAP))
    missing = sorted(s.name for s in plan.secrets if vault.versions.get(s.name) is None)
    absent = sorted(name for name, present in observed.secret_files.items() if not present)
    if missing:
        ops.append(Operation("write", "step", "secrets", f"{len(missing)} not in Vault yet ({', '.join(missing)})", VAULT_SECRETS))
    elif absent:
        ops.append(Operation("write", "step", "secrets", f"secret files missing for {', '.join(absent)}", VAULT_SECRETS))
    elif vault.certificate_renewal:
        ops.append(Operation("renew", "step", "secrets", vault.certificate_renewal, VAULT_SECRETS))
    elif observed.steps.get(VAULT_SECRETS) != desired.steps.get(VAULT_SECRETS):
        ops.append(Operation("write", "step", "secrets", "secret versions changed since the files were written", VAULT_SECRETS))
    return ops


def diff(plan: Plan, desired: Desired, observed: ObservedState) -> list[Operation]:
    """Every operation that turns ``observed`` into ``plan``, in the order they are applied."""
    ops: list[Operation] = []
    for service in plan.services:
        if service.image.source == "local" and service.image.ref not in observed.images:
            ops.append(Operation("build", "image", service.name, f"{service.image.ref} not on this host"))
    for network in plan.networks:
        current = observed.networks.get(network.engine_name)
        if current is None:
            ops.append(Operation("create", "network", network.engine_name, "missing"))
        elif current.internal != network.internal:
            raise EngineError(
                f"network {network.engine_name} exists with internal={current.internal}; "
                f"run `ccoas down` first so it can be recreated as the plan says"
            )
        elif network.isolate and not current.isolate:
            ops.append(Operation("reload", "network", network.engine_name, UNISOLATED))
    for volume in plan.volumes:
        if volume.engine_name not in observed.volumes:
            ops.append(Operation("create", "volume", volume.engine_name, "missing"))
    planned = {s.container_name for s in plan.services}
    for name, container in sorted(observed.containers.items()):
        if name not in planned:
            why = f"service {container.service} is not in the plan" if container.service else "not in the plan"
            ops.append(Operation("remove", "container", name, why))
    replaced: set[str] = set()
    lost = unisolated(plan, observed)
    for service in plan.services:
        op = container_operation(service, desired.services[service.name], observed.containers.get(service.container_name), replaced, lost)
        if op is not None:
            ops.append(op)
            replaced.add(service.name)
        else:
            ops += step_operations(plan, service, desired, observed)
    return ops
