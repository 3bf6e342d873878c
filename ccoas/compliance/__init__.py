"""Compliance checks: testinfra assertions, one parametrized test per control per container.

``ccoas check`` runs :mod:`ccoas.compliance.test_controls` with pytest against the running
stack. testinfra's ``podman://`` backend reaches the rootless containers through the
engine user's API socket (``CONTAINER_HOST``), so an auditor running as root sees exactly
what the engine runs. A failure names the control and the container.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CONTROLS = Path(__file__).with_name("test_controls.py")


def run_checks(stack: Path, name: str | None, junit: Path | None = None, extra: list[str] | None = None) -> int:
    """Run every control in a pytest process of its own; returns its exit code (0: all hold)."""
    from ccoas.host import host_layout

    layout = host_layout()
    report = Path(tempfile.mkdtemp(prefix="ccoas-check-")) / "reachability.json"
    env = {
        **os.environ,
        "CCOAS_CHECK_STACK": str(Path(stack).resolve()),
        "CCOAS_CHECK_NAME": name or "",
        "CONTAINER_HOST": layout.base_url,
        "CCOAS_CHECK_REPORT": str(report),
    }
    args = [str(CONTROLS), "-q", "-p", "no:cacheprovider", "--rootdir", str(CONTROLS.parent), "-o", "addopts=", "-W", "ignore::DeprecationWarning"]
    if junit:
        args.append(f"--junitxml={Path(junit).resolve()}")
    try:
        code = subprocess.run([sys.executable, "-m", "pytest", *args, *(extra or [])], env=env, check=False).returncode
        if report.exists():
            print_reachability(json.loads(report.read_text()))
    finally:
        report.unlink(missing_ok=True)
        report.parent.rmdir()
    return 1 if code == 5 else code  # no controls collected is a failure, never a pass


def print_reachability(report: dict) -> None:
    """The declared and the measured matrix, side by side in one table per matrix."""
    from rich.console import Console
    from rich.table import Table

    from ccoas.report import print_table

    console = Console()
    for title in ("declared", "measured"):
        rows = report[title]
        table = Table(title=f"reachability, {title} (ports a service opens on another)")
        for column in rows[0]:
            table.add_column(column)
        for row in rows[1:]:
            table.add_row(*row)
        print_table(console, table)
    console.print("probe proofs (a connection each probe made, so its refusals count): " + ", ".join(f"{s} → {p}" for s, p in sorted(report["proofs"].items())))
