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
    # on auth, Vault has one peer: the monitoring container, which scrapes its metrics
    assert not any(ok for (source, target, _), ok in matrix.items() if source == "vault" and target != "monitoring")
    assert {source for (source, target, _), ok in matrix.items() if target == "vault" and ok} == {"monitoring"}
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


def test_a_source_that_listens_on_nothing_is_proved_by_a_declared_peer(load_plan):
    """The embedding worker exposes no port: its probe has no ``self`` line, and what proves it
    could see a connection is a peer the plan lets it reach."""
    plan = load_plan("dev")
    assert plan.service("embedder").expose == ()
    assert "probe self" not in reachability.probe_script(None, [("postgres", 5432, "10.0.0.2")])
    wanted = reachability.declared(plan)
    by_container = {s.container_name: s.name for s in plan.services}

    def as_declared(container: str, image: str, script: str) -> tuple[int, str, str]:
        source = by_container[container]
        out = []
        for line in script.splitlines():
            if line.startswith("probe ") and line.endswith("&"):
                _, target, port, address, _ = line.split()
                open_ = target == "self" or wanted[(source, target, int(port))]
                out.append(f"{target} {port} {address} {'open' if open_ else 'closed'}")
        return 0, "\n".join(out) + "\n", ""

    measured = reachability.measure(plan, {s.name: ["10.0.0.1"] for s in plan.services}, as_declared)
    assert reachability.differences(plan, measured) == []
    assert measured.proofs["embedder"] in {"ollama:11434", "postgres:5432", "directus:8055", "postgraphile:5678", "redis:6379"}

    def silent(container: str, image: str, script: str) -> tuple[int, str, str]:
        code, out, err = as_declared(container, image, script)
        if by_container[container] == "embedder":
            out = out.replace(" open", " closed")
        return code, out, err

    with pytest.raises(reachability.ProbeError, match="embedder: the probe reached neither"):
        reachability.measure(plan, {s.name: ["10.0.0.1"] for s in plan.services}, silent)
