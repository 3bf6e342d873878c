"""Host arithmetic without a host: subordinate id ranges and which processes belong to the engine."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

import ccoas.host as host
from ccoas.errors import HostError
from ccoas.host import HostLayout, engine_processes

ME = pwd.getpwuid(os.geteuid()).pw_name
UID = os.geteuid()


@pytest.fixture
def layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HostLayout:
    subuid = tmp_path / "subuid"
    subuid.write_text(f"someone:100000:65536\n{ME}:200000:1000\n")
    monkeypatch.setattr(host, "SUBUID_FILE", subuid)
    return HostLayout(engine_user=ME)


def _proc(root: Path, pid: int, uids: tuple[int, int, int, int]) -> None:
    (root / str(pid)).mkdir(parents=True)
    (root / str(pid) / "status").write_text(f"Name:\tx\nUid:\t{' '.join(map(str, uids))}\nGid:\t0 0 0 0\n")


def test_subordinate_range_and_container_uids(layout: HostLayout):
    assert layout.subuid_range == range(200000, 201000)
    assert layout.host_uid(0) == UID
    assert layout.host_uid(999) == 200998


def test_host_ids_map_container_uid_and_gid(layout: HostLayout):
    assert layout.host_ids(0, 0) == (UID, layout.gid)
    assert layout.host_ids(101, 101) == (200100, 200100)


def test_ccoas_talks_to_a_service_of_its_own_not_the_well_known_socket(layout: HostLayout):
    """Other Docker-API clients find ``$XDG_RUNTIME_DIR/podman/podman.sock``; what they do to the
    networks that service holds must not reach ccoas's (README, "Boundary: root ↔ engine user")."""
    assert layout.socket_path == layout.runtime_dir / "ccoas-api" / "podman.sock"
    assert layout.socket_path != layout.runtime_dir / "podman" / "podman.sock"
    assert layout.base_url == f"unix://{layout.socket_path}"


def test_missing_range_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "subuid").write_text("someone:100000:65536\n")
    monkeypatch.setattr(host, "SUBUID_FILE", tmp_path / "subuid")
    with pytest.raises(HostError, match="ccoas host prepare"):
        HostLayout(engine_user=ME).subuid_range


def test_engine_processes_are_the_users_and_its_subordinate_uids(tmp_path: Path, layout: HostLayout):
    proc = tmp_path / "proc"
    _proc(proc, 10, (UID, UID, UID, UID))  # the Podman service, conmon
    _proc(proc, 11, (200998, 200998, 200998, 200998))  # a container running as uid 999
    _proc(proc, 12, (100005, 100005, 100005, 100005))  # another user's container
    _proc(proc, 13, (201000, 201000, 201000, 201000))  # just past the range
    _proc(proc, 14, (UID + 1, UID + 1, UID + 1, UID + 1) if UID != 0 else (1, 1, 1, 1))
    (proc / "self").mkdir()
    (proc / "15").mkdir()  # exited between listing and reading
    assert engine_processes(layout, proc) == [10, 11]


needs_prepared_root = pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/usr/bin/dpkg").exists(), reason="reads this host's facts: needs root on Debian"
)


@needs_prepared_root
def test_host_preparation_lowers_the_unprivileged_port_start_for_a_stack_that_publishes_below_it():
    """The operations pyinfra would run (facts read, nothing executed), for prod's port 80."""
    current = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    if current <= 80:
        pytest.skip("this host already lets rootless containers bind port 80")

    names = host.operation_names(host.planned_preparation(unprivileged_port_start=80))

    assert f"net.ipv4.ip_unprivileged_port_start lowered from {current} to 80: the stack publishes port 80" in names
    assert not any("unprivileged_port_start" in n for n in host.operation_names(host.planned_preparation()))

