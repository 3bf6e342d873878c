"""`up --dry-run` says exactly what `up` then does: nothing on a converged stack, and after a
template change the services to recreate — which `up` recreates, and nothing else."""

from __future__ import annotations

import shutil

import pytest

import ccoas.plan
from ccoas.cli import app
from ccoas.engine.local import LocalEngine
from ccoas.planner import load_plan

pytestmark = pytest.mark.e2e

NAME = "e2e-h10-dry"


def test_dry_run_then_up_after_a_template_change(small_stack, runner, tmp_path, monkeypatch):
    stack = small_stack("dry", "vault", "postgres", "redis")
    engine = LocalEngine.connect(load_plan(stack, name=NAME))
    try:
        engine.up()
        converged = runner.invoke(app, ["up", str(stack), "--name", NAME, "--dry-run"])
        assert converged.exit_code == 0, converged.output
        assert converged.stdout.strip().splitlines() == ["0 operations"]
        assert engine.up().changes == 0

        before = {c.name: c.id for c in engine.client.containers.list(all=True, filters={"label": f"io.ccoas.stack={NAME}"})}
        templates = tmp_path / "templates"
        shutil.copytree(ccoas.plan.TEMPLATES_DIR, templates)
        conf = templates / "redis" / "redis.conf.j2"
        conf.write_text(conf.read_text() + "# changed by the dry-run test\n")
        monkeypatch.setattr(ccoas.plan, "TEMPLATES_DIR", templates)

        changed = runner.invoke(app, ["up", str(stack), "--name", NAME, "--dry-run"])
        assert changed.exit_code == 0, changed.output
        assert changed.stdout.strip().splitlines() == ["recreate redis: config changed", "1 operations"]

        result = engine.up()
        assert [str(op) for op in result.operations] == ["recreate redis: config changed"]
        after = {c.name: c.id for c in engine.client.containers.list(all=True, filters={"label": f"io.ccoas.stack={NAME}"})}
        assert {name for name in before if after.get(name) != before[name]} == {f"{NAME}-redis"}
        assert engine.up().changes == 0
    finally:
        engine.down(purge=True)
