"""The Pulumi engine: runs :func:`ccoas.pulumi_program.declare` with the Automation API.

``ccoas up --engine pulumi`` and ``ccoas preview`` come here. The program is inline (this
process is the Pulumi program); the state is a LOCAL FILE backend under the stack's state
directory (``StackPaths.pulumi``), never a hosted service; config secrets are encrypted with
a passphrase from ``PULUMI_CONFIG_PASSPHRASE`` or ``PULUMI_CONFIG_PASSPHRASE_FILE``.

It needs the Pulumi CLI and the docker resource plugin on this host; without them it
raises :class:`~ccoas.errors.MissingToolError` saying what to install (``--engine local``
needs neither).

Rendering the config, materialising secret files from Vault and the plan's hooks (Vault
init/unseal, the Postgres bootstrap) are steps, not resources: :func:`up_from_cli` runs them
through :class:`ccoas.steps.Steps`, the same steps the local engine runs, around the Pulumi
updates (Vault first, targeted). It never touches the local engine.
:func:`up` alone refuses to start while a file the containers bind-mount is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ccoas import host_files
from ccoas.errors import CcoasError, HostError, MissingToolError
from ccoas.plan import Plan
from ccoas.state import StackPaths

PROJECT = "ccoas"
Output = Callable[[str], Any]


@dataclass(frozen=True)
class PulumiResult:
    """What a preview or an update did: resource operations by kind, and the stack outputs."""

    operations: dict[str, int]
    """``{"create": 3, "same": 20, …}`` as the engine reports them."""
    outputs: dict[str, Any] = field(default_factory=dict)
    unenforced: dict[str, list[str]] = field(default_factory=dict)

    @property
    def changes(self) -> int:
        return sum(count for op, count in self.operations.items() if op != "same")


# -- tools ------------------------------------------------------------------------------------


def provider_version() -> str:
    """The pulumi-docker SDK version: the docker plugin version the program asks the engine for."""
    from importlib.metadata import version

    return version("pulumi-docker")


def install_hint(problem: str) -> str:
    wanted = provider_version()
    return (
        f"{problem}. The Pulumi engine needs the Pulumi CLI (install it from https://www.pulumi.com/docs/install/) "
        f"and its docker provider plugin matching pulumi-docker {wanted}: `pulumi plugin install resource docker {wanted}`. "
        "`ccoas up --engine local` (the default) works without them."
    )


def pulumi_home() -> Path:
    return Path(os.environ.get("PULUMI_HOME") or Path.home() / ".pulumi")


def installed_docker_plugins(cli: str | None = None) -> list[str]:
    """Versions of the docker resource plugin this host has (plugin dir first, then ``pulumi plugin ls``)."""
    versions = sorted(
        p.name.removeprefix("resource-docker-v")
        for p in (pulumi_home() / "plugins").glob("resource-docker-v*")
        if p.is_dir() and not p.name.endswith((".partial", ".lock"))
    )
    if versions or cli is None:
        return versions
    try:
        listed = subprocess.run([cli, "plugin", "ls", "--json"], capture_output=True, text=True, timeout=60, check=True)
        plugins = json.loads(listed.stdout or "[]")
    except (OSError, subprocess.SubprocessError, ValueError):
        return []
    return sorted(str(p.get("version", "")) for p in plugins or [] if p.get("name") == "docker" and p.get("kind") == "resource")


def require_tools() -> str:
    """The Pulumi CLI's path, once it and a docker plugin of the SDK's major version are installed."""
    cli = shutil.which("pulumi")
    if cli is None:
        raise MissingToolError(install_hint("the Pulumi CLI (`pulumi`) is not installed"))
    major = provider_version().split(".")[0]
    found = installed_docker_plugins(cli)
    if not any(v.split(".")[0] == major for v in found):
        have = f" (found {', '.join(found)})" if found else ""
        raise MissingToolError(install_hint(f"the Pulumi docker provider plugin v{major}.x is not installed{have}"))
    return cli


def passphrase_env() -> dict[str, str]:
    """The passphrase that encrypts the stack's config secrets, as the CLI reads it."""
    if "PULUMI_CONFIG_PASSPHRASE" in os.environ:
        return {"PULUMI_CONFIG_PASSPHRASE": os.environ["PULUMI_CONFIG_PASSPHRASE"]}
    file = os.environ.get("PULUMI_CONFIG_PASSPHRASE_FILE")
    if file:
        if not Path(file).is_file():
            raise CcoasError(f"PULUMI_CONFIG_PASSPHRASE_FILE={file}: no such file")
        return {"PULUMI_CONFIG_PASSPHRASE_FILE": file}
    raise CcoasError(
        "the Pulumi engine keeps its state in a local file backend encrypted with a passphrase: set "
        "PULUMI_CONFIG_PASSPHRASE, or PULUMI_CONFIG_PASSPHRASE_FILE to a file holding it (keep the same one for every run)"
    )


# -- host preconditions -------------------------------------------------------------------------


def missing_mount_sources(plan: Plan, paths: StackPaths, only: list[str] | None = None) -> list[Path]:
    """Host paths the plan's containers (or those of ``only``) bind-mount that do not exist."""
    wanted: list[Path] = []
    for service in plan.services:
        if only is not None and service.name not in only:
            continue
        if service.config is not None:
            wanted.append(paths.config_dir(service.config.source))
        wanted += [paths.secret_file(service.name, s.secret) for s in service.secrets]
        wanted += [paths.runtime_mount(m.name) for m in service.runtime_mounts]
    return [p for p in wanted if not p.exists()]


# -- the stack --------------------------------------------------------------------------------


def backend_url(paths: StackPaths) -> str:
    return (paths.pulumi / "backend").as_uri()


def workspace_stack(plan: Plan, paths: StackPaths, docker_host: str | None, stack_file: str | Path) -> Any:
    """The Automation API stack named after the plan, its program inline, its state in the file backend."""
    from pulumi import automation as auto

    from ccoas import pulumi_program

    env = {**passphrase_env(), "PULUMI_BACKEND_URL": backend_url(paths), "PULUMI_SKIP_UPDATE_CHECK": "true"}
    for directory in (paths.pulumi, paths.pulumi / "backend", paths.pulumi / "workspace"):
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    settings = auto.ProjectSettings(
        name=PROJECT,
        runtime="python",
        description="ccoas: the plan as pulumi-docker resources",
        backend=auto.ProjectBackend(url=backend_url(paths)),
    )
    options = auto.LocalWorkspaceOptions(
        work_dir=str(paths.pulumi / "workspace"),
        project_settings=settings,
        env_vars=env,
        secrets_provider="passphrase",
    )
    try:
        stack = auto.create_or_select_stack(
            stack_name=plan.stack,
            project_name=PROJECT,
            program=lambda: pulumi_program.declare(plan, paths, docker_host),
            opts=options,
        )
        # Recorded so `pulumi up` in the repository (Pulumi.yaml) can run the same stack by hand.
        stack.set_all_config(
            {"ccoas:stackFile": auto.ConfigValue(str(stack_file)), "ccoas:name": auto.ConfigValue(plan.stack)}
        )
    except auto.CommandError as exc:
        raise CcoasError(f"pulumi: {_last_line(exc)}") from None
    return stack


def resource_urns(plan: Plan, services: list[str]) -> list[str]:
    """URNs of ``services``' containers and everything they stand on (provider, networks, volumes)."""
    prefix = f"urn:pulumi:{plan.stack}::{PROJECT}::"
    urns = [f"{prefix}pulumi:providers:docker::docker"]
    for name in services:
        service = plan.service(name)
        urns += [f"{prefix}docker:index/network:Network::{n}" for n in sorted(service.networks)]
        urns += [f"{prefix}docker:index/volume:Volume::{m.volume}" for m in service.volumes]
        urns.append(f"{prefix}docker:index/container:Container::{name}")
    return list(dict.fromkeys(urns))


def up(
    plan: Plan,
    paths: StackPaths,
    docker_host: str | None,
    stack_file: str | Path,
    *,
    preview_only: bool = False,
    only: list[str] | None = None,
    on_output: Output = print,
) -> PulumiResult:
    """Preview or apply ``plan`` (or only the services ``only``) with Pulumi.

    Raises :class:`MissingToolError` without the CLI or plugin.
    """
    from pulumi import automation as auto

    from ccoas.pulumi_program import unenforced

    require_tools()
    if not preview_only:
        missing = missing_mount_sources(plan, paths, only)
        if missing:
            raise HostError(
                f"{len(missing)} host paths the containers mount do not exist (first: {missing[0]}). The Pulumi engine "
                "declares networks, volumes and containers only: it does not render config, write secret files from "
                "Vault or run the plan's hooks. Let the local engine prepare them (`ccoas up`, then `ccoas down`, "
                "which keeps them), then run `ccoas up --engine pulumi`"
            )
    stack = workspace_stack(plan, paths, docker_host, stack_file)
    gaps = unenforced(plan)
    try:
        if preview_only:
            previewed = stack.preview(on_output=on_output, diff=False)
            operations = {str(_op(k)): v for k, v in previewed.change_summary.items()}
            result = PulumiResult(operations=operations, unenforced=gaps)
        else:
            applied = stack.up(on_output=on_output, target=resource_urns(plan, only) if only else None)
            operations = {str(_op(k)): v for k, v in (applied.summary.resource_changes or {}).items()}
            outputs = {k: v.value for k, v in applied.outputs.items() if not v.secret}
            result = PulumiResult(operations=operations, outputs=outputs, unenforced=gaps)
    except auto.CommandError as exc:
        raise CcoasError(f"pulumi {'preview' if preview_only else 'up'} failed: {_last_line(exc)}") from None
    for service, notes in sorted(gaps.items()):
        for note in notes:
            on_output(f"note: {service}: {note}")
    return result


def preview(
    plan: Plan, paths: StackPaths, docker_host: str | None, stack_file: str | Path, *, on_output: Output = print
) -> PulumiResult:
    """What :func:`up` would change; changes nothing."""
    return up(plan, paths, docker_host, stack_file, preview_only=True, on_output=on_output)


# -- entry points of the CLI ------------------------------------------------------------------


def _host(plan: Plan) -> tuple[StackPaths, str]:
    from ccoas.host import ensure_api_service, host_layout
    from ccoas.state import stack_paths

    layout = host_layout()
    docker_host = ensure_api_service(layout)
    return stack_paths(layout.state_root, layout.runtime_dir, plan.stack), docker_host


def up_from_cli(plan: Plan, stack_file: str | Path, on_output: Output = print) -> PulumiResult:
    """``ccoas up --engine pulumi``: resources by Pulumi, steps by ccoas, in the plan's order.

    1. ccoas makes the images present, renders the config and creates the runtime dirs;
    2. Pulumi creates Vault alone (targeted), and ccoas initialises/unseals it and writes
       every secret file — the other containers mount them;
    3. Pulumi applies the whole plan;
    4. ccoas waits for each service in start order and runs its hooks (Postgres bootstrap).
    """
    require_tools()  # before touching the host: a missing CLI is the first thing to say
    passphrase_env()
    from ccoas import migrations
    from ccoas.engine.runtime import Runtime
    from ccoas.state import stack_paths
    from ccoas.steps import Steps

    runtime = Runtime.connect()
    paths, docker_host = stack_paths(runtime.layout.state_root, runtime.layout.runtime_dir, plan.stack), runtime.layout.base_url
    steps = Steps(plan, paths, runtime)
    for note in migrations.migrate(paths):  # a state of a newer ccoas is refused before anything
        on_output(f"note: {note}")
    steps.prepare()
    if plan.vault is not None:
        up(plan, paths, docker_host, stack_file, only=["vault"], on_output=on_output)
        steps.settle(plan.service("vault"))
    result = up(plan, paths, docker_host, stack_file, on_output=on_output)
    for service in plan.services:
        steps.settle(service)
    from ccoas import listener

    edge = listener.plan_operation(plan, paths, listener.observe(plan, paths, runtime.layout))
    if edge is not None:  # a host resource, not Pulumi's: ccoas converges it as the local engine does
        listener.apply(plan, paths, runtime.layout, edge, on_output)
    on_output(f"{result.changes} changes")
    return result


def down_from_cli(plan: Plan, stack_file: str | Path, purge: bool = False, on_output: Output = print) -> PulumiResult:
    """``ccoas down --engine pulumi``: destroy the containers and networks (volumes too with
    ``purge``, and then the stack's state and secret files, as the local engine's purge does)."""
    from pulumi import automation as auto

    require_tools()
    passphrase_env()
    paths, docker_host = _host(plan)
    stack = workspace_stack(plan, paths, docker_host, stack_file)
    from ccoas import listener
    from ccoas.host import host_layout

    listener.stop(listener.ListenerFiles.of(paths), host_layout())
    prefix = f"urn:pulumi:{plan.stack}::{PROJECT}::"
    targets = [f"{prefix}docker:index/container:Container::{s.name}" for s in plan.services]
    targets += [f"{prefix}docker:index/network:Network::{n.name}" for n in plan.networks]
    try:
        destroyed = stack.destroy(on_output=on_output) if purge else stack.destroy(on_output=on_output, target=targets)
    except auto.CommandError as exc:
        raise CcoasError(f"pulumi destroy failed: {_last_line(exc)}") from None
    operations = {str(_op(k)): v for k, v in (destroyed.summary.resource_changes or {}).items()}
    if purge:
        for directory in (paths.runtime, paths.state):
            host_files.remove_tree(directory)  # never through a link the engine user planted
    result = PulumiResult(operations=operations)
    on_output(f"{result.changes} changes")
    return result


def preview_from_cli(plan: Plan, stack_file: str | Path, on_output: Output = print) -> PulumiResult:
    """``ccoas preview``."""
    require_tools()
    paths, docker_host = _host(plan)
    result = preview(plan, paths, docker_host, stack_file, on_output=on_output)
    on_output(f"{result.changes} changes")
    return result


def _op(kind: Any) -> str:
    return getattr(kind, "value", kind)


def _last_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.strip().startswith(("code:", "stdout:"))]
    return lines[-1] if lines else str(exc)
