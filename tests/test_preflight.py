"""The preflight's rules on a faked host: each failure is one line naming what is missing and its
fix; `up` stops on them with exit code 2 before it touches the engine. Also: progress lines
in a log, and `status` exit codes."""

from __future__ import annotations

import io
import json
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

import ccoas.cli
import ccoas.host
import ccoas.preflight as preflight
from ccoas.cli import app
from ccoas.engine.local import ServiceStatus
from ccoas.host import HostLayout
from ccoas.planner import build_plan, load_stack
from ccoas.report import ProgressReporter
from ccoas.requirements import ENGINE_PATH, RUNTIME_BINARIES

REPO = Path(__file__).resolve().parent.parent
PROD = REPO / "stacks" / "prod.yaml"
DEV = REPO / "stacks" / "dev.yaml"


def test_a_binary_hidden_from_the_engine_is_one_line_naming_it_and_the_fix(tmp_path, monkeypatch):
    """The engine's PATH without iptables (as on a Debian 12 host whose podman came without it)."""
    hidden = tmp_path / "bin"
    hidden.mkdir()
    for binary in RUNTIME_BINARIES:
        found = binary.locate(ENGINE_PATH)
        if found is not None and not binary.helper and binary.package != "iptables":
            (hidden / binary.name).symlink_to(found)
    monkeypatch.setattr(ccoas.host, "ENGINE_PATH", str(hidden))

    failures = preflight.runtime_binaries_on_path(HostLayout(engine_user="root"))

    assert failures == [
        "iptables, ip6tables (run by netavark; Debian package iptables) are not on the engine's PATH: run `ccoas host prepare`"
    ]


def test_every_runtime_binary_is_found_on_a_prepared_host():
    assert preflight.runtime_binaries_on_path(HostLayout(engine_user="root")) == []


def test_ports_below_the_unprivileged_start_need_host_preparation_for_that_stack():
    prod = build_plan(load_stack(PROD))

    failures = preflight.privileged_ports(prod, "stacks/prod.yaml", port_start=1024)

    assert len(failures) == 2
    assert all(f.endswith("run `ccoas host prepare stacks/prod.yaml`, which lowers it for this stack") for f in failures)
    assert "0.0.0.0:80, below net.ipv4.ip_unprivileged_port_start=1024" in failures[1]
    assert preflight.privileged_ports(prod, "stacks/prod.yaml", port_start=80) == []
    assert preflight.lowest_published_port(prod) == 80
    assert preflight.lowest_published_port(build_plan(load_stack(DEV))) is None


class Published:
    """A running container as the Docker SDK lists it: its name and port bindings."""

    def __init__(self, name: str, port: int, stack: str):
        self.name, self.stack = name, stack
        self.attrs = {"NetworkSettings": {"Ports": {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}}}


class Containers:
    def __init__(self, running: list[Published]):
        self.running = running

    def list(self, filters):
        labels = filters.get("label", [])
        return [c for c in self.running if not labels or labels[0].endswith(f".stack={c.stack}")]


@pytest.fixture
def taken_port():
    """A port some process listens on, on 127.0.0.1."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def _plan_publishing(port: int, name: str = "mine"):
    port_row = SimpleNamespace(host_ip="127.0.0.1", host_port=port, protocol="tcp")
    return SimpleNamespace(stack=name, published=lambda: [("nginx", port_row)])


def test_a_port_held_by_another_process_is_named(taken_port):
    failures = preflight.ports_free(_plan_publishing(taken_port), SimpleNamespace(containers=Containers([])))

    assert failures == [
        f"nginx: port 127.0.0.1:{taken_port} is already in use by another process "
        f"(`ss -ltnp 'sport = :{taken_port}'` shows which): stop it, or publish another port in the stack file"
    ]


def test_a_port_held_by_another_stack_names_its_container(taken_port):
    client = SimpleNamespace(containers=Containers([Published("dev-nginx", taken_port, "dev")]))

    failures = preflight.ports_free(_plan_publishing(taken_port, "other"), client)

    assert len(failures) == 1 and f"127.0.0.1:{taken_port} is already in use by container dev-nginx" in failures[0]


def test_the_stacks_own_running_containers_are_excepted(taken_port):
    client = SimpleNamespace(containers=Containers([Published("dev-nginx", taken_port, "dev")]))

    assert preflight.ports_free(_plan_publishing(taken_port, "dev"), client) == []


def test_up_stops_on_a_failed_preflight_before_touching_the_engine(runner, monkeypatch):
    monkeypatch.setattr(preflight, "check_host", lambda plan, layout, stack=None: ["iptables is missing: run `ccoas host prepare`"])
    monkeypatch.setattr(ccoas.cli, "_engine", lambda *a, **k: pytest.fail("the engine was contacted"))

    result = runner.invoke(app, ["up", str(DEV)])

    assert result.exit_code == 2, result.output
    assert result.stderr == "preflight: iptables is missing: run `ccoas host prepare`\n"


def test_a_log_gets_a_line_per_step_and_a_heartbeat_while_a_step_runs():
    log = io.StringIO()
    with ProgressReporter(Console(file=log, force_terminal=False, width=200), heartbeat_s=0.3) as progress:
        progress.step("directus: fetching directus@12.4.0 (npm)")
        time.sleep(1.2)
        progress.done("directus ready")
    lines = log.getvalue().splitlines()

    assert lines[0].endswith("] directus: fetching directus@12.4.0 (npm)")
    beats = [line for line in lines if "… still directus: fetching directus@12.4.0 (npm) (" in line]
    assert len(beats) >= 2
    assert lines[-1].split("] ", 1)[1].startswith("✓ directus ready (1.")


def _status(monkeypatch, rows):
    engine = SimpleNamespace(status=lambda: rows, host_notes=lambda: [])
    monkeypatch.setattr(ccoas.cli, "_engine", lambda plan, progress=None: engine)


def test_status_exits_3_when_a_service_is_not_running_and_healthy(runner, monkeypatch):
    _status(monkeypatch, [ServiceStatus("postgres", "dev-postgres", "running", "healthy"), ServiceStatus("redis", "dev-redis", "exited", "-")])

    result = runner.invoke(app, ["status", str(DEV), "--json"])

    assert result.exit_code == 3, result.output
    assert "not running and healthy: redis" in result.stderr


def test_status_exits_0_when_every_service_is_running_and_healthy(runner, monkeypatch):
    _status(monkeypatch, [ServiceStatus("postgres", "dev-postgres", "running", "healthy")])

    assert runner.invoke(app, ["status", str(DEV)]).exit_code == 0


@pytest.mark.parametrize("systemd", [False, True])
def test_every_command_clears_a_dead_engine_session_where_logind_does_not(systemd, monkeypatch, tmp_path):
    """`status` and `check` need a working engine as much as `up`: without systemd, whatever
    connects clears a dead session first (the function itself refuses while a process lives)."""
    cleared, answers = [], iter([False, True])
    monkeypatch.setattr(ccoas.host, "_clear_stale_session", lambda layout: cleared.append(layout))
    monkeypatch.setattr(ccoas.host, "ping", lambda path, timeout=2.0: next(answers, True))
    monkeypatch.setattr(ccoas.host, "systemd_running", lambda: systemd)
    monkeypatch.setattr(ccoas.host, "_ensure_runtime_dir", lambda layout: None)
    monkeypatch.setattr(ccoas.host.subprocess, "Popen", lambda *a, **k: None)
    monkeypatch.setattr(ccoas.host.subprocess, "run", lambda *a, **k: SimpleNamespace(returncode=0, stderr=""))
    layout = HostLayout(engine_user="root", state_root=tmp_path)

    ccoas.host.ensure_api_service(layout)

    assert cleared == ([] if systemd else [layout])


def test_version(runner):
    from ccoas import __version__

    result = runner.invoke(app, ["--version"])

    assert result.exit_code == 0 and result.stdout == f"ccoas {__version__}\n"


def test_up_says_where_to_log_in_without_a_value():
    from ccoas.report import login_hints

    plan = build_plan(load_stack(DEV))
    rows = [ServiceStatus("nginx", "dev-nginx", "running", "healthy", ("https://127.0.0.1:8443", "http://127.0.0.1:8080"))]

    hints = login_hints(plan, rows, DEV, "pr-42")

    assert hints == [
        "open https://localhost:8443/",
        "Directus admin app: https://localhost:8443/directus/  admin e-mail admin@example.com; "
        f"password: `ccoas secrets get directus/admin_password {DEV} --name pr-42`",
        "only the administrator role may use the admin app: users of the app-user role have no app access "
        '(Directus shows them "No App Access"); they use the API, e.g. POST /directus/auth/login',
        f"TLS: the stack CA signs the certificate; `ccoas tls trust {DEV} --name pr-42` prints it and how to trust it",
    ]


def test_secrets_list_in_a_log_keeps_names_and_paths_whole(runner, monkeypatch):
    from ccoas.secrets import SecretInfo

    long_path = "secret/data/" + "a-very-long-stack-name-" * 4 + "/directus/admin_password"
    rows = [SecretInfo("directus/admin_password", long_path, 3, ("directus",))]
    engine = SimpleNamespace(secrets=lambda: SimpleNamespace(list=lambda: rows))
    monkeypatch.setattr(ccoas.cli, "_engine", lambda plan, progress=None: engine)
    monkeypatch.setattr(ccoas.cli, "out", Console(width=80, force_terminal=False))

    table = runner.invoke(app, ["secrets", "list", str(DEV)])
    as_json = runner.invoke(app, ["secrets", "list", str(DEV), "--json"])

    assert table.exit_code == 0, table.output
    assert any("directus/admin_password" in line and long_path in line for line in table.stdout.splitlines())
    assert json.loads(as_json.stdout) == [{"name": "directus/admin_password", "path": long_path, "version": 3, "readers": ["directus"]}]


def test_up_reports_every_engine_step_to_the_progress_log(runner, monkeypatch):
    """The reporter `up` makes reaches the engine's steps (builds, waits, hooks), not only `up`."""
    seen = {}

    def engine(plan, progress=None):
        seen["progress"] = progress
        raise ccoas.cli.CcoasError("stop here")

    monkeypatch.setattr(preflight, "check_host", lambda plan, layout, stack=None: [])
    monkeypatch.setattr(ccoas.cli, "_engine", engine)

    assert runner.invoke(app, ["up", str(DEV)]).exit_code == 2
    assert isinstance(seen["progress"], ProgressReporter)
