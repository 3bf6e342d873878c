"""The edge listener: each client's own address at Nginx under rootless Podman.

Rootless Podman 4.3 publishes a port through ``rootlessport``, which relays every connection
from inside the rootless network namespace: Nginx then sees each client as the same address,
and its per-client limits are limits for everyone. So when the plan says
``edge.listener.kind == "host"``, Nginx publishes no port. ccoas runs HAProxy (Debian 12's
2.6) as the engine user in the host's network namespace on the stack's public ports; in TCP
mode it hands each connection to Nginx over a unix socket with a PROXY protocol v2 header
that names the peer it accepted, and Nginx takes ``$remote_addr`` from that header on those
sockets only (``set_real_ip_from unix:``).

Who can claim an address: only a process that can connect to those sockets. They live in the
``edge`` runtime mount of the Nginx container, a directory owned by Nginx's uid with the
engine user's group, mode 0750: Nginx creates them, the engine user's own processes (the
listener) enter it, no other local user can, and no other container mounts it. A client
of the public port cannot: HAProxy never reads a PROXY header (no ``accept-proxy``), so one
a client sends is part of its TLS stream and Nginx refuses the handshake; a container on the
edge network reaches Nginx's TCP ports, where no header is read either.

The listener is a host resource of the stack, converged by ``up`` like a container
(:func:`observe`, :func:`plan`, :func:`apply`): its config is rendered into the stack's
state dir (root's, readable), the process is found through ``/proc`` (the engine user's,
that exact command line), and ``up`` starts it when it is missing, restarts it when its
config changed or it does not answer, and waits until an HTTPS request through it reaches
Nginx's ``/healthz``. ``down`` stops it. After a reboot ``ccoas host boot`` runs ``up``.
Root writes nothing in a directory the engine user can write: the config, the chosen ports,
the log and the record of the running process are in the root-owned state dir.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from ccoas import host_files
from ccoas.errors import EngineError
from ccoas.host import HostLayout
from ccoas.plan import Plan, Port
from ccoas.state import StackPaths

TEMPLATE = "host/haproxy.cfg.j2"
PROGRAM = "haproxy"
START_WAIT_S = 30.0
STOP_WAIT_S = 15.0


@dataclass(frozen=True)
class ListenerFiles:
    """The listener's files, in the stack's state dir (root-owned, 0755: the engine user reads)."""

    directory: Path

    @classmethod
    def of(cls, paths: StackPaths) -> "ListenerFiles":
        return cls(paths.state / "listener")

    @property
    def config(self) -> Path:
        return self.directory / "haproxy.cfg"

    @property
    def ports(self) -> Path:
        """Host ports chosen for ``host_port: 0`` (kept, so a stack keeps its address)."""
        return self.directory / "ports.json"

    @property
    def log(self) -> Path:
        return self.directory / "haproxy.log"


@dataclass(frozen=True)
class ObservedListener:
    pids: tuple[int, ...]
    """The engine user's processes running this stack's listener config (normally one)."""
    config_sha: str
    """sha256 of the config file the processes were started with (``""``: none on disk)."""
    answers: bool
    """An HTTPS request through the first public port reached Nginx's ``/healthz``."""


@dataclass(frozen=True)
class ListenerOperation:
    action: str
    """``start`` or ``restart``."""
    cause: str

    def __str__(self) -> str:
        return f"{self.action} edge listener: {self.cause}"


def wanted(plan: Plan) -> bool:
    """A listener runs when Nginx is behind one and publishes something (none: nothing is public)."""
    return plan.edge is not None and plan.edge.listener.kind == "host" and bool(plan.edge.listener.ports)


def host_ports(plan: Plan, files: ListenerFiles, choose: bool = True) -> list[tuple[Port, int]]:
    """Each public port with its host port: as the plan says, or for ``host_port: 0`` a free
    port chosen once (kept in :attr:`ListenerFiles.ports`); ``choose=False``: 0 until chosen."""
    assert plan.edge is not None
    try:
        chosen = {key: int(value) for key, value in json.loads(files.ports.read_text()).items()}
    except FileNotFoundError:
        chosen = {}
    result, changed = [], False
    for port in plan.edge.listener.ports:
        key = f"{port.host_ip}/{port.container_port}"
        number = port.host_port or chosen.get(key, 0)
        if not number and choose:
            number, changed = free_port(port.host_ip), True
            chosen[key] = number
        result.append((port, number))
    if changed:
        _write(files.ports, json.dumps(chosen, indent=2, sort_keys=True) + "\n")
    return result


def free_port(host_ip: str) -> int:
    family = socket.AF_INET6 if ":" in host_ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host_ip, 0))
        return probe.getsockname()[1]


def render(plan: Plan, paths: StackPaths, ports: list[tuple[Port, int]]) -> str:
    from ccoas.render import environment

    assert plan.edge is not None
    socket_dir = paths.runtime_mount(plan.edge.listener.socket_mount)
    return environment().get_template(TEMPLATE).render(plan=plan, ports=ports, socket_dir=socket_dir)


def endpoints(plan: Plan, paths: StackPaths) -> list[str]:
    """``scheme://host_ip:port`` of each public port the listener holds (chosen ones included)."""
    if not wanted(plan):
        return []
    return [f"{port.scheme}://{port.host_ip}:{number}" for port, number in host_ports(plan, ListenerFiles.of(paths), choose=False) if number]


def held_addresses(plan: Plan, paths: StackPaths, layout: HostLayout) -> set[tuple[str, int]]:
    """The host addresses this stack's running listener holds (none when it is not running)."""
    if not wanted(plan) or not listener_pids(ListenerFiles.of(paths), layout.uid):
        return set()
    return {(port.host_ip, number) for port, number in host_ports(plan, ListenerFiles.of(paths), choose=False) if number}


def observe(plan: Plan, paths: StackPaths, layout: HostLayout, proc_root: Path = Path("/proc")) -> ObservedListener:
    files = ListenerFiles.of(paths)
    pids = listener_pids(files, layout.uid, proc_root)
    try:
        sha = hashlib.sha256(files.config.read_bytes()).hexdigest()
    except FileNotFoundError:
        sha = ""
    answers = bool(pids) and _answers(plan, paths)
    return ObservedListener(pids=tuple(pids), config_sha=sha, answers=answers)


def listener_pids(files: ListenerFiles, uid: int, proc_root: Path = Path("/proc")) -> list[int]:
    """The engine user's processes whose command line is this listener's."""
    found = []
    for entry in proc_root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # exited while we looked
        if argv[:1] and os.path.basename(argv[0].decode(errors="replace")) == PROGRAM and str(files.config).encode() in argv:
            found.append(int(entry.name))
    return sorted(found)


def plan_operation(plan: Plan, paths: StackPaths, observed: ObservedListener) -> ListenerOperation | None:
    """What ``up`` does to the listener (``None``: it runs its current config and answers)."""
    if not wanted(plan):
        return ListenerOperation("stop", "the plan has no host listener") if observed.pids else None
    files = ListenerFiles.of(paths)
    text = render(plan, paths, host_ports(plan, files, choose=False))
    if not observed.pids:
        return ListenerOperation("start", "not running")
    if observed.config_sha != hashlib.sha256(text.encode()).hexdigest():
        return ListenerOperation("restart", "config changed")
    if not observed.answers:
        return ListenerOperation("restart", "does not answer through to nginx")
    return None


def apply(plan: Plan, paths: StackPaths, layout: HostLayout, op: ListenerOperation, say=lambda message: None) -> None:
    files = ListenerFiles.of(paths)
    say(str(op))
    stop(files, layout)
    if op.action == "stop":
        return
    text = render(plan, paths, host_ports(plan, files))
    _write(files.config, text)
    layout.start_detached((PROGRAM, "-db", "-f", str(files.config)), files.log)
    deadline = time.monotonic() + START_WAIT_S
    while time.monotonic() < deadline:
        if listener_pids(files, layout.uid) and _answers(plan, paths):
            return
        time.sleep(0.2)
    tail = host_files.read_file(files.log).decode(errors="replace")[-1500:] if files.log.is_file() else ""
    raise EngineError(f"edge listener: no answer from nginx through {', '.join(endpoints(plan, paths))} within {START_WAIT_S:.0f}s\n{tail}")


def stop(files: ListenerFiles, layout: HostLayout) -> bool:
    """Stop the stack's listener (open connections get :data:`STOP_WAIT_S` to finish); ``True``
    when one ran."""
    pids = listener_pids(files, layout.uid)
    for pid in pids:
        os.kill(pid, signal.SIGUSR1)  # HAProxy's soft stop: no new connections, open ones finish
    deadline = time.monotonic() + STOP_WAIT_S
    while (alive := listener_pids(files, layout.uid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    return bool(pids)


def _answers(plan: Plan, paths: StackPaths) -> bool:
    """An HTTPS ``GET /healthz`` for the stack's domain through the listener reaches Nginx's server for it.
    The certificate is not checked here: the request only proves the path."""
    https = [e for e in endpoints(plan, paths) if e.startswith("https://")]
    if not https:
        return False
    host, _, port = https[0].removeprefix("https://").rpartition(":")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, int(port)), timeout=3) as raw:
            with context.wrap_socket(raw, server_hostname=plan.domain) as tls:
                tls.sendall(f"GET /healthz HTTP/1.1\r\nHost: {plan.domain}\r\nConnection: close\r\n\r\n".encode())
                # Nginx's domain server answered: 200, or 429 when 127.0.0.1 (the listener's
                # probes and the container's own health check) is over its request limit
                return tls.recv(64).split(b" ")[1:2] in ([b"200"], [b"429"])
    except OSError:
        return False


def _write(path: Path, text: str) -> None:
    """Atomically, without following links, in root's state dir (0755 dir, 0644 file: the
    engine user reads the config)."""
    host_files.write_file(path, text.encode(), 0o644, parents_mode=0o755)
