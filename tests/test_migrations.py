"""Upgrades without a host: the state marker, the ordered migrations, refusal of a newer state.

The e2e side (a stack's state written by an earlier ccoas, then one `up`) is
tests/e2e/test_state_upgrade.py and tests/e2e/test_identity_migration.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from ccoas import __version__, migrations
from ccoas.cli import app
from ccoas.engine.local import LocalEngine
from ccoas.errors import EXIT_BAD_INPUT
from ccoas.migrations import FIRST_SCHEMA, MIGRATIONS, STATE_FILE, STATE_SCHEMA_VERSION, Migration, NewerStateError
from ccoas.plan import PLAN_SCHEMA_VERSION
from ccoas.planner import build_plan, load_stack
from ccoas.state import StackPaths, stack_paths

STACKS = Path(__file__).resolve().parent.parent / "stacks"


@pytest.fixture
def paths(tmp_path) -> StackPaths:
    return stack_paths(tmp_path / "state", tmp_path / "run", "demo")


def _snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {p.relative_to(directory).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.rglob("*")) if p.is_file()}


def _old_state(paths: StackPaths, steps: dict[str, str] | None = None) -> None:
    """A state dir as ccoas wrote it before the marker: render/ and a step record, no ccoas-state.json."""
    (paths.render / "postgres").mkdir(parents=True)
    (paths.render / "postgres" / "bootstrap.sql").write_text("-- earlier bootstrap\n")
    (paths.state / "steps.json").write_text(json.dumps(steps or {"hook:postgres:0": "aaaa", "hook:vault:0": "bbbb"}))


def _marker(paths: StackPaths, **values) -> None:
    paths.state.mkdir(parents=True, exist_ok=True)
    (paths.state / STATE_FILE).write_text(json.dumps({"ccoas_version": "9.9.9", "plan_schema_version": PLAN_SCHEMA_VERSION, "state_schema_version": STATE_SCHEMA_VERSION, **values}))


# -- reading the marker -------------------------------------------------------------------------


def test_a_new_stack_has_no_state_and_nothing_to_migrate(paths):
    assert migrations.read(paths.state) is None
    assert migrations.migrate(paths) == []
    marker = json.loads((paths.state / STATE_FILE).read_text())
    assert marker == {"ccoas_version": __version__, "plan_schema_version": PLAN_SCHEMA_VERSION, "state_schema_version": STATE_SCHEMA_VERSION}


def test_a_state_without_a_marker_is_the_first_schema(paths):
    _old_state(paths)
    found = migrations.read(paths.state)
    assert (found.state_schema_version, found.recorded) == (FIRST_SCHEMA, False)
    assert [m.name for m in migrations.pending(found, MIGRATIONS)] == ["directus-tables-leave-public", "state-owned-by-root"]
    assert "up migrates it" in migrations.describe(paths.state)


def test_a_broken_marker_is_named_not_guessed(paths):
    paths.state.mkdir(parents=True)
    (paths.state / STATE_FILE).write_text("{not json")
    with pytest.raises(migrations.CcoasError, match=STATE_FILE):
        migrations.read(paths.state)
    (paths.state / STATE_FILE).write_text('{"state_schema_version": "two"}')
    with pytest.raises(migrations.CcoasError, match="expected state_schema_version"):
        migrations.read(paths.state)


# -- the real migration -------------------------------------------------------------------------


def test_an_old_state_is_migrated_and_says_so(paths):
    _old_state(paths)
    notes = migrations.migrate(paths)
    assert len(notes) == 2 and "directus-tables-leave-public" in notes[0] and "hook:postgres:0" in notes[0]
    assert "state-owned-by-root" in notes[1] and "nothing planted was found" in notes[1]
    steps = json.loads((paths.state / "steps.json").read_text())
    assert steps == {"hook:vault:0": "bbbb"}  # only Postgres's hooks run again
    assert migrations.read(paths.state).state_schema_version == STATE_SCHEMA_VERSION
    assert (paths.render / "postgres" / "bootstrap.sql").read_text() == "-- earlier bootstrap\n"  # render is up's, not the migration's


def test_migrating_twice_changes_nothing_more(paths):
    _old_state(paths)
    migrations.migrate(paths)
    before = _snapshot(paths.state)
    assert migrations.migrate(paths) == []
    assert _snapshot(paths.state) == before  # the marker too: byte-identical and not rewritten


@pytest.mark.parametrize("migration", MIGRATIONS, ids=lambda m: m.name)
def test_every_migration_is_idempotent_and_documented(paths, migration):
    _old_state(paths)
    migration.apply(paths)
    once = _snapshot(paths.state)
    migration.apply(paths)
    assert {k: v[0] for k, v in _snapshot(paths.state).items()} == {k: v[0] for k, v in once.items()}
    assert migration.summary and migration.summary != migration.name  # its docstring says what changed
    assert 1 < migration.to_version <= STATE_SCHEMA_VERSION


def test_the_migrations_are_listed_oldest_first():
    versions = [m.to_version for m in MIGRATIONS]
    assert versions == sorted(versions)
    assert len({m.name for m in MIGRATIONS}) == len(MIGRATIONS)


# -- the machinery, with migrations of the test's own ---------------------------------------------


def _recording(ran: list[str], name: str, fail: bool = False):
    def apply(paths: StackPaths) -> str:
        """A test migration."""
        if fail:
            raise RuntimeError(f"{name} failed")
        ran.append(name)
        return f"{name} done"

    return apply


def test_migrations_run_by_version_then_in_listed_order_from_the_states_version(paths):
    ran: list[str] = []
    listed = (
        Migration(4, "d", _recording(ran, "d")),
        Migration(2, "a", _recording(ran, "a")),
        Migration(3, "b", _recording(ran, "b")),
        Migration(3, "c", _recording(ran, "c")),
        Migration(5, "e", _recording(ran, "e")),
    )
    _old_state(paths)
    _marker(paths, state_schema_version=2)
    notes = migrations.migrate(paths, listed, state_schema=4)
    assert ran == ["b", "c", "d"]  # a (already at 2) and e (beyond this ccoas) are not run
    assert [n.split(", ")[1].split(":")[0] for n in notes] == ["b", "c", "d"]
    assert migrations.read(paths.state).state_schema_version == 4


def test_an_interrupted_upgrade_resumes_after_the_last_version_it_completed(paths):
    ran: list[str] = []
    _old_state(paths)
    failing = (Migration(2, "a", _recording(ran, "a")), Migration(3, "b", _recording(ran, "b", fail=True)))
    with pytest.raises(RuntimeError, match="b failed"):
        migrations.migrate(paths, failing, state_schema=3)
    assert migrations.read(paths.state).state_schema_version == 2
    fixed = (Migration(2, "a", _recording(ran, "a")), Migration(3, "b", _recording(ran, "b")))
    migrations.migrate(paths, fixed, state_schema=3)
    assert ran == ["a", "b"]
    assert migrations.read(paths.state).state_schema_version == 3


# -- a newer state is refused, nothing touched ----------------------------------------------------


@pytest.mark.parametrize("newer", [{"state_schema_version": STATE_SCHEMA_VERSION + 1}, {"plan_schema_version": PLAN_SCHEMA_VERSION + 1}])
def test_a_state_written_by_a_newer_ccoas_is_refused_untouched(paths, newer):
    _old_state(paths)
    _marker(paths, **newer)
    before = _snapshot(paths.state)
    with pytest.raises(NewerStateError) as refused:
        migrations.migrate(paths)
    assert refused.value.exit_code == EXIT_BAD_INPUT
    assert "ccoas 9.9.9" in str(refused.value) and "nothing was changed" in str(refused.value)
    assert _snapshot(paths.state) == before
    assert "NEWER" in migrations.describe(paths.state)


def test_the_local_engines_up_refuses_a_newer_state_before_touching_the_engine(paths):
    """The runtime has no client at all: any engine call before the refusal would fail otherwise."""
    plan = build_plan(load_stack(STACKS / "ci.yaml"), name="demo")
    _marker(paths, state_schema_version=STATE_SCHEMA_VERSION + 1)
    before = _snapshot(paths.state)
    engine = LocalEngine(plan, SimpleNamespace(client=None, layout=None), paths)
    for dry_run in (False, True):
        with pytest.raises(NewerStateError):
            engine.up(dry_run=dry_run)
    assert _snapshot(paths.state) == before


def test_cli_up_refuses_a_newer_state_with_exit_2(tmp_path, monkeypatch):
    monkeypatch.setenv("CCOAS_STATE_DIR", str(tmp_path))
    paths = stack_paths(tmp_path, tmp_path / "run", "demo")
    _marker(paths, state_schema_version=STATE_SCHEMA_VERSION + 1)
    result = CliRunner().invoke(app, ["up", str(STACKS / "ci.yaml"), "--name", "demo"])
    assert result.exit_code == 2, result.output
    assert "written by ccoas 9.9.9" in result.output and "Traceback" not in result.output


def test_plan_shows_the_states_schema(tmp_path, monkeypatch):
    monkeypatch.setenv("CCOAS_STATE_DIR", str(tmp_path))
    runner = CliRunner()
    fresh = runner.invoke(app, ["plan", str(STACKS / "ci.yaml"), "--name", "demo"])
    assert "state on this host: no state on this host yet" in fresh.output
    _old_state(stack_paths(tmp_path, tmp_path / "run", "demo"))
    old = runner.invoke(app, ["plan", str(STACKS / "ci.yaml"), "--name", "demo"])
    assert "state schema 1 (no marker" in old.output and "directus-tables-leave-public" in old.output
