"""Prepare a host for rootless ccoas: a pyinfra (3.x) deploy.

    pyinfra @local roles/host.py -y
    pyinfra @local roles/host.py -y --data ccoas_engine_user=builder

What it leaves behind, every piece idempotent (a second run reports no changes):

- Debian packages: every program the rootless engine executes at run time
  (``ccoas.requirements.ENGINE_PACKAGES``: podman, conmon, runc, slirp4netns, netavark,
  aardvark-dns, iptables, uidmap, fuse-overlayfs), mmdebstrap for the local base image, and the tools local image builds run on the host
  (a C toolchain and python3 for node-gyp, xz/tar; npm when the host has none).
- An unprivileged engine user (data ``ccoas_engine_user``, default ``ccoas``) with a
  subordinate uid/gid range in /etc/subuid and /etc/subgid.
- Its ``~/.config/containers/containers.conf`` and ``storage.conf``: k8s-file logs, runc,
  cgroupfs and file events when the host runs no systemd (journald and the systemd
  cgroup manager are unreachable then); Podman's defaults where systemd runs. The netavark
  network backend. Overlay storage. (A running API service reads them at start only.)
- ``/dev/net/tun`` readable by everyone where it is not (slirp4netns needs it rootless).
- ``/run/user/<uid>`` (0700, the user's): its XDG_RUNTIME_DIR, where the API socket lives.
- ``/var/lib/ccoas`` (state) and ``/var/cache/ccoas`` (build cache) owned by the engine user:
  the rootless user cannot read /root, so nothing it needs may live there.

Data (``--data key=value``): ccoas_engine_user, ccoas_subid_start (100000),
ccoas_subid_count (65536), ccoas_state_dir, ccoas_cache_dir.
"""

from __future__ import annotations

from io import StringIO

from pyinfra import host
from pyinfra.api import FactBase
from pyinfra.facts.server import Command, Users, Which
from pyinfra.operations import apt, files, server

from ccoas.requirements import BUILD_PACKAGES, ENGINE_PACKAGES


user = host.data.get("ccoas_engine_user", "ccoas")
subid_start = int(host.data.get("ccoas_subid_start", 100000))
subid_count = int(host.data.get("ccoas_subid_count", 65536))
state_dir = host.data.get("ccoas_state_dir", "/var/lib/ccoas")
cache_dir = host.data.get("ccoas_cache_dir", "/var/cache/ccoas")
home = f"/home/{user}"


class DeviceMode(FactBase):
    """Octal permission bits of a device node (pyinfra's File fact only reports regular files)."""

    def command(self, path):
        return f"stat -c %a {path} 2>/dev/null || true"

    def process(self, output):
        return output[0].strip() if output else None


systemd_running = host.get_fact(Command, "test -d /run/systemd/system && echo yes || echo no") == "yes"

packages = [*ENGINE_PACKAGES, *BUILD_PACKAGES]
if not host.get_fact(Which, "npm"):
    packages += ["nodejs", "npm"]

apt.packages(
    name="Rootless Podman and local image build tools",
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

for directory in (state_dir, cache_dir):
    files.directory(name=f"Directory {directory}", path=directory, user=user, group=user, mode="0755")
