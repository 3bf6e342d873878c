"""Upgrades on a real stack: a state written before ccoas recorded its schema converges in one
`up`, which says what it migrated; a state written by a newer ccoas is refused untouched.

The state "written by the earlier code" is made here by removing the marker of a running
stack's state, which is exactly what every ccoas before the marker left (its render, step
record and Vault material, no ``ccoas-state.json``). tests/e2e/test_identity_migration.py
makes a state with the earlier code itself (revision 402cedd) and converges it the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from ccoas.engine.local import LocalEngine
from ccoas.migrations import MIGRATIONS, STATE_FILE, STATE_SCHEMA_VERSION
from ccoas.planner import build_plan, load_stack
from healthy_stack import healthy_stack  # tests/e2e is on sys.path (rootdir imports)

pytestmark = pytest.mark.e2e

NAME = f"e2e-h15b-upg-{uuid.uuid4().hex[:4]}"


@pytest.fixture(scope="module")
def stack(module_stack):
    path = module_stack(NAME, "vault", "postgres")
    with healthy_stack(build_plan(load_stack(path), name=NAME), ("vault", "postgres")) as engine:
        yield path, engine


def _ccoas(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ccoas.cli", *args], capture_output=True, text=True, timeout=900, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "400"})


def _container_ids(engine: LocalEngine) -> dict[str, str]:
    return {c.name: c.id for c in engine.client.containers.list(all=True, filters={"label": f"io.ccoas.stack={NAME}"})}


def _steps(engine: LocalEngine) -> dict[str, str]:
    return json.loads((engine.paths.state / "steps.json").read_text())


def test_up_records_the_state_schema(stack):
    _, engine = stack
    marker = json.loads((engine.paths.state / STATE_FILE).read_text())
    assert marker["state_schema_version"] == STATE_SCHEMA_VERSION


def test_one_up_converges_a_state_written_before_the_marker(stack):
    path, engine = stack
    (engine.paths.state / STATE_FILE).unlink()
    ids = _container_ids(engine)
    bootstrap_before = _steps(engine)["hook:postgres:0"]

    described = _ccoas("plan", str(path), "--name", NAME)
    assert "state schema 1 (no marker" in described.stdout and "directus-tables-leave-public" in described.stdout, described.stdout

    upgraded = _ccoas("up", str(path), "--name", NAME)
    assert upgraded.returncode == 0, upgraded.stdout[-3000:] + upgraded.stderr[-3000:]
    for migration in MIGRATIONS:  # each one, in order, named with the schema it brings
        assert f"state of {NAME} migrated to schema {migration.to_version}, {migration.name}" in upgraded.stdout, upgraded.stdout
    assert json.loads((engine.paths.state / STATE_FILE).read_text())["state_schema_version"] == STATE_SCHEMA_VERSION
    assert _container_ids(engine) == ids  # nothing replaced: the state changed, the containers did not
    assert _steps(engine)["hook:postgres:0"] == bootstrap_before  # the bootstrap ran again and was recorded
    assert all(r.health == "healthy" for r in engine.status())

    again = _ccoas("up", str(path), "--name", NAME)
    assert again.returncode == 0 and "0 changes" in again.stdout and "migrated" not in again.stdout, again.stdout

    status = _ccoas("status", str(path), "--name", NAME)
    assert status.returncode == 0 and f"state: state schema {STATE_SCHEMA_VERSION}" in status.stderr, status.stderr


def test_a_state_written_by_a_newer_ccoas_is_refused_and_left_as_it_is(stack):
    path, engine = stack
    marker = engine.paths.state / STATE_FILE
    marker.write_text(json.dumps({"ccoas_version": "99.0.0", "plan_schema_version": 1, "state_schema_version": STATE_SCHEMA_VERSION + 1}))
    before = {p: p.read_bytes() for p in engine.paths.state.rglob("*") if p.is_file()}
    ids = _container_ids(engine)
    try:
        for args in (("up",), ("up", "--dry-run")):
            refused = _ccoas(*args, str(path), "--name", NAME)
            assert refused.returncode == 2, refused.stdout + refused.stderr
            assert "written by ccoas 99.0.0" in refused.stderr and "nothing was changed" in refused.stderr, refused.stderr
        assert {p: p.read_bytes() for p in engine.paths.state.rglob("*") if p.is_file()} == before
        assert _container_ids(engine) == ids
    finally:
        marker.unlink()  # the module's teardown (down --purge) is this ccoas's
