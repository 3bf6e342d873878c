"""Host preparation installs every program the rootless engine executes.

Each runtime binary is resolved the way the engine finds it (helper dir or PATH), through its
alternatives symlinks, to the Debian package that owns it (``dpkg -S``); that package must be
one host preparation installs. A binary that is absent fails the test: the list must not lean
on what a machine already has (run ``ccoas host prepare`` first).
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from ccoas.requirements import ENGINE_PACKAGES, RUNTIME_BINARIES

pytestmark = pytest.mark.skipif(shutil.which("dpkg") is None, reason="needs a Debian host (dpkg)")


def _owner(path: str) -> str:
    proc = subprocess.run(["dpkg", "-S", path], capture_output=True, text=True)
    assert proc.returncode == 0, f"no Debian package owns {path}: {proc.stderr.strip()}"
    return proc.stdout.split(":", 1)[0].split(",")[0].strip()


@pytest.mark.parametrize("binary", RUNTIME_BINARIES, ids=lambda b: b.name)
def test_runtime_binary_is_owned_by_a_package_host_preparation_installs(binary):
    found = binary.locate()
    assert found is not None, f"{binary.name} (run by {binary.run_by}) is missing: run `ccoas host prepare`"
    package = _owner(str(found.resolve()))
    assert package.split(":")[0] == binary.package, f"{found} -> {found.resolve()} is in {package}"
    assert package.split(":")[0] in ENGINE_PACKAGES


def test_host_preparation_installs_the_engine_packages():
    """roles/host.py installs exactly the list this module keeps (no copy of its own)."""
    from pathlib import Path

    role = (Path(__file__).resolve().parent.parent / "roles" / "host.py").read_text()
    assert "from ccoas.requirements import BUILD_PACKAGES, ENGINE_PACKAGES" in role
    assert "packages = [*ENGINE_PACKAGES, *BUILD_PACKAGES]" in role
