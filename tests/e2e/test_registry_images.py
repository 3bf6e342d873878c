"""Provisioning never pulls: a registry image missing from the host stops `up` before anything exists.

Nothing here contacts a registry: the test proves that `up` does not try (no registry is
reachable from this host, and a pull would be the first thing to fail or hang).
"""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from ccoas.host import host_layout
from ccoas.plan import LABEL_PREFIX
from ccoas.planner import build_plan, load_stack

pytestmark = pytest.mark.e2e


def _ccoas(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ccoas.cli", *args], capture_output=True, text=True, timeout=300)


LISTINGS = {
    "container": ("ps", "-a", "--format", "{{.Names}}"),
    "network": ("network", "ls", "--format", "{{.Name}}"),
    "volume": ("volume", "ls", "--format", "{{.Name}}"),
}


def _owned(kind: str, name: str) -> list[str]:
    """Names of the engine's ``kind`` objects labelled as the stack ``name``'s."""
    cmd = host_layout().engine_command(
        "podman", *LISTINGS[kind], "--filter", f"label={LABEL_PREFIX}.stack={name}"
    )
    return subprocess.run(cmd, capture_output=True, text=True, cwd="/", check=True).stdout.split()


def test_up_with_a_missing_registry_image_stops_before_provisioning(small_stack):
    stack = small_stack("reg", "vault", "postgres", source="registry")
    name = f"reg-{uuid.uuid4().hex[:6]}"
    result = _ccoas("up", str(stack), "--name", name)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "ccoas never pulls while provisioning" in result.stderr and "ccoas images pull" in result.stderr
    assert "pulling" not in result.stdout + result.stderr
    for kind in LISTINGS:
        assert _owned(kind, name) == [], f"{kind}s of {name} exist after a refused up"
    assert not (host_layout().state_root / "stacks" / name).exists()


def test_images_pull_has_nothing_to_do_for_local_images(small_stack):
    stack = small_stack("regl", "vault")
    plan = build_plan(load_stack(stack))
    assert all(service.image.source == "local" for service in plan.services)  # so the command cannot reach a registry
    result = _ccoas("images", "pull", str(stack))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every registry image is on this host" in result.stdout
