"""The edge listener without a running stack: its config (checked by HAProxy itself), the
ports it chooses, and what ``up`` decides from what it observed.

The listener running in front of a real Nginx, and the addresses it hands over, are proved in
``tests/e2e/test_edge_addresses.py``.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from ccoas import listener
from ccoas.planner import load_plan
from ccoas.state import stack_paths

STACKS = Path(__file__).resolve().parent.parent / "stacks"


@pytest.fixture
def ci(tmp_path):
    plan = load_plan(STACKS / "ci.yaml", name="pr-42")
    return plan, stack_paths(tmp_path / "state", tmp_path / "run", plan.stack)


def test_a_zero_host_port_is_chosen_once_and_kept(ci):
    plan, paths = ci
    files = listener.ListenerFiles.of(paths)
    assert [number for _, number in listener.host_ports(plan, files, choose=False)] == [0]
    [(port, chosen)] = listener.host_ports(plan, files)
    assert port.host_port == 0 and chosen > 0
    assert listener.host_ports(plan, files) == [(port, chosen)]
    assert listener.endpoints(plan, paths) == [f"https://{port.host_ip}:{chosen}"]


@pytest.mark.e2e  # haproxy is the prepared host's (`ccoas host prepare`): the fast tier needs no prepared host
@pytest.mark.parametrize("stack", ["ci", "dev", "prod"])
def test_the_config_passes_haproxys_own_check_and_never_reads_a_clients_header(stack, tmp_path):
    if shutil.which("haproxy") is None:
        pytest.fail("haproxy is not installed: it is a runtime requirement (`ccoas host prepare` installs it)")
    plan = load_plan(STACKS / f"{stack}.yaml")
    short = Path(tempfile.mkdtemp(prefix="lst", dir="/tmp"))  # haproxy takes unix socket paths of 97 bytes at most
    try:
        paths = stack_paths(short / "state", short / "run", plan.stack)
        text = listener.render(plan, paths, listener.host_ports(plan, listener.ListenerFiles.of(paths)))
    finally:
        shutil.rmtree(short)
    config = tmp_path / "haproxy.cfg"
    config.write_text(text)
    checked = subprocess.run(["haproxy", "-c", "-f", str(config)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "accept-proxy" not in text, "a client's PROXY header must never be read"
    socket_dir = paths.runtime_mount(plan.edge.listener.socket_mount)
    for port in plan.edge.listener.ports:
        assert f"{port.host_ip}:" in text
        assert f"server nginx unix@{socket_dir}/{plan.edge.listener.sockets[port.container_port]} send-proxy-v2" in text
    assert f"maxconn {plan.edge.limits.total_connections}" in text


def observed(pids=(1234,), sha="", answers=True):
    return listener.ObservedListener(pids=tuple(pids), config_sha=sha, answers=answers)


def test_up_starts_restarts_or_leaves_the_listener_from_what_it_observed(ci):
    plan, paths = ci
    text = listener.render(plan, paths, listener.host_ports(plan, listener.ListenerFiles.of(paths)))
    current = hashlib.sha256(text.encode()).hexdigest()
    decide = lambda seen: listener.plan_operation(plan, paths, seen)  # noqa: E731
    assert str(decide(observed(pids=()))) == "start edge listener: not running"
    assert str(decide(observed(sha="0" * 64))) == "restart edge listener: config changed"
    assert str(decide(observed(sha=current, answers=False))) == "restart edge listener: does not answer through to nginx"
    assert decide(observed(sha=current)) is None


def test_a_stack_without_the_host_listener_stops_a_leftover_one(tmp_path):
    plan = load_plan(STACKS / "ci.yaml")
    plan = plan.model_copy(update={"edge": plan.edge.model_copy(update={"listener": plan.edge.listener.model_copy(update={"kind": "engine"})})})
    paths = stack_paths(tmp_path / "state", tmp_path / "run", plan.stack)
    assert listener.plan_operation(plan, paths, observed(pids=())) is None
    assert str(listener.plan_operation(plan, paths, observed())) == "stop edge listener: the plan has no host listener"


def test_nginx_publishing_nothing_needs_no_listener(tmp_path):
    plan = load_plan(STACKS / "ci.yaml")
    plan = plan.model_copy(update={"edge": plan.edge.model_copy(update={"listener": plan.edge.listener.model_copy(update={"ports": ()})})})
    paths = stack_paths(tmp_path / "state", tmp_path / "run", plan.stack)
    assert not listener.wanted(plan) and listener.endpoints(plan, paths) == []
    assert listener.plan_operation(plan, paths, observed(pids=())) is None


def test_with_the_engine_listener_nginx_publishes_its_ports_and_reads_no_proxy_header(tmp_path):
    """``edge.listener: engine``: the engine publishes Nginx's ports (no runtime mount, no unix
    listener, no realip), and ccoas runs no listener."""
    import yaml

    from ccoas.render import rendered_files

    document = yaml.safe_load((STACKS / "ci.yaml").read_text())
    document["edge"] = {"listener": "engine"}
    path = tmp_path / "ci.yaml"
    path.write_text(yaml.safe_dump(document))
    plan = load_plan(path)
    nginx = plan.service("nginx")
    assert nginx.ports == plan.edge.listener.ports != () and nginx.runtime_mounts == ()
    assert nginx.command[0] == "nginx"
    conf = rendered_files(plan)["nginx/nginx.conf"]
    assert "proxy_protocol" not in conf and "set_real_ip_from" not in conf and "unix:" not in conf
    assert [name for name, _ in plan.published()] == ["nginx"]
    assert not listener.wanted(plan)
