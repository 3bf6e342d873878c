"""Compliance checks: testinfra assertions, one parametrized test per control per container.

``ccoas check`` runs :mod:`ccoas.compliance.test_controls` with pytest against the running
stack. testinfra's ``podman://`` backend reaches the rootless containers through the
engine user's API socket (``CONTAINER_HOST``), so an auditor running as root sees exactly
what the engine runs. A failure names the control and the container.
"""

from __future__ import annotations

import os
from pathlib import Path

CONTROLS = Path(__file__).with_name("test_controls.py")


def run_checks(stack: Path, name: str | None, junit: Path | None = None, extra: list[str] | None = None) -> int:
    """Run every control; returns pytest's exit code (0: all controls hold)."""
    import pytest

    from ccoas.host import host_layout

    layout = host_layout()
    env = {
        "CCOAS_CHECK_STACK": str(Path(stack).resolve()),
        "CCOAS_CHECK_NAME": name or "",
        "CONTAINER_HOST": layout.base_url,
    }
    os.environ.update(env)
    args = [str(CONTROLS), "-q", "-p", "no:cacheprovider", "--rootdir", str(CONTROLS.parent), "-o", "addopts=", "-W", "ignore::DeprecationWarning"]
    if junit:
        args.append(f"--junitxml={junit}")
    code = int(pytest.main(args + list(extra or [])))
    return 1 if code == 5 else code  # no controls collected is a failure, never a pass
