"""The engine user's session dies (every process killed, /run kept): the next command recovers;
and a reboot (every process killed, the runtime dir and /dev/shm cleared) is followed by one
`ccoas host boot`, what the boot unit runs, that brings the enabled stack back with its data.

On hosts without systemd nothing clears the rootless runtime dir when the processes that used
it are killed, and Podman then refuses every command ("invalid internal status ... podman
system migrate"). This happens for real when the session that started the Podman service is
torn down. The test runs on an engine user of its own, so that killing its processes cannot
touch stacks of the host's main engine user; the images are copied over from the main user
(``podman save | podman load``), nothing is rebuilt or pulled.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from ccoas.engine.local import LocalEngine
from ccoas.host import HostLayout, engine_processes, ensure_api_service, host_layout, prepare
from ccoas.planner import build_plan, load_stack
from test_snapshot_and_diagnose import psql  # tests/e2e is on sys.path (rootdir imports)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="creates an engine user and kills its processes: needs root"),
]

USER = "ccoas-e2e-session"
SUBID_START = "400000"  # clear of the main engine user's range (100000) and of CCOAS_SUBID_START users


@pytest.fixture(scope="module")
def session_layout() -> HostLayout:
    layout = HostLayout(engine_user=USER, state_root=Path(f"/var/lib/{USER}"), cache_root=Path(f"/var/cache/{USER}"))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CCOAS_SUBID_START", SUBID_START)
        prepare(layout=layout)
    ensure_api_service(layout)  # the test talks to this user's Podman before `ccoas up` does
    return layout


def _image_id(layout: HostLayout, ref: str) -> str:
    cmd = layout.engine_command("podman", "image", "inspect", "--format", "{{.Id}}", ref)
    return subprocess.run(cmd, capture_output=True, text=True, cwd="/").stdout.strip()


def _copy_images(refs: list[str], source: HostLayout, target: HostLayout) -> None:
    """Give ``target`` the very images ``source`` has under ``refs`` (one archive per image)."""
    for ref in refs:
        if _image_id(target, ref) == _image_id(source, ref):
            continue
        save = subprocess.Popen(source.engine_command("podman", "save", ref), stdout=subprocess.PIPE, cwd="/")
        load = subprocess.run(target.engine_command("podman", "load"), stdin=save.stdout, capture_output=True, text=True, cwd="/")
        save.stdout.close()
        assert save.wait() == 0 and load.returncode == 0, load.stderr
        assert _image_id(target, ref) == _image_id(source, ref)


def _ccoas(layout: HostLayout, *args: str) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        CCOAS_ENGINE_USER=layout.engine_user,
        CCOAS_STATE_DIR=str(layout.state_root),
        CCOAS_CACHE_DIR=str(layout.cache_root),
    )
    return subprocess.run([sys.executable, "-m", "ccoas.cli", *args], env=env, capture_output=True, text=True, timeout=600)


def _kill_session(layout: HostLayout) -> None:
    """What the end of a login session does to everything it started, /run left as it was."""
    deadline = time.monotonic() + 30
    while pids := engine_processes(layout):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert time.monotonic() < deadline, f"processes {pids} of {layout.engine_user} survived SIGKILL"
        time.sleep(0.2)


def test_up_recovers_after_the_engine_users_processes_are_killed(small_stack, session_layout: HostLayout):
    stack = small_stack("sess", "vault", "postgres")
    name = f"sess-{uuid.uuid4().hex[:6]}"
    plan = build_plan(load_stack(stack), name=name)
    LocalEngine.connect(plan).build_images()  # on the main engine user: cached there, usually a no-op
    _copy_images([s.image.ref for s in plan.services], host_layout(), session_layout)
    try:
        first = _ccoas(session_layout, "up", str(stack), "--name", name, "--no-build")
        assert first.returncode == 0, first.stdout + first.stderr

        _kill_session(session_layout)
        assert (session_layout.runtime_dir / "libpod").is_dir()  # the stale state a reboot would have cleared

        # A command that only observes meets the dead session first (as a CI job does when the
        # previous job's processes were killed): it answers, and says the services are down.
        observed = _ccoas(session_layout, "status", str(stack), "--name", name)
        assert observed.returncode == 3, observed.stdout + observed.stderr
        assert "Traceback" not in observed.stderr and "did not answer" not in observed.stderr

        _kill_session(session_layout)
        again = _ccoas(session_layout, "up", str(stack), "--name", name, "--no-build")
        assert again.returncode == 0, again.stdout + again.stderr
        assert "Traceback" not in again.stderr
        status = _ccoas(session_layout, "status", str(stack), "--name", name)
        assert status.returncode == 0, status.stderr
        rows = [line for line in status.stdout.splitlines() if f"{name}-" in line]
        assert len(rows) == 2 and all("running" in row and "healthy" in row for row in rows), status.stdout
    finally:
        down = _ccoas(session_layout, "down", str(stack), "--name", name, "--purge")
        assert down.returncode == 0, down.stdout + down.stderr


def _reboot(layout: HostLayout) -> None:
    """What a reboot does to the engine user: every process gone, /run (a tmpfs) and its /dev/shm files emptied."""
    _kill_session(layout)
    shutil.rmtree(layout.runtime_dir)
    for ipc in Path("/dev/shm").glob("*"):
        if ipc.is_file() and ipc.stat().st_uid == layout.uid:
            ipc.unlink()


def test_one_boot_brings_an_enabled_stack_back_after_a_reboot(small_stack, session_layout: HostLayout):
    stack = small_stack("boot", "vault", "postgres")
    name = f"boot-{uuid.uuid4().hex[:6]}"
    plan = build_plan(load_stack(stack), name=name)
    LocalEngine.connect(plan).build_images()
    _copy_images([s.image.ref for s in plan.services], host_layout(), session_layout)
    try:
        first = _ccoas(session_layout, "up", str(stack), "--name", name, "--no-build")
        assert first.returncode == 0, first.stdout + first.stderr
        engine = LocalEngine.connect(plan, layout=session_layout)
        psql(engine, "CREATE TABLE kept_across_reboot (note text); INSERT INTO kept_across_reboot VALUES ('before the reboot')")
        enabled = _ccoas(session_layout, "host", "enable-boot", str(stack), "--name", name)
        assert enabled.returncode == 0, enabled.stdout + enabled.stderr

        _reboot(session_layout)
        assert not session_layout.runtime_dir.exists()  # the secret files and Vault's socket with it

        booted = _ccoas(session_layout, "host", "boot")
        assert booted.returncode == 0, booted.stdout[-3000:] + booted.stderr[-3000:]
        assert "1 of 1 stacks up" in booted.stdout and "Traceback" not in booted.stderr, booted.stdout
        status = _ccoas(session_layout, "status", str(stack), "--name", name)
        assert status.returncode == 0, status.stdout + status.stderr
        rows = [line for line in status.stdout.splitlines() if f"{name}-" in line]
        assert len(rows) == 2 and all("running" in row and "healthy" in row for row in rows), status.stdout
        again = LocalEngine.connect(plan, layout=session_layout)
        assert psql(again, "SELECT note FROM kept_across_reboot") == "before the reboot"
        assert again.paths.secret_file("postgres", plan.service("postgres").secrets[0].secret).is_file()
    finally:
        _ccoas(session_layout, "host", "disable-boot", str(stack), "--name", name)
        down = _ccoas(session_layout, "down", str(stack), "--name", name, "--purge")
        assert down.returncode == 0, down.stdout + down.stderr
