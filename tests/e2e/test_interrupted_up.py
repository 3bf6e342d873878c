"""Ctrl-C during `up` leaves nothing that the next `up` cannot converge."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid

import pytest

from ccoas.engine.local import LocalEngine
from ccoas.planner import build_plan, load_stack

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("after_s", [2.0, 6.0])
def test_up_interrupted_then_up_again_converges(small_stack, after_s: float):
    stack = small_stack("intr", "vault", "postgres")
    name = f"intr-{uuid.uuid4().hex[:6]}"
    engine = LocalEngine.connect(build_plan(load_stack(stack), name=name))
    engine.build_images()
    try:
        process = subprocess.Popen([sys.executable, "-m", "ccoas.cli", "up", str(stack), "--name", name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(after_s)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
        assert "Traceback" not in stderr
        result = engine.up()
        assert {r.service: r.health for r in result.status} == {"vault": "healthy", "postgres": "healthy"}
        assert engine.up().changes == 0
    finally:
        engine.down(purge=True)
