"""The command line: every command has help, `plan` prints the plan, every command is documented.

The command list is read from the typer app itself, so these tests follow the CLI as it grows.
Nothing here starts a container: commands that would are only run with invalid input.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from rich.console import Console

import ccoas.cli
from ccoas.cli import app
from ccoas.planner import build_plan, load_stack

REPO_ROOT = Path(__file__).resolve().parent.parent
STACKS_DIR = REPO_ROOT / "stacks"

# What the README and the design promise; the app must offer at least these.
PROMISED = {
    "plan", "render", "up", "down", "status", "check", "preview",
    "images build", "host prepare", "secrets list", "secrets rotate",
}  # fmt: skip
PROD = STACKS_DIR / "prod.yaml"


def command_tree() -> dict[tuple[str, ...], object]:
    """Every command and group of the app, by path: ``()`` is the app, ``("images", "build")``…"""
    found: dict[tuple[str, ...], object] = {}

    def walk(command: object, path: tuple[str, ...]) -> None:
        found[path] = command
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return found


COMMANDS = command_tree()
LEAVES = sorted(path for path, command in COMMANDS.items() if not hasattr(command, "commands"))
# Commands that take a STACK argument (and so must reject a bad one with exit code 2).
STACK_COMMANDS = sorted(
    path for path in LEAVES if any(getattr(p, "name", None) == "stack" for p in getattr(COMMANDS[path], "params", []))
)


def cli_id(path: tuple[str, ...]) -> str:
    return " ".join(path) or "ccoas"


# --- help --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=cli_id)
def test_help_exits_0(path, runner):
    result = runner.invoke(app, [*path, "--help"])

    assert result.exit_code == 0, result.output
    assert "Usage" in result.stdout
    assert "Traceback" not in result.output


@pytest.mark.parametrize("path", LEAVES, ids=cli_id)
def test_every_command_says_what_it_does(path):
    command = COMMANDS[path]
    assert (getattr(command, "help", None) or "").strip(), f"`ccoas {cli_id(path)}` has no help text"


def test_the_promised_commands_exist():
    assert PROMISED <= {cli_id(path) for path in LEAVES}
    assert {("check",), ("plan",), ("up",), ("down",)} <= set(STACK_COMMANDS)


def test_no_arguments_shows_usage(runner):
    result = runner.invoke(app, [])

    assert "Usage" in result.output
    assert "Traceback" not in result.output


# --- plan --------------------------------------------------------------------------------------


def test_plan_json_is_the_plan(runner):
    result = runner.invoke(app, ["plan", str(PROD), "--json"])

    assert result.exit_code == 0, result.output
    assert result.stdout == build_plan(load_stack(PROD)).to_json()
    assert json.loads(result.stdout)["schema_version"] == 1


def test_plan_json_with_a_name(runner):
    result = runner.invoke(app, ["plan", str(PROD), "--name", "pr-42", "--json"])

    assert result.exit_code == 0, result.output
    assert result.stdout == build_plan(load_stack(PROD), name="pr-42").to_json()
    assert json.loads(result.stdout)["stack"] == "pr-42"


def test_plan_defaults_to_the_dev_stack(runner, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)

    result = runner.invoke(app, ["plan", "--json"])

    assert result.exit_code == 0, result.output
    assert result.stdout == build_plan(load_stack(STACKS_DIR / "dev.yaml")).to_json()


def services_section(stdout: str) -> str:
    """The services table: from its title to the next table's title."""
    start = stdout.index("services, in start order")
    end = stdout.index("security settings", start)
    return stdout[start:end]


@pytest.mark.parametrize("width", [200, 80])
def test_plan_table_names_every_service(runner, monkeypatch, width):
    monkeypatch.setattr(ccoas.cli, "out", Console(width=width, color_system=None))

    result = runner.invoke(app, ["plan", str(PROD)])

    assert result.exit_code == 0, result.output
    table = services_section(result.stdout)
    for service in build_plan(load_stack(PROD)).services:
        assert f" {service.name} " in table, service.name


# `check` hands the stack to a nested pytest: it is run as a subprocess below.
@pytest.mark.parametrize("path", [p for p in STACK_COMMANDS if p != ("check",)], ids=cli_id)
def test_a_bad_stack_is_rejected_before_anything_runs(path, runner, write_stack, tmp_path):
    file = write_stack(tmp_path, {"version": 1, "name": "bad", "environment": "dev", "tls": {"mode": "generate"}, "colour": 1})
    before = {
        ("secrets", "rotate"): ["postgres"],
        ("secrets", "get"): ["directus/admin_password"],
        ("secrets", "set"): ["monitoring/webhook_url"],
        ("metrics",): ["up"],
        ("query",): ["documents", "text"],
        ("restore",): [str(tmp_path / "bundle.ccoas")],
    }.get(path, [])
    after = ["--out", str(tmp_path / "out")] if path in {("backup",), ("diagnose",), ("images", "save")} else []

    result = runner.invoke(app, [*path, *before, str(file), *after])

    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert f"error: {file}: colour: unknown key" in result.stderr


def test_check_rejects_a_bad_stack_before_running_controls(write_stack, tmp_path):
    file = write_stack(tmp_path, {"version": 1, "name": "bad", "environment": "dev", "tls": {"mode": "generate"}, "colour": 1})

    result = subprocess.run(
        [sys.executable, "-c", "from ccoas.cli import app; app()", "check", str(file)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "NO_COLOR": "1", "CCOAS_STATE_DIR": str(tmp_path / "state"), "CCOAS_CACHE_DIR": str(tmp_path / "cache")},
        timeout=120,
    )

    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {file}: colour: unknown key")
    assert "StackError" not in result.stdout + result.stderr


@pytest.mark.parametrize("command", ["up", "down", "status", "preview"])
def test_engine_is_a_choice_checked_before_anything_runs(runner, command):
    result = runner.invoke(app, [command, str(PROD), "--engine", "nomad"])

    assert result.exit_code == 2, result.output
    assert "--engine" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("name", ["../../Etc", "UPPER", "has space", "a" * 40, "-pr", "pr-"])
def test_a_bad_name_is_rejected(name, runner):
    result = runner.invoke(app, ["plan", str(PROD), "--name", name, "--json"])

    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "--name" in result.stderr or "name" in result.stderr


# --- documentation -----------------------------------------------------------------------------

README = REPO_ROOT / "README.md"


@pytest.mark.parametrize("path", LEAVES, ids=cli_id)
def test_every_command_is_documented_in_the_readme(path):
    """Like sqlite-utils' test_docs: a command nobody can read about does not exist."""
    assert f"ccoas {cli_id(path)}" in README.read_text(encoding="utf-8")


def test_a_name_with_a_trailing_newline_is_rejected(runner):
    result = runner.invoke(app, ["plan", str(PROD), "--name", "pr-42\n", "--json"])

    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "command", [["up", "--engine", "pulumi"], ["preview"], ["down", "--engine", "pulumi"], ["status", "--engine", "pulumi"]]
)
def test_pulumi_engine_without_the_cli_exits_2_with_what_to_install(runner, monkeypatch, command):
    from ccoas import pulumi_engine

    monkeypatch.setattr(pulumi_engine.shutil, "which", lambda name: None)
    result = runner.invoke(app, [command[0], str(PROD), *command[1:]])

    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "pulumi.com" in result.stderr and "--engine local" in result.stderr


@pytest.mark.parametrize("command", [["up", "--dry-run"], ["preview", "--engine", "local"]])
def test_dry_run_prints_one_operation_a_line_then_the_count(runner, monkeypatch, command):
    from types import SimpleNamespace

    from ccoas.engine.diff import Operation

    operations = [Operation("recreate", "container", "postgres", "image changed"), Operation("create", "network", "prod-db", "missing")]
    fake = SimpleNamespace(up=lambda dry_run=False, **_: SimpleNamespace(operations=operations if dry_run else None))
    monkeypatch.setattr(ccoas.cli, "_engine", lambda plan, progress=None: fake)
    result = runner.invoke(app, [command[0], str(PROD), *command[1:]])

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["recreate postgres: image changed", "create network prod-db: missing", "2 operations"]
