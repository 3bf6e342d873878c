"""Network isolation between stacks, tried as a neighbouring stack would try it.

A stack with a routed network (``edge``, where Nginx listens) and an attacker: a container
running on another network with Podman's ``isolate`` option, as every ccoas stack's networks
have. It connects to Nginx's address on ``edge``; isolation means it gets nowhere.

Two upstream defects of this host's Podman 4.3 / netavark 1.4 break that, and each test
reproduces one the way it happens, then proves ``ccoas up`` restores isolation:

- netavark deletes the one shared ``FORWARD -j NETAVARK_ISOLATION_1`` jump when the last
  container of ANY isolated network stops, so every other network loses isolation: ccoas keeps
  a jump of its own that netavark's teardown leaves alone;
- Podman's Docker-API network list deletes ``isolate`` from the API service's in-memory copy
  of each network; a bridge set up afterwards gets no isolation rules: ccoas never calls that
  endpoint, and ``up`` makes the service read its network files again and restarts the
  containers on such a network.

And that other Docker-API clients cannot do that to ccoas between two ``up``s: ccoas talks to a
service of its own on a socket of its own (``HostLayout.socket_path``); a client listing and
inspecting networks through another service (the one on the well-known socket, here one this
module starts) corrupts only that service's copy, and nginx restarted through ccoas's service,
or after a crash by its restart policy, comes back isolated.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid

import docker

import pytest

from ccoas.engine.local import LocalEngine
from ccoas.engine.runtime import ISOLATION_GUARD
from ccoas.host import ping
from ccoas.plan import LABEL_PREFIX
from ccoas.planner import build_plan, load_stack

pytestmark = pytest.mark.e2e

NAME = f"e2e-iso-{uuid.uuid4().hex[:4]}"
ATTACKER = f"{NAME}-attacker"
CONTROLS = "test_network_is_as_planned_and_held_isolated or test_another_isolated_network_cannot_reach_the_stack"


def podman(engine, *args: str) -> subprocess.CompletedProcess:
    """``podman`` through ccoas's own API service (the well-known socket is another service's)."""
    command = engine.runtime.layout.engine_command("podman", "--remote", "--url", engine.runtime.layout.base_url, *args)
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def in_netns(engine, script: str) -> str:
    command = engine.runtime.layout.engine_command("podman", "unshare", "--rootless-netns", "sh", "-c", script)
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def engine(module_stack):
    path = module_stack(NAME, "vault", "nginx")
    engine = LocalEngine.connect(build_plan(load_stack(path), name=NAME))
    engine.stack_path = path  # type: ignore[attr-defined]
    image = engine.plan.service("nginx").image.ref
    try:
        engine.up()
        assert podman(engine, "network", "create", "--opt", "isolate=true", ATTACKER).returncode == 0
        started = podman(engine, "run", "-d", "--name", ATTACKER, "--pull", "never", "--network", ATTACKER, "--entrypoint", "sleep", image, "3600")
        assert started.returncode == 0, started.stderr
        yield engine
    finally:
        podman(engine, "rm", "-f", "-t", "0", ATTACKER)
        podman(engine, "network", "rm", "-f", ATTACKER)
        engine.down(purge=True)


def attacker_reaches_nginx(engine) -> bool:
    """One TCP connect from the running attacker to Nginx's HTTPS port at its ``edge`` address."""
    nginx = engine.plan.service("nginx")
    container = engine.client.containers.get(nginx.container_name)
    address = container.attrs["NetworkSettings"]["Networks"][engine.plan.network("edge").engine_name]["IPAddress"]
    probe = podman(engine, "exec", ATTACKER, "bash", "-c", f"timeout 3 bash -c 'exec 3<>/dev/tcp/{address}/{max(nginx.expose)}'")
    return probe.returncode == 0


def another_isolated_network_comes_and_goes(engine) -> None:
    """What any other stack's ``down`` does: the last container of an isolated network stops."""
    other = f"{NAME}-other"
    assert podman(engine, "network", "create", "--opt", "isolate=true", other).returncode == 0
    ran = podman(engine, "run", "--rm", "--pull", "never", "--network", other, "--entrypoint", "true", engine.plan.service("nginx").image.ref)
    assert ran.returncode == 0, ran.stderr
    assert podman(engine, "network", "rm", other).returncode == 0


def held(engine) -> dict[str, tuple[bool, bool]]:
    return {n.name: (n.isolate, n.enforced) for n in engine.runtime.networks(f"{LABEL_PREFIX}.stack={NAME}")}


def isolated(engine) -> bool:
    """Every network of the stack held with ``isolate`` and, where its bridge is up, its rules in
    place; on failure the assertion shows the engine's networks and the firewall."""
    networks = {
        n["name"]: (n.get("network_interface"), (n.get("options") or {}).get("isolate"))
        for n in engine.client.api.get(engine.runtime.libpod_url("/networks/json")).json()
    }
    state = held(engine)
    if not all(h == (True, True) for h in state.values()):
        print("held:", state, "\nnetworks:", networks)
        print(in_netns(engine, "cut -d: -f1 /proc/net/dev; iptables -S FORWARD; iptables -S NETAVARK_ISOLATION_1; iptables -S NETAVARK_ISOLATION_2"))
    return all(h == (True, True) for h in state.values())


def controls(engine) -> int:
    from ccoas.compliance import run_checks

    return run_checks(engine.stack_path, NAME, extra=["-k", CONTROLS])


def test_a_fresh_stack_is_isolated_and_its_controls_pass(engine):
    assert isolated(engine)
    assert not attacker_reaches_nginx(engine)
    assert controls(engine) == 0


def test_ccoas_own_commands_keep_isolation(engine):
    engine.status()
    engine.plan_operations()
    assert engine.up().changes == 0
    assert isolated(engine)
    assert not attacker_reaches_nginx(engine)


def test_isolation_survives_another_networks_teardown_and_up_restores_the_lost_jump(engine):
    another_isolated_network_comes_and_goes(engine)
    assert not attacker_reaches_nginx(engine), "ccoas's own jump did not keep isolation"

    # without ccoas's jump (as on a host before this fix), netavark's teardown ends all isolation
    in_netns(engine, f"iptables -D FORWARD -m comment --comment {ISOLATION_GUARD} -j NETAVARK_ISOLATION_1")
    another_isolated_network_comes_and_goes(engine)
    assert "-j NETAVARK_ISOLATION_1" not in in_netns(engine, "iptables -S FORWARD")
    assert attacker_reaches_nginx(engine), "the attacker did not measure the loss"
    assert held(engine)[engine.plan.network("edge").engine_name] == (True, False)

    result = engine.up()
    assert any("ccoas keeps a jump of its own" in note for note in result.notes), result.notes
    assert not attacker_reaches_nginx(engine)
    assert isolated(engine)


def test_a_bridge_set_up_after_a_docker_api_client_read_it_is_isolated_again_by_up(engine):
    nginx = engine.plan.service("nginx").container_name
    podman(engine, "stop", nginx)  # the edge bridge goes, with its isolation rules
    engine.client.networks.list()  # what `docker network ls` against the socket does
    edge = engine.plan.network("edge").engine_name
    assert held(engine)[edge][0] is False, "this Podman kept isolate after a Docker-API network list: the defect is gone"
    assert podman(engine, "start", nginx).returncode == 0  # a start by anyone but `ccoas up`
    assert held(engine)[edge] == (False, False)
    assert attacker_reaches_nginx(engine), "the attacker did not measure the loss"

    planned = [str(op).split(":")[0] for op in engine.up(dry_run=True).operations]
    assert f"reload network {edge}" in planned and "restart nginx" in planned, (planned, held(engine))
    result = engine.up()
    assert any(note.startswith(f"network {edge}:") for note in result.notes), result.notes
    assert isolated(engine)
    assert not attacker_reaches_nginx(engine)
    assert controls(engine) == 0


# -- other Docker-API clients between two ups ----------------------------------------------------


@pytest.fixture(scope="module")
def other_service(engine):
    """A Podman API service of the engine user that is not ccoas's: what `docker network ls`,
    docker-bench-security or a monitoring agent reach through the well-known socket. Started
    here on a socket of this module's (the host's well-known one serves other tests), stopped
    after by its pid."""
    layout = engine.runtime.layout
    assert layout.socket_path != layout.runtime_dir / "podman" / "podman.sock"  # ccoas's is not the well-known one
    socket = layout.runtime_dir / "podman" / f"{NAME}-other.sock"
    started = subprocess.Popen(
        layout.engine_command("podman", "system", "service", "--time=0", f"unix://{socket}"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not ping(socket):
            assert time.monotonic() < deadline and started.poll() is None, "the other API service did not answer"
            time.sleep(0.3)
        yield docker.DockerClient(base_url=f"unix://{socket}", timeout=60)
    finally:
        os.killpg(started.pid, signal.SIGTERM)
        started.wait(timeout=30)


def list_and_inspect_networks(client) -> None:
    """What docker-bench-security does through the Docker API: list every network, inspect each."""
    for network in client.networks.list():
        try:
            client.networks.get(network.id)
        except docker.errors.NotFound:
            pass  # another stack on this host removed it meanwhile


def restart_count(engine, name: str) -> tuple[int, str]:
    attrs = engine.client.api.inspect_container(name)
    return attrs["RestartCount"], attrs["State"]["StartedAt"]


def test_other_clients_listing_networks_between_restarts_leave_ccoas_isolated(engine, other_service):
    nginx = engine.plan.service("nginx").container_name
    edge = engine.plan.network("edge").engine_name
    engine.up()
    assert isolated(engine), "not isolated before the other client came: what follows would measure nothing"
    for _ in range(3):  # another stack's network change makes a service read its files again
        list_and_inspect_networks(other_service)
        held_there = other_service.api.get(other_service.api.base_url + "/v4.0.0/libpod/networks/json").json()
        if not (next(n for n in held_there if n["name"] == edge).get("options") or {}).get("isolate"):
            break
    else:
        pytest.skip("the other service kept (or read again) isolate after every Docker-API list: nothing measured")

    engine.client.containers.get(nginx).restart(timeout=15)  # a restart through ccoas's service
    assert held(engine)[edge] == (True, True)
    assert not attacker_reaches_nginx(engine)

    list_and_inspect_networks(other_service)
    crash_and_wait_for_restart(engine, nginx)
    assert held(engine)[edge] == (True, True)
    assert not attacker_reaches_nginx(engine)
    planned = [str(op) for op in engine.up(dry_run=True).operations]
    assert not any(op.startswith(("reload network", "restart")) for op in planned), planned


def crash_and_wait_for_restart(engine, nginx: str) -> None:
    """SIGKILL nginx's main process (a crash) and wait until its restart policy brought it back."""
    before = restart_count(engine, nginx)
    os.kill(engine.client.api.inspect_container(nginx)["State"]["Pid"], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while restart_count(engine, nginx) == before or engine.client.api.inspect_container(nginx)["State"]["Status"] != "running":
        assert time.monotonic() < deadline, "nginx was not restarted by its restart policy"
        time.sleep(0.5)


def test_a_crash_restart_is_made_by_a_fresh_podman_that_reads_the_network_files(engine):
    """Even with ccoas's own service corrupted (a Docker-API list through it, on purpose), nginx
    restarted by its restart policy after a crash is isolated: conmon's exit command is a new
    ``podman container cleanup`` process, which reads the network from its file. Only a start
    through the corrupted service runs unisolated
    (``test_a_bridge_set_up_after_a_docker_api_client_read_it_is_isolated_again_by_up``), and
    ``up`` repairs the service's copy.

    The service re-reads its network files whenever their directory changes (any stack on the
    host creating or removing a network): a run where that healed the copy before the restart
    measured nothing, and is made again (up to three times)."""
    nginx = engine.plan.service("nginx").container_name
    edge = engine.plan.network("edge").engine_name
    for _ in range(3):
        engine.up()
        assert isolated(engine), "not isolated before the crash: what follows would measure nothing"
        engine.client.networks.list()  # corrupts ccoas's own service's copy
        if held(engine)[edge][0] is not False:
            continue
        crash_and_wait_for_restart(engine, nginx)
        if held(engine)[edge][0] is False:  # still corrupted after the restart: it was throughout
            break
    else:
        pytest.skip("another stack's network changes kept healing the service's copy: nothing measured")
    assert held(engine)[edge] == (False, True)  # the service's copy lost isolate; the bridge has its rules
    assert not attacker_reaches_nginx(engine)
    engine.up()
    assert isolated(engine)
