"""The three `ccoas check` controls that `tests/e2e/test_edge.py` does not break, broken on a
live stack (Nginx publishing its ports, Vault, Redis) and seen to fail, then repaired and seen
to pass again:

- Vault: sealed (with a two-minute token, the root token being revoked), a root token
  written back into its unseal material on disk, its audit log emptied;
- a secret in the environment of a running process: Redis's entrypoint, instead of exec'ing
  ``redis-server`` (which writes its title over its environment, leaving nothing to read),
  execs a shell started with the health user's password in its environment, which runs
  ``redis-server``; the container is restarted;
- the edge certificate: Nginx serves one that expires in five days.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
import yaml

from ccoas.planner import CATALOG, build_plan, load_stack
from ccoas.tls import generate_self_signed
from healthy_stack import healthy_stack  # tests/e2e is on sys.path (rootdir imports)
from test_edge import exec_in, free_port  # the other modules that break controls

pytestmark = pytest.mark.e2e

NAME = f"tb-ctl-{uuid.uuid4().hex[:6]}"
ENABLED = ("nginx", "vault", "redis")


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    stack = {
        "version": 1,
        "name": NAME,
        "environment": "ci",
        "images": {"source": "local"},
        "tls": {"mode": "generate"},
        "components": {
            **{c: {"enabled": False} for c in sorted(CATALOG) if c not in ENABLED},
            "nginx": {"publish": [{"container_port": 8443, "host_port": free_port()}, {"container_port": 8080, "host_port": free_port()}]},
        },
    }
    path = tmp_path_factory.mktemp("controls") / "controls.yaml"
    path.write_text(yaml.safe_dump(stack, sort_keys=False))
    with healthy_stack(build_plan(load_stack(path), name=NAME), ENABLED) as engine:
        engine.stack_path = path  # type: ignore[attr-defined]
        yield engine


def control(engine, name: str) -> int:
    from ccoas.compliance import run_checks

    return run_checks(engine.stack_path, NAME, extra=["-k", name])


def test_vault_control_fails_when_vault_is_sealed_or_a_root_token_is_on_disk(engine):
    from ccoas.secrets import vault_client

    name = "test_vault_initialised_unsealed_audited_root_revoked"
    assert control(engine, name) == 0
    bootstrap = engine.steps.vault()
    with bootstrap.root_client() as root:  # a 2-minute token to seal with: the root token is revoked
        sealer = root.auth.token.create(policies=["root"], ttl="2m", no_parent=True)["auth"]["client_token"]
    vault_client(bootstrap.socket, sealer).sys.seal()
    try:
        assert vault_client(bootstrap.socket).sys.is_sealed()
        assert control(engine, name) != 0
    finally:
        engine.up()  # unseals Vault again
    assert control(engine, name) == 0

    original = engine.paths.vault_init.read_text()
    engine.paths.vault_init.write_text(json.dumps({**json.loads(original), "root_token": "s.planted"}))
    try:
        assert control(engine, name) != 0
    finally:
        engine.paths.vault_init.write_text(original)
    assert control(engine, name) == 0

    # The audit log emptied (nothing Vault audits happens meanwhile: no service of this stack
    # talks to Vault at run time, and the control's `vault status` is not audited).
    exec_in(engine, "vault", "sh", "-c", f": > {engine.plan.vault.audit_path}")
    try:
        assert control(engine, name) != 0
    finally:
        engine.secrets().list()  # an audited request writes the log again
    assert control(engine, name) == 0


def test_environment_control_fails_when_a_process_runs_with_a_secret(engine):
    name = "test_no_secret_value_in_the_running_process_environment"
    entrypoint = engine.paths.render / "redis" / "entrypoint.sh"
    original = entrypoint.read_text()
    assert original.count('\nexec "$@"') == 1
    secret = engine.plan.service("redis").secrets[0].target
    container = engine.client.containers.get(engine.plan.service("redis").container_name)

    def restart() -> None:
        container.restart(timeout=5)  # a shell as PID 1 ignores SIGTERM: killed after 5 s
        for _ in range(60):
            container.reload()
            if container.status == "running":
                return
            time.sleep(1)

    assert control(engine, name) == 0
    leak = f'\nexec env LEAKED_PASSWORD="$(cat {secret})" sh -c \'"$@"; exit $?\' sh "$@"'
    entrypoint.write_text(original.replace('\nexec "$@"', leak))
    restart()
    try:
        assert "LEAKED_PASSWORD=" in exec_in(engine, "redis", "cat", "/proc/1/environ")
        assert "redis-server" in exec_in(engine, "redis", "sh", "-c", "cat /proc/[0-9]*/cmdline 2>/dev/null; true")
        assert control(engine, name) != 0
    finally:
        entrypoint.write_text(original)
        restart()
    assert control(engine, name) == 0


def test_certificate_control_fails_when_the_edge_serves_one_expiring_in_five_days(engine):
    name = "test_edge_certificate_is_not_about_to_expire"
    cert_file = engine.paths.secret_file("nginx", "nginx_tls_cert")
    key_file = engine.paths.secret_file("nginx", "nginx_tls_key")
    originals = cert_file.read_bytes(), key_file.read_bytes()

    def serve(cert: bytes, key: bytes) -> None:
        cert_file.write_bytes(cert)  # in place: the container mounts these files
        key_file.write_bytes(key)
        exec_in(engine, "nginx", "nginx", "-c", "/etc/ccoas/nginx/nginx.conf", "-s", "reload")
        time.sleep(2)

    assert control(engine, name) == 0
    serve(*(pem.encode() for pem in generate_self_signed(engine.plan.domain, days=5)))
    try:
        assert control(engine, name) != 0
    finally:
        serve(*originals)
    assert control(engine, name) == 0
