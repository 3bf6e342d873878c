"""The same images elsewhere: ``images save`` on the main engine user, ``images load`` into a
second engine user's storage (no registry, no build), ``up --no-build`` there with
``images.source: bundle``: healthy, with exactly the same image ids."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from ccoas.engine.local import LocalEngine
from ccoas.host import HostLayout, ensure_api_service, host_layout, prepare
from ccoas.planner import build_plan, load_stack

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="creates a second engine user: needs root"),
]

USER = "ccoas-e2e-h15"
SUBID_START = "500000"  # clear of the main engine user's range and of the session test's user


@pytest.fixture(scope="module")
def other_layout() -> HostLayout:
    layout = HostLayout(engine_user=USER, state_root=Path(f"/var/lib/{USER}"), cache_root=Path(f"/var/cache/{USER}"))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CCOAS_SUBID_START", SUBID_START)
        prepare(layout=layout)
    ensure_api_service(layout)
    return layout


def ccoas(layout: HostLayout, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, CCOAS_ENGINE_USER=layout.engine_user, CCOAS_STATE_DIR=str(layout.state_root), CCOAS_CACHE_DIR=str(layout.cache_root))
    return subprocess.run([sys.executable, "-m", "ccoas.cli", *args], env=env, capture_output=True, text=True, timeout=1200, cwd="/")


def image_id(layout: HostLayout, ref: str) -> str:
    cmd = layout.engine_command("podman", "image", "inspect", "--format", "{{.Id}}", ref)
    return subprocess.run(cmd, capture_output=True, text=True, cwd="/").stdout.strip()


def test_saved_images_load_into_another_engine_and_run_with_identical_ids(small_stack, other_layout, tmp_path):
    name = f"e2e-h15-img-{uuid.uuid4().hex[:4]}"
    local_stack = small_stack(name, "vault", "postgres")
    plan = build_plan(load_stack(local_stack), name=name)
    LocalEngine.connect(plan).build_images()  # cached on the main engine user
    main = host_layout()
    refs = sorted({s.image.ref for s in plan.services})
    archive = tmp_path / "images.tar"
    saved = ccoas(main, "images", "save", str(local_stack), "--name", name, "--out", str(archive))
    assert saved.returncode == 0, saved.stderr

    bundle_stack = tmp_path / "bundle.yaml"
    document = yaml.safe_load(local_stack.read_text())
    document["images"] = {"source": "bundle"}
    bundle_stack.write_text(yaml.safe_dump(document))
    try:
        missing = ccoas(other_layout, "up", str(bundle_stack), "--name", name, "--no-build")
        if any(not image_id(other_layout, ref) for ref in refs):
            assert missing.returncode == 2 and "ccoas images load" in missing.stderr, missing.stderr
        loaded = ccoas(other_layout, "images", "load", str(archive))
        assert loaded.returncode == 0, loaded.stderr
        assert loaded.stdout.count("verified") == len(refs)
        up = ccoas(other_layout, "up", str(bundle_stack), "--name", name, "--no-build")
        assert up.returncode == 0, up.stdout + up.stderr
        rows = [line for line in up.stdout.splitlines() if f"{name}-" in line]
        assert len(rows) == 2 and all("healthy" in row for row in rows), up.stdout
        for ref in refs:
            assert image_id(other_layout, ref) == image_id(main, ref) != ""
    finally:
        down = ccoas(other_layout, "down", str(bundle_stack), "--name", name, "--purge")
        assert down.returncode == 0, down.stderr
        subprocess.run(other_layout.engine_command("podman", "rmi", *refs), capture_output=True, cwd="/")

