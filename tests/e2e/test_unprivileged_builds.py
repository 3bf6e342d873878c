"""A stack author's hostile crate, built the way ccoas builds every user service: its
``build.rs`` and the ``rustc-wrapper`` of its ``.cargo/config.toml`` try to write into ccoas's
state, root's home, the embedder's cargo target dir, ``/etc`` and the shared build cache, read
ccoas's state, and reach the host over the network; ``build.rs`` puts what happened (and its
uid) into the program it builds, which the test runs.

Needs a prepared host (the build user, bubblewrap, the Rust toolchain) and crates.io for the
fetch step (the crate has no dependencies: nothing is downloaded). No engine is involved.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from ccoas.build_sandbox import leaf_dir
from ccoas.components.embedder import BINARY as EMBEDDER_BINARY, CRATE as EMBEDDER_CRATE
from ccoas.host import HostLayout, host_layout
from ccoas.images import crate_domain, fetch_cargo
from ccoas.plan import TEMPLATES_DIR, Artifact

pytestmark = pytest.mark.e2e

PRIVATE = {"tmp"}
"""Targets the sandbox has a private copy of: a write may succeed there, the host's stays unchanged."""

BUILD_RS = r'''
use std::fs;
use std::net::TcpStream;

fn attempt(what: &str, result: std::io::Result<()>) -> String {
    match result {
        Ok(()) => format!("{what}=WROTE"),
        Err(e) => format!("{what}=refused({:?})", e.kind()),
    }
}

fn main() {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or("Uid: ?").split_whitespace().nth(1).unwrap_or("?").to_string();
    let mut report = vec![format!("uid={uid}")];
    for (name, path) in [TARGETS] {
        report.push(attempt(name, fs::write(path, b"pwned by build.rs")));
    }
    report.push(format!("read_state={}", fs::read_dir("@STATE@").map(|_| "LISTED").unwrap_or("refused")));
    report.push(format!("read_root={}", fs::read_dir("/root").map(|_| "LISTED").unwrap_or("refused")));
    report.push(format!("net={}", TcpStream::connect("127.0.0.1:@PORT@").map(|_| "CONNECTED").unwrap_or("refused")));
    println!("cargo:rustc-env=HOSTILE_REPORT={}", report.join(";"));
}
'''

WRAPPER = """#!/bin/sh
# a rustc-wrapper of the crate's own: it runs for every rustc call of the build
for target in TARGETS; do { echo pwned > "$target.wrapper"; } 2>/dev/null; done
exec "$@"
"""


@pytest.fixture(scope="module")
def layout() -> HostLayout:
    """The host's layout with a build cache of this module's own (the build user must reach it:
    not under pytest's 0700 tmp dir)."""
    base = host_layout()
    try:
        base.build_ids
    except Exception as exc:  # noqa: BLE001 - the host is not prepared: say so, do not pass
        pytest.fail(f"the build user is missing: run `ccoas host prepare` ({exc})")
    cache = Path(tempfile.mkdtemp(prefix="ccoas-builds-e2e-", dir="/var/cache"))
    os.chmod(cache, 0o755)
    yield HostLayout(engine_user=base.engine_user, state_root=base.state_root, cache_root=cache, toolchain_root=base.toolchain_root, build_user=base.build_user)
    shutil.rmtree(cache)


@pytest.fixture(scope="module")
def listener():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        yield server


def _targets(layout: HostLayout) -> dict[str, Path]:
    embedder = leaf_dir(layout, "cargo", crate_domain(TEMPLATES_DIR / EMBEDDER_CRATE, EMBEDDER_BINARY))
    return {
        "state": layout.state_root / "pwned-by-build",
        "root_home": Path("/root/pwned-by-build"),
        "embedder_target": embedder / "pwned-by-build",
        "etc": Path("/etc/pwned-by-build"),
        "shared_cache": layout.cache_root / "pwned-by-build",
        "real_cache": Path("/var/cache/ccoas/pwned-by-build"),
        "tmp": Path("/tmp/pwned-by-build"),  # the sandbox's /tmp is its own: the write lands there
    }


def hostile_crate(folder: Path, targets: dict[str, Path], state: Path, port: int) -> Path:
    (folder / "src").mkdir(parents=True)
    (folder / ".cargo").mkdir()
    (folder / "Cargo.toml").write_text('[package]\nname = "hostile"\nversion = "0.1.0"\nedition = "2021"\nbuild = "build.rs"\n\n[dependencies]\n')
    (folder / "Cargo.lock").write_text('version = 3\n\n[[package]]\nname = "hostile"\nversion = "0.1.0"\n')
    pairs = ", ".join(f'("{name}", "{path}")' for name, path in targets.items())
    (folder / "build.rs").write_text(BUILD_RS.replace("[TARGETS]", f"[{pairs}]").replace("@STATE@", str(state)).replace("@PORT@", str(port)))
    (folder / "src" / "main.rs").write_text('fn main() { println!("{}", env!("HOSTILE_REPORT")); }\n')
    wrapper = folder / "wrap.sh"
    wrapper.write_text(WRAPPER.replace("TARGETS", " ".join(str(p) for p in targets.values())))
    wrapper.chmod(0o755)
    (folder / ".cargo" / "config.toml").write_text('[build]\nrustc-wrapper = "./wrap.sh"\n')
    return folder


@pytest.fixture(scope="module")
def built(layout: HostLayout, listener, tmp_path_factory):
    targets = _targets(layout)
    for path in targets.values():
        assert not path.exists() and not Path(f"{path}.wrapper").exists(), f"{path} exists before the build"
    crate = hostile_crate(tmp_path_factory.mktemp("hostile") / "crate", targets, layout.state_root, listener.getsockname()[1])
    os.chmod(crate.parent, 0o755)
    binary = fetch_cargo(layout, Artifact(kind="cargo", spec=str(crate), binary="hostile"))
    report = subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout.strip()  # prints a constant
    return dict(item.split("=", 1) for item in report.split(";")), targets


def test_the_build_runs_as_the_unprivileged_build_user(built, layout: HostLayout):
    report, _ = built
    assert report["uid"] != "0"
    assert int(report["uid"]) == layout.build_ids[0]


def test_every_write_outside_the_build_failed_and_nothing_outside_changed(built):
    report, targets = built
    for name, path in targets.items():
        assert name in PRIVATE or report[name].startswith("refused"), (name, report[name])
        assert not path.exists(), path
        assert not Path(f"{path}.wrapper").exists(), f"the rustc-wrapper wrote {path}.wrapper"


def test_it_cannot_read_ccoas_state_or_root_home(built):
    report, _ = built
    assert report["read_state"] == "refused" and report["read_root"] == "refused"


def test_its_build_script_has_no_network(built, listener):
    report, _ = built
    assert report["net"] == "refused"
    with pytest.raises(BlockingIOError):
        listener.accept()  # nothing reached the host's loopback


def test_its_target_dir_is_not_the_embedders(layout: HostLayout):
    own = crate_domain(Path("/somewhere/hostile"), "hostile")
    assert own != crate_domain(TEMPLATES_DIR / EMBEDDER_CRATE, EMBEDDER_BINARY)
