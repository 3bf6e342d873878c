"""Unprivileged builds: every step that runs code a build fetched runs as the build user, in a
bubblewrap sandbox, never as root.

A local image build runs other people's code on the host: Go's cgo compilers, npm install
scripts (node-gyp), and for a stack author's own crate its ``build.rs``, its proc macros, its
dependencies' build scripts and any ``rustc-wrapper`` its ``.cargo/config.toml`` names. Each
such step runs as the build user host preparation makes (``ccoas-build``: no login, no home, no
subordinate ids), inside ``bwrap`` (Debian's ``bubblewrap``, the sandbox Flatpak uses) with its
own user, pid, ipc, uts and cgroup namespaces. What the step sees (:func:`sandbox_command`):

- read-only: ``/usr``, ``/etc`` and the toolchains of host preparation (and a Node runtime
  when the step needs one); a fresh ``/tmp``; ``/proc`` and a minimal ``/dev``;
- read-write: its own work dir at ``/build`` (inputs copied there by root, see
  :func:`work_dir`) and the cache dirs it names (``/cache/...``);
- nothing else: not ``/var/lib/ccoas`` (state, Vault unseal material, rendered secrets),
  ``/root``, ``/home``, ``/run``, ``/var``, the other builds' work and cache dirs;
- network only in a *fetch* step (``cargo fetch``, ``go mod download``, ``npm install
  --ignore-scripts``: they download, they run no fetched code). A *compile* step (``build.rs``,
  install scripts, cgo) runs in an empty network namespace: loopback only.

Its pid namespace dies with it, so when a step returns, nothing it started still runs: root
then copies the outputs back (:func:`copy_file_out`, :func:`copy_tree_out`) without following a
link and with set-id bits cleared. Root never writes under a dir the build user owns: the build
root and its ``work``/``cache`` folders are root's; only leaves (one step's work dir, one cache
dir) are handed over (:func:`leaf_dir`, :func:`hand_over`).

Why not a rootless build container: it would need a build image holding every toolchain
(Debian's Rust, Go from PyPI, a C++ compiler, Node headers), subordinate ids and Podman
storage for the build user, and a container start per step on a cgroup v1 host; bubblewrap
gives the same view (its own root of allowlisted dirs, no network while compiling, no other
process visible) with the host's toolchains, in milliseconds.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ccoas import host_files
from ccoas.errors import EngineError, HostError
from ccoas.host import HostLayout

SANDBOX_PROGRAM = "/usr/bin/bwrap"
SANDBOX_PACKAGE = "bubblewrap"
WORK = "/build"
SYSTEM_DIRS = ("/usr", "/etc")
MERGED_USR_LINKS = {"/bin": "usr/bin", "/sbin": "usr/sbin", "/lib": "usr/lib", "/lib64": "usr/lib64"}
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
PASSED_ENV = (
    "SSL_CERT_FILE", "SSL_CERT_DIR", "NODE_EXTRA_CA_CERTS",
    "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy",
)
"""What a step inherits from ccoas's environment: how this host reaches the registries (a CA
bundle of the host's, a proxy). Official Node builds carry their own CA list: behind a
TLS-inspecting proxy npm needs ``NODE_EXTRA_CA_CERTS``."""
OUTPUT_TAIL = 3000
TIMES_MARKER = "--- ccoas build step times ---"
TIMES_LINE = re.compile(r"^(\d+)m([\d.]+)s (\d+)m([\d.]+)s$")


@dataclass(frozen=True)
class Mount:
    """A host dir the sandbox sees at ``inside``."""

    host: Path
    inside: str
    writable: bool = False


@dataclass(frozen=True)
class StepUsage:
    wall_s: float
    cpu_s: float
    """user + system time of the step and every process it started (``wait4``'s rusage)."""


class _Usage(threading.local):
    """CPU seconds of the sandboxed steps the current thread ran (a build stage reads it)."""

    cpu_s = 0.0


usage = _Usage()


def sandbox_command(
    user: str,
    argv: list[str],
    mounts: tuple[Mount, ...] = (),
    network: bool = False,
    env: dict[str, str] | None = None,
    cwd: str = WORK,
    toolchain_root: Path | None = None,
) -> list[str]:
    """The command that runs ``argv`` as ``user`` in a sandbox of ``mounts`` (pure: no host read)."""
    cmd = ["runuser", "-u", user, "--", "env", "-i", f"PATH={SANDBOX_PATH}", "HOME=/tmp", "LANG=C.UTF-8"]
    cmd += [SANDBOX_PROGRAM, "--unshare-all", *(["--share-net"] if network else []), "--die-with-parent", "--new-session"]
    for directory in SYSTEM_DIRS:
        cmd += ["--ro-bind", directory, directory]
    for link, target in MERGED_USR_LINKS.items():
        cmd += ["--symlink", target, link]
    if toolchain_root is not None:
        cmd += ["--ro-bind", str(toolchain_root), str(toolchain_root)]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--dir", "/cache"]
    for mount in mounts:
        cmd += ["--bind" if mount.writable else "--ro-bind", str(mount.host), mount.inside]
    cmd += ["--chdir", cwd]
    for key, value in sorted((env or {}).items()):
        cmd += ["--setenv", key, value]
    return [*cmd, "--", *argv]


def run_sandboxed(
    layout: HostLayout,
    argv: list[str],
    what: str,
    mounts: tuple[Mount, ...] = (),
    network: bool = False,
    env: dict[str, str] | None = None,
    cwd: str = WORK,
) -> str:
    """Run one build step in the sandbox as the build user; its stdout, or EngineError with the
    tail of its output. Its CPU time is added to :data:`usage` of this thread."""
    if not os.access(SANDBOX_PROGRAM, os.X_OK):
        raise HostError(f"{SANDBOX_PROGRAM} (Debian package {SANDBOX_PACKAGE}) is not installed: run `ccoas host prepare`")
    layout.build_ids  # raises HostError naming the fix when the build user is missing
    # The step's CPU time: the sandbox's pid 1 reaps the step, so wait4 here does not see it.
    # A shell around the step prints its children's times (``times``) after a marker line.
    timed = ["/bin/sh", "-c", f'"$@"; rc=$?; echo {TIMES_MARKER} >&2; times >&2; exit $rc', "sh", *argv]
    env = {**{k: os.environ[k] for k in PASSED_ENV if os.environ.get(k)}, **(env or {})}
    cmd = sandbox_command(layout.build_user, timed, mounts, network, env, cwd, layout.toolchain_root)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd="/")
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr, marker, times = err.read().decode(errors="replace").rpartition(TIMES_MARKER + "\n")
        if not marker:  # the shell did not get to print its times
            stderr, times = times, ""
    usage.cpu_s += children_cpu_seconds(times)
    if proc.returncode != 0:
        raise EngineError(
            f"{what} failed (exit {proc.returncode}, as {layout.build_user} in the build sandbox, "
            f"{time.monotonic() - started:.0f}s): {' '.join(argv)}\n{(stdout + stderr)[-OUTPUT_TAIL:]}"
        )
    return stdout


def children_cpu_seconds(times_output: str) -> float:
    """user + system seconds of a shell's children, from its ``times`` (second line), 0.0 when
    the output is not what ``times`` prints."""
    lines = times_output.strip().splitlines()
    found = TIMES_LINE.match(lines[-1].strip()) if len(lines) == 2 else None
    if found is None:
        return 0.0
    user_min, user_s, sys_min, sys_s = found.groups()
    return int(user_min) * 60 + float(user_s) + int(sys_min) * 60 + float(sys_s)


# --- dirs the build user gets ---------------------------------------------------------------


def _root_dir(path: Path) -> Path:
    """``path`` as a dir of root's that no one else can write (made when missing)."""
    path.mkdir(mode=0o755, parents=True, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
        raise HostError(
            f"{path} must be a directory of root's that no other user can write (builds run as root "
            f"there): run `ccoas host prepare`, or point CCOAS_CACHE_DIR elsewhere"
        )
    return path


def build_root(layout: HostLayout) -> Path:
    """``<cache>/build``, root's; checked along with the cache dir above it, whose every parent
    the build user must be able to pass through (its sandbox binds dirs below it)."""
    if os.geteuid() != 0:
        raise HostError("local image builds run as root, which hands every step that runs fetched code to the build user: run ccoas as root")
    _root_dir(layout.cache_root)
    for parent in layout.cache_root.absolute().parents:
        if not os.stat(parent).st_mode & 0o001:
            raise HostError(f"the build user cannot pass through {parent} to the build cache {layout.cache_root}: point CCOAS_CACHE_DIR elsewhere")
    return _root_dir(layout.cache_root / "build")


def leaf_dir(layout: HostLayout, *parts: str) -> Path:
    """A cache dir of the build user's (``<cache>/build/cache/<parts>``), made by root in a
    dir of root's and handed over; an existing one must be a real dir of the build user's."""
    parent = _root_dir(build_root(layout) / "cache")
    for part in parts[:-1]:
        parent = _root_dir(parent / part)
    leaf = parent / parts[-1]
    uid, gid = layout.build_ids
    try:
        os.mkdir(leaf, 0o700)
        os.lchown(leaf, uid, gid)
    except FileExistsError:
        info = os.lstat(leaf)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid:
            raise HostError(f"{leaf} is not a directory of the build user {layout.build_user}: remove it and build again") from None
    return leaf


def hand_over(path: Path, uid: int, gid: int) -> None:
    """``lchown`` a tree root just made (no one else could write it yet) to the build user."""
    for parent, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            os.lchown(os.path.join(parent, name), uid, gid)
    os.lchown(path, uid, gid)


@contextmanager
def work_dir(layout: HostLayout, name: str) -> Iterator[Path]:
    """A fresh work dir of one build step, ``<cache>/build/work/<name>-<random>``, made by root
    in root's dir. The caller fills it, then :func:`hand_over` gives it to the build user; it is
    removed (links not followed) when the block ends."""
    parent = _root_dir(build_root(layout) / "work")
    path = parent / f"{name}-{uuid.uuid4().hex[:8]}"
    path.mkdir(mode=0o700)
    try:
        yield path
    finally:
        _remove_tree(path)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)  # rmtree never follows links (fd-based on Linux)


# --- outputs, back to root ------------------------------------------------------------------


def copy_file_out(root: Path, relative: str, dest: Path) -> Path:
    """Copy the regular file ``root/relative`` (a build's output) to ``dest``, every component
    opened with ``O_NOFOLLOW``; set-id bits are not copied. HostError when it is not a regular
    file (a link, a device, missing)."""
    parts = tuple(Path(relative).parts)
    try:
        dir_fd = host_files.open_dir(root.joinpath(*parts[:-1]))
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
    except (OSError, host_files.UnsafePathError) as exc:
        raise HostError(f"build output {relative} is not a regular file in the build dir: {getattr(exc, 'strerror', None) or exc}") from None
    with os.fdopen(fd, "rb") as src:
        info = os.fstat(src.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise HostError(f"build output {relative} is not a regular file")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "xb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
        os.chmod(dest, info.st_mode & 0o755)
    return dest


def copy_tree_out(source: Path, dest: Path) -> None:
    """Copy a build's output tree to ``dest`` (a new dir of root's): dirs and regular files
    copied with set-id bits and group/other write cleared, links recreated as links (never
    followed), anything else (fifos, devices, sockets) left out. The step's pid namespace is
    gone by now: no process of the build changes the tree while it is copied."""
    src_fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        _copy_dir_fd(src_fd, dest)
    finally:
        os.close(src_fd)


def _copy_dir_fd(src_fd: int, dest: Path) -> None:
    dest.mkdir(mode=0o755)
    for entry in os.scandir(src_fd):
        info = entry.stat(follow_symlinks=False)
        target = dest / entry.name
        if stat.S_ISLNK(info.st_mode):
            os.symlink(os.readlink(entry.name, dir_fd=src_fd), target)
        elif stat.S_ISDIR(info.st_mode):
            child = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=src_fd)
            try:
                _copy_dir_fd(child, target)
            finally:
                os.close(child)
        elif stat.S_ISREG(info.st_mode):
            fd = os.open(entry.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=src_fd)
            with os.fdopen(fd, "rb") as src, open(target, "xb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
            os.chmod(target, info.st_mode & 0o755)
