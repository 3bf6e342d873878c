"""Network isolation between stacks, tried as a neighbouring stack would try it.

A stack with a routed network (``edge``, where Nginx listens) and a neighbour: a container on
another network with Podman's ``isolate`` option, as every ccoas stack's networks have. The
neighbour connects to Nginx's address on ``edge``; isolation means it gets nowhere.

Podman 4.3's Docker-API network list and inspect delete ``isolate`` from the service's
in-memory copy of the networks (the file on disk keeps it); a container the service starts
afterwards runs unisolated. This module does what a Docker client pointed at the socket does
(``docker network ls``), restarts Nginx the way the engine's restart policy would, measures the
neighbour reaching it, and then proves that one ``ccoas up`` restores isolation (the networks
read again from their files, Nginx restarted), that ``ccoas check``'s isolation controls fail
before and pass after, and that ccoas's own commands never cause the loss.
"""

from __future__ import annotations

import subprocess
import uuid

import pytest

from ccoas.engine.local import LocalEngine
from ccoas.plan import LABEL_PREFIX
from ccoas.planner import build_plan, load_stack

pytestmark = pytest.mark.e2e

NAME = f"e2e-iso-{uuid.uuid4().hex[:4]}"
CONTROLS = "test_network_is_as_planned_and_held_isolated or test_another_isolated_network_cannot_reach_the_stack"


@pytest.fixture(scope="module")
def engine(module_stack):
    path = module_stack(NAME, "vault", "nginx")
    engine = LocalEngine.connect(build_plan(load_stack(path), name=NAME))
    engine.stack_path = path  # type: ignore[attr-defined]
    try:
        engine.up()
        yield engine
    finally:
        engine.down(purge=True)


def podman(engine, *args: str) -> subprocess.CompletedProcess:
    command = engine.runtime.layout.engine_command("podman", "--remote", *args)
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def neighbour_reaches_nginx(engine) -> bool:
    """A fresh isolated network of another owner, a probe container on it, one TCP connect to
    Nginx's HTTPS port at its ``edge`` address."""
    nginx = engine.plan.service("nginx")
    container = engine.client.containers.get(nginx.container_name)
    address = container.attrs["NetworkSettings"]["Networks"][engine.plan.network("edge").engine_name]["IPAddress"]
    port = max(nginx.expose)  # its HTTPS port
    neighbour = f"{NAME}-neighbour"
    assert podman(engine, "network", "create", "--opt", "isolate=true", neighbour).returncode == 0
    try:
        probe = podman(
            engine, "run", "--rm", "--pull", "never", "--network", neighbour, "--entrypoint", "bash", nginx.image.ref,
            "-c", f"timeout 3 bash -c 'exec 3<>/dev/tcp/{address}/{port}'",
        )
        return probe.returncode == 0
    finally:
        podman(engine, "network", "rm", "-f", neighbour)


def held(engine) -> dict[str, tuple[bool, bool]]:
    return {n.name: (n.isolate, n.enforced) for n in engine.runtime.networks(f"{LABEL_PREFIX}.stack={NAME}")}


def controls(engine) -> int:
    from ccoas.compliance import run_checks

    return run_checks(engine.stack_path, NAME, extra=["-k", CONTROLS])


def test_a_fresh_stack_is_isolated_and_its_controls_pass(engine):
    assert all(h == (True, True) for h in held(engine).values()), held(engine)
    assert not neighbour_reaches_nginx(engine)
    assert controls(engine) == 0


def test_ccoas_own_commands_keep_isolation(engine):
    engine.status()
    engine.plan_operations()
    assert engine.up().changes == 0
    assert all(isolate for isolate, _ in held(engine).values()), held(engine)


def test_a_docker_api_client_unisolates_and_one_up_restores_it(engine):
    engine.client.networks.list()  # what `docker network ls` against the socket does
    edge = engine.plan.network("edge").engine_name
    assert held(engine)[edge][0] is False, "this Podman kept isolate after a Docker-API network list: the bug is gone"
    engine.client.api.post(engine.runtime.libpod_url(f"/containers/{engine.plan.service('nginx').container_name}/restart"))
    assert held(engine)[edge] == (False, False)
    assert neighbour_reaches_nginx(engine), "the probe did not measure the loss"
    # the probe's own network made the service read every file again: held again, still not enforced
    assert held(engine)[edge] == (True, False)
    assert controls(engine) != 0

    planned = [str(op) for op in engine.up(dry_run=True).operations]
    assert "restart nginx: network edge started without isolation" in planned, planned
    result = engine.up()
    assert all(h == (True, True) for h in held(engine).values()), held(engine)
    assert not neighbour_reaches_nginx(engine)
    assert controls(engine) == 0
    assert not [n for n in result.notes if "without the isolation" in n]
