"""Run inside a private mount namespace (``unshare --mount --propagation private``) by
test_fresh_host.py: a host that lacks iptables, without touching the shared machine.

/usr, /etc and /var are overlaid (writes go to ``WORK``), then ``dpkg --purge iptables``
removes it from this namespace only, as ``apt-get purge iptables`` would on a real host.
Every process started from here (the engine user's Podman service, netavark, host
preparation's apt-get) sees that host. Prints one JSON object: what each command returned
and what the engine held after the failed ``up``.

    python fresh_host_scenario.py WORK STACK_FILE STACK_NAME
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

from ccoas.host import engine_processes, host_layout


def _run(*cmd: str, timeout: int = 900) -> dict:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, cwd="/")
    return {"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}


def _ccoas(*args: str) -> dict:
    return _run(sys.executable, "-m", "ccoas.cli", *args)


def _owned(kind: str, stack: str) -> list[str]:
    layout = host_layout()
    listing = ["ls", "-a", "--format", "{{.Names}}"] if kind == "container" else ["ls", "--format", "{{.Name}}"]
    cmd = layout.engine_command("podman", kind, *listing, "--filter", f"label=io.ccoas.stack={stack}")
    return [line for line in _run(*cmd)["stdout"].splitlines() if line.strip()]


def _stop_engine() -> None:
    layout = host_layout()
    deadline = time.monotonic() + 30
    sig = signal.SIGTERM
    while pids := engine_processes(layout):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
        if time.monotonic() > deadline - 20:
            sig = signal.SIGKILL
        if time.monotonic() > deadline:
            break


def main(work: Path, stack_file: str, stack: str) -> dict:
    for top in ("usr", "etc", "var"):
        (work / "upper" / top).mkdir(parents=True)
        (work / "work" / top).mkdir(parents=True)
        subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir=/{top},upperdir={work}/upper/{top},workdir={work}/work/{top}", f"/{top}"],
            check=True,
        )
    result: dict = {"purge": _run("dpkg", "--purge", "iptables")}
    result["iptables_before"] = shutil.which("iptables", path="/usr/sbin:/usr/bin:/sbin:/bin")
    result["up_without_iptables"] = _ccoas("up", stack_file)
    result["after_failed_up"] = {
        kind: _owned(kind, stack) for kind in ("container", "network", "volume")
    }
    result["state_dir_after_failed_up"] = (host_layout().state_root / "stacks" / stack).exists()
    result["prepare"] = _ccoas("host", "prepare")
    result["iptables_after"] = shutil.which("iptables", path="/usr/sbin:/usr/bin:/sbin:/bin")
    result["up_after_prepare"] = _ccoas("up", stack_file)
    result["status"] = _ccoas("status", stack_file, "--json")
    result["down"] = _ccoas("down", stack_file, "--purge")
    _stop_engine()
    return result


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), sys.argv[2], sys.argv[3])))
