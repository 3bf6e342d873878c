"""A service of the stack's own, built from its own Rust crate, live: the shipped example
``stacks/examples/dbping.yaml`` (Vault, Postgres, and ``dbping`` from ``stacks/examples/dbping``)
under a name of its own.

``ccoas images build`` builds the crate on the host (``cargo build --release --locked``) into an
image on the Debian base; ``up`` brings the stack up healthy; ``ccoas check`` passes every
control for the service (hardening read back from the engine and observed inside it, its
secret file private, the measured reachability); its key, generated into Vault and mounted as
a file, is what its ``/status`` asks for; and its health says the truth about Postgres.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from ccoas.planner import build_plan, load_stack
from healthy_stack import healthy_stack  # tests/e2e is on sys.path (rootdir imports)

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "stacks" / "examples" / "dbping.yaml"
RUNNING = ("vault", "postgres", "dbping")


@pytest.fixture(scope="module")
def stack():
    with healthy_stack(build_plan(load_stack(EXAMPLE), name=f"e2e-h13c-{uuid.uuid4().hex[:6]}"), RUNNING) as engine:
        yield engine


def dbping(engine):
    return engine.client.containers.get(engine.plan.service("dbping").container_name)


def get(engine, path: str, key_from: str | None = None, key: str = "") -> str:
    """``GET path`` on dbping's own port from inside its container (bash's /dev/tcp: the image
    has no HTTP client), with ``Authorization: Bearer`` the content of ``key_from`` or ``key``."""
    header = f'Authorization: Bearer $(cat {key_from})\\r\\n' if key_from else (f"Authorization: Bearer {key}\\r\\n" if key else "")
    script = (
        "exec 3<>/dev/tcp/127.0.0.1/8080; "
        f'printf "GET {path} HTTP/1.1\\r\\nHost: dbping\\r\\n{header}Connection: close\\r\\n\\r\\n" >&3; cat <&3'
    )
    result = dbping(engine).exec_run(["bash", "-c", script])
    assert result.exit_code == 0, result.output
    return result.output.decode(errors="replace")


def test_the_image_is_built_from_the_crate_and_runs_it_as_the_planned_user(stack):
    service = stack.plan.service("dbping")
    image = stack.client.images.get(service.image.ref)
    assert image.labels["io.ccoas.component"] == "dbping" and image.labels["io.ccoas.digest"] == service.image.recipe.digest
    container = dbping(stack)
    assert container.attrs["Config"]["User"] == "65534:65534"
    top = container.exec_run(["cat", "/proc/1/cmdline"]).output.split(b"\0")
    assert top[0] == b"/usr/local/bin/dbping"


def test_its_status_needs_the_key_vault_generated_for_it(stack):
    secret = "/run/secrets/dbping_api_key"
    assert get(stack, "/status").startswith("HTTP/1.1 401 ")
    assert get(stack, "/status", key="not-the-key").startswith("HTTP/1.1 401 ")
    answer = get(stack, "/status", key_from=secret)
    assert answer.startswith("HTTP/1.1 200 ") and '"postgres":"answers"' in answer, answer
    assert get(stack, "/health").startswith("HTTP/1.1 200 ")


def test_every_compliance_control_holds_for_it(stack):
    """`ccoas check` on the example stack under this name: every control per container (the
    user service's among them) and the measured reachability matrix."""
    result = subprocess.run(
        [sys.executable, "-m", "ccoas.cli", "check", str(EXAMPLE), "--name", stack.plan.stack],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "dbping" in result.stdout and "dbping →" in result.stdout


def test_its_health_fails_while_postgres_is_down_and_up_brings_it_back(stack):
    postgres = stack.client.containers.get(stack.plan.service("postgres").container_name)
    postgres.stop(timeout=30)
    check = dbping(stack).exec_run(["/usr/local/bin/dbping", "--check"])
    assert check.exit_code != 0 and b"silent" in check.output, check.output
    result = stack.up()
    assert {r.service: r.health for r in result.status} == {s: "healthy" for s in RUNNING}
    assert dbping(stack).exec_run(["/usr/local/bin/dbping", "--check"]).exit_code == 0
