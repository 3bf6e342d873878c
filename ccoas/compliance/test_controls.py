"""The controls. Each is a parametrized test over the plan's services, checked live.

Settings are read back from the engine (``podman inspect``) AND observed from inside the
container (``/proc/1/status``, ``id``, a write to ``/``), and network isolation is
measured with a probe rather than trusted from the configuration.
"""

from __future__ import annotations

import json
import os
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest
import testinfra

from ccoas.host import host_layout
from ccoas.plan import Plan
from ccoas.planner import build_plan, load_stack


@lru_cache(maxsize=1)
def plan() -> Plan:
    return build_plan(load_stack(os.environ["CCOAS_CHECK_STACK"]), name=os.environ.get("CCOAS_CHECK_NAME") or None)


def services():
    return [pytest.param(s.name, id=s.name) for s in plan().services]


def podman(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", "--remote", *args], capture_output=True, text=True, timeout=60)


@lru_cache(maxsize=None)
def inspect(service: str) -> dict:
    result = podman("container", "inspect", plan().service(service).container_name)
    assert result.returncode == 0, f"{service}: container missing: {result.stderr.strip()}"
    return json.loads(result.stdout)[0]


def container(service: str):
    return testinfra.get_host(f"podman://{plan().service(service).container_name}")


def proc_status(service: str) -> dict[str, str]:
    text = container(service).check_output("cat /proc/1/status")
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def test_engine_is_rootless():
    info = json.loads(podman("info", "--format", "json").stdout)
    assert info["host"]["security"]["rootless"] is True


@pytest.mark.parametrize("service", services())
def test_running_and_healthy(service):
    state = inspect(service)["State"]
    assert state["Running"], f"{service} is not running"
    result = podman("healthcheck", "run", plan().service(service).container_name)
    assert result.returncode == 0, f"{service} health check fails: {result.stdout}{result.stderr}"


@pytest.mark.parametrize("service", services())
def test_runs_as_planned_non_root_user(service):
    wanted = plan().service(service)
    assert inspect(service)["Config"]["User"] == wanted.user
    uid = container(service).check_output("id -u")
    assert uid == str(wanted.uid) and uid != "0"


@pytest.mark.parametrize("service", services())
def test_root_filesystem_is_read_only(service):
    assert inspect(service)["HostConfig"]["ReadonlyRootfs"] is True
    probe = container(service).run("touch /ccoas-write-probe")
    assert probe.rc != 0, f"{service}: could write to /"


@pytest.mark.parametrize("service", services())
def test_all_capabilities_dropped(service):
    status = proc_status(service)
    for kind in ("CapEff", "CapPrm", "CapBnd"):
        assert int(status[kind], 16) == 0, f"{service}: {kind} is {status[kind]}"


@pytest.mark.parametrize("service", services())
def test_no_new_privileges(service):
    assert proc_status(service)["NoNewPrivs"].strip() == "1"


@pytest.mark.parametrize("service", services())
def test_attached_to_planned_networks_only(service):
    wanted = {plan().network(n).engine_name for n in plan().service(service).networks}
    assert set(inspect(service)["NetworkSettings"]["Networks"]) == wanted


@pytest.mark.parametrize("service", services())
def test_only_nginx_publishes_ports(service):
    bindings = inspect(service)["HostConfig"].get("PortBindings") or {}
    published = {port: b for port, b in bindings.items() if b}
    if service == "nginx":
        assert published
        assert all(b["HostIp"] == p.host_ip for p in plan().service("nginx").ports for b in published.get(f"{p.container_port}/tcp", []))
    else:
        assert not published, f"{service} publishes {published}"


@pytest.mark.parametrize("service", services())
def test_secret_files_are_private_and_owned(service):
    wanted = plan().service(service)
    host = container(service)
    for mount in wanted.secrets:
        stat = host.check_output(f"stat -c '%a %u' {mount.target}")
        assert stat == f"400 {wanted.uid}", f"{service}: {mount.target} is {stat}"


@pytest.mark.parametrize("service", services())
def test_no_secret_value_in_inspect_or_logs(service):
    values = _secret_values()
    document = json.dumps(inspect(service)) + podman("logs", plan().service(service).container_name).stdout
    leaked = [name for name, value in values.items() if value and value in document]
    assert not leaked, f"{service}: secret values visible in inspect/logs: {leaked}"


@pytest.mark.parametrize("network", ["auth", "db"])
def test_internal_networks_are_internal_and_isolated(network):
    if not any(n.name == network for n in plan().networks):
        pytest.skip(f"stack has no {network} network")
    name = plan().network(network).engine_name
    info = json.loads(podman("network", "inspect", name).stdout)[0]
    assert info["internal"] is True
    assert info.get("options", {}).get("isolate") == "true"


def _probe(source_container: str, image: str, script: str) -> tuple[int, str, str]:
    result = podman(
        "run", "--rm", "--pull", "never", "--network", f"container:{source_container}", "--user", "65534:65534",
        "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--entrypoint", "bash", image, "-c", script,
    )
    return result.returncode, result.stdout, result.stderr


def test_reachability_matrix_is_the_declared_one():
    """Measured from inside each service's network namespace: every service to every port of
    every other service, at each of its addresses; it must equal the plan's matrix."""
    from ccoas.compliance import reachability

    addresses = {
        s.name: sorted(n["IPAddress"] for n in inspect(s.name)["NetworkSettings"]["Networks"].values() if n.get("IPAddress"))
        for s in plan().services
    }
    measured = reachability.measure(plan(), addresses, _probe)
    report = os.environ.get("CCOAS_CHECK_REPORT")
    if report:
        Path(report).write_text(json.dumps({
            "declared": reachability.matrix_rows(plan(), reachability.declared(plan())),
            "measured": reachability.matrix_rows(plan(), measured.matrix),
            "proofs": measured.proofs,
        }))
    differences = reachability.differences(plan(), measured)
    assert not differences, "measured reachability differs from the plan:\n" + "\n".join(differences)


@lru_cache(maxsize=1)
def _secret_values() -> dict[str, str]:
    layout = host_layout()
    from ccoas.state import stack_paths

    paths = stack_paths(layout.state_root, layout.runtime_dir, plan().stack)
    values = {}
    for service in plan().services:
        for mount in service.secrets:
            path: Path = paths.secret_file(service.name, mount.secret)
            if path.exists():
                values[mount.secret] = path.read_text()
    return values
