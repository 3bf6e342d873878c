"""A host without iptables (Debian's podman does not pull it in): `up` stops in the preflight
with exit 2 and one line naming it, having created nothing; `ccoas host prepare` installs it;
`up` then comes up healthy.

The shared machine keeps its iptables: the scenario (fresh_host_scenario.py) runs in a
private mount namespace whose /usr, /etc and /var are overlays, where `dpkg --purge iptables`
removes it for that namespace only, and on an engine user of its own whose Podman service is
started inside it (so netavark, run by that service, sees the host without iptables). The
images are copied over from the main engine user; nothing is rebuilt or pulled.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ccoas.boot import systemd_is_pid1
from ccoas.host import HostLayout, engine_processes, host_layout, prepare
from ccoas.planner import build_plan, load_stack

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare"),
]

USER = "ccoas-h8-fresh"
SUBID_START = "600000"  # clear of the main engine user (100000) and the session test's (400000)
STACK = "h8-fresh"
SCENARIO = Path(__file__).with_name("fresh_host_scenario.py")


def _env(layout: HostLayout) -> dict[str, str]:
    return dict(
        os.environ,
        CCOAS_ENGINE_USER=layout.engine_user,
        CCOAS_STATE_DIR=str(layout.state_root),
        CCOAS_CACHE_DIR=str(layout.cache_root),
        CCOAS_SUBID_START=SUBID_START,
        PYTHONPATH=str(Path(__file__).resolve().parents[2]),
    )


def _image_id(layout: HostLayout, ref: str) -> str:
    cmd = layout.engine_command("podman", "image", "inspect", "--format", "{{.Id}}", ref)
    return subprocess.run(cmd, capture_output=True, text=True, cwd="/").stdout.strip()


def _copy_image(ref: str, source: HostLayout, target: HostLayout) -> None:
    if _image_id(target, ref) and _image_id(target, ref) == _image_id(source, ref):
        return
    save = subprocess.Popen(source.engine_command("podman", "save", ref), stdout=subprocess.PIPE, cwd="/")
    load = subprocess.run(target.engine_command("podman", "load"), stdin=save.stdout, capture_output=True, text=True, cwd="/")
    save.stdout.close()
    assert save.wait() == 0 and load.returncode == 0, load.stderr


def _stop(layout: HostLayout) -> None:
    """End every process of this test's engine user (its pause process included)."""
    deadline = time.monotonic() + 30
    while (pids := engine_processes(layout)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
    assert not engine_processes(layout)


@pytest.fixture(scope="module")
def fresh_layout() -> HostLayout:
    layout = HostLayout(engine_user=USER, state_root=Path(f"/var/lib/{USER}"), cache_root=Path(f"/var/cache/{USER}"))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CCOAS_SUBID_START", SUBID_START)
        prepare(layout=layout)  # on the real /etc: the user and its ids must outlive the namespace
    return layout


def test_up_stops_without_iptables_and_host_prepare_fixes_it(fresh_layout, small_stack, tmp_path):
    stack_file = small_stack(STACK, "vault")
    for service in build_plan(load_stack(stack_file)).services:
        _copy_image(service.image.ref, host_layout(), fresh_layout)
    _stop(fresh_layout)  # Podman joins a live pause process's namespaces: the next one starts inside

    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, str(SCENARIO), str(tmp_path / "overlay"), str(stack_file), STACK],
        capture_output=True, text=True, env=_env(fresh_layout), timeout=1800,
    )
    _stop(fresh_layout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout)

    assert seen["purge"]["rc"] == 0 and seen["iptables_before"] is None, seen["purge"]
    failed = seen["up_without_iptables"]
    assert failed["rc"] == 2, failed
    assert "Traceback" not in failed["stderr"]
    assert failed["stderr"].splitlines() == [
        "preflight: iptables, ip6tables (run by netavark; Debian package iptables) are not on the engine's PATH: "
        "run `ccoas host prepare`"
    ]
    assert seen["after_failed_up"] == {"container": [], "network": [], "volume": []}
    assert seen["state_dir_after_failed_up"] is False  # nothing rendered, nothing built

    assert seen["prepare"]["rc"] == 0, seen["prepare"]
    changed, boot_unit, total = seen["prepare"]["stdout"].splitlines()
    assert changed == "changed: Rootless Podman, local image build tools, Rust"
    on_systemd, _ = systemd_is_pid1()  # the boot unit is installed only where systemd is PID 1
    assert "ccoas-boot.service" in boot_unit and boot_unit.startswith(("changed:", "boot unit:") if on_systemd else "skipped:"), boot_unit
    assert total == f"host prepared: {2 if boot_unit.startswith('changed:') else 1} changes"
    assert seen["iptables_after"] == "/usr/sbin/iptables"

    assert seen["up_after_prepare"]["rc"] == 0, seen["up_after_prepare"]["stderr"][-3000:]
    assert seen["status"]["rc"] == 0, seen["status"]
    assert [(r["service"], r["state"], r["health"]) for r in json.loads(seen["status"]["stdout"])] == [("vault", "running", "healthy")]
    assert seen["down"]["rc"] == 0, seen["down"]
