"""The build sandbox's command line and root's copy-out of build outputs, and the build graph's
scheduling. No build user or toolchain needed (the live attacker's test is
tests/e2e/test_unprivileged_builds.py)."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import pytest

from ccoas.build_graph import Stages, StepTiming, critical_path, run_graph
from ccoas.build_sandbox import Mount, children_cpu_seconds, copy_file_out, copy_tree_out, sandbox_command
from ccoas.errors import HostError


def _pairs(cmd: list[str], flag: str) -> list[tuple[str, str]]:
    return [(cmd[i + 1], cmd[i + 2]) for i, arg in enumerate(cmd) if arg == flag]


def test_a_step_runs_as_the_build_user_in_every_namespace_and_without_network_unless_it_fetches():
    cmd = sandbox_command("ccoas-build", ["cargo", "build"], (Mount(Path("/w"), "/build", True),))
    assert cmd[:4] == ["runuser", "-u", "ccoas-build", "--"]
    assert "--unshare-all" in cmd and "--share-net" not in cmd and "--die-with-parent" in cmd
    assert cmd[-3:] == ["--", "cargo", "build"]
    fetching = sandbox_command("ccoas-build", ["cargo", "fetch"], network=True)
    assert "--share-net" in fetching


def test_a_step_sees_only_the_system_dirs_read_only_and_its_own_dirs():
    cmd = sandbox_command(
        "ccoas-build", ["true"],
        (Mount(Path("/var/cache/ccoas/build/work/x"), "/build", True), Mount(Path("/var/cache/ccoas/artifacts/npm/node"), "/node")),
        toolchain_root=Path("/opt/ccoas/toolchains"),
    )
    assert _pairs(cmd, "--ro-bind") == [("/usr", "/usr"), ("/etc", "/etc"), ("/opt/ccoas/toolchains", "/opt/ccoas/toolchains"), ("/var/cache/ccoas/artifacts/npm/node", "/node")]
    assert _pairs(cmd, "--bind") == [("/var/cache/ccoas/build/work/x", "/build")]
    shown = " ".join(cmd)
    for hidden in ("/var/lib", "/root", "/home", "/run", "/var/cache/ccoas "):
        assert hidden not in shown
    assert cmd[cmd.index("--tmpfs") + 1] == "/tmp"


def test_the_environment_is_the_steps_own():
    cmd = sandbox_command("ccoas-build", ["go", "env"], env={"GOPROXY": "off", "CGO_ENABLED": "1"})
    assert cmd[cmd.index("env") + 1] == "-i"  # nothing of root's environment reaches the step
    assert _pairs(cmd, "--setenv") == [("CGO_ENABLED", "1"), ("GOPROXY", "off")]


def test_an_output_that_is_a_link_is_refused(tmp_path: Path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "program").symlink_to("/etc/passwd")
    with pytest.raises(HostError, match="not a regular file"):
        copy_file_out(tmp_path, "out/program", tmp_path / "copy")
    assert not (tmp_path / "copy").exists()


def test_an_output_below_a_linked_dir_is_refused(tmp_path: Path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "program").write_text("x")
    (tmp_path / "out").symlink_to(tmp_path / "real")
    os.chown(tmp_path, 65534, 65534)  # a work dir is the build user's, as build steps leave it
    with pytest.raises(HostError, match="not a regular file"):
        copy_file_out(tmp_path, "out/program", tmp_path / "copy")


def test_a_fifo_output_is_refused_without_blocking(tmp_path: Path):
    os.mkfifo(tmp_path / "program")
    with pytest.raises(HostError, match="not a regular file"):
        copy_file_out(tmp_path, "program", tmp_path / "copy")


def test_an_output_keeps_its_content_and_loses_set_id_bits(tmp_path: Path):
    program = tmp_path / "program"
    program.write_bytes(b"\x7fELF...")
    os.chmod(program, 0o6777)
    copied = copy_file_out(tmp_path, "program", tmp_path / "artifacts" / "program")
    assert copied.read_bytes() == b"\x7fELF..."
    assert stat.S_IMODE(copied.stat().st_mode) == 0o755


def test_an_output_tree_keeps_links_as_links_and_drops_special_files(tmp_path: Path):
    tree = tmp_path / "tree"
    (tree / "node_modules" / ".bin").mkdir(parents=True)
    (tree / "node_modules" / "pkg.js").write_text("module.exports = 1\n")
    os.chmod(tree / "node_modules" / "pkg.js", 0o4775)
    (tree / "node_modules" / ".bin" / "pkg").symlink_to("../pkg.js")
    (tree / "escape").symlink_to("/etc/shadow")
    os.mkfifo(tree / "fifo")
    copy_tree_out(tree, tmp_path / "copy")
    copy = tmp_path / "copy"
    assert (copy / "node_modules" / "pkg.js").read_text() == "module.exports = 1\n"
    assert stat.S_IMODE((copy / "node_modules" / "pkg.js").stat().st_mode) == 0o755
    assert os.readlink(copy / "node_modules" / ".bin" / "pkg") == "../pkg.js"
    assert os.readlink(copy / "escape") == "/etc/shadow"  # a link, never the file it names
    assert not (copy / "fifo").exists()


def test_a_tree_that_is_a_link_is_refused(tmp_path: Path):
    (tmp_path / "real").mkdir()
    (tmp_path / "tree").symlink_to(tmp_path / "real")
    with pytest.raises(OSError):
        copy_tree_out(tmp_path / "tree", tmp_path / "copy")


@pytest.mark.parametrize(
    ("times", "seconds"),
    [("0m0.004000s 0m0.000000s\n0m12.500000s 0m1.250000s\n", 13.75), ("0m0.01s 0m0.00s\n2m1.00s 0m3.00s\n", 124.0), ("junk", 0.0), ("", 0.0)],
)
def test_children_cpu_seconds_reads_the_shells_times(times: str, seconds: float):
    assert children_cpu_seconds(times) == pytest.approx(seconds)


# --- the build graph -------------------------------------------------------------------------


def test_compiles_never_exceed_their_slots_and_downloads_overlap_them():
    stages = Stages(cpu_slots=2, network_slots=4)
    running = {"cpu": 0, "network": 0}
    peak = {"cpu": 0, "network": 0}
    lock = threading.Lock()

    def chain(kind: str):
        def run():
            with stages.step(f"{kind} step", kind):
                with lock:
                    running[kind] += 1
                    peak[kind] = max(peak[kind], running[kind])
                time.sleep(0.05)
                with lock:
                    running[kind] -= 1
        return run

    chains = {f"c{i} cpu": (1, chain("cpu")) for i in range(5)} | {f"n{i} net": (1, chain("network")) for i in range(4)}
    run_graph(chains, {}, stages)
    assert peak["cpu"] == 2 and peak["network"] >= 2
    assert len(stages.timings) == 9


def test_a_chain_starts_after_what_it_needs_and_a_failure_surfaces_once_all_ended():
    stages = Stages(cpu_slots=2)
    order: list[str] = []

    def record(name: str, fail: bool = False):
        def run():
            time.sleep(0.02)
            order.append(name)
            if fail:
                raise RuntimeError(f"{name} failed")
            return name
        return run

    assert run_graph({"a x": (1, record("a")), "b image": (1, record("b"))}, {"b image": ("a x",)}, stages) == {"a x": "a", "b image": "b"}
    assert order == ["a", "b"]
    with pytest.raises(RuntimeError, match="a failed"):
        run_graph({"a x": (1, record("a", fail=True)), "b image": (1, record("b")), "c y": (1, record("c"))}, {"b image": ("a x",)}, stages)


def test_the_longest_chain_gets_a_free_compile_slot_first():
    stages = Stages(cpu_slots=1)
    started: list[str] = []
    gate = threading.Event()

    def hold():
        with stages.step("holding", "cpu"):
            gate.wait(2)

    def wants(name: str):
        def run():
            with stages.step(name, "cpu"):
                started.append(name)
        return run

    holder = threading.Thread(target=lambda: (stages.for_chain("h", 0), hold()))
    holder.start()
    time.sleep(0.05)
    waiters = [threading.Thread(target=lambda n=n, p=p: (stages.for_chain(n, p), wants(n)())) for n, p in (("cargo", 2), ("npm", 0), ("cgo", 1))]
    for w in waiters:
        w.start()
        time.sleep(0.05)
    gate.set()
    for t in (holder, *waiters):
        t.join()
    assert started == ["npm", "cgo", "cargo"]


def test_the_critical_path_is_the_component_that_ended_last():
    timings = [
        StepTiming("vault", "fetching", "network", 0, 0, 5, 1.0),
        StepTiming("ollama", "fetching", "network", 0, 0, 60, 10.0),
        StepTiming("ollama", "building", "cpu", 60, 70, 300, 500.0),
        StepTiming("ollama", "image", "engine", 300, 300, 330, None),
    ]
    path = critical_path(timings)
    assert [t.step for t in path] == ["fetching", "building", "image"]
    assert path[1].waited_s == 10


def test_steps_running_at_once_each_get_their_own_still_line():
    import io

    from rich.console import Console

    from ccoas.report import ProgressReporter

    out = io.StringIO()
    with ProgressReporter(Console(file=out, force_terminal=False, width=200), heartbeat_s=0.3) as progress:
        progress.lane_step("ollama", "ollama: building ollama (go, cgo, no network)")
        progress.lane_step("directus", "directus: fetching directus@11.17.4 (npm)")
        time.sleep(0.9)
        progress.lane_end("directus")
        time.sleep(0.5)
    lines = out.getvalue().splitlines()
    still = [line for line in lines if "… still" in line]
    assert any("still ollama: building" in line for line in still)
    assert any("still directus: fetching" in line for line in still)
    after_end = lines[[i for i, line in enumerate(lines) if "still directus" in line][-1] + 1 :]
    assert not any("directus" in line for line in after_end if "still" in line)  # an ended lane is quiet
