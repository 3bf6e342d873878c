"""The local engine: applies a plan through the Docker Engine API on a rootless socket, in
three steps.

1. :meth:`LocalEngine.observe` reads the engine once into an
   :class:`~ccoas.engine.observed.ObservedState` (containers and their spec labels,
   networks, volumes, images, Vault's seal and secret versions, the inputs each step last
   ran with);
2. :func:`ccoas.engine.diff.diff` turns (plan, desired hashes, observed) into
   :class:`~ccoas.engine.diff.Operation`\\ s, each with its cause — ``ccoas up --dry-run``
   prints them;
3. :meth:`LocalEngine.apply` carries them out, service by service in start order, and
   settles what it touched (:class:`ccoas.steps.Steps`: health gating and hooks).

Each container carries the hash of its desired state (the exact create body, the rendered
config it mounts, the versions of the secrets it reads and the image id) and of each
part, so an unchanged plan makes no operation and a changed one names its cause. Podman
has no timer for health checks without systemd: ccoas runs them itself while it waits.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ccoas import host_files, listener, migrations
from ccoas.engine.diff import (
    VAULT_BOOTSTRAP,
    VAULT_SECRETS,
    Desired,
    DesiredService,
    Operation,
    container_operation,
    diff,
    hook_step,
    unisolated,
)
from ccoas.engine.docker_api import SPEC_LABEL, container_create_body, spec_hash
from ccoas.engine.observed import ObservedContainer, ObservedState, ObservedVault, port_bindings
from ccoas.engine.runtime import Runtime
from ccoas.engine.stop import Stopped, stop
from ccoas.errors import EngineError, engine_step
from ccoas.host import HostLayout
from ccoas.plan import LABEL_PREFIX, Plan, Service, Stop
from ccoas.state import StackPaths, stack_paths
from ccoas.steps import StepRecord, Steps, input_hash, published_addresses, wait_until_released

PART_LABEL = f"{SPEC_LABEL}."
"""``io.ccoas.spec.<part>``: the hash of each part of a container's desired state."""


@dataclass(frozen=True)
class ServiceStatus:
    service: str
    container: str
    state: str
    health: str
    endpoints: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "container": self.container,
            "state": self.state,
            "health": self.health,
            "endpoints": list(self.endpoints),
        }


ISOLATION_PASSES = 2
"""How many more observe → diff → apply passes ``up`` makes while a network is still unisolated."""


@dataclass
class UpResult:
    changes: int
    """Operations applied (``0``: the stack was converged)."""
    status: list[ServiceStatus]
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds from the start of ``up`` until each service was ready."""
    durations: dict[str, float] = field(default_factory=dict)
    """Seconds each service took on its own: container converged, alive, hooks, ready."""
    operations: list[Operation] = field(default_factory=list)


class LocalEngine:
    def __init__(self, plan: Plan, runtime: Runtime, paths: StackPaths, progress: Any = None):
        self.plan = plan
        self.runtime = runtime
        self.client = runtime.client
        self.layout: HostLayout = runtime.layout
        self.paths = paths
        self.progress = progress
        self.steps = Steps(plan, paths, runtime, progress)
        self.notes: list[str] = []
        """What the user must hear about this run (e.g. a container killed after its stop timeout)."""

    @classmethod
    def connect(cls, plan: Plan, progress: Any = None, layout: HostLayout | None = None) -> "LocalEngine":
        """Connect to the engine user's API socket, starting the service if need be."""
        runtime = Runtime.connect(layout)
        return cls(plan, runtime, stack_paths(runtime.layout.state_root, runtime.layout.runtime_dir, plan.stack), progress)

    def _step(self, message: str) -> None:
        if self.progress is not None:
            self.progress.step(message)

    def _done(self, message: str) -> None:
        if self.progress is not None:
            self.progress.done(message)

    @property
    def is_podman(self) -> bool:
        return self.runtime.is_podman

    def host_notes(self) -> list[str]:
        """Plan settings this host cannot enforce, said plainly. Rootless Podman runs on this
        host (its socket is local): the cgroup version is read from ``/sys/fs/cgroup`` rather
        than from Podman's ``/info``, which takes seconds."""
        if self.is_podman:
            info: dict[str, Any] = {"CgroupVersion": "2" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "1"}
        else:
            info = self.client.info()
        notes = []
        cgroup = str(info.get("CgroupVersion") or info.get("host", {}).get("cgroupVersion", ""))
        rootless = self.is_podman or "rootless" in json.dumps(info.get("SecurityOptions", []))
        limited = any(s.limits.memory_bytes or s.limits.nano_cpus or s.limits.pids for s in self.plan.services)
        if limited and rootless and cgroup in ("1", "v1"):
            notes.append(
                "memory, cpu and pids limits of the plan are NOT enforced on this host: rootless containers on "
                "cgroup v1 ignore resource limits; they apply on cgroup v2 hosts (systemd with cgroup delegation)"
            )
        elif limited and not info.get("MemoryLimit", True):
            notes.append("this engine reports no memory-limit support: the plan's memory limits are not enforced")
        return notes

    # -- images -----------------------------------------------------------------------------

    def build_images(self) -> list[Any]:
        return self.steps.build_images()

    def pull_images(self) -> list[str]:
        """Pull the stack's registry images that the engine does not have; return their refs.

        The one place ccoas contacts a registry, and only when asked (``ccoas images pull``):
        provisioning never pulls.
        """
        pulled = []
        for service in self.steps.missing_images("registry"):
            self._step(f"{service.name}: pulling {service.image.ref}")
            try:
                self.client.images.pull(service.image.ref)
            except Exception as exc:  # noqa: BLE001 - any failure here is "cannot be pulled"
                raise EngineError(f"{service.name}: {service.image.ref} cannot be pulled: {exc}") from None
            pulled.append(service.image.ref)
        return pulled

    # -- observe ----------------------------------------------------------------------------

    def observe(self) -> ObservedState:
        """Read everything the diff needs from the engine (and the stack's state dir), once."""
        selector = {"label": [f"{LABEL_PREFIX}.stack={self.plan.stack}"]}
        containers = {}
        for container in self.client.containers.list(all=True, filters=selector):
            containers[container.name] = observed_container(container)
        networks = {network.name: network for network in self.runtime.networks(f"{LABEL_PREFIX}.stack={self.plan.stack}")}
        volumes = tuple(sorted(v.name for v in self.client.volumes.list(filters=selector)))
        images = {}
        for service in self.plan.services:
            image = self._image(service.image.ref)
            if image is not None:
                images[service.image.ref] = image.id
        secret_files = {
            s.name: all(self.paths.secret_file(s.name, m.secret).exists() for m in s.secrets) for s in self.plan.services if s.secrets
        }
        return ObservedState(
            stack=self.plan.stack,
            containers=containers,
            networks=networks,
            volumes=volumes,
            images=images,
            vault=self._observe_vault(containers),
            secret_files=secret_files,
            steps=dict(StepRecord.load(self.paths).entries),
        )

    def _image(self, ref: str) -> Any | None:
        import docker.errors

        try:
            return self.client.images.get(ref)
        except docker.errors.ImageNotFound:
            return None

    def _observe_vault(self, containers: dict[str, ObservedContainer]) -> ObservedVault | None:
        """Vault's seal status and the secrets' versions, over its socket (no published port)."""
        import hvac.exceptions
        import requests

        from ccoas.secrets import SecretStore, VaultError, vault_client

        if self.plan.vault is None:
            return None
        vault = self.plan.service("vault")
        socket = self.paths.vault_socket(self.plan.vault)
        running = containers.get(vault.container_name)
        if running is None or running.state != "running" or not socket.exists():
            return ObservedVault(sealed=None, token_valid=False, versions={})
        try:
            sealed = bool(vault_client(socket).sys.read_seal_status()["sealed"])
        except (hvac.exceptions.VaultError, requests.RequestException, OSError, KeyError):
            return ObservedVault(sealed=None, token_valid=False, versions={})
        if sealed:
            return ObservedVault(sealed=True, token_valid=False, versions={})
        try:
            client = self.steps.vault().ccoas_client()  # renews ccoas's periodic token
            store = SecretStore(self.plan, self.paths, socket, client, owners=self.runtime.layout)
            versions = store.versions()
        except (VaultError, hvac.exceptions.VaultError, requests.RequestException):
            return ObservedVault(sealed=False, token_valid=False, versions={})
        if store.stack_ca_missing():  # the bootstrap makes it; the certificate is issued after
            return ObservedVault(sealed=False, token_valid=True, versions=versions, stack_ca_missing=True)
        return ObservedVault(sealed=False, token_valid=True, versions=versions, certificate_renewal=store.certificate_renewal())

    # -- desired state ----------------------------------------------------------------------

    def desired(self, observed: ObservedState, fingerprints: dict[str, str] | None = None, files: dict[str, str] | None = None) -> Desired:
        """The hashes a converged stack would carry, from the plan, the rendered config (in
        memory), the image ids and the secret versions (observed, or ``fingerprints`` once the
        secret files were written)."""
        from ccoas.render import config_digest, rendered_files
        from ccoas.secrets import secrets_fingerprint

        files = rendered_files(self.plan) if files is None else files
        readable = observed.vault is not None and observed.vault.token_valid
        versions = observed.vault.versions if observed.vault else {}
        services: dict[str, DesiredService] = {}
        steps: dict[str, str] = {}
        for service in self.plan.services:
            current = observed.containers.get(service.container_name)
            if fingerprints is not None and service.name in fingerprints:
                secrets = fingerprints[service.name]
            elif not service.secrets:
                secrets = ""
            elif readable:
                secrets = secrets_fingerprint(service, versions)
            else:
                # Vault cannot be read now: assume the versions the container was made with;
                # apply decides again once the secret files were written
                secrets = current.parts.get("secrets", "") if current else ""
            config = config_digest(files, service.config.source) if service.config else ""
            services[service.name] = self._desired_service(service, observed.images.get(service.image.ref, ""), config, secrets)
        for service in self.plan.services:
            current = observed.containers.get(service.container_name)
            container_id = current.id if current else ""
            for index, hook in enumerate(service.hooks):
                steps[hook_step(service.name, index)] = input_hash(hook.model_dump(mode="json"), services[service.name].spec, container_id)
            if service.name == "vault":
                steps[VAULT_BOOTSTRAP] = input_hash(services["vault"].spec, container_id)
                steps[VAULT_SECRETS] = input_hash(container_id, fingerprints if fingerprints is not None else self._fingerprints(versions))
        return Desired(services=services, steps=steps)

    def _fingerprints(self, versions: dict[str, int | None]) -> dict[str, str]:
        from ccoas.secrets import secrets_fingerprint

        return {s.name: secrets_fingerprint(s, versions) for s in self.plan.services if s.secrets}

    def _desired_service(self, service: Service, image_id: str, config: str, secrets: str) -> DesiredService:
        body = container_create_body(self.plan, service, self.paths)
        spec = spec_hash(body, {"image": image_id, "config": config, "secrets": secrets})
        parts = {"body": spec_hash(body), "image": image_id[-16:], "config": config[:16], "secrets": secrets}
        return DesiredService(spec=spec, parts=parts)

    def desired_body(self, service: Service, desired: DesiredService) -> dict[str, Any]:
        body = container_create_body(self.plan, service, self.paths)
        labels = {**body["Labels"], SPEC_LABEL: desired.spec}
        labels.update({f"{PART_LABEL}{part}": value for part, value in desired.parts.items()})
        body["Labels"] = labels
        return body

    # -- up: observe, diff, apply -----------------------------------------------------------

    def plan_operations(self, files: dict[str, str] | None = None) -> tuple[ObservedState, Desired, list[Operation]]:
        """Observe and diff; changes nothing on the engine (``up --dry-run``)."""
        observed = self.observe()
        desired = self.desired(observed, files=files)
        return observed, desired, diff(self.plan, desired, observed)

    def prepare_images(self, build: bool = True) -> None:
        """Every image of the plan present (local ones built), or a clear error; nothing else touched."""
        with engine_step("images", "build"):
            self.steps.resolve_images(build)

    def start_alone(self, name: str, build: bool = True, timeout: int = 300) -> None:
        """Files, networks, volumes and ``name``'s container, until it is alive; no hooks (restore uses it)."""
        from ccoas.render import rendered_files

        files = rendered_files(self.plan)
        self.prepare_images(build)
        migrations.migrate(self.paths)  # a new stack's state starts with its marker
        self.steps.render(files)
        self.steps.runtime_dirs()
        observed, desired, operations = self.plan_operations(files)
        service = self.plan.service(name)
        for op in operations:
            if op.kind == "network":
                self._apply_network(op)
            elif op.kind == "volume" and any(v.engine_name == op.resource and v.service == name for v in self.plan.volumes):
                volume = next(v for v in self.plan.volumes if v.engine_name == op.resource)
                with engine_step(f"stack {self.plan.stack} volumes", "create"):
                    self.client.volumes.create(volume.engine_name, labels=volume.labels)
        op = container_operation(service, desired.services[name], observed.containers.get(service.container_name), set(), unisolated(self.plan, observed))
        if op is not None:
            self._converge_container(service, op, desired.services[name])
        with engine_step(name, "health"):
            self.steps.wait(service, service.liveness, "alive", timeout)

    def up(
        self, build: bool = True, timeout: int = 300, dry_run: bool = False, after_ready: Callable[[Service], int] | None = None
    ) -> UpResult:
        """Observe, diff, apply. ``after_ready(service)``, if given, runs once each service it
        touched has settled (before its dependants start); restore uses it."""
        started = time.monotonic()
        found = migrations.check(self.paths.state)  # a state of a newer ccoas: refused before anything
        if dry_run:
            _, _, operations = self.plan_operations()
            migrating = [Operation("migrate", "state", m.name, m.summary) for m in migrations.pending(found, migrations.MIGRATIONS)]
            edge = self.listener_operation()
            listening = [Operation(edge.action, "listener", "edge", edge.cause)] if edge else []
            return UpResult(changes=0, status=[], operations=[*migrating, *operations, *listening])
        from ccoas.render import rendered_files

        files = rendered_files(self.plan)
        with engine_step("images", "build"):
            self.steps.resolve_images(build)
        migrated = migrations.migrate(self.paths)
        self.steps.render(files)
        self.steps.runtime_dirs()
        self._guard_isolation()
        observed, desired, operations = self.plan_operations(files)
        result = self.apply(operations, observed, desired, timeout, started, files, after_ready)
        self._guard_isolation()
        unisolated = self.unisolated_networks()
        for _ in range(ISOLATION_PASSES):
            # measured: a container restarted to regain isolation can come back without its
            # bridge's rules (intermittent, inside Podman/netavark): observe and converge again
            if not unisolated:
                break
            observed, desired, operations = self.plan_operations(files)
            again = self.apply(operations, observed, desired, timeout, started, files, after_ready)
            result.changes += again.changes
            result.operations += again.operations
            result.status, result.timings = again.status, {**result.timings, **again.timings}
            unisolated = self.unisolated_networks()
        edge = self.listener_operation()
        if edge is not None:
            with engine_step("edge listener", edge.action):
                listener.apply(self.plan, self.paths, self.layout, edge, self._step)
            result.changes += 1
            result.operations.append(Operation(edge.action, "listener", "edge", edge.cause))
            result.status = self.status(probe=False)
        result.changes += len(migrated)
        self.steps.write_figures(result.status)
        result.notes = [*migrated, *self.notes, *self.steps.notes, *unisolated, *self.host_notes()]
        return result

    def listener_operation(self) -> "listener.ListenerOperation | None":
        """What the stack's edge listener needs (see :mod:`ccoas.listener`)."""
        observed = listener.observe(self.plan, self.paths, self.layout)
        return listener.plan_operation(self.plan, self.paths, observed)

    def stop_listener(self) -> bool:
        """Stop the stack's edge listener; ``True`` when one ran."""
        return listener.stop(listener.ListenerFiles.of(self.paths), self.layout)

    def apply(
        self,
        operations: list[Operation],
        observed: ObservedState,
        desired: Desired,
        timeout: int = 300,
        started: float | None = None,
        files: dict[str, str] | None = None,
        after_ready: Callable[[Service], int] | None = None,
    ) -> UpResult:
        """Carry out ``operations``: resources first, then each service in start order."""
        import docker.errors

        started = time.monotonic() if started is None else started
        record = StepRecord.load(self.paths)
        applied: list[Operation] = []
        for op in operations:
            if op.kind == "image":
                continue  # resolved before observing: build_images made them present
            if op.kind == "network":
                self._apply_network(op)
            elif op.kind == "volume":
                volume = next(v for v in self.plan.volumes if v.engine_name == op.resource)
                with engine_step(f"stack {self.plan.stack} volumes", "create"):
                    self.client.volumes.create(volume.engine_name, labels=volume.labels)
            elif op.kind == "container" and op.action == "remove":
                self._step(f"removing {op.resource}: {op.cause}")
                try:
                    with engine_step(op.resource, "remove"):
                        extra = self.client.containers.get(op.resource)
                        self._stop(extra, Stop())
                        extra.remove()
                except docker.errors.NotFound:
                    pass
            else:
                continue
            applied.append(op)
        steps_of = {}
        for op in operations:
            if op.kind == "step":
                steps_of.setdefault(op.resource if op.resource != "secrets" else "vault", []).append(op)
        replaced: set[str] = set()
        lost = unisolated(self.plan, observed)
        timings: dict[str, float] = {}
        durations: dict[str, float] = {}
        for tier in self.plan.start_order:
            for name in tier:
                began = time.monotonic()
                service = self.plan.service(name)
                want = desired.services[name]
                op = container_operation(service, want, observed.containers.get(service.container_name), replaced, lost)
                pending = steps_of.get(name, [])
                if op is None and not pending:
                    continue
                if op is not None:
                    self._converge_container(service, op, want)
                    replaced.add(name)
                    applied.append(op)
                    hooks = None
                else:
                    applied += pending
                    hooks = self._hooks_for(service, pending)
                self.steps.fingerprints = None
                self.steps.settle(service, timeout, hooks)
                if after_ready is not None:
                    after_ready(service)
                if self.steps.fingerprints is not None:
                    # decided again for what follows: the secret files just written may change hashes
                    desired = self.desired(observed, self.steps.fingerprints, files)
                self._record(record, service, want, hooks)
                timings[name] = time.monotonic() - started
                durations[name] = time.monotonic() - began
                self._done(f"{name} ready ({op.action + 'd' if op else 'steps run'})")
        return UpResult(changes=len(applied), status=self.status(probe=False), timings=timings, durations=durations, operations=applied)

    def _hooks_for(self, service: Service, pending: list[Operation]) -> set[int]:
        keys = {op.step for op in pending}
        wanted = set()
        for index, hook in enumerate(service.hooks):
            if hook_step(service.name, index) in keys:
                wanted.add(index)
            if hook.kind == "vault-init-unseal" and keys & {VAULT_BOOTSTRAP, VAULT_SECRETS}:
                wanted.add(index)  # secrets are written through the bootstrapped, unsealed Vault
            if hook.kind == "vault-secrets" and keys & {VAULT_BOOTSTRAP, VAULT_SECRETS}:
                wanted.add(index)  # after a bootstrap the versions are known again: files follow them
        return wanted

    def _record(self, record: StepRecord, service: Service, want: DesiredService, hooks: set[int] | None) -> None:
        """Remember the inputs the steps of ``service`` that just ran (``hooks``: all when
        ``None``) ran with (see :meth:`desired`)."""
        container = self.runtime.container(service)
        container_id = container.id if container is not None else ""
        ran = set(range(len(service.hooks))) if hooks is None else hooks
        for index, hook in enumerate(service.hooks):
            if index in ran:
                record.set(hook_step(service.name, index), input_hash(hook.model_dump(mode="json"), want.spec, container_id))
        if service.name == "vault":
            if any(service.hooks[i].kind == "vault-init-unseal" for i in ran):
                record.set(VAULT_BOOTSTRAP, input_hash(want.spec, container_id))
            if self.steps.fingerprints is not None:
                record.set(VAULT_SECRETS, input_hash(container_id, self.steps.fingerprints))

    def _converge_container(self, service: Service, op: Operation, want: DesiredService) -> None:
        current = self.runtime.container(service)
        if op.action == "restart" and current is not None:
            self._step(f"restarting {service.container_name}: {op.cause}")
            with engine_step(service.name, "start"):
                published = published_addresses(current) if current.status == "running" else []
                self._stop(current, service.stop)
                wait_until_released(service.name, published)
                current.start()
            return
        if op.action == "start" and current is not None:
            self._step(f"starting {service.container_name}: {op.cause}")
            with engine_step(service.name, "start"):
                self._connect_other_networks(service, current)
                current.start()
            return
        with engine_step(service.name, "create"):
            if current is not None:
                self._step(f"recreating {service.container_name}: {op.cause}")
                published = published_addresses(current) if current.status == "running" else []
                self._stop(current, service.stop)
                current.remove()
                wait_until_released(service.name, published)
            else:
                self._step(f"creating {service.container_name}")
            created = self.client.api.create_container_from_config(self.desired_body(service, want), name=service.container_name)
            container = self.client.containers.get(created["Id"])
            self._connect_other_networks(service, container)
        self._step(f"starting {service.container_name}")
        with engine_step(service.name, "start"):
            container.start()

    def _connect_other_networks(self, service: Service, container: Any) -> None:
        """Engines that attach only the first network at create time get the rest here."""
        container.reload()
        attached = set(container.attrs["NetworkSettings"]["Networks"])
        for name, aliases in sorted(service.networks.items()):
            engine_name = self.plan.network(name).engine_name
            if engine_name not in attached:
                self.client.api.connect_container_to_network(container.id, engine_name, aliases=list(aliases))

    def _apply_network(self, op: Operation) -> None:
        network = self.plan.network(next(n.name for n in self.plan.networks if n.engine_name == op.resource))
        if op.action == "create":
            with engine_step(f"stack {self.plan.stack} networks", "create"):
                self._create_network(network)
            return
        self._step(f"reloading network {network.engine_name}: {op.cause}")
        with engine_step(f"stack {self.plan.stack} networks", "reload"):
            if not self._held_isolated(network.engine_name):  # one reload reads every network again
                self.runtime.reload_networks(f"{self.plan.stack}-ccoas-reload", {f"{LABEL_PREFIX}.stack": self.plan.stack})
            if not self._held_isolated(network.engine_name):
                raise EngineError(
                    f"network {network.engine_name}: still without isolation after the engine read it again from its file, "
                    "so the file lacks it: run `ccoas down` then `ccoas up` to recreate it"
                )
        self.notes.append(f"network {network.engine_name}: {op.cause}")

    def _guard_isolation(self) -> None:
        """See :meth:`ccoas.engine.runtime.Runtime.guard_isolation`: before observing (a jump lost
        since is put back without restarting anything) and after applying (the first container
        on an isolated network makes netavark's chains)."""
        if any(n.isolate for n in self.plan.networks) and self.runtime.guard_isolation():
            self.notes.append(
                "network isolation: the jump into netavark's isolation chains was gone (netavark 1.4 deletes it when the "
                "last container of any isolated network stops), so no network was isolated; ccoas keeps a jump of its own"
            )

    def _held_isolated(self, engine_name: str) -> bool:
        return any(h.name == engine_name and h.isolate for h in self.runtime.networks(f"{LABEL_PREFIX}.stack={self.plan.stack}"))

    def unisolated_networks(self) -> list[str]:
        """A note per network of the plan the engine holds without the isolation the plan asks
        for (see :meth:`ccoas.engine.runtime.Runtime.networks`): ``up`` repairs it, so after an
        ``up`` a note means something changed it meanwhile. Never silent."""
        isolated = {n.engine_name for n in self.plan.networks if n.isolate}
        return [
            f"network {held.name}: the engine {'runs' if held.isolate else 'holds'} it without the isolation the plan asks for; "
            "`ccoas up` restores it"
            for held in self.runtime.networks(f"{LABEL_PREFIX}.stack={self.plan.stack}")
            if held.name in isolated and not (held.isolate and held.enforced)
        ]

    def _create_network(self, network: Any) -> None:
        self._step(f"creating network {network.engine_name}")
        if self.is_podman:
            payload = {
                "name": network.engine_name,
                "driver": "bridge",
                "internal": network.internal,
                "dns_enabled": network.dns,
                "labels": network.labels,
                "options": {"isolate": "true"} if network.isolate else {},
            }
            response = self.client.api.post(
                self.runtime.libpod_url("/networks/create"), data=json.dumps(payload), headers={"Content-Type": "application/json"}
            )
            if response.status_code >= 300:
                raise EngineError(f"creating network {network.engine_name}: {response.text.strip()}")
        else:
            self.client.networks.create(network.engine_name, driver="bridge", internal=network.internal, labels=network.labels)

    # -- secrets ----------------------------------------------------------------------------

    def secrets(self):
        if self.plan.vault is None:
            raise EngineError(f"stack {self.plan.stack} has no vault component")
        return self.steps.secrets()

    def rotate(self, service: str) -> list[str]:
        store = self.secrets()
        rotated = store.rotate(service)
        result = self.up()
        lines = [f"rotated {s.name} (new version in Vault)" for s in rotated]
        lines.append(f"{result.changes} changes while converging")
        return lines

    # -- status and down --------------------------------------------------------------------

    def status(self, probe: bool = True) -> list[ServiceStatus]:
        """Each service's state, health and endpoints. ``probe``: run the checks now; otherwise
        report the engine's last health result (what ``up`` does after settling)."""
        selector = {"label": [f"{LABEL_PREFIX}.stack={self.plan.stack}"]}
        found = {c.name: c for c in self.client.containers.list(all=True, filters=selector)}
        rows = []
        for service in self.plan.services:
            container = found.get(service.container_name)
            if container is None:
                rows.append(ServiceStatus(service.name, service.container_name, "absent", "-"))
                continue
            observed = observed_container(container)
            health = observed.health or "-"
            if container.status == "running" and probe:
                ok, _ = self.runtime.probe(service, service.healthcheck, container)
                if ok:
                    health = "healthy"
                else:
                    alive, _ = self.runtime.exec_check(service, service.liveness, container)
                    health = "alive, not ready" if alive else "unhealthy"
            endpoints = listener.endpoints(self.plan, self.paths) if service.name == "nginx" else []
            for port in service.ports:
                for binding in observed.published.get(f"{port.container_port}/{port.protocol}", []):
                    host_ip, _, host_port = binding.rpartition(":")
                    endpoints.append(f"{port.scheme}://{host_ip or port.host_ip}:{host_port}")
            rows.append(ServiceStatus(service.name, service.container_name, container.status, health, tuple(endpoints)))
        return rows

    def _stop(self, container: Any, policy: Stop) -> Stopped:
        """Every stop goes through :func:`ccoas.engine.stop.stop`; a kill becomes a note."""
        stopped = stop(self.client, container, policy)
        if stopped.killed:
            self.notes.append(stopped.note())
            self._step(f"warning: {stopped.note()}")
        return stopped

    def _owned(self, kind: str) -> list[Any]:
        selector = {"label": [f"{LABEL_PREFIX}.stack={self.plan.stack}"]}
        if kind == "containers":
            return self.client.containers.list(all=True, filters=selector)
        return self.client.volumes.list(filters=selector)

    def down(self, purge: bool = False) -> str:
        order = [name for tier in reversed(self.plan.start_order) for name in sorted(tier)]
        rank = {name: index for index, name in enumerate(order)}
        containers = sorted(self._owned("containers"), key=lambda c: rank.get(c.labels.get(f"{LABEL_PREFIX}.service", ""), -1))
        # the listener first: no new connection reaches an Nginx that is about to stop
        edge = "edge listener" if self.stop_listener() else ""
        killed = []
        for container in containers:
            name = container.labels.get(f"{LABEL_PREFIX}.service", "")
            policy = self.plan.service(name).stop if self.plan.has(name) else Stop()
            self._step(f"stopping {container.name} ({policy.signal}, up to {policy.timeout_s}s)")
            if self._stop(container, policy).killed:
                killed.append(container.name)
            container.remove()
        networks = self.runtime.networks(f"{LABEL_PREFIX}.stack={self.plan.stack}")
        for network in networks:
            self.runtime.remove_network(network.name)
        stopped = f"{len(containers)} containers" + (f" ({', '.join(killed)} killed after their stop timeout)" if killed else "")
        removed = [stopped, *([edge] if edge else []), f"{len(networks)} networks"]
        if purge:
            volumes = self._owned("volumes")
            for volume in volumes:
                volume.remove(force=True)
            removed.append(f"{len(volumes)} volumes")
            for directory in (self.paths.runtime, self.paths.state):
                host_files.remove_tree(directory)  # never through a link the engine user planted
            removed.append("state and secret files")
        return ", ".join(removed)



def observed_container(container: Any) -> ObservedContainer:
    """An engine container (docker SDK, inspected) as the diff sees it."""
    attrs = container.attrs
    labels = container.labels or {}
    return ObservedContainer(
        name=container.name,
        service=labels.get(f"{LABEL_PREFIX}.service", ""),
        id=container.id,
        state=container.status,
        health=str(((attrs.get("State") or {}).get("Health") or {}).get("Status") or ""),
        spec=labels.get(SPEC_LABEL, ""),
        parts={k.removeprefix(PART_LABEL): v for k, v in labels.items() if k.startswith(PART_LABEL)},
        published={port: [f"{host}:{number}" for host, number in bindings] for port, bindings in port_bindings(attrs).items()},
    )
