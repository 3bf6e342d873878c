"""The reachability matrix logic of ``ccoas check``: the declared matrix, and a probe that must
prove it could have seen a connection (its script is run here by a real bash against real
sockets on loopback; the live matrix is measured in the e2e tier)."""

from __future__ import annotations

import socket
import subprocess

import pytest

from ccoas.compliance import reachability


def test_declared_matrix_follows_shared_networks(load_plan):
    plan = load_plan("dev")
    matrix = reachability.declared(plan)
    assert matrix[("directus", "postgres", 5432)] is True
    assert matrix[("nginx", "postgres", 5432)] is False
    assert matrix[("nginx", "directus", 8055)] is True
    assert not any(ok for (source, _, _), ok in matrix.items() if source == "vault")  # alone on auth
    assert not any(ok for (_, target, _), ok in matrix.items() if target == "vault")
    assert len(matrix) == sum(len(t.expose) * (len(plan.services) - 1) for t in plan.services)


def host_bash(container: str, image: str, script: str) -> tuple[int, str, str]:
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    return result.returncode, result.stdout, result.stderr


def test_a_probe_that_cannot_run_fails(load_plan):
    plan = load_plan("dev")
    addresses = {s.name: ["127.0.0.1"] for s in plan.services}
    with pytest.raises(reachability.ProbeError, match="could not run"):
        reachability.measure(plan, addresses, lambda *_: (127, "", "bash: not found"))


def test_a_probe_that_reaches_nothing_proves_nothing_and_fails(load_plan):
    """Every address is a closed loopback port, so nothing connects: not 'isolated', a failure."""
    plan = load_plan("ci")
    addresses = {s.name: ["127.0.0.9"] for s in plan.services}
    with pytest.raises(reachability.ProbeError, match="proves nothing"):
        reachability.measure(plan, addresses, host_bash)


def test_the_probe_script_sees_an_open_and_a_closed_port():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            closed = unused.getsockname()[1]
        code, out, _ = host_bash("", "", reachability.probe_script(port, [("peer", closed, "127.0.0.1")]))
    assert code == 0
    assert sorted(out.splitlines()) == sorted([f"self {port} 127.0.0.1 open", f"peer {closed} 127.0.0.1 closed"])


def test_differences_name_each_edge(load_plan):
    plan = load_plan("dev")
    measured = reachability.Measured(matrix=dict(reachability.declared(plan)))
    assert reachability.differences(plan, measured) == []
    measured.matrix[("nginx", "postgres", 5432)] = True
    assert reachability.differences(plan, measured) == ["nginx → postgres:5432: declared unreachable, measured reachable"]
