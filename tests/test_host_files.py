"""Root's file operations in a directory another user writes, attacked by that user.

The tests run as root. Each makes a directory owned by an unprivileged uid (``nobody``,
65534: any uid without privileges does, so no engine user is needed), and a process running
as that uid plants a real symlink (or a FIFO) where root is about to work. The victim is a
root-only directory and file elsewhere: after root's operation it must be exactly as before.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ccoas import host_files, migrations
from ccoas.boot import BOOT_FILE, boot, boot_records, enable
from ccoas.cli import app
from ccoas.host_files import UnsafePathError
from ccoas.secrets import write_secret_file
from ccoas.state import stack_paths

OTHER = 65534
"""An unprivileged uid (nobody) standing in for the engine user."""

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="root's operations are what is tested: run as root")


def as_other(*command: str) -> None:
    """Run ``command`` as the unprivileged uid (coreutils: this Python may live where it cannot read)."""
    done = subprocess.run(list(command), user=OTHER, group=OTHER, cwd="/", capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def write_as_other(path: Path, text: str) -> None:
    as_other("/bin/sh", "-c", 'printf %s "$1" > "$2"', "sh", text, str(path))


def plant_link(link: Path, target: Path) -> None:
    as_other("ln", "-s", str(target), str(link))
    assert link.is_symlink() and link.lstat().st_uid == OTHER


@pytest.fixture
def area():
    """``/tmp/<x>`` (root's, 0755) holding ``theirs`` (the other uid's, 0700) and ``victim``
    (root's, 0700, with a root-only file): what a planted link points root at."""
    top = Path(tempfile.mkdtemp(prefix="ccoas-host-files-", dir="/tmp"))
    os.chmod(top, 0o755)
    theirs = top / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, OTHER, OTHER)
    victim = top / "victim"
    victim.mkdir(mode=0o700)
    (victim / "shadow").write_text("root only\n")
    os.chmod(victim / "shadow", 0o600)
    yield theirs, victim
    import shutil

    shutil.rmtree(top)



# -- each primitive, against a link planted where it works ----------------------------------------


def test_make_dir_refuses_a_link_in_place_of_the_directory(area, tree_fingerprint):
    theirs, victim = area
    before = tree_fingerprint(victim)
    plant_link(theirs / "mount", victim)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        host_files.make_dir(theirs / "mount", 0o755, (OTHER, OTHER))
    assert tree_fingerprint(victim) == before


def test_a_link_above_the_directory_is_refused_too(area, tree_fingerprint):
    theirs, victim = area
    before = tree_fingerprint(victim)
    plant_link(theirs / "stack", victim)
    for operation in (
        lambda: host_files.make_dir(theirs / "stack" / "secrets", 0o700, (OTHER, OTHER)),
        lambda: host_files.write_file(theirs / "stack" / "shadow", b"x", 0o644),
        lambda: host_files.set_owner(theirs / "stack" / "shadow", (OTHER, OTHER)),
        lambda: host_files.read_file(theirs / "stack" / "shadow"),
    ):
        with pytest.raises(UnsafePathError, match=f"{theirs / 'stack'} is a symbolic link"):
            operation()
    assert tree_fingerprint(victim) == before


@pytest.mark.parametrize("change", ["owner", "mode"])
def test_owner_and_mode_are_never_changed_through_a_link(area, change, tree_fingerprint):
    theirs, victim = area
    before = tree_fingerprint(victim)
    plant_link(theirs / "secret", victim / "shadow")
    with pytest.raises(UnsafePathError):
        if change == "owner":
            host_files.set_owner(theirs / "secret", (OTHER, OTHER))
        else:
            host_files.set_mode(theirs / "secret", 0o644)
    assert tree_fingerprint(victim) == before


def test_a_file_written_over_a_link_replaces_the_link(area, tree_fingerprint):
    theirs, victim = area
    before = tree_fingerprint(victim)
    plant_link(theirs / "secret", victim / "shadow")
    assert host_files.write_file(theirs / "secret", b"value", 0o400, (OTHER, OTHER), keep_if_same=True)
    written = (theirs / "secret").lstat()
    assert stat.S_ISREG(written.st_mode) and (written.st_uid, stat.S_IMODE(written.st_mode)) == (OTHER, 0o400)
    assert (theirs / "secret").read_bytes() == b"value"
    assert tree_fingerprint(victim) == before


def test_appending_to_a_log_never_goes_through_a_link(area, tree_fingerprint):
    theirs, victim = area
    before = tree_fingerprint(victim)
    plant_link(theirs / "podman-service.log", victim / "shadow")
    with pytest.raises(UnsafePathError, match="symbolic link"):
        host_files.open_append(theirs / "podman-service.log")
    assert tree_fingerprint(victim) == before


def test_a_fifo_in_place_of_a_file_is_refused_without_hanging(area):
    theirs, _ = area
    as_other("mkfifo", str(theirs / "secret"))
    for operation in (
        lambda: host_files.read_file(theirs / "secret"),
        lambda: host_files.set_owner(theirs / "secret", (0, 0)),
        lambda: host_files.open_append(theirs / "secret"),
    ):
        with pytest.raises(UnsafePathError, match="not a regular file"):
            operation()


def test_roots_own_links_in_roots_own_directories_are_followed(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    host_files.write_file(tmp_path / "alias" / "file", b"ok", 0o644)
    assert (tmp_path / "real" / "file").read_bytes() == b"ok"


def test_dot_dot_is_refused(tmp_path):
    with pytest.raises(UnsafePathError, match="'..'"):
        host_files.open_dir(Path("/tmp") / ".." / "etc")


# -- only root could have written it --------------------------------------------------------------


def test_check_root_only(area, tmp_path):
    theirs, victim = area
    host_files.check_root_only(victim / "shadow")  # root's file in root's dirs (under sticky /tmp)
    write_as_other(theirs / BOOT_FILE, "{}")
    with pytest.raises(UnsafePathError, match=f"{theirs} belongs to uid {OTHER}"):
        host_files.check_root_only(theirs / BOOT_FILE)
    mine = tmp_path / "record"
    mine.write_text("{}")
    os.chown(mine, OTHER, OTHER)
    with pytest.raises(UnsafePathError, match=f"belongs to uid {OTHER}"):
        host_files.check_root_only(mine)
    os.chown(mine, 0, 0)
    os.chmod(mine, 0o666)
    with pytest.raises(UnsafePathError, match="not to root alone"):
        host_files.check_root_only(mine)
    os.chmod(mine, 0o600)
    os.chmod(tmp_path, 0o777)
    with pytest.raises(UnsafePathError, match="another user can change"):
        host_files.check_root_only(mine)


# -- the callers: secret files, boot records, the migration -----------------------------------------


class NobodyOwners:
    """The engine's id mapping with ``nobody`` as the engine user."""

    def host_ids(self, uid: int, gid: int) -> tuple[int, int]:
        return (OTHER, OTHER) if uid == 0 else (OTHER - 1000 + uid, OTHER - 1000 + gid)

    def give(self, path: Path, uid: int, gid: int) -> None:
        host_files.set_owner(path, self.host_ids(uid, gid))


@pytest.mark.parametrize("planted", ["service dir", "secret file"])
def test_a_secret_is_never_written_or_given_through_a_planted_link(area, planted, tree_fingerprint):
    theirs, victim = area
    before = tree_fingerprint(victim)
    secrets = theirs / "secrets"
    as_other("mkdir", "-m", "700", str(secrets))
    if planted == "service dir":
        plant_link(secrets / "nginx", victim)
        with pytest.raises(UnsafePathError):
            write_secret_file(secrets, secrets / "nginx" / "shadow", "planted?", 101, 101, NobodyOwners())
    else:
        as_other("mkdir", "-m", "700", str(secrets / "nginx"))
        plant_link(secrets / "nginx" / "key", victim / "shadow")
        write_secret_file(secrets, secrets / "nginx" / "key", "value", 101, 101, NobodyOwners())
        written = (secrets / "nginx" / "key").lstat()
        assert stat.S_ISREG(written.st_mode) and written.st_uid == OTHER - 1000 + 101
    assert tree_fingerprint(victim) == before


def test_a_boot_record_the_engine_user_planted_is_refused(area, monkeypatch):
    tmp_path = area[0].parent / "lib"  # a directory the other uid can reach
    stacks = tmp_path / "stacks"
    enable(tmp_path, "mine", Path("/srv/mine.yaml"), None)
    planted = stacks / "evil"
    planted.mkdir()
    os.chown(planted, OTHER, OTHER)
    write_as_other(planted / BOOT_FILE, json.dumps({"stack_file": "/tmp/evil.yaml", "name": None}))
    found, refused = boot_records(tmp_path)
    assert [s.stack for s in found] == ["mine"]
    assert [r.path for r in refused] == [planted / BOOT_FILE] and f"belongs to uid {OTHER}" in refused[0].reason

    monkeypatch.setenv("CCOAS_STATE_DIR", str(tmp_path))
    listed = CliRunner().invoke(app, ["host", "boot", "--list"])
    assert "refused, not run at boot" in listed.output and "/tmp/evil.yaml" not in listed.output
    assert "1 stacks enabled for boot, 1 records refused" in listed.output
    ran = []
    boot(tmp_path, ["ccoas"], run=lambda command, **kw: ran.append(command) or subprocess.CompletedProcess(command, 0))
    assert ran == [["ccoas", "up", "/srv/mine.yaml", "--no-build"]]
    monkeypatch.setattr("ccoas.boot.boot", lambda state_root, ccoas: [])
    booted = CliRunner().invoke(app, ["host", "boot"])
    assert booted.exit_code == 1 and "refused, not run at boot" in booted.output


def test_the_migration_takes_the_state_back_from_the_engine_user(area, tree_fingerprint):
    theirs, victim = area
    before = tree_fingerprint(victim)
    tmp_path = theirs.parent
    root = tmp_path / "lib"
    paths = stack_paths(root, tmp_path / "run", "demo")
    paths.render.mkdir(parents=True)
    (paths.render / "nginx.conf").write_text("rendered\n")
    (paths.state / "steps.json").write_text("{}")
    for directory in (root, root / "stacks", paths.state):
        os.chown(directory, OTHER, OTHER)  # the layout before state schema 3: the engine user's
    plant_link(paths.state / "vault-init.json", victim / "shadow")
    write_as_other(paths.state / BOOT_FILE, "{}")
    (root / "snapshots").mkdir()
    os.chown(root / "snapshots", OTHER, OTHER)
    plant_link(root / "snapshots" / "demo", victim)
    plant_link(root / "podman-service.log", victim / "shadow")

    notes = migrations.migrate(paths)
    assert "removed what root did not write" in notes[-1]
    for gone in (paths.state / "vault-init.json", paths.state / BOOT_FILE, root / "snapshots" / "demo", root / "podman-service.log"):
        assert not gone.is_symlink() and not gone.exists(), gone
    for directory in (root, root / "stacks", paths.state, paths.render):
        assert directory.lstat().st_uid == 0 and stat.S_IMODE(directory.lstat().st_mode) == 0o755
    assert (root / "snapshots").lstat().st_uid == 0 and stat.S_IMODE((root / "snapshots").lstat().st_mode) == 0o700
    assert (paths.render / "nginx.conf").read_text() == "rendered\n"  # root's own files stay
    assert tree_fingerprint(victim) == before
    assert migrations.migrate(paths) == []  # idempotent: recorded, nothing more to do


def test_a_tree_is_never_removed_through_a_link_above_it(area, tree_fingerprint):
    """``down --purge`` removes ``/run/user/<uid>/ccoas/<stack>``: a link the engine user put in
    place of ``ccoas`` must not make root remove ``<target>/<stack>``."""
    theirs, victim = area
    (victim / "demo").mkdir()
    before = tree_fingerprint(victim)
    plant_link(theirs / "ccoas", victim)
    with pytest.raises(UnsafePathError):
        host_files.remove_tree(theirs / "ccoas" / "demo")
    plant_link(theirs / "demo", victim)
    assert host_files.remove_tree(theirs / "demo")  # the link itself goes
    assert not (theirs / "demo").is_symlink() and tree_fingerprint(victim) == before
