"""A stack made by the earlier ccoas (Directus's tables in public, the directus role with CREATE
on public) converges on the next `up` without losing Directus's users, files or settings.

The earlier state is made by the earlier code itself: the ccoas tree of commit EARLIER,
extracted with git and run as its own process, brings the stack up; the admin adds a user,
a file and a setting; then this tree's `up` takes over the same stack. The earlier code ran
Directus 12.4 and this tree runs 11.17.4 (see README, "Why Directus 11"): the same test proves
that Directus 11 starts on the database 12 migrated and keeps what was made under 12.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest

from ccoas import migrations
from ccoas.edge import Edge
from ccoas.engine.local import LocalEngine
from ccoas.planner import build_plan, load_stack
from directus_client import Directus  # tests/e2e is on sys.path (rootdir imports)
from test_identity import _write, identity_stack, psql

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
EARLIER = "402cedd"
"""The last commit whose bootstrap kept Directus's tables in public."""
NAME = f"e2e-h9m-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def stack_file(tmp_path_factory) -> Path:
    """The identity stack without the GraphQL plane (the earlier code had no PostGraphile)."""
    data = identity_stack()
    data["components"]["postgraphile"] = {"enabled": False}
    return _write(tmp_path_factory.mktemp("migration") / "identity.yaml", data)


@pytest.fixture(scope="module")
def earlier_stack_file(tmp_path_factory) -> Path:
    """The same stack as the earlier code reads it (it knew no postgraphile key)."""
    data = identity_stack()
    data["components"].pop("postgraphile")
    return _write(tmp_path_factory.mktemp("migration-earlier") / "identity.yaml", data)


@pytest.fixture(scope="module")
def earlier_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("earlier")
    present = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{EARLIER}^{{commit}}"], capture_output=True)
    if present.returncode != 0:  # a shallow or exported checkout: the earlier code is not here to run
        pytest.skip(f"revision {EARLIER} is not in this checkout, so the earlier stack cannot be made by the earlier code")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", EARLIER, "ccoas", "templates"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
    return root


@pytest.fixture(scope="module")
def migrated(stack_file, earlier_stack_file, earlier_tree):
    """The stack up by the earlier code, written to through Directus, then up by this code."""
    earlier = subprocess.run(
        [sys.executable, "-m", "ccoas.cli", "up", str(earlier_stack_file), "--name", NAME],
        capture_output=True, text=True, timeout=1500, cwd=earlier_tree, env={**os.environ, "PYTHONPATH": str(earlier_tree)},
    )
    engine = LocalEngine.connect(build_plan(load_stack(stack_file), name=NAME))
    try:
        assert earlier.returncode == 0, earlier.stdout[-3000:] + earlier.stderr[-3000:]
        assert psql(engine, "SELECT count(*) > 10 FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relname LIKE 'directus\\_%'") == ["t"]
        before = made_by_hand(engine)
        assert not migrations.read(engine.paths.state).recorded  # the earlier code wrote no marker: schema 1
        result = engine.up()
        yield engine, before, result
    finally:
        engine.down(purge=True)


def earlier_edge(engine) -> Edge:
    """The earlier code published Nginx's HTTPS port through the engine (this code's host
    listener is not there until its own `up`): the edge at that published port."""
    nginx = engine.client.containers.get(engine.plan.service("nginx").container_name)
    nginx.reload()
    [binding] = nginx.attrs["NetworkSettings"]["Ports"]["8443/tcp"]
    context = ssl.create_default_context(cafile=str(engine.paths.secret_file("nginx", "nginx_tls_cert")))
    return Edge(f"https://{engine.plan.domain}:{binding['HostPort']}", context)


def made_by_hand(engine) -> dict[str, str]:
    """What a user of the earlier stack had: an app user, an uploaded file, a project setting."""
    directus = Directus(engine, earlier_edge(engine))
    admin = directus.login("admin@example.com", engine.paths.secret_file("directus", "directus_admin_password").read_text())
    email, password = f"kept-{uuid.uuid4().hex[:6]}@example.com", uuid.uuid4().hex
    directus.ok("POST", "/users", {"email": email, "password": password}, admin)
    directus.ok("PATCH", "/settings", {"project_name": "kept across the upgrade"}, admin)
    boundary = "ccoas-e2e"
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"kept.txt\"\r\n"
        f"Content-Type: text/plain\r\n\r\nkept across the upgrade\r\n--{boundary}--\r\n"
    ).encode()
    upload = urllib.request.Request(f"{directus.url}/files", data=body, headers={"Authorization": f"Bearer {admin}", "Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(upload, context=directus.context, timeout=30) as response:
        file_id = json.load(response)["data"]["id"]
    return {"email": email, "password": password, "file": file_id}


def test_directus_tables_moved_to_their_schema_and_public_is_closed(migrated):
    engine, _, _ = migrated
    assert psql(engine, "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relname LIKE 'directus\\_%'") == ["0"]
    assert psql(engine, "SELECT count(*) > 10 FROM pg_class WHERE relnamespace = 'directus'::regnamespace AND relname LIKE 'directus\\_%'") == ["t"]
    assert psql(engine, "SELECT has_schema_privilege('directus', 'public', 'CREATE')") == ["f"]


def test_users_files_and_settings_survive(migrated):
    engine, before, _ = migrated
    directus = Directus(engine)
    admin = directus.login("admin@example.com", engine.paths.secret_file("directus", "directus_admin_password").read_text())
    assert directus.login(before["email"], before["password"])
    assert directus.ok("GET", "/settings", token=admin)["project_name"] == "kept across the upgrade"
    request = urllib.request.Request(f"{directus.url}/assets/{before['file']}", headers={"Authorization": f"Bearer {admin}"})
    with urllib.request.urlopen(request, context=directus.context, timeout=30) as response:
        assert response.read() == b"kept across the upgrade"


def test_the_upgraded_stack_serves_the_app_tables_with_the_provisioned_role(migrated):
    engine, _, _ = migrated
    directus = Directus(engine)
    admin = directus.login("admin@example.com", engine.paths.secret_file("directus", "directus_admin_password").read_text())
    assert {"notes", "documents", "articles"} <= {c["collection"] for c in directus.ok("GET", "/collections", token=admin)}
    assert [r["name"] for r in directus.ok("GET", "/roles?filter[name][_eq]=app-user", token=admin)] == ["app-user"]
    assert engine.up().changes == 0


def test_the_up_said_what_it_migrated_and_recorded_the_schema(migrated):
    engine, _, result = migrated
    assert any("migrated to schema 2, directus-tables-leave-public" in note for note in result.notes), result.notes
    found = migrations.read(engine.paths.state)
    assert found.recorded and found.state_schema_version == migrations.STATE_SCHEMA_VERSION
