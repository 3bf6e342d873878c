"""The boot unit and the stacks enabled for boot, without a host.

The unit's text is golden (tests/golden/host/ccoas-boot.service; regenerate with
CCOAS_UPDATE_GOLDEN=1 and read the diff), checked by ``systemd-analyze verify`` where that
program exists; the decision "systemd is PID 1 or not" is read from a /proc and /run of the
test's own. The reboot itself, on a real engine user, is tests/e2e/test_session_recovery.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from ccoas import migrations
from ccoas.boot import BOOT_FILE, UNIT_NAME, boot, disable, enable, enabled, install_unit, render_unit, systemd_is_pid1
from ccoas.cli import app
from ccoas.host import HostLayout
from ccoas.planner import build_plan, load_stack

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "golden" / "host" / UNIT_NAME
LAYOUT = HostLayout()  # ccoas, /var/lib/ccoas, /var/cache/ccoas, /opt/ccoas/toolchains
COMMAND = ["/opt/ccoas/venv/bin/python", "-m", "ccoas.cli"]


def test_the_unit_matches_its_golden_file():
    text = render_unit(LAYOUT, 1001, COMMAND)
    if os.environ.get("CCOAS_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "regenerate with CCOAS_UPDATE_GOLDEN=1 and review the diff"
    assert render_unit(LAYOUT, 1001, COMMAND) == text  # deterministic


def test_the_unit_says_what_it_runs_after_what_as_whom():
    lines = render_unit(HostLayout(engine_user="builder", state_root=Path("/srv/ccoas")), 1234, COMMAND).splitlines()
    assert "After=network-online.target systemd-user-sessions.service user@1234.service" in lines
    assert "Wants=network-online.target user@1234.service" in lines
    assert "User=root" in lines and "Type=oneshot" in lines and "TimeoutStartSec=1800" in lines
    assert "ExecStart=/opt/ccoas/venv/bin/python -m ccoas.cli host boot" in lines
    assert "Environment=CCOAS_ENGINE_USER=builder" in lines and "Environment=CCOAS_STATE_DIR=/srv/ccoas" in lines
    assert "WantedBy=multi-user.target" in lines


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed on this host")
def test_systemd_analyze_verifies_the_unit(tmp_path):
    """systemd's own parser reads the unit (no systemd needs to run): an unknown key, a bad
    value, a missing ExecStart program or a unit ordering against a missing one is reported."""
    python = shutil.which("python3")
    unit = tmp_path / UNIT_NAME
    unit.write_text(render_unit(LAYOUT, 0, [python, "-m", "ccoas.cli"]))
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True)
    problems = [line for line in (done.stdout + done.stderr).splitlines() if UNIT_NAME in line]
    assert done.returncode == 0 and not problems, done.stdout + done.stderr
    broken = tmp_path / "broken" / UNIT_NAME
    broken.parent.mkdir()
    broken.write_text(unit.read_text().replace("Type=oneshot", "Type=oneshoot"))
    failed = subprocess.run(["systemd-analyze", "verify", "--man=no", str(broken)], capture_output=True, text=True)
    assert "oneshoot" in failed.stdout + failed.stderr  # the check can fail


# -- systemd or not -------------------------------------------------------------------------------


def _host(tmp_path: Path, pid1: str, run_dir: bool) -> tuple[Path, Path]:
    (tmp_path / "proc" / "1").mkdir(parents=True)
    (tmp_path / "proc" / "1" / "comm").write_text(pid1 + "\n")
    run = tmp_path / "run" / "systemd" / "system"
    if run_dir:
        run.mkdir(parents=True)
    return tmp_path / "proc", run


@pytest.mark.parametrize(
    ("pid1", "run_dir", "expected", "said"),
    [
        ("systemd", True, True, "PID 1 is systemd"),
        ("systemd", False, False, "did not boot this host"),
        ("process_api", False, False, "PID 1 is 'process_api', not systemd"),
        ("init", True, False, "PID 1 is 'init'"),
    ],
)
def test_systemd_is_pid1_is_read_from_the_host(tmp_path, pid1, run_dir, expected, said):
    proc, run = _host(tmp_path, pid1, run_dir)
    found, seen = systemd_is_pid1(proc, run)
    assert found is expected and said in seen


def test_this_machine_runs_no_systemd_so_the_unit_is_skipped_and_says_why(tmp_path):
    on_systemd, seen = systemd_is_pid1()
    if on_systemd:
        pytest.skip("this host runs systemd")
    result = install_unit(LAYOUT, COMMAND, unit_dir=tmp_path, run=_no_commands)
    assert (result.installed, result.changed) == (False, False)
    assert seen in result.reason and "ccoas host boot" in result.reason
    assert not any(tmp_path.iterdir())


def _no_commands(command, **kwargs):
    raise AssertionError(f"ran {command}")


def test_on_systemd_the_unit_is_written_enabled_and_the_user_lingers(tmp_path):
    ran = []

    def run(command, **kwargs):
        ran.append(command)
        return SimpleNamespace(returncode=0, stderr="")

    layout = HostLayout(engine_user="root")  # a user that exists here, for its uid
    first = install_unit(layout, COMMAND, unit_dir=tmp_path, systemd=(True, "PID 1 is systemd"), run=run)
    assert (first.installed, first.changed) == (True, True)
    assert (tmp_path / UNIT_NAME).read_text() == render_unit(layout, 0, COMMAND)
    assert oct((tmp_path / UNIT_NAME).stat().st_mode & 0o777) == "0o644"
    assert ran == [["systemctl", "daemon-reload"], ["systemctl", "enable", UNIT_NAME], ["loginctl", "enable-linger", "root"]]
    ran.clear()
    again = install_unit(layout, COMMAND, unit_dir=tmp_path, systemd=(True, "PID 1 is systemd"), run=run)
    assert (again.installed, again.changed) == (True, False)
    assert ["systemctl", "daemon-reload"] not in ran


# -- the stacks enabled for boot ------------------------------------------------------------------


def test_enable_list_boot_disable(tmp_path):
    stack_file = REPO / "stacks" / "ci.yaml"
    enable(tmp_path, "beta", stack_file, "beta")
    enable(tmp_path, "ci", stack_file, None)
    assert [(s.stack, s.name) for s in enabled(tmp_path)] == [("beta", "beta"), ("ci", None)]
    commands = []

    def run(command, **kwargs):
        commands.append(command)
        return SimpleNamespace(returncode=1 if "beta" in command else 0)

    results = boot(tmp_path, ["ccoas"], run=run)
    assert commands == [["ccoas", "up", str(stack_file), "--name", "beta", "--no-build"], ["ccoas", "up", str(stack_file), "--no-build"]]
    assert [code for _, code in results] == [1, 0]  # a failed stack does not stop the next
    assert disable(tmp_path, "beta") and not disable(tmp_path, "beta")
    assert [s.stack for s in enabled(tmp_path)] == ["ci"]


def test_cli_enable_boot_records_the_planned_name_and_boot_lists_it(tmp_path, monkeypatch):
    monkeypatch.setenv("CCOAS_STATE_DIR", str(tmp_path))
    runner = CliRunner()
    stack_file = REPO / "stacks" / "ci.yaml"
    done = runner.invoke(app, ["host", "enable-boot", str(stack_file), "--name", "pr-7"])
    assert done.exit_code == 0, done.output
    state = tmp_path / "stacks" / build_plan(load_stack(stack_file), name="pr-7").stack
    assert (state / BOOT_FILE).is_file()
    assert migrations.read(state).recorded  # a state dir made by enable-boot is this ccoas's: nothing to migrate
    listed = runner.invoke(app, ["host", "boot", "--list"])
    assert f"ccoas up {stack_file} --name pr-7 --no-build" in listed.output and "1 stacks enabled" in listed.output
    assert runner.invoke(app, ["host", "disable-boot", str(stack_file), "--name", "pr-7"]).exit_code == 0
    assert "0 stacks enabled" in runner.invoke(app, ["host", "boot", "--list"]).output


def test_host_prepare_says_it_skipped_the_unit_and_why(monkeypatch):
    """The role itself is tested in test_host.py; here only what `host prepare` adds after it."""
    import ccoas.boot
    import ccoas.host

    monkeypatch.setattr(ccoas.host, "prepare", lambda **kwargs: ccoas.host.PrepareResult(changed=0))
    monkeypatch.setattr(ccoas.boot, "systemd_is_pid1", lambda: (False, "PID 1 is 'process_api', not systemd"))
    done = CliRunner().invoke(app, ["host", "prepare"])
    assert done.exit_code == 0, done.output
    assert "skipped: ccoas-boot.service not installed: PID 1 is 'process_api', not systemd" in done.output
    assert "host prepared: 0 changes" in done.output
    remote = CliRunner().invoke(app, ["host", "prepare", "--target", "db1.example"])
    assert "skipped: the boot unit is installed by `ccoas host prepare` on the host itself" in remote.output
