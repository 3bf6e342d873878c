"""The Compose export runs end to end under a real Compose tool: podman-compose (PyPI, the
``test`` extra) on the engine user's rootless Podman, as the engine user.

``ccoas render`` + ``ccoas secrets init`` + ``podman-compose up -d`` on fresh volumes, nothing
of ccoas running: the settle containers run the plan's hooks (the Postgres bootstrap, MinIO's
provisioning), their gates order the dependants, and the stack answers: the RLS bootstrap is in
Postgres, a Directus admin logs in through Nginx. ``podman-compose down -v`` leaves nothing.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from ccoas.host import host_layout

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
NAME = "e2e-h14-compose"
SYSTEM_PYTHON = Path("/usr/bin/python3")
"""The engine user cannot run a venv's interpreter kept under /root (0700): podman-compose (a
single module) and its one dependency outside Debian's python3 (python-dotenv) are copied next
to the render and run with the system's Python 3."""


def ccoas(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ccoas.cli", *args], capture_output=True, text=True, timeout=1800, cwd=REPO)


def tool_dir(work: Path) -> Path:
    target = work / "podman-compose"
    target.mkdir()
    for module in ("podman_compose", "dotenv", "yaml"):
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin, f"{module} is not installed: pip install -e '.[test]'"
        origin = Path(spec.origin)
        if origin.name == "__init__.py":
            shutil.copytree(origin.parent, target / origin.parent.name)
        else:
            shutil.copy(origin, target / origin.name)
    subprocess.run(["chmod", "-R", "a+rX", str(target)], check=True)
    return target


class Compose:
    """podman-compose as the engine user, on the export in ``render``."""

    def __init__(self, work: Path, secrets: Path):
        self.layout = host_layout()
        self.render = work / "render"
        self.tool = tool_dir(work)
        self.secrets = secrets

    def __call__(self, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
        command = self.layout.engine_command(
            "env", f"CCOAS_SECRETS_DIR={self.secrets}", f"PYTHONPATH={self.tool}",
            str(SYSTEM_PYTHON), str(self.tool / "podman_compose.py"), "-f", str(self.render / "compose.yaml"), *args,
        )  # fmt: skip
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=self.render)

    def podman(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(self.layout.engine_command("podman", *args), capture_output=True, text=True, timeout=120)


def leftovers(compose: Compose) -> dict[str, list[str]]:
    label = f"label=io.ccoas.stack={NAME}"
    found = {
        "containers": compose.podman("ps", "-a", "--filter", f"name=^{NAME}-", "--format", "{{.Names}}").stdout.split(),
        "volumes": compose.podman("volume", "ls", "--filter", label, "--format", "{{.Name}}").stdout.split(),
        "networks": compose.podman("network", "ls", "--filter", label, "--format", "{{.Name}}").stdout.split(),
    }
    found["volumes"] += [v for v in compose.podman("volume", "ls", "--format", "{{.Name}}").stdout.split() if v.startswith(f"{NAME}-")]
    return {kind: sorted(set(names)) for kind, names in found.items() if names}


def https(port: int, path: str, host: str, body: dict | None = None) -> tuple[int, dict]:
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"https://127.0.0.1:{port}{path}", data=data, headers={"Host": host, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, {}


@pytest.fixture(scope="module")
def stack():
    if not SYSTEM_PYTHON.exists():
        pytest.fail(f"{SYSTEM_PYTHON} is missing: the engine user runs podman-compose with it")
    work = Path(tempfile.mkdtemp(prefix=f"ccoas-{NAME}-", dir="/var/tmp"))
    work.chmod(0o755)  # the engine user reads the render and mounts the secret files from here
    secrets = work / "secrets"
    compose = Compose(work, secrets)
    built = ccoas("images", "build", "stacks/ci.yaml")  # present already: a cache hit; podman-compose never builds nor pulls
    assert built.returncode == 0, built.stderr
    rendered = ccoas("render", "stacks/ci.yaml", "--name", NAME, "--out", str(compose.render))
    assert rendered.returncode == 0, rendered.stderr
    made = ccoas("secrets", "init", "stacks/ci.yaml", "--name", NAME, "--out", str(secrets))
    assert made.returncode == 0, made.stdout + made.stderr
    assert not leftovers(compose), f"stack {NAME} exists already: {leftovers(compose)}"
    started = time.monotonic()
    up = compose("up", "-d")
    elapsed = time.monotonic() - started
    try:
        yield compose, up, elapsed
    finally:
        compose("down", "-v", timeout=600)
        shutil.rmtree(work, ignore_errors=True)


def test_compose_config_accepts_the_export_without_a_warning(stack):
    compose, _, _ = stack
    config = compose("config")
    assert config.returncode == 0, config.stderr
    assert "WARN" not in config.stderr.upper(), config.stderr


def test_up_settles_every_service_and_runs_the_hooks(stack):
    compose, up, elapsed = stack
    assert up.returncode == 0, (up.stdout + up.stderr)[-4000:]
    print(f"podman-compose up -d: {elapsed:.0f}s")
    listed = json.loads(compose.podman("ps", "-a", "--filter", f"name=^{NAME}-", "--format", "json").stdout)
    states = {c["Names"][0]: f"{c['State']}:{c['ExitCode']}" for c in listed}
    gates = {name: state for name, state in states.items() if name.endswith("-settled")}
    assert gates and all(state == "exited:0" for state in gates.values()), states
    services = {name: state for name, state in states.items() if not name.endswith(("-settle", "-settled"))}
    assert f"{NAME}-vault" not in services  # Compose mode has no Vault
    assert all(state.startswith("running") for state in services.values()), states
    logs = compose.podman("logs", f"{NAME}-postgres-settle")
    assert "apply roles, pgvector and row-level security" in logs.stdout + logs.stderr
    assert "postgres settled" in logs.stdout + logs.stderr


def test_the_rls_bootstrap_is_in_postgres(stack):
    compose, _, _ = stack
    sql = (
        "SELECT c.relrowsecurity, c.relforcerowsecurity, (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid),"
        " (SELECT count(*) FROM pg_roles WHERE rolname IN ('directus', 'postgraphile') AND rolcanlogin)"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'app' AND c.relname = 'notes'"
    )
    result = compose.podman("exec", "--user", "999:999", f"{NAME}-postgres", "psql", "-X", "-qAt", "-h", "/tmp", "-U", "postgres", "-d", "app", "-c", sql)
    assert result.returncode == 0, result.stderr
    rls, forced, policies, roles = result.stdout.strip().split("|")
    assert (rls, forced, roles) == ("t", "t", "2") and int(policies) >= 1


def test_directus_admin_logs_in_through_nginx(stack):
    compose, _, _ = stack
    mapping = compose.podman("port", f"{NAME}-nginx", "8443/tcp").stdout.strip()
    port = int(mapping.rsplit(":", 1)[1])
    password = (compose.secrets / "directus" / "directus_admin_password").read_text()
    status, body = https(port, "/directus/auth/login", "localhost", {"email": "admin@example.com", "password": password})
    assert status == 200 and body["data"]["access_token"], body
    assert https(port, "/directus/auth/login", "127.0.0.1", {"email": "admin@example.com", "password": password})[0] == 421


def test_networks_carry_the_isolation_the_plan_asks_for(stack):
    compose, _, _ = stack
    for network in ("db", "edge"):
        inspected = json.loads(compose.podman("network", "inspect", f"{NAME}-{network}").stdout)[0]
        assert inspected["options"].get("isolate") == "true", inspected
        assert inspected["internal"] is (network == "db")
    assert compose.podman("network", "exists", f"{NAME}-auth").returncode != 0  # only Vault was on it


def test_down_removes_everything(stack):
    compose, _, _ = stack
    down = compose("down", "-v", timeout=600)
    assert down.returncode == 0, down.stderr[-2000:]
    assert leftovers(compose) == {}
