"""The preflight: what ``up`` needs from the host, checked before anything is built or created.

Each rule is a small function that returns one line per failure, naming what is missing and
the command that fixes it. ``ccoas host check [STACK]`` prints them; ``ccoas up`` stops on
them with exit code 2 (:class:`~ccoas.errors.PreflightError`), having built and created
nothing. The rules read the host and, once the engine answers, the engine; none changes
either.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any, Iterable

from ccoas.errors import HostError
from ccoas.host import HostLayout, ping, subid_range
from ccoas.plan import LABEL_PREFIX, Plan
from ccoas.requirements import BUILD_PACKAGES, ENGINE_PACKAGES, RUNTIME_BINARIES, RUST_PACKAGES, TOOLCHAINS

PREPARE = "ccoas host prepare"
PORT_SYSCTL = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
TUN = Path("/dev/net/tun")
BUILD_FREE_BYTES = 10 * 1024**3
"""Free space a cold build of every local image needs (Directus' node_modules, Go caches, layers)."""
RUN_FREE_BYTES = 1 * 1024**3


def _prepare_for(stack_arg: str | None) -> str:
    return f"{PREPARE} {stack_arg}" if stack_arg else PREPARE


# --- host rules (no engine needed) -----------------------------------------------------------


def engine_user_exists(layout: HostLayout) -> list[str]:
    try:
        layout.uid
    except HostError:
        return [f"engine user {layout.engine_user!r} does not exist: run `{PREPARE}`"]
    return []


def missing_binaries(layout: HostLayout) -> dict[str, list[str]]:
    """Runtime binaries the engine cannot find (helper dir or its PATH), by Debian package."""
    path = layout.engine_env()["PATH"]
    missing: dict[str, list[str]] = {}
    for binary in RUNTIME_BINARIES:
        if binary.locate(path) is None:
            missing.setdefault(binary.package, []).append(binary.name)
    return missing


def runtime_binaries_on_path(layout: HostLayout) -> list[str]:
    """One line per package whose programs the engine cannot find."""
    run_by = {b.name: b.run_by for b in RUNTIME_BINARIES}
    return [
        f"{', '.join(names)} (run by {run_by[names[0]]}; Debian package {package}) "
        f"{'is' if len(names) == 1 else 'are'} not on the engine's PATH: run `{PREPARE}`"
        for package, names in missing_binaries(layout).items()
    ]


def packages_installed(packages: Iterable[str], skip: Iterable[str] = ()) -> list[str]:
    """Debian packages not installed (``skip``: those already reported by a missing binary)."""
    if shutil.which("dpkg-query") is None:
        return []  # not a Debian host: the binaries and toolchains are still checked
    wanted = [p for p in dict.fromkeys(packages) if p not in set(skip)]
    if not wanted:
        return []
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${db:Status-Abbrev}\n", *wanted], capture_output=True, text=True
    )
    installed = {line.split()[0] for line in proc.stdout.splitlines() if len(line.split()) > 1 and line.split()[1] == "ii"}
    return [f"Debian package {p} is not installed: run `{PREPARE}`" for p in wanted if p not in installed]


def toolchains_installed(layout: HostLayout) -> list[str]:
    failures = []
    for toolchain in TOOLCHAINS.values():
        for program in toolchain.programs:
            found = layout.toolchain_bin(toolchain.name) / program
            if not os.access(found, os.X_OK):
                failures.append(
                    f"{toolchain.name} toolchain ({toolchain.source}, {toolchain.minimum} or newer) has no {found}: run `{PREPARE}`"
                )
    return failures


def subordinate_ids(layout: HostLayout) -> list[str]:
    failures = []
    for path in (Path("/etc/subuid"), Path("/etc/subgid")):
        try:
            subid_range(path, layout.engine_user, layout.uid)
        except HostError as exc:
            failures.append(str(exc))
    return failures


def tun_device() -> list[str]:
    if not TUN.exists():
        return [f"{TUN} does not exist (slirp4netns needs it): load the tun module (`modprobe tun`), then run `{PREPARE}`"]
    if TUN.stat().st_mode & 0o006 != 0o006:
        return [f"{TUN} is not readable and writable by the engine user (slirp4netns needs it): run `{PREPARE}`"]
    return []


def runtime_dir(layout: HostLayout) -> list[str]:
    if layout.runtime_dir.is_dir() or os.geteuid() == 0:  # root makes it again (after a reboot)
        return []
    return [f"{layout.runtime_dir} (the engine user's XDG_RUNTIME_DIR) is missing and only root can make it: run `{PREPARE}`"]


def api_socket(layout: HostLayout) -> list[str]:
    """The API answers, or ccoas can start it (podman installed, runtime dir there or makeable)."""
    if ping(layout.socket_path):
        return []
    if shutil.which("podman", path=layout.engine_env()["PATH"]) is None:
        return [f"the Podman API does not answer on {layout.socket_path} and podman is not installed: run `{PREPARE}`"]
    if os.geteuid() not in (0, layout.uid):
        return [f"the Podman API does not answer on {layout.socket_path} and only root or {layout.engine_user} can start it"]
    return []


def privileged_ports(plan: Plan, stack_arg: str | None, port_start: int | None = None) -> list[str]:
    """Ports below ``net.ipv4.ip_unprivileged_port_start`` cannot be published rootless."""
    if port_start is None:
        try:
            port_start = int(PORT_SYSCTL.read_text())
        except (OSError, ValueError):
            return []
    return [
        f"{name} publishes {p.host_ip}:{p.host_port}, below net.ipv4.ip_unprivileged_port_start={port_start} "
        f"(the engine user cannot bind it): run `{_prepare_for(stack_arg)}`, which lowers it for this stack"
        for name, p in plan.published()
        if 0 < p.host_port < port_start
    ]


def lowest_published_port(plan: Plan) -> int | None:
    """The lowest host port ``plan`` publishes below 1024 (host preparation lowers the sysctl to it)."""
    low = [p.host_port for _, p in plan.published() if 0 < p.host_port < 1024]
    return min(low) if low else None


def free_disk(layout: HostLayout, needed: int) -> list[str]:
    failures = []
    for where in dict.fromkeys((layout.cache_root, _engine_storage(layout))):
        existing = next((p for p in (where, *where.parents) if p.exists()), Path("/"))
        free = shutil.disk_usage(existing).free
        if free < needed:
            failures.append(
                f"{existing} has {free / 1024**3:.1f} GiB free, {needed / 1024**3:.0f} GiB needed for the image builds: "
                f"free space there (or point CCOAS_CACHE_DIR elsewhere)"
            )
    return failures


def _engine_storage(layout: HostLayout) -> Path:
    try:
        return layout.home / ".local" / "share" / "containers"
    except HostError:
        return Path("/home")


def check_host(plan: Plan | None, layout: HostLayout, stack_arg: str | None = None) -> list[str]:
    """Every host rule; the engine is not contacted."""
    no_user = engine_user_exists(layout)
    failures = list(no_user)
    failures += runtime_binaries_on_path(layout)
    failures += packages_installed((*ENGINE_PACKAGES, *BUILD_PACKAGES, *RUST_PACKAGES), skip=missing_binaries(layout))
    failures += toolchains_installed(layout)
    failures += tun_device()
    if not no_user:
        failures += subordinate_ids(layout)
        failures += runtime_dir(layout)
        failures += api_socket(layout)
    if plan is not None:
        failures += privileged_ports(plan, stack_arg)
    return failures


# --- engine rules (the API answers) ----------------------------------------------------------


def ports_free(plan: Plan, client: Any, listening: "set[tuple[str, int]] | frozenset[tuple[str, int]]" = frozenset()) -> list[str]:
    """Every port the stack publishes is free, or published by this stack's own containers
    (or, ``listening``, held by its own edge listener)."""
    own = _published_by(client, {"label": [f"{LABEL_PREFIX}.stack={plan.stack}"], "status": ["running"]})
    own.update({address: "edge listener" for address in listening})
    others: dict[tuple[str, int], str] | None = None
    failures = []
    for name, port in plan.published():
        if not port.host_port or (port.host_ip, port.host_port) in own or ("0.0.0.0", port.host_port) in own:
            continue
        if not _taken(port.host_ip, port.host_port, port.protocol):
            continue
        if others is None:
            others = _published_by(client, {"status": ["running"]})
        holder = others.get((port.host_ip, port.host_port)) or others.get(("0.0.0.0", port.host_port))
        by = f"container {holder}" if holder else f"another process (`ss -ltnp 'sport = :{port.host_port}'` shows which)"
        failures.append(
            f"{name}: port {port.host_ip}:{port.host_port} is already in use by {by}: "
            f"stop it, or publish another port in the stack file"
        )
    return failures


def _published_by(client: Any, filters: dict) -> dict[tuple[str, int], str]:
    published: dict[tuple[str, int], str] = {}
    for container in client.containers.list(filters=filters):
        for bindings in (container.attrs.get("NetworkSettings", {}).get("Ports") or {}).values():
            for binding in bindings or ():
                published[(binding.get("HostIp") or "0.0.0.0", int(binding["HostPort"]))] = container.name
    return published


def _taken(host_ip: str, port: int, protocol: str) -> bool:
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    family = socket.AF_INET6 if ":" in host_ip else socket.AF_INET
    with socket.socket(family, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host_ip, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def check_engine(plan: Plan, layout: HostLayout, client: Any) -> list[str]:
    """Rules that need the engine: published ports, and disk for the images it lacks."""
    from ccoas.images import image_present

    from ccoas import listener
    from ccoas.state import stack_paths

    paths = stack_paths(layout.state_root, layout.runtime_dir, plan.stack)
    failures = ports_free(plan, client, listener.held_addresses(plan, paths, layout))
    builds = any(s.image.source == "local" and not image_present(client, s.image.ref) for s in plan.services)
    failures += free_disk(layout, BUILD_FREE_BYTES if builds else RUN_FREE_BYTES)
    return failures
