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
from typing import Callable

import pytest
import yaml

from ccoas.planner import build_plan, load_stack
from ccoas.tls import generate_self_signed
from healthy_stack import healthy_stack  # tests/e2e is on sys.path (rootdir imports)
from test_edge import exec_in, free_port  # the other modules that break controls

pytestmark = pytest.mark.e2e

NAME = f"tb-ctl-{uuid.uuid4().hex[:6]}"
ENABLED = ("nginx", "vault", "redis")


@pytest.fixture(scope="module")
def engine(module_stack):
    path = module_stack(NAME, *ENABLED)
    stack = yaml.safe_load(path.read_text())
    stack["components"]["nginx"] = {"publish": [{"container_port": 8443, "host_port": free_port()}, {"container_port": 8080, "host_port": free_port()}]}
    path.write_text(yaml.safe_dump(stack, sort_keys=False))
    with healthy_stack(build_plan(load_stack(path), name=NAME), ENABLED) as engine:
        engine.stack_path = path  # type: ignore[attr-defined]
        yield engine


def control(engine, name: str) -> int:
    from ccoas.compliance import run_checks

    return run_checks(engine.stack_path, NAME, extra=["-k", name])


def breaks(engine, name: str, break_it: Callable[[], object], repair: Callable[[], object]) -> None:
    """The control passes; after ``break_it`` it fails; after ``repair`` it passes again."""
    assert control(engine, name) == 0
    break_it()
    try:
        assert control(engine, name) != 0
    finally:
        repair()
    assert control(engine, name) == 0


def test_vault_control_fails_when_sealed_with_a_root_token_on_disk_or_unaudited(engine):
    from ccoas.secrets import vault_client

    name = "test_vault_initialised_unsealed_audited_root_revoked"
    bootstrap = engine.steps.vault()

    def seal() -> None:
        with bootstrap.root_client() as root:  # a 2-minute token to seal with: the root token is revoked
            sealer = root.auth.token.create(policies=["root"], ttl="2m", no_parent=True)["auth"]["client_token"]
        vault_client(bootstrap.socket, sealer).sys.seal()
        assert vault_client(bootstrap.socket).sys.is_sealed()

    breaks(engine, name, seal, engine.up)  # `up` unseals Vault again

    original = engine.paths.vault_init.read_text()
    planted = json.dumps({**json.loads(original), "root_token": "s.planted"})
    breaks(engine, name, lambda: engine.paths.vault_init.write_text(planted), lambda: engine.paths.vault_init.write_text(original))

    # The audit log emptied (nothing Vault audits happens meanwhile: no service of this stack
    # talks to Vault at run time, and the control's `vault status` is not audited); an audited
    # request (ccoas listing the secrets) writes it again.
    empty = f": > {engine.plan.vault.audit_path}"
    breaks(engine, name, lambda: exec_in(engine, "vault", "sh", "-c", empty), lambda: engine.secrets().list())


def test_environment_control_fails_when_a_process_runs_with_a_secret(engine):
    entrypoint = engine.paths.render / "redis" / "entrypoint.sh"
    original = entrypoint.read_text()
    assert original.count('\nexec "$@"') == 1
    secret = engine.plan.service("redis").secrets[0].target
    container = engine.client.containers.get(engine.plan.service("redis").container_name)
    leak = f'\nexec env LEAKED_PASSWORD="$(cat {secret})" sh -c \'"$@"; exit $?\' sh "$@"'

    def run_with(text: str) -> None:
        entrypoint.write_text(text)
        container.restart(timeout=5)  # a shell as PID 1 ignores SIGTERM: killed after 5 s
        for _ in range(60):
            container.reload()
            if container.status == "running":
                return
            time.sleep(1)

    def leak_it() -> None:
        run_with(original.replace('\nexec "$@"', leak))
        assert "LEAKED_PASSWORD=" in exec_in(engine, "redis", "cat", "/proc/1/environ")
        assert "redis-server" in exec_in(engine, "redis", "sh", "-c", "cat /proc/[0-9]*/cmdline 2>/dev/null; true")

    breaks(engine, "test_no_secret_value_in_the_running_process_environment", leak_it, lambda: run_with(original))


def test_certificate_control_fails_when_the_edge_serves_one_expiring_in_five_days(engine):
    cert_file = engine.paths.secret_file("nginx", "nginx_tls_cert")
    key_file = engine.paths.secret_file("nginx", "nginx_tls_key")
    originals = cert_file.read_bytes(), key_file.read_bytes()

    def serve(cert: bytes, key: bytes) -> None:
        cert_file.write_bytes(cert)  # in place: the container mounts these files
        key_file.write_bytes(key)
        exec_in(engine, "nginx", "nginx", "-c", "/etc/ccoas/nginx/nginx.conf", "-s", "reload")
        time.sleep(2)

    expiring = [pem.encode() for pem in generate_self_signed(engine.plan.domain, days=5)]
    breaks(engine, "test_edge_certificate_is_not_about_to_expire", lambda: serve(*expiring), lambda: serve(*originals))
