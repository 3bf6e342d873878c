"""After a reboot: which stacks come back, and the systemd unit that brings them back.

A reboot kills every engine process and clears ``/run`` (the engine user's runtime dir, the
secret files ccoas materialised there). One ``ccoas up`` per stack brings it back: Vault is
unsealed from the state dir's material, the secret files are written again, the containers
started. Which stacks: those the operator enabled, explicitly, with ``ccoas host enable-boot
STACK [--name N]``, which writes ``boot.json`` (the stack file's absolute path and the name)
into that stack's state dir; ``disable-boot`` removes it, and so does ``down --purge`` (with
the rest of the state). ``ccoas host boot`` ups each of them; ``--list`` only lists them.

Root trusts a boot record only when nobody else could have written it (:func:`boot_records`):
the file and every directory above it are root's and writable by no one else, reached
without a link. A record the engine user could have planted (in a state dir of the layout
before state schema 3, say) is refused with the reason, never run.

On hosts where systemd is PID 1, ``ccoas host prepare`` installs ``ccoas-boot.service``
(rendered from ``templates/host/ccoas-boot.service.j2``), which runs ``ccoas host boot`` once
the network is online, as root with the layout's environment, and enables lingering for the
engine user. Elsewhere (this project's machines run no systemd) it says it skipped the unit and
why: run ``ccoas host boot`` after a reboot by hand or from the host's own init.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ccoas import host_files
from ccoas.errors import CcoasError, HostError
from ccoas.host import HostLayout
from ccoas.state import state_dir

UNIT_NAME = "ccoas-boot.service"
UNIT_DIR = Path("/etc/systemd/system")
UNIT_TEMPLATE = "host/ccoas-boot.service.j2"
BOOT_FILE = "boot.json"
START_TIMEOUT_S = 1800
"""The unit's TimeoutStartSec: every enabled stack's `up` (each service waits up to 300 s)."""


@dataclass(frozen=True)
class BootStack:
    stack: str
    """The stack's name (after ``--name``): its state dir."""
    stack_file: Path
    name: str | None
    """The ``--name`` given to enable-boot (``None``: the file's own name)."""

    def up_command(self, ccoas: list[str]) -> list[str]:
        """The ``ccoas up`` this stack gets at boot: no build (images are there from its last up)."""
        return [*ccoas, "up", str(self.stack_file), *(["--name", self.name] if self.name else []), "--no-build"]


def enable(state_root: Path, stack: str, stack_file: Path, name: str | None) -> Path:
    """Mark ``stack`` (planned from ``stack_file`` with ``name``) to be brought up at boot."""
    from ccoas import migrations

    directory = state_dir(state_root, stack)
    new = not directory.is_dir()
    owner = host_files.ROOT if os.geteuid() == 0 else None
    for level in (state_root, directory.parent, directory):
        host_files.make_dir(level, 0o755, owner)
    if new:  # enabled before its first up: the state dir starts with its marker
        migrations.record(directory)
    path = directory / BOOT_FILE
    record = json.dumps({"name": name, "stack_file": str(Path(stack_file).resolve())}, indent=2, sort_keys=True) + "\n"
    host_files.write_file(path, record.encode(), 0o600, owner)
    return path


def disable(state_root: Path, stack: str) -> bool:
    """Stop bringing ``stack`` up at boot; ``False`` when it was not enabled."""
    return host_files.remove(state_dir(state_root, stack) / BOOT_FILE)


@dataclass(frozen=True)
class RefusedBoot:
    """A boot record root does not trust: it is never run."""

    path: Path
    reason: str

    def describe(self) -> str:
        return (
            f"{self.path}: refused, not run at boot: {self.reason}. Only root may enable a stack for boot: "
            f"check who wrote it, remove it, and run `ccoas up` then `ccoas host enable-boot` as root"
        )


def boot_records(state_root: Path) -> tuple[list[BootStack], list[RefusedBoot]]:
    """The stacks enabled for boot on this host, by name, and the records refused because
    someone besides root could have written them (:func:`ccoas.host_files.check_root_only`)."""
    found, refused = [], []
    for path in sorted((state_root / "stacks").glob(f"*/{BOOT_FILE}")):
        try:
            host_files.check_root_only(path)
            text = host_files.read_file(path)
        except HostError as exc:
            refused.append(RefusedBoot(path, str(exc)))
            continue
        try:
            data = json.loads(text)
            found.append(BootStack(stack=path.parent.name, stack_file=Path(data["stack_file"]), name=data.get("name")))
        except (ValueError, KeyError, TypeError) as exc:
            raise CcoasError(f"{path}: expected {{\"stack_file\": ..., \"name\": ...}} ({type(exc).__name__}: {exc}); run enable-boot again") from None
    return found, refused


def enabled(state_root: Path) -> list[BootStack]:
    """The stacks enabled for boot on this host whose records root trusts (see :func:`boot_records`)."""
    return boot_records(state_root)[0]


def ccoas_command() -> list[str]:
    """How this ccoas is run again (by the unit, by ``host boot``): this Python, its module."""
    return [sys.executable, "-m", "ccoas.cli"]


def boot(state_root: Path, ccoas: list[str] | None = None, run=subprocess.run) -> list[tuple[BootStack, int]]:
    """``ccoas up`` each enabled stack in turn (a failure does not stop the others); each exit code."""
    ccoas = ccoas or ccoas_command()
    return [(stack, run(stack.up_command(ccoas), cwd="/").returncode) for stack in enabled(state_root)]


# -- the unit ---------------------------------------------------------------------------------


def systemd_is_pid1(proc_root: Path = Path("/proc"), run_dir: Path = Path("/run/systemd/system")) -> tuple[bool, str]:
    """Whether systemd manages this host (PID 1 is systemd and it booted it), and what was seen."""
    try:
        pid1 = (proc_root / "1" / "comm").read_text().strip()
    except OSError as exc:
        return False, f"cannot read PID 1's name ({exc})"
    if pid1 != "systemd":
        return False, f"PID 1 is {pid1!r}, not systemd"
    if not run_dir.is_dir():
        return False, f"PID 1 is systemd but {run_dir} is absent (systemd did not boot this host)"
    return True, "PID 1 is systemd"


def unit_environment(layout: HostLayout) -> dict[str, str]:
    """The layout the unit's ccoas must see: the same engine user and directories as by hand."""
    return {
        "CCOAS_ENGINE_USER": layout.engine_user,
        "CCOAS_STATE_DIR": str(layout.state_root),
        "CCOAS_CACHE_DIR": str(layout.cache_root),
        "CCOAS_TOOLCHAIN_DIR": str(layout.toolchain_root),
    }


def render_unit(layout: HostLayout, uid: int, ccoas: list[str]) -> str:
    """The unit's text: same inputs, same bytes."""
    from ccoas.render import environment

    return environment().get_template(UNIT_TEMPLATE).render(
        engine_user=layout.engine_user,
        uid=uid,
        environment=unit_environment(layout),
        command=" ".join(shlex.quote(part) for part in ccoas),
        timeout_s=START_TIMEOUT_S,
    )


@dataclass(frozen=True)
class UnitResult:
    installed: bool
    """The unit is in place (changed or not); ``False``: skipped, see ``reason``."""
    changed: bool
    reason: str


def install_unit(
    layout: HostLayout,
    ccoas: list[str] | None = None,
    unit_dir: Path = UNIT_DIR,
    systemd: tuple[bool, str] | None = None,
    run=subprocess.run,
) -> UnitResult:
    """Install and enable ``ccoas-boot.service`` where systemd is PID 1; otherwise say why not."""
    on_systemd, seen = systemd if systemd is not None else systemd_is_pid1()
    if not on_systemd:
        return UnitResult(False, False, f"{UNIT_NAME} not installed: {seen}; after a reboot run `ccoas host boot` (it ups every stack enabled for boot)")
    text = render_unit(layout, layout.uid, ccoas or ccoas_command())
    path = unit_dir / UNIT_NAME
    changed = not path.is_file() or path.read_text() != text
    if changed:
        unit_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    commands = [["systemctl", "daemon-reload"]] if changed else []
    commands += [["systemctl", "enable", UNIT_NAME], ["loginctl", "enable-linger", layout.engine_user]]
    for command in commands:
        done = run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise HostError(f"`{' '.join(command)}` failed: {done.stderr.strip()}")
    return UnitResult(True, changed, f"{path} {'installed' if changed else 'unchanged'} and enabled ({seen})")
