"""What people read: tables fit a terminal, and stay whole (no ellipsis, no folding) anywhere
else, so a log of `make up` or of CI keeps every endpoint, image and path."""

from __future__ import annotations

import io

from rich.console import Console

import ccoas.cli
from ccoas.cli import app
from ccoas.engine.local import ServiceStatus
from ccoas.planner import build_plan, load_stack
from ccoas.report import plan_tables, print_table, status_table
from tests.conftest import STACKS_DIR

ENDPOINTS = ("https://127.0.0.1:8443->443", "http://127.0.0.1:8080->80")
ROWS = [
    ServiceStatus("nginx", "ccoas-a-rather-long-stack-name-nginx", "running", "healthy", ENDPOINTS),
    ServiceStatus("postgres", "ccoas-a-rather-long-stack-name-postgres", "running", "healthy"),
]


def _printed(table, terminal: bool, width: int = 40) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=terminal, color_system=None)
    assert console.is_terminal is terminal
    print_table(console, table)
    return buffer.getvalue()


def test_a_narrow_log_keeps_every_value_of_the_status_table_whole():
    text = _printed(status_table(ROWS), terminal=False)

    assert "…" not in text
    for row in ROWS:
        assert row.container in text
    assert ", ".join(ENDPOINTS) in text  # on one line, not folded


def test_a_narrow_terminal_still_gets_a_table_that_fits():
    text = _printed(status_table(ROWS), terminal=True)

    assert max(len(line) for line in text.splitlines()) <= 40
    assert ", ".join(ENDPOINTS) not in text  # cut or folded to fit: only a log keeps it whole


def test_every_plan_table_of_prod_is_whole_in_a_narrow_log():
    plan = build_plan(load_stack(STACKS_DIR / "prod.yaml"))
    text = "".join(_printed(table, terminal=False, width=20) for table in plan_tables(plan))

    assert "…" not in text
    for service in plan.services:
        assert f"{service.image.ref} ({service.image.source})" in text
        assert ", ".join(sorted(service.networks)) in text


def test_the_cli_prints_whole_tables_when_stdout_is_not_a_terminal(runner, monkeypatch):
    """The CLI's own console (what `make up` writes into its log), made narrow."""
    monkeypatch.setattr(ccoas.cli, "out", Console(width=30, color_system=None))
    plan = build_plan(load_stack(STACKS_DIR / "prod.yaml"))

    result = runner.invoke(app, ["plan", str(STACKS_DIR / "prod.yaml")])

    assert result.exit_code == 0, result.output
    assert "…" not in result.stdout
    for service in plan.services:
        assert f"{service.image.ref} ({service.image.source})" in result.stdout
