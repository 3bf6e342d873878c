"""Container logs are capped, measured on disk.

A one-service stack (Vault) with a 128 KiB log cap: its container's stdout receives 4 MB, far
more than the cap, and the log file the engine keeps for it (its ``LogPath``) never grows past
the cap; the engine keeps logging after emptying the file (the last line written is still read).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml

from ccoas.engine.local import LocalEngine
from ccoas.planner import build_plan, load_stack
from ccoas.stack import parse_size

pytestmark = pytest.mark.e2e

NAME = f"e2e-h11b-logs-{uuid.uuid4().hex[:4]}"
CAP = "128Ki"
FLOOD_BYTES = 4_000_000
MARKER = f"ccoas-log-cap-marker-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def stack(module_stack) -> Path:
    path = module_stack(NAME, "vault")
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "logs": {"max_size": CAP}}, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def engine(stack):
    engine = LocalEngine.connect(build_plan(load_stack(stack), name=NAME))
    try:
        engine.up()
        yield engine
    finally:
        engine.down(purge=True)


def test_the_plan_carries_the_stacks_cap(engine):
    assert engine.plan.service("vault").logs.max_size_bytes == parse_size(CAP) == 131072


def test_a_container_writing_far_more_than_its_cap_keeps_its_log_file_under_it(engine):
    service = engine.plan.service("vault")
    container = engine.client.containers.get(service.container_name)
    log_path = container.attrs["LogPath"]
    assert log_path, container.attrs

    # Through the container's own stdout (its PID 1's), as a chatty service would write.
    flood = f"head -c {FLOOD_BYTES} /dev/zero | tr '\\0' x | fold -w 199 > /proc/1/fd/1; echo {MARKER} > /proc/1/fd/1"
    code, output = engine.runtime.exec(service, ["sh", "-c", flood], container)
    assert code == 0, output

    size = Path(log_path).stat().st_size
    assert 0 < size <= service.logs.max_size_bytes, f"{log_path}: {size} bytes, cap {service.logs.max_size_bytes}"
    assert MARKER in container.logs(tail=5).decode(errors="replace")
    if engine.is_podman:  # what the engine applied (the compat inspect shows no log options)
        applied = engine.client.api.get(engine.runtime.libpod_url(f"/containers/{container.id}/json")).json()
        assert applied["HostConfig"]["LogConfig"]["Size"] == "131.1kB", applied["HostConfig"]["LogConfig"]


def test_the_check_control_holds_and_fails_on_a_container_without_a_cap(engine, stack):
    """``ccoas check``'s log control: it holds on the stack, then a container recreated with the
    same settings but no log cap fails it. (Last in the module: it leaves that container.)"""
    from ccoas.compliance import run_checks
    from ccoas.engine.docker_api import container_create_body

    assert run_checks(stack, NAME, extra=["-k", "log_file_is_capped"]) == 0

    service = engine.plan.service("vault")
    engine.client.containers.get(service.container_name).remove(force=True)
    body = container_create_body(engine.plan, service, engine.paths)
    del body["HostConfig"]["LogConfig"]
    created = engine.client.api.create_container_from_config(body, name=service.container_name)
    engine.client.containers.get(created["Id"]).start()

    assert run_checks(stack, NAME, extra=["-k", "log_file_is_capped"]) == 1
