"""The steps of ``up`` that are not resources, in one place both engines call.

Resources (networks, volumes, containers) are each engine's own: the local engine diffs
and applies them, the Pulumi engine declares them. Around them, both run the same steps
through :class:`Steps`:

- :meth:`Steps.prepare` — every image present (local ones built), config rendered in
  place, runtime dirs created and owned;
- :meth:`Steps.settle` — health gating (alive, then ready) and the service's hooks:
  Vault init/unseal (``vault-init-unseal``), secrets generated and their files written
  (``vault-secrets``), ``exec`` hooks (the Postgres bootstrap, MinIO provisioning).

Each step that ran records a hash of its inputs in the stack's state dir
(:class:`StepRecord`), which the local engine's observe reads back: a step whose inputs
did not change is skipped, the same way an unchanged container is.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ccoas import host_files
from ccoas.engine.observed import port_bindings
from ccoas.engine.runtime import Runtime, tail_logs
from ccoas.errors import EngineError, HostError, engine_step
from ccoas.images import build_images, image_present
from ccoas.plan import HealthCheck, Hook, Plan, Service
from ccoas.state import StackPaths

POLL_S = 1.0
PORT_FORWARD_GRACE_S = 15.0
"""How long a healthy container's published port may refuse connections before the engine
restarts the container once (see :meth:`Steps.restart_for_ports`)."""


def input_hash(*parts: Any) -> str:
    """A short hash of a step's inputs (JSON-serialisable parts)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class StepRecord:
    """Step → input hash of its last successful run, in ``<state>/steps.json``."""

    path: Path
    entries: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, paths: StackPaths) -> "StepRecord":
        path = paths.state / "steps.json"
        try:
            return cls(path, dict(json.loads(path.read_text())))
        except (FileNotFoundError, ValueError):
            return cls(path)

    def set(self, key: str, value: str) -> None:
        self.entries[key] = value
        self._write()

    def forget(self, which: Callable[[str], bool]) -> list[str]:
        """Drop the entries whose key ``which`` selects (their steps run again); the keys dropped."""
        dropped = sorted(key for key in self.entries if which(key))
        if dropped:
            for key in dropped:
                del self.entries[key]
            self._write()
        return dropped

    def _write(self) -> None:
        host_files.write_file(self.path, (json.dumps(self.entries, indent=2, sort_keys=True) + "\n").encode(), 0o600, parents_mode=0o755)


class Steps:
    """The steps of one plan on one host, through one :class:`Runtime`."""

    def __init__(self, plan: Plan, paths: StackPaths, runtime: Runtime, progress: Any = None):
        self.plan = plan
        self.paths = paths
        self.runtime = runtime
        self.progress = progress
        self.fingerprints: dict[str, str] | None = None
        """Secret-version fingerprint per service, set when the ``vault-secrets`` hook ran."""
        self.notes: list[str] = []
        """What the user must hear about the steps that ran (e.g. a container restarted)."""

    def say(self, message: str) -> None:
        if self.progress is not None:
            self.progress.step(message)

    # -- before any resource ------------------------------------------------------------------

    def prepare(self, build: bool = True) -> None:
        """What every engine needs before containers: images present, config rendered, runtime dirs."""
        self.resolve_images(build)
        self.render()
        self.runtime_dirs()

    def missing_images(self, source: str) -> list[Service]:
        return [s for s in self.plan.services if s.image.source == source and not image_present(self.runtime.client, s.image.ref)]

    def resolve_images(self, build: bool) -> None:
        """Every image present before anything is provisioned: build local ones, or stop here."""
        missing_registry = self.missing_images("registry")
        if missing_registry:
            refs = ", ".join(f"{s.name} ({s.image.ref})" for s in missing_registry)
            raise HostError(
                f"registry images not on this host: {refs}. ccoas never pulls while provisioning: "
                f"run `ccoas images pull` (this host must reach the registry), or use `source: local` "
                f"where a local recipe exists"
            )
        missing_bundle = self.missing_images("bundle")
        if missing_bundle:
            refs = ", ".join(f"{s.name} ({s.image.ref})" for s in missing_bundle)
            raise HostError(f"images of source bundle not on this host: {refs}: load them with `ccoas images load FILE` (made by `ccoas images save`)")
        missing_local = self.missing_images("local")
        if missing_local:
            if not build:
                names = ", ".join(s.name for s in missing_local)
                raise HostError(f"local images missing for {names}: run `ccoas images build` or drop --no-build")
            self.build_images()

    def build_images(self) -> list[Any]:
        return build_images(
            self.plan.services, self.runtime.layout, self.runtime.client, progress=lambda component, message: self.say(f"{component}: {message}")
        )

    def render(self, files: dict[str, str] | None = None) -> None:
        """Render the config in place, file by file: running containers bind-mount these
        directories, and a directory replaced wholesale would leave them looking at a deleted one.
        ``files``: the plan's :func:`~ccoas.render.rendered_files`, when the caller has them."""
        from ccoas.render import render

        target = self.paths.render
        self.paths.own_state_dirs()
        written = {path.resolve() for path in render(self.plan, target, files)}
        for path in sorted(target.rglob("*"), reverse=True):
            if path.is_file() and path.resolve() not in written:
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()

    def runtime_dirs(self) -> None:
        """The engine user's runtime dirs of the stack, and each runtime mount given to the
        container uid that writes it: made and owned on fds, never through a planted link."""
        layout = self.runtime.layout
        layout.give_dir(self.paths.runtime.parent, 0, 0)
        layout.give_dir(self.paths.runtime, 0, 0)
        for service in self.plan.services:
            for mount in service.runtime_mounts:
                # the edge listener (the engine user, host side) enters Nginx's socket dir: group 0
                # in the container is the engine user's group on the host, mode 0750
                shared = mount.engine_user_traverses
                layout.give_dir(self.paths.runtime_mount(mount.name), service.uid, 0 if shared else service.gid, 0o750 if shared else 0o700)

    def write_figures(self, statuses: list[Any]) -> None:
        """ccoas's own figures for the monitoring component (its textfile collector), when the
        plan has one: container health and restarts, the newest backup's time."""
        from ccoas.components.monitoring import TEXTFILE_MOUNT
        from ccoas.metrics import newest_backup, stack_figures, write_textfile

        if not self.plan.has("monitoring"):
            return
        restarts = {}
        for service in self.plan.services:
            container = self.runtime.container(service)
            if container is not None:
                restarts[service.name] = int(container.attrs.get("RestartCount") or 0)
        snapshots = self.runtime.layout.state_root / "snapshots" / self.plan.stack  # ccoas.backup.snapshot_dir
        figures = stack_figures(statuses, restarts, newest_backup(self.paths.state, snapshots), time.time())
        write_textfile(self.paths.runtime_mount(TEXTFILE_MOUNT), figures)

    # -- after a container started --------------------------------------------------------------

    def settle(self, service: Service, timeout: int = 300, hooks: Iterable[int] | None = None) -> int:
        """Wait until ``service`` is alive, run its hooks (all, or the indices ``hooks``), wait
        until it is ready. Returns the changes the hooks made."""
        wanted = set(range(len(service.hooks)) if hooks is None else hooks)
        changes = 0
        for stage, check in (("alive", service.liveness), ("ready", service.healthcheck)):
            with engine_step(service.name, "health"):
                self.wait(service, check, stage, timeout)
            for index, hook in enumerate(service.hooks):
                if hook.stage == stage and index in wanted:
                    with engine_step(service.name, f"hook {hook.kind}"):
                        changes += self.run_hook(service, hook)
        return changes

    def wait(self, service: Service, check: HealthCheck, what: str, timeout: int) -> None:
        self.say(f"waiting for {service.name} to be {what}")
        deadline = time.monotonic() + max(timeout, check.start_period_s + check.interval_s * check.retries)
        last = ""
        closed_since: float | None = None
        restarted = False
        while time.monotonic() < deadline:
            container = self.runtime.container(service)
            if container is None:
                raise EngineError(f"{service.name}: container {service.container_name} disappeared")
            if container.status in ("exited", "dead"):
                raise EngineError(f"{service.name}: container exited while starting:\n{tail_logs(container)}")
            ok, last = self.runtime.probe(service, check, container)
            if ok and check is service.healthcheck and (closed := unreachable_published_ports(container)):
                ok, last = False, f"healthy, but published port(s) not accepting connections: {', '.join(closed)}"
                closed_since = closed_since or time.monotonic()
                if not restarted and time.monotonic() - closed_since > PORT_FORWARD_GRACE_S:
                    self.restart_for_ports(service, container, closed)
                    restarted, closed_since = True, None
            if ok:
                return
            time.sleep(POLL_S)
        raise EngineError(
            f"{service.name}: not {what} after {timeout}s (last check: {last.strip()[:300]})\n{tail_logs(self.runtime.container(service))}"
        )

    def restart_for_ports(self, service: Service, container: Any, closed: list[str]) -> None:
        """Rootless Podman 4.3 sometimes starts a restarted container without its port
        forwarder: healthy inside, nothing listening on the host. Reproduced when the process
        driving the API had opened websockets through Nginx before restarting it; a restart
        asked for through the API by the same process leaves it so, while one made by a
        ``podman`` process of its own brings the forwarder up. So the engine restarts the
        container once that way (its stop signal and timeout kept), and tells the user."""
        import subprocess

        note = f"{service.name}: healthy, but nothing listened on {', '.join(closed)} after {PORT_FORWARD_GRACE_S:.0f}s: restarted it once (rootless port forwarder missing)"
        self.say(note)
        self.notes.append(note)
        layout = self.runtime.layout
        for args in (("stop", "--time", str(service.stop.timeout_s)), ("start",)):
            result = subprocess.run(layout.engine_command("podman", *args, container.name), capture_output=True, text=True, timeout=service.stop.timeout_s + 60)
            if result.returncode != 0:
                raise EngineError(f"{service.name}: podman {args[0]} {container.name}: {result.stderr.strip()[-500:]}")

    def run_hook(self, service: Service, hook: Hook) -> int:
        self.say(f"{service.name}: {hook.description}")
        if hook.kind == "vault-init-unseal":
            return self.vault().converge()
        if hook.kind == "vault-secrets":
            store = self.secrets()
            written = store.ensure()
            self.fingerprints = store.materialize()
            return written
        code, output = self.runtime.exec(service, list(hook.command))
        if code != 0:
            raise EngineError(f"{service.name}: {hook.description} failed:\n{output[-2000:]}")
        return 0

    # -- Vault ----------------------------------------------------------------------------------

    def vault(self):
        from ccoas.secrets import VaultBootstrap

        if self.plan.vault is None:
            raise EngineError(f"stack {self.plan.stack} has no vault component")
        return VaultBootstrap(self.plan, self.paths, self.paths.vault_socket(self.plan.vault))

    def secrets(self):
        from ccoas.secrets import SecretStore

        vault = self.vault()
        return SecretStore(self.plan, self.paths, vault.socket, vault.ccoas_client(), owners=self.runtime.layout)


def published_addresses(container: Any) -> list[tuple[str, int]]:
    """The host addresses a running container's ports are published on (the engine's choice
    where the plan says port 0)."""
    container.reload()
    return [
        (host if host not in ("", "0.0.0.0", "::") else "127.0.0.1", number)
        for bindings in port_bindings(container.attrs).values()
        for host, number in bindings
    ]


def accepts(address: tuple[str, int]) -> bool:
    try:
        socket.create_connection(address, timeout=1).close()
        return True
    except OSError:
        return False


def unreachable_published_ports(container: Any) -> list[str]:
    """The container's published host ports that refuse a TCP connection from the host.

    A container can be healthy inside before the host side of its published ports listens
    (rootless Podman's port forwarder starts beside it): a service counts as ready only once a
    client on the host could reach it.
    """
    return [f"{host}:{port}" for host, port in published_addresses(container) if not accepts((host, port))]


def wait_until_released(service: str, addresses: list[tuple[str, int]], timeout_s: float = 30) -> None:
    """Wait until no process listens on ``addresses`` any more (the stopped container's port
    forwarder exits a moment after the container; a start before then cannot bind them)."""
    deadline = time.monotonic() + timeout_s
    while held := [a for a in addresses if accepts(a)]:
        if time.monotonic() > deadline:
            ports = ", ".join(f"{h}:{p}" for h, p in held)
            raise EngineError(f"{service}: {ports} still accept connections {timeout_s:.0f}s after its container stopped (another process holds them?)")
        time.sleep(0.2)
