"""The root ↔ engine user boundary, attacked by the engine user on a real host.

ccoas runs as root and hands the engine user (``ccoas``) its runtime dir and the leaf
directories containers write. A process of the engine user (``runuser -u ccoas --``) plants
real symlinks where root works, and a boot record, then root runs ``ccoas up``, the secret
writer and ``ccoas host boot --list``: nothing outside is touched (a root-only victim
directory is compared before and after), a planted link stops ``up`` with a message naming it
(exit 1, no traceback), a secret file swapped for a link is replaced, not written through, and
a planted boot record is refused. Root's state (``/var/lib/ccoas``) gives the engine user no
place to plant anything at all.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from ccoas import migrations
from ccoas.boot import BOOT_FILE
from ccoas.engine.local import LocalEngine
from ccoas.host import host_layout
from ccoas.planner import build_plan, load_stack
from ccoas.state import stack_paths

pytestmark = pytest.mark.e2e

NAME = f"e2e-tr-{uuid.uuid4().hex[:4]}"
CCOAS = [sys.executable, "-m", "ccoas.cli"]


def as_engine_user(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", host_layout().engine_user, "--", *command], capture_output=True, text=True, cwd="/")


def ccoas(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CCOAS, *args], capture_output=True, text=True, timeout=1200)



@pytest.fixture(scope="module")
def victim():
    """A root-only directory with a root-only file: where every planted link points."""
    directory = Path(tempfile.mkdtemp(prefix="ccoas-tr-victim-", dir="/var/tmp"))
    (directory / "shadow").write_text("root only\n")
    (directory / "shadow").chmod(0o600)
    yield directory
    shutil.rmtree(directory)


@pytest.fixture(scope="module")
def stack(module_stack):
    path = module_stack(NAME, "vault", "nginx")
    layout = host_layout()
    paths = stack_paths(layout.state_root, layout.runtime_dir, NAME)
    try:
        yield path, paths
    finally:
        ccoas("down", str(path), "--name", NAME, "--purge")
        as_engine_user("rm", "-rf", str(paths.runtime))


def test_links_planted_in_the_runtime_dir_stop_up_and_touch_nothing(stack, victim, tree_fingerprint):
    path, paths = stack
    before = tree_fingerprint(victim)
    assert as_engine_user("mkdir", "-p", str(paths.runtime)).returncode == 0
    for planted in (paths.secrets, paths.runtime_mount("vault-socket")):
        made = as_engine_user("ln", "-s", str(victim), str(planted))
        assert made.returncode == 0, made.stderr
    refused = ccoas("up", str(path), "--name", NAME)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "is a symbolic link" in refused.stderr and str(paths.runtime) in refused.stderr and "Traceback" not in refused.stderr
    assert tree_fingerprint(victim) == before

    for planted in (paths.secrets, paths.runtime_mount("vault-socket")):
        assert as_engine_user("rm", str(planted)).returncode == 0
    done = ccoas("up", str(path), "--name", NAME)
    assert done.returncode == 0, done.stdout + done.stderr
    assert tree_fingerprint(victim) == before


def test_a_secret_file_swapped_for_a_link_is_replaced_not_written_through(stack, victim, tree_fingerprint):
    path, paths = stack
    before = tree_fingerprint(victim)
    secret = next(p for p in (paths.secrets / "nginx").iterdir())
    owner = secret.stat().st_uid
    assert as_engine_user("rm", "-f", str(secret)).returncode == 0
    assert as_engine_user("ln", "-s", str(victim / "shadow"), str(secret)).returncode == 0
    engine = LocalEngine.connect(build_plan(load_stack(path), name=NAME))
    engine.steps.secrets().materialize()  # what the vault-secrets hook of `up` runs, as root
    status = secret.lstat()
    assert stat.S_ISREG(status.st_mode) and status.st_uid == owner and stat.S_IMODE(status.st_mode) == 0o400
    assert tree_fingerprint(victim) == before


def test_the_engine_user_has_no_place_to_plant_in_roots_state(stack, victim):
    _, paths = stack
    root = paths.state.parent.parent
    for directory in (root, root / "stacks", paths.state, paths.render):
        status = directory.lstat()
        assert status.st_uid == 0 and not status.st_mode & 0o022, directory
    attempts = [
        ("ln", "-s", str(victim / "shadow"), str(root / "podman-service.log.1")),
        ("ln", "-s", str(victim), str(paths.state / BOOT_FILE)),
        ("mv", str(paths.state), str(root / "stolen")),
        ("mkdir", str(root / "stacks" / f"{NAME}-planted")),
        ("touch", str(root / "snapshots" / "planted.ccoas")),
        ("touch", str(paths.render / "planted")),
    ]
    for attempt in attempts:
        tried = as_engine_user(*attempt)
        assert tried.returncode != 0 and ("Permission denied" in tried.stderr or "No such file" in tried.stderr), (attempt, tried.stderr)
    assert not (root / "stolen").exists() and not (paths.state / BOOT_FILE).is_symlink()


def test_a_boot_record_planted_under_the_old_layout_is_refused_and_up_removes_it(stack, victim, tmp_path):
    """A host upgraded from the layout where the engine user owned the state (state schema 2)."""
    path, paths = stack
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: evil\n")
    migrations.record(paths.state, state_schema=2)
    shutil.chown(paths.state, host_layout().engine_user, host_layout().engine_user)
    planted = as_engine_user("sh", "-c", f'printf %s \'{json.dumps({"name": None, "stack_file": str(evil)})}\' > {paths.state / BOOT_FILE}')
    assert planted.returncode == 0, planted.stderr

    listed = ccoas("host", "boot", "--list")
    assert f"{paths.state / BOOT_FILE}: refused, not run at boot" in listed.stderr, listed.stderr
    assert str(evil) not in listed.stdout and "records refused" in listed.stdout

    done = ccoas("up", str(path), "--name", NAME)
    assert done.returncode == 0, done.stdout + done.stderr
    said = " ".join((done.stdout + done.stderr).split())
    assert "state-owned-by-root" in said and "removed what root did not write" in said and BOOT_FILE in said, said
    assert not (paths.state / BOOT_FILE).exists() and paths.state.lstat().st_uid == 0
    assert f"{paths.state / BOOT_FILE}" not in ccoas("host", "boot", "--list").stderr
