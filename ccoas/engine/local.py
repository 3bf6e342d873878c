"""The local engine: applies a plan through the Docker Engine API on a rootless socket.

It converges rather than recreates. Each container carries a label with the hash of
its desired state (the exact create body, the rendered config it mounts, the versions
of the secrets it reads and the image id); a container whose hash matches and that is
running is left alone, so a second ``up`` on an unchanged plan makes no changes.

Podman has no timer for health checks without systemd, so ccoas runs them itself
through the libpod endpoint while it waits; on Docker the daemon runs them and ccoas
only reads the result.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ccoas.engine.docker_api import SPEC_LABEL, container_create_body, spec_hash
from ccoas.errors import EngineError, HostError, engine_step
from ccoas.host import HostLayout, ensure_api_service, host_layout
from ccoas.images import build_images, image_present
from ccoas.plan import LABEL_PREFIX, HealthCheck, Plan, Service
from ccoas.state import StackPaths, stack_paths

POLL_S = 1.0


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


@dataclass
class UpResult:
    changes: int
    status: list[ServiceStatus]
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds from the start of ``up`` until each service was ready."""
    durations: dict[str, float] = field(default_factory=dict)
    """Seconds each service took on its own: container converged, alive, hooks, ready."""


class LocalEngine:
    def __init__(self, plan: Plan, layout: HostLayout, client: Any, paths: StackPaths, progress: Any = None):
        self.plan = plan
        self.layout = layout
        self.client = client
        self.paths = paths
        self.progress = progress
        self._podman: bool | None = None
        self._fingerprints: dict[str, str] = {}
        """Secret-version fingerprints per service, set by the ``vault-secrets`` hook."""

    # -- connection -------------------------------------------------------------------------

    @classmethod
    def connect(cls, plan: Plan, progress: Any = None, layout: HostLayout | None = None, recover: bool = False) -> "LocalEngine":
        """Connect to the engine user's API socket, starting the service if need be; ``recover``
        (``up`` only) also clears a dead session's stale runtime dir first."""
        import docker

        layout = layout or host_layout()
        base_url = ensure_api_service(layout, recover=recover)
        try:
            client = docker.DockerClient(base_url=base_url, timeout=600)
            client.ping()
        except Exception as exc:  # noqa: BLE001 - any failure here is "engine unreachable"
            raise HostError(f"the container engine at {base_url} does not answer: {exc}") from None
        paths = stack_paths(layout.state_root, layout.runtime_dir, plan.stack)
        return cls(plan, layout, client, paths, progress)

    def _step(self, message: str) -> None:
        if self.progress is not None:
            self.progress.step(message)

    def _done(self, message: str) -> None:
        if self.progress is not None:
            self.progress.done(message)

    @property
    def is_podman(self) -> bool:
        if self._podman is None:
            version = self.client.version()
            self._podman = any("podman" in c.get("Name", "").lower() for c in version.get("Components", []))
        return self._podman

    def host_notes(self) -> list[str]:
        """Plan settings this host cannot enforce, said plainly."""
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
        return build_images(
            self.plan.services, self.layout, self.client, progress=lambda component, message: self._step(f"{component}: {message}")
        )

    def pull_images(self) -> list[str]:
        """Pull the stack's registry images that the engine does not have; return their refs.

        The one place ccoas contacts a registry, and only when asked (``ccoas images pull``):
        provisioning never pulls.
        """
        pulled = []
        for service in self._missing("registry"):
            self._step(f"{service.name}: pulling {service.image.ref}")
            try:
                self.client.images.pull(service.image.ref)
            except Exception as exc:  # noqa: BLE001 - any failure here is "cannot be pulled"
                raise EngineError(f"{service.name}: {service.image.ref} cannot be pulled: {exc}") from None
            pulled.append(service.image.ref)
        return pulled

    def _missing(self, source: str) -> list[Service]:
        return [s for s in self.plan.services if s.image.source == source and not image_present(self.client, s.image.ref)]

    def _resolve_images(self, build: bool) -> None:
        """Every image present before anything is provisioned: build local ones, or stop here."""
        missing_registry = self._missing("registry")
        if missing_registry:
            refs = ", ".join(f"{s.name} ({s.image.ref})" for s in missing_registry)
            raise HostError(
                f"registry images not on this host: {refs}. ccoas never pulls while provisioning: "
                f"run `ccoas images pull` (this host must reach the registry), or use `source: local` "
                f"where a local recipe exists"
            )
        missing_local = self._missing("local")
        if missing_local:
            if not build:
                names = ", ".join(s.name for s in missing_local)
                raise HostError(f"local images missing for {names}: run `ccoas images build` or drop --no-build")
            self.build_images()

    # -- up ---------------------------------------------------------------------------------

    def prepare_files(self, build: bool = True) -> None:
        """What every engine needs before containers: images present, config rendered, runtime dirs."""
        self._resolve_images(build)
        self._render()
        self._ensure_runtime_dirs()

    def settle(self, service: Service, timeout: int = 300) -> tuple[int, dict[str, str]]:
        """Wait until ``service`` is alive, run its hooks, wait until ready; after Vault, converge secrets.

        Returns the changes made and, after Vault, each service's secret fingerprint. The
        Pulumi engine calls this too: hooks are steps, not resources.
        """
        changes = 0
        self._fingerprints = {}
        with engine_step(service.name, "health"):
            self._wait(service, service.liveness, "alive", timeout)
        for hook in service.hooks:
            if hook.stage == "alive":
                with engine_step(service.name, f"hook {hook.kind}"):
                    changes += self._run_hook(service, hook)
        with engine_step(service.name, "health"):
            self._wait(service, service.healthcheck, "ready", timeout)
        for hook in service.hooks:
            if hook.stage == "ready":
                with engine_step(service.name, f"hook {hook.kind}"):
                    changes += self._run_hook(service, hook)
        return changes, self._fingerprints

    def up(self, build: bool = True, timeout: int = 300) -> UpResult:
        started = time.monotonic()
        with engine_step("images", "build"):
            self.prepare_files(build)
        changes = 0
        with engine_step(f"stack {self.plan.stack} networks", "create"):
            changes += self._ensure_networks()
        with engine_step(f"stack {self.plan.stack} volumes", "create"):
            changes += self._ensure_volumes()
        fingerprints: dict[str, str] = {}
        replaced: set[str] = set()
        timings: dict[str, float] = {}
        durations: dict[str, float] = {}
        for tier in self.plan.start_order:
            for name in tier:
                began = time.monotonic()
                service = self.plan.service(name)
                changed = self._ensure_container(service, fingerprints.get(name, ""))  # names its steps
                if not changed and any(d.service in replaced for d in service.depends_on):
                    # its dependency got a new container (and address): restart it so it
                    # resolves and connects afresh, without recreating it
                    self._step(f"restarting {service.container_name}: a dependency was replaced")
                    with engine_step(name, "start"):
                        self._container(service).restart()
                    changed = 1
                if changed:
                    replaced.add(name)
                changes += changed
                settled, secrets = self.settle(service, timeout)
                changes += settled
                fingerprints.update(secrets)
                timings[name] = time.monotonic() - started
                durations[name] = time.monotonic() - began
                self._done(f"{name} ready ({'changed' if changed else 'unchanged'})")
        return UpResult(changes=changes, status=self.status(), notes=self.host_notes(), timings=timings, durations=durations)

    def _render(self) -> None:
        from ccoas.render import render

        target = self.paths.render
        target.mkdir(parents=True, exist_ok=True)
        for directory in (self.paths.state.parent.parent, self.paths.state.parent, self.paths.state, target):
            os.chmod(directory, 0o755)
        # In place, file by file: running containers bind-mount these directories, and a
        # directory replaced wholesale would leave them looking at a deleted one.
        written = {path.resolve() for path in render(self.plan, target)}
        for path in sorted(target.rglob("*"), reverse=True):
            if path.is_file() and path.resolve() not in written:
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        # a changed render is not a change of its own: it shows up as recreated containers

    def _ensure_networks(self) -> int:
        changes = 0
        for network in self.plan.networks:
            existing = self._network(network.engine_name)
            if existing is not None:
                if bool(existing.get("internal", existing.get("Internal"))) != network.internal:
                    raise EngineError(
                        f"network {network.engine_name} exists with internal={not network.internal}; "
                        f"run `ccoas down` first so it can be recreated as the plan says"
                    )
                continue
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
                response = self.client.api.post(self._libpod_url("/networks/create"), data=json.dumps(payload), headers={"Content-Type": "application/json"})
                if response.status_code >= 300:
                    raise EngineError(f"creating network {network.engine_name}: {response.text.strip()}")
            else:
                self.client.networks.create(network.engine_name, driver="bridge", internal=network.internal, labels=network.labels)
            changes += 1
        return changes

    def _network(self, name: str) -> dict | None:
        if self.is_podman:
            response = self.client.api.get(self._libpod_url(f"/networks/{name}/json"))
            if response.status_code == 404:
                return None
            response.raise_for_status()
            return response.json()
        import docker.errors

        try:
            return self.client.api.inspect_network(name)
        except docker.errors.NotFound:
            return None

    def _libpod_url(self, path: str) -> str:
        return f"{self.client.api.base_url}/v4.0.0/libpod{path}"

    def _ensure_volumes(self) -> int:
        import docker.errors

        changes = 0
        for volume in self.plan.volumes:
            try:
                self.client.volumes.get(volume.engine_name)
            except docker.errors.NotFound:
                self.client.volumes.create(volume.engine_name, labels=volume.labels)
                changes += 1
        return changes

    def _ensure_runtime_dirs(self) -> None:
        self.paths.runtime.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._give(self.paths.runtime.parent, 0, 0)
        self._give(self.paths.runtime, 0, 0)
        for service in self.plan.services:
            for mount in service.runtime_mounts:
                directory = self.paths.runtime_mount(mount.name)
                directory.mkdir(parents=True, exist_ok=True)
                os.chmod(directory, 0o700)
                self._give(directory, service.uid, service.gid)

    def _give(self, path: Path, uid: int, gid: int) -> None:
        """chown ``path`` to a container uid/gid, mapped through the rootless user namespace."""
        host_uid = self.layout.host_uid(uid)
        host_gid = self.layout.host_uid(gid) if gid else self.layout.gid  # subgid ranges mirror subuid ones
        if os.geteuid() == 0:
            os.chown(path, host_uid, host_gid)
        else:
            subprocess.run(self.layout.engine_command("podman", "unshare", "chown", f"{uid}:{gid}", str(path)), check=True)

    def _container(self, service: Service):
        import docker.errors

        try:
            return self.client.containers.get(service.container_name)
        except docker.errors.NotFound:
            return None

    def desired_body(self, service: Service, fingerprint: str) -> dict[str, Any]:
        body = container_create_body(self.plan, service, self.paths)
        image_id = self.client.images.get(service.image.ref).id
        config = _tree_digest(self.paths.config_dir(service.config.source)) if service.config else ""
        digest = spec_hash(body, {"image": image_id, "config": config, "secrets": fingerprint})
        body["Labels"] = {**body["Labels"], SPEC_LABEL: digest}
        return body

    def _ensure_container(self, service: Service, fingerprint: str) -> int:
        with engine_step(service.name, "create"):
            body = self.desired_body(service, fingerprint)
        current = self._container(service)
        if current is not None and current.labels.get(SPEC_LABEL) == body["Labels"][SPEC_LABEL]:
            if current.status == "running":
                return 0
            self._step(f"starting {service.container_name}")
            with engine_step(service.name, "start"):
                self._connect_other_networks(service, current)
                current.start()
            return 1
        with engine_step(service.name, "create"):
            if current is not None:
                self._step(f"recreating {service.container_name} (its desired state changed)")
                current.remove(force=True)
            else:
                self._step(f"creating {service.container_name}")
            created = self.client.api.create_container_from_config(body, name=service.container_name)
            container = self.client.containers.get(created["Id"])
            self._connect_other_networks(service, container)
        self._step(f"starting {service.container_name}")
        with engine_step(service.name, "start"):
            container.start()
        return 1

    def _connect_other_networks(self, service: Service, container: Any) -> None:
        """Engines that attach only the first network at create time get the rest here."""
        container.reload()
        attached = set(container.attrs["NetworkSettings"]["Networks"])
        for name, aliases in sorted(service.networks.items()):
            engine_name = self.plan.network(name).engine_name
            if engine_name not in attached:
                self.client.api.connect_container_to_network(container.id, engine_name, aliases=list(aliases))

    # -- health -----------------------------------------------------------------------------

    def _wait(self, service: Service, check: HealthCheck, what: str, timeout: int) -> None:
        self._step(f"waiting for {service.name} to be {what}")
        deadline = time.monotonic() + max(timeout, check.start_period_s + check.interval_s * check.retries)
        last = ""
        while time.monotonic() < deadline:
            container = self._container(service)
            if container is None:
                raise EngineError(f"{service.name}: container {service.container_name} disappeared")
            if container.status in ("exited", "dead"):
                raise EngineError(f"{service.name}: container exited while starting:\n{_tail_logs(container)}")
            ok, last = self._probe(service, check, container)
            if ok:
                return
            time.sleep(POLL_S)
        raise EngineError(f"{service.name}: not {what} after {timeout}s (last check: {last.strip()[:300]})\n{_tail_logs(self._container(service))}")

    def _probe(self, service: Service, check: HealthCheck, container: Any) -> tuple[bool, str]:
        if check is service.healthcheck:
            if self.is_podman:
                response = self.client.api.get(self._libpod_url(f"/containers/{container.id}/healthcheck"))
                if response.status_code == 200:
                    data = response.json()
                    log = (data.get("Log") or [{}])[-1].get("Output", "")
                    return data.get("Status") == "healthy", log
                return False, response.text
            container.reload()
            health = container.attrs["State"].get("Health", {})
            return health.get("Status") == "healthy", json.dumps(health.get("Log", [])[-1:])
        return self._exec_check(service, check, container)

    def _exec_check(self, service: Service, check: HealthCheck, container: Any) -> tuple[bool, str]:
        kind, *args = check.test
        cmd = ["sh", "-c", args[0]] if kind == "CMD-SHELL" else list(args)
        try:
            result = container.exec_run(cmd, user=service.user)
        except Exception as exc:  # noqa: BLE001 - not running yet
            return False, str(exc)
        return result.exit_code == 0, result.output.decode(errors="replace")

    # -- hooks and secrets ------------------------------------------------------------------

    def _run_hook(self, service: Service, hook: Any) -> int:
        self._step(f"{service.name}: {hook.description}")
        if hook.kind == "vault-init-unseal":
            return self._vault().converge()
        if hook.kind == "vault-secrets":
            store = self.secrets()
            written = store.ensure()
            self._fingerprints = store.materialize()
            return written
        container = self._container(service)
        result = container.exec_run(list(hook.command), user=service.user)
        if result.exit_code != 0:
            raise EngineError(f"{service.name}: {hook.description} failed:\n{result.output.decode(errors='replace')[-2000:]}")
        return 0

    def _vault(self):
        from ccoas.secrets import VaultBootstrap

        if self.plan.vault is None:
            raise EngineError(f"stack {self.plan.stack} has no vault component")
        return VaultBootstrap(self.plan, self.paths, self.paths.vault_socket(self.plan.vault))

    def secrets(self):
        from ccoas.secrets import SecretStore

        if self.plan.vault is None:
            raise EngineError(f"stack {self.plan.stack} has no vault component")
        vault = self._vault()
        return SecretStore(self.plan, self.paths, vault.socket, vault.ccoas_client(), chown=self._give)

    def rotate(self, service: str) -> list[str]:
        store = self.secrets()
        rotated = store.rotate(service)
        result = self.up()
        lines = [f"rotated {s.name} (new version in Vault)" for s in rotated]
        lines.append(f"{result.changes} changes while converging")
        return lines

    # -- status and down --------------------------------------------------------------------

    def status(self) -> list[ServiceStatus]:
        rows = []
        for service in self.plan.services:
            container = self._container(service)
            if container is None:
                rows.append(ServiceStatus(service.name, service.container_name, "absent", "-"))
                continue
            health = "-"
            if container.status == "running":
                ok, _ = self._probe(service, service.healthcheck, container)
                if ok:
                    health = "healthy"
                else:
                    alive, _ = self._exec_check(service, service.liveness, container)
                    health = "alive, not ready" if alive else "unhealthy"
            container.reload()
            endpoints = []
            for port in service.ports:
                bound = (container.attrs["NetworkSettings"].get("Ports") or {}).get(f"{port.container_port}/{port.protocol}") or []
                for binding in bound:
                    endpoints.append(f"{port.scheme}://{binding.get('HostIp') or port.host_ip}:{binding['HostPort']}")
            rows.append(ServiceStatus(service.name, service.container_name, container.status, health, tuple(endpoints)))
        return rows

    def _owned(self, kind: str) -> list[Any]:
        selector = {"label": [f"{LABEL_PREFIX}.stack={self.plan.stack}"]}
        if kind == "containers":
            return self.client.containers.list(all=True, filters=selector)
        if kind == "networks":
            return self.client.networks.list(filters=selector)
        return self.client.volumes.list(filters=selector)

    def down(self, purge: bool = False) -> str:
        order = [name for tier in reversed(self.plan.start_order) for name in sorted(tier)]
        rank = {name: index for index, name in enumerate(order)}
        containers = sorted(self._owned("containers"), key=lambda c: rank.get(c.labels.get(f"{LABEL_PREFIX}.service", ""), -1))
        for container in containers:
            self._step(f"removing {container.name}")
            container.remove(force=True)
        networks = self._owned("networks")
        for network in networks:
            network.remove()
        removed = [f"{len(containers)} containers", f"{len(networks)} networks"]
        if purge:
            volumes = self._owned("volumes")
            for volume in volumes:
                volume.remove(force=True)
            removed.append(f"{len(volumes)} volumes")
            for directory in (self.paths.runtime, self.paths.state):
                if directory.exists():
                    shutil.rmtree(directory)
            removed.append("state and secret files")
        return ", ".join(removed)


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    if not root.exists():
        return ""
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file():
            digest.update(f"{rel}\0{path.stat().st_mode & 0o777:o}\0".encode() + path.read_bytes() + b"\0")
        else:
            digest.update(f"{rel}/\0".encode())
    return digest.hexdigest()


def _tail_logs(container: Any, lines: int = 30) -> str:
    if container is None:
        return ""
    try:
        return container.logs(tail=lines).decode(errors="replace")
    except Exception:  # noqa: BLE001
        return ""
