"""Graceful stops, measured: ``down`` stops each container with its own signal before removing it.

A small stack (Vault, Postgres) goes down and up again: Postgres starts from a cleanly shut
down cluster (no WAL recovery). A container that ignores its stop signal is killed only
after its timeout, and the outcome says so. (A Redis key written just before ``down`` and
read after ``up`` is in test_backup_restore.py, on the ci stack, where Redis has a client.)
"""

from __future__ import annotations

import time
import uuid

import pytest

from ccoas.engine.stop import stop
from ccoas.plan import Stop
from ccoas.planner import build_plan, load_stack
from healthy_stack import healthy_stack  # tests/e2e is on sys.path (rootdir imports)

pytestmark = pytest.mark.e2e

NAME = f"e2e-h15-stop-{uuid.uuid4().hex[:4]}"


@pytest.fixture(scope="module")
def engine(module_stack):
    path = module_stack(NAME, "vault", "postgres")
    with healthy_stack(build_plan(load_stack(path), name=NAME), ("vault", "postgres")) as engine:
        yield engine


def test_down_then_up_postgres_needs_no_recovery(engine):
    summary = engine.down()
    assert "killed" not in summary
    engine.up()
    log = engine.client.containers.get(engine.plan.service("postgres").container_name).logs().decode(errors="replace")
    assert "database system was shut down at" in log, log[-2000:]
    assert "not properly shut down" not in log
    assert "automatic recovery in progress" not in log


def test_a_container_that_ignores_its_signal_is_killed_after_its_timeout_and_reported(engine):
    image = engine.plan.service("postgres").image.ref
    body = {
        "Image": image,
        "User": "999:999",
        "Entrypoint": ["sh", "-c", 'trap "" INT TERM; while true; do sleep 0.2; done'],
        "StopSignal": "SIGINT",
        "HostConfig": {"NetworkMode": "none"},
        "Labels": {"io.ccoas.stack": NAME},
    }
    created = engine.client.api.create_container_from_config(body, name=f"{NAME}-stubborn")
    container = engine.client.containers.get(created["Id"])
    try:
        container.start()
        began = time.monotonic()
        stopped = stop(engine.client, container, Stop(signal="SIGINT", timeout_s=2))
        assert time.monotonic() - began >= 2
        assert stopped.killed
        assert "was killed" in stopped.note()
    finally:
        container.remove(force=True)


def test_a_container_that_honours_its_signal_is_not_killed(engine):
    image = engine.plan.service("postgres").image.ref
    body = {
        "Image": image,
        "User": "999:999",
        "Entrypoint": ["sh", "-c", 'trap "exit 0" INT; while true; do sleep 0.2; done'],
        "StopSignal": "SIGTERM",  # an old container: the plan's signal is sent first
        "HostConfig": {"NetworkMode": "none"},
        "Labels": {"io.ccoas.stack": NAME},
    }
    created = engine.client.api.create_container_from_config(body, name=f"{NAME}-polite")
    container = engine.client.containers.get(created["Id"])
    try:
        container.start()
        began = time.monotonic()
        stopped = stop(engine.client, container, Stop(signal="SIGINT", timeout_s=20))
        assert not stopped.killed
        assert time.monotonic() - began < 10
        assert container.attrs["State"]["ExitCode"] == 0
    finally:
        container.remove(force=True)
