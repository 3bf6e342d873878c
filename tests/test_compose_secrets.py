"""``ccoas secrets init``: Compose mode's secret files, without Vault.

The files are what the local engine would materialise: one per reader, formatted for that
reader where the plan says so, 0400, given to the reader's container uid (mapped here to
``MAPPED + uid`` and read back from the files; the mapping to subordinate ids is
:meth:`HostLayout.host_uid`, tested in test_host.py, and the e2e test of the export proves the
services read them).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ccoas.errors import CcoasError
from ccoas.secrets import init_secret_files
from ccoas.state import secret_file_in


MAPPED = 70000
"""Container uid ``n`` is host uid ``MAPPED + n`` here (the rootless mapping's shape)."""


class Owners:
    """The engine's id mapping, without an engine user: root gives files to ``MAPPED + uid``."""

    def host_ids(self, uid: int, gid: int) -> tuple[int, int]:
        return MAPPED + uid, MAPPED + gid

    def give(self, path: Path, uid: int, gid: int) -> None:
        os.chown(path, *self.host_ids(uid, gid), follow_symlinks=False)


def owner(path: Path) -> tuple[int, int]:
    status = path.lstat()
    return status.st_uid - MAPPED, status.st_gid - MAPPED


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "secrets"


@pytest.mark.parametrize("stack", ["dev", "ci"])  # prod supplies its TLS pair from files
def test_every_reader_gets_its_own_file_owned_by_its_uid(load_plan, out, stack):
    plan = load_plan(stack)
    written = init_secret_files(plan, out, Owners(), engine_uid=os.getuid())
    mounts = [(service, mount) for service in plan.services for mount in service.secrets]
    assert written == sorted(secret_file_in(out, s.name, m.secret) for s, m in mounts)
    for service, mount in mounts:
        path = secret_file_in(out, service.name, mount.secret)
        assert stat.S_IMODE(path.stat().st_mode) == 0o400
        assert owner(path) == (mount.uid, mount.gid) == (service.uid, service.gid)
        assert owner(path.parent) == owner(out) == (0, 0)  # the engine user traverses, nobody else
    # one value per secret, whoever reads it (formatted where the plan says so)
    for secret in plan.secrets:
        readers = [(s, m) for s, m in mounts if m.secret == secret.name]
        bare = {secret_file_in(out, s.name, m.secret).read_text() for s, m in readers if not m.format}
        assert len(bare) <= 1, secret.name
        for service, mount in readers:
            text = secret_file_in(out, service.name, mount.secret).read_text()
            if mount.format:
                prefix, suffix = mount.format.split("{value}")
                assert text.startswith(prefix) and text.endswith(suffix) and len(text) > len(prefix) + len(suffix)
                if bare:
                    assert text == mount.format.replace("{value}", next(iter(bare)))
            elif secret.generator not in ("tls-cert", "tls-key"):
                assert len(text) >= min(secret.length, 16), secret.name


def test_values_come_from_the_vault_paths_generators(load_plan, out):
    plan = load_plan("ci")
    init_secret_files(plan, out, Owners(), engine_uid=os.getuid())
    password = plan.secret("postgres_superuser_password")
    assert password.generator == "password"
    assert len(secret_file_in(out, "postgres", password.name).read_text()) == password.length
    user = plan.secret("minio_root_user")
    value = secret_file_in(out, "minio", user.name).read_text()
    assert user.generator == "username" and value.startswith("u") and len(value) == user.length
    cert = secret_file_in(out, "nginx", "nginx_tls_cert").read_text()
    key = secret_file_in(out, "nginx", "nginx_tls_key").read_text()
    assert "BEGIN CERTIFICATE" in cert and "PRIVATE KEY" in key
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    public = x509.load_pem_x509_certificate(cert.encode()).public_key()
    private = serialization.load_pem_private_key(key.encode(), password=None)
    assert public.public_numbers() == private.public_key().public_numbers()  # one pair


def test_a_second_run_keeps_the_values_and_a_partial_set_is_refused(load_plan, out):
    plan = load_plan("ci")
    init_secret_files(plan, out, Owners(), engine_uid=os.getuid())
    before = {p: p.read_text() for p in out.rglob("*") if p.is_file()}
    assert init_secret_files(plan, out, Owners(), engine_uid=os.getuid()) == []
    assert {p: p.read_text() for p in out.rglob("*") if p.is_file()} == before
    victim = secret_file_in(out, "postgres", "postgres_superuser_password")
    victim.unlink()
    with pytest.raises(CcoasError, match="refusing to mix old and new values"):
        init_secret_files(plan, out, Owners(), engine_uid=os.getuid())
    assert not victim.exists()


def test_a_directory_the_engine_user_cannot_traverse_is_refused(load_plan, tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(CcoasError, match="cannot traverse"):
        init_secret_files(load_plan("ci"), private / "secrets", Owners(), engine_uid=os.getuid() + 12345)
    assert not (private / "secrets").exists()
