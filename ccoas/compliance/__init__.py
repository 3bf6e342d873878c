"""Compliance checks: testinfra assertions, one parametrized test per control per container.

``ccoas check`` runs :mod:`ccoas.compliance.test_controls` with pytest against the running
stack. testinfra's ``podman://`` backend reaches the rootless containers through the
engine user's API socket (``CONTAINER_HOST``), so an auditor running as root sees exactly
what the engine runs. A failure names the control and the container.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CONTROLS = Path(__file__).with_name("test_controls.py")


def run_checks(stack: Path, name: str | None, junit: Path | None = None, extra: list[str] | None = None) -> int:
    """Run every control in a pytest process of its own; returns its exit code (0: all hold)."""
    from ccoas.host import host_layout

    layout = host_layout()
    env = {
        **os.environ,
        "CCOAS_CHECK_STACK": str(Path(stack).resolve()),
        "CCOAS_CHECK_NAME": name or "",
        "CONTAINER_HOST": layout.base_url,
    }
    args = [str(CONTROLS), "-q", "-p", "no:cacheprovider", "--rootdir", str(CONTROLS.parent), "-o", "addopts=", "-W", "ignore::DeprecationWarning"]
    if junit:
        args.append(f"--junitxml={Path(junit).resolve()}")
    code = subprocess.run([sys.executable, "-m", "pytest", *args, *(extra or [])], env=env, check=False).returncode
    return 1 if code == 5 else code  # no controls collected is a failure, never a pass
