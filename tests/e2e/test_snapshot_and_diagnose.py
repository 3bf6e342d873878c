"""A snapshot before a risky ``up``, and ``diagnose`` on a stack with an unhealthy service.

Postgres's image changes (a derived image: one label more, a new id): the ``up`` takes a
snapshot first; restoring that snapshot after a purge brings back the rows written before.
Then Vault is sealed: ``diagnose`` names it, with its last failing probe output, in the
postmortem skeleton, and no secret value is anywhere in the tarball.
"""

from __future__ import annotations

import io
import json
import tarfile
import uuid

import pytest

import os
import stat

from ccoas.backup import BackupError, bundle_key_path, open_bundle, pack, restore, snapshot_before_up, unseal_path
from ccoas.diagnose import diagnose, secret_values
from ccoas.engine.local import LocalEngine
from ccoas.planner import build_plan, load_stack

pytestmark = pytest.mark.e2e

NAME = f"e2e-h15-snap-{uuid.uuid4().hex[:4]}"


@pytest.fixture(scope="module")
def engine(module_stack):
    engine = LocalEngine.connect(build_plan(load_stack(module_stack(NAME, "vault", "postgres")), name=NAME))
    try:
        engine.up()
        yield engine
    finally:
        engine.down(purge=True)


def psql(engine: LocalEngine, sql: str) -> str:
    container = engine.client.containers.get(engine.plan.service("postgres").container_name)
    result = container.exec_run(["psql", "-X", "-qAt", "-v", "ON_ERROR_STOP=1", "-h", "/tmp", "-U", "postgres", "-d", "app", "-c", sql], user="999:999")
    assert result.exit_code == 0, result.output.decode()
    return result.output.decode().strip()


def with_postgres_image(plan, ref: str):
    services = tuple(
        s.model_copy(update={"image": s.image.model_copy(update={"ref": ref})}) if s.name == "postgres" else s for s in plan.services
    )
    return plan.model_copy(update={"services": services})


def test_an_up_that_changes_postgres_image_snapshots_first_and_the_snapshot_restores(engine):
    psql(engine, "INSERT INTO app.notes (owner_id) SELECT gen_random_uuid() FROM generate_series(1, 5)")
    assert snapshot_before_up(engine) is None  # nothing would be replaced
    base = engine.plan.service("postgres").image.ref
    derived = f"localhost/ccoas/postgres:{NAME}"
    dockerfile = f"FROM {base}\nLABEL io.ccoas.test={NAME}\n".encode()
    engine.client.images.build(fileobj=io.BytesIO(dockerfile), tag=derived, rm=True)
    try:
        changed = LocalEngine.connect(with_postgres_image(engine.plan, derived))
        taken = snapshot_before_up(changed, keep=2)
        assert taken is not None
        result, risky = taken
        assert set(risky) == {"postgres"} and "image changed" in risky["postgres"]
        assert result.path.exists() and result.path.parent.name == NAME
        # Encrypted and authenticated with this host's bundle key: root's, 0600 in a 0700
        # directory, outside the state directory; no unseal file beside it, no token inside.
        key = bundle_key_path()
        assert result.key_path == key and not key.is_relative_to(engine.layout.state_root)
        for path, mode in ((key, 0o600), (key.parent, 0o700)):
            assert path.stat().st_uid == os.geteuid() and stat.S_IMODE(path.stat().st_mode) == mode, path
        assert not unseal_path(result.path).exists()
        members = open_bundle(result.path).members
        assert "vault/unseal.json" in members
        assert not any(engine.paths.ccoas_token.read_text().strip().encode() in c for c in members.values())
        # A bundle swapped into the snapshots directory by someone without the key: refused
        # before anything is read or touched.
        from cryptography.fernet import Fernet

        planted = result.path.with_name("planted.ccoas")
        planted.write_bytes(pack({**members, "manifest.json": json.dumps(open_bundle(result.path).manifest).encode()}, Fernet.generate_key()))
        try:
            with pytest.raises(BackupError, match="does not authenticate"):
                restore(engine, planted)
        finally:
            planted.unlink()
        changed.up()
        assert changed.client.containers.get(changed.plan.service("postgres").container_name).image.id == changed.client.images.get(derived).id
        psql(changed, "DELETE FROM app.notes")
        changed.down(purge=True)
        restore(engine, result.path)
        assert psql(engine, "SELECT count(*) FROM app.notes") == "5"
    finally:
        engine.down()
        engine.client.images.remove(derived, force=True)
        engine.up()


def test_diagnose_names_the_unhealthy_service_and_scrubs_every_secret(engine, tmp_path):
    postgres = engine.client.containers.get(engine.plan.service("postgres").container_name)
    # plant a secret value in a log: diagnose must scrub it
    planted = postgres.exec_run(["sh", "-c", "cat /run/secrets/postgres_superuser_password > /proc/1/fd/1"], user="999:999")
    assert planted.exit_code == 0, planted.output
    from ccoas.secrets import vault_client

    with engine.steps.vault().root_client() as root:  # a 2-minute token to seal with: root is revoked before
        sealer = root.auth.token.create(policies=["root"], ttl="2m", no_parent=True)["auth"]["client_token"]
    vault_client(engine.steps.vault().socket, sealer).sys.seal()
    out = tmp_path / "diag.tar.gz"
    result = diagnose(engine, out)
    assert result.unhealthy == {"vault": "alive, not ready"}
    assert result.scrubbed >= 1
    with tarfile.open(out) as archive:
        members = {m.name.split("/", 1)[1]: archive.extractfile(m).read().decode() for m in archive if m.isfile()}
    assert {"plan.json", "status.json", "host.json", "events.json", "reachability.json", "postmortem.md", "logs/postgres.log", "health/vault.json"} <= set(members)
    postmortem = members["postmortem.md"]
    assert "**vault**" in postmortem and "Sealed" in postmortem
    assert "[scrubbed:postgres_superuser_password]" in members["logs/postgres.log"]
    values = secret_values(engine)
    assert {"postgres_superuser_password", "vault_unseal_key_0", "vault_ccoas_token"} <= set(values)
    everything = "\n".join(members.values())
    leaked = [name for name, value in values.items() if value in everything]
    assert not leaked
    assert json.loads(members["host.json"])["cgroup_version"]
    engine.up()  # unseals Vault again
