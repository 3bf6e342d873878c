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


def test_tls_trust_on_a_stack_with_a_supplied_certificate_says_so_before_touching_the_engine(runner, monkeypatch):
    def no_engine(*args, **kwargs):
        raise AssertionError("the engine was reached")

    monkeypatch.setattr(ccoas.cli, "_engine", no_engine)

    result = runner.invoke(app, ["tls", "trust", str(STACKS_DIR / "prod.yaml")])

    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert "has no stack CA: its certificate is supplied (tls.mode: supplied)" in result.stderr
    assert "Traceback" not in result.output


def test_tls_trust_prints_the_pem_alone_on_stdout_and_how_to_trust_it_on_stderr(runner, monkeypatch):
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    store = type("Store", (), {"ca_certificate": lambda self: pem})()
    monkeypatch.setattr(ccoas.cli, "_engine", lambda plan, progress=None: type("E", (), {"secrets": lambda self: store})())

    result = runner.invoke(app, ["tls", "trust", str(STACKS_DIR / "dev.yaml"), "--name", "pr-7"])

    assert result.exit_code == 0, result.output
    assert result.stdout == pem  # `ccoas tls trust > ca.pem` saves exactly the certificate
    assert "curl --cacert pr-7-ca.pem https://localhost:8443/" in result.stderr
    assert "Authorities > Import pr-7-ca.pem" in result.stderr
