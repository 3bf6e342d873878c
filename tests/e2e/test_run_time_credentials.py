"""Credentials Directus issues at run time, attacked through the real Nginx: a diagnose bundle
holds no live token, session and refresh cookies are ``Secure``, and failed logins that lock the
admin out do not stop the next ``up`` from provisioning.

One stack of its own (vault, postgres, directus, nginx; the dev stack's tables) for the module.
The tests run in file order: the last one locks the admin out for good.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from ccoas.planner import build_plan, load_stack
from directus_client import Directus  # tests/e2e is on sys.path (rootdir imports)
from healthy_stack import healthy_stack

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
NAME = f"ti-cred-{uuid.uuid4().hex[:6]}"
ADMIN = "admin@example.com"  # the ci stack's domain (localhost) has no dot: Directus's default address
FAILED_LOGINS = 30
"""More than Directus's default AUTH_LOGIN_ATTEMPTS setting (25), after which it suspends the user."""


def stack_document() -> dict:
    stack = yaml.safe_load((REPO / "stacks" / "ci.yaml").read_text())
    for component in ("redis", "minio", "ollama", "hasura", "postgraphile", "embedder"):
        stack["components"][component] = {"enabled": False, **({"image": {"source": "registry"}} if component == "hasura" else {})}
    stack["schema"] = yaml.safe_load((REPO / "stacks" / "dev.yaml").read_text())["schema"]
    for table in stack["schema"]["tables"]:
        for column in table["columns"]:
            column.pop("embed", None)
    return stack


@pytest.fixture(scope="module")
def stack_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("credentials") / "credentials.yaml"
    path.write_text(yaml.safe_dump(stack_document(), sort_keys=False))
    return path


@pytest.fixture(scope="module")
def engine(stack_file):
    with healthy_stack(build_plan(load_stack(stack_file), name=NAME), ("directus", "nginx", "postgres", "vault")) as engine:
        yield engine


@pytest.fixture(scope="module")
def directus(engine) -> Directus:
    return Directus(engine)


def admin_password(engine) -> str:
    return engine.paths.secret_file("directus", "directus_admin_password").read_text()


def raw_login(directus: Directus, body: dict) -> tuple[int, list[str], dict]:
    """POST /directus/auth/login through Nginx: (status, Set-Cookie headers, JSON body)."""
    request = urllib.request.Request(
        directus.url + "/auth/login", method="POST", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, context=directus.context, timeout=30) as response:
            return response.status, response.headers.get_all("Set-Cookie") or [], json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get_all("Set-Cookie") or [], json.loads(error.read() or b"{}")


def psql(engine, sql: str) -> list[str]:
    container = engine.client.containers.get(engine.plan.service("postgres").container_name)
    result = container.exec_run(["psql", "-X", "-qAt", "-v", "ON_ERROR_STOP=1", "-h", "/tmp", "-U", "postgres", "-d", "app", "-c", sql], user="999:999")
    assert result.exit_code == 0, result.output.decode()
    return [line for line in result.output.decode().split("\n") if line]


# --- cookies -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "cookie"), [("cookie", "directus_refresh_token"), ("session", "directus_session_token")])
def test_session_and_refresh_cookies_are_secure(engine, directus, mode, cookie):
    status, cookies, _ = raw_login(directus, {"email": ADMIN, "password": admin_password(engine), "mode": mode})
    assert status == 200
    [set_cookie] = [c for c in cookies if c.startswith(f"{cookie}=")]
    attributes = {part.strip().split("=", 1)[0].lower() for part in set_cookie.split(";")[1:]}
    assert {"secure", "httponly"} <= attributes, set_cookie


# --- diagnose ----------------------------------------------------------------------------------


def test_a_diagnose_bundle_holds_no_live_token(engine, directus, stack_file, tmp_path):
    token = directus.login(ADMIN, admin_password(engine))
    # how a browser loads a protected asset: the token in the query string, through Nginx
    status, me = directus.edge.request("GET", f"/directus/users/me?access_token={token}")
    assert status == 200 and me["data"]["email"] == ADMIN, me
    # and the token wherever else a log might carry it: a header dump and an error message
    directus_container = engine.client.containers.get(engine.plan.service("directus").container_name)
    planted = directus_container.exec_run(
        ["sh", "-c", f'printf "%s\\n" "proxy: Authorization: Bearer $0" "error fetching /assets/x?access_token=$0&width=9" > /proc/1/fd/1', token],
        user=engine.plan.service("directus").user,
    )
    assert planted.exit_code == 0, planted.output

    out = tmp_path / "diag.tar.gz"
    result = subprocess.run(
        [sys.executable, "-m", "ccoas.cli", "diagnose", str(stack_file), "--name", NAME, "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr

    with tarfile.open(out) as archive:
        members = {m.name.split("/", 1)[1]: archive.extractfile(m).read().decode() for m in archive if m.isfile()}
    everything = "\n".join(members.values())
    assert "/directus/users/me" in members["logs/nginx.log"], "the request was not in the bundle: nothing was proven"
    assert "access_token" not in members["logs/nginx.log"]
    assert "[scrubbed:" in members["logs/directus.log"]
    for piece in (token, *token.split(".")[1:]):  # the token, its claims and its signature
        assert piece not in everything
    # the token was live when the bundle was taken: a leak would have let its holder in
    assert directus.edge.request("GET", "/directus/users/me", token=token)[0] == 200


# --- provisioning does not depend on the admin's password login --------------------------------


def test_failed_logins_that_lock_the_admin_out_do_not_stop_up_from_provisioning(engine, directus, stack_file):
    provisioner = psql(engine, "SELECT count(*) FROM directus.directus_users WHERE title = 'ccoas-provisioning' AND email IS NULL AND password IS NULL AND token IS NOT NULL")
    assert provisioner == ["1"], "the first up made no provisioning user"

    for _ in range(FAILED_LOGINS):  # an attacker who knows the predictable address
        status, _, _ = raw_login(directus, {"email": ADMIN, "password": "wrong-" + uuid.uuid4().hex})
        assert status in (401, 429), status
    status, _, answer = raw_login(directus, {"email": ADMIN, "password": admin_password(engine)})
    assert status == 401, f"the admin was not locked out by {FAILED_LOGINS} failed logins: nothing was proven ({answer})"
    assert psql(engine, f"SELECT status FROM directus.directus_users WHERE email = '{ADMIN}'") == ["suspended"]

    # a change that provisioning must carry into Directus: a new table, with its preset's permissions
    document = stack_document()
    document["schema"]["tables"].append(
        {"name": "lockout_probe", "policy": "owner-only", "columns": [
            {"name": "id", "type": "uuid", "primary_key": True, "nullable": False, "default": "gen_random_uuid()"},
            {"name": "owner_id", "type": "uuid", "nullable": False},
            {"name": "body", "type": "text"},
        ]}
    )
    stack_file.write_text(yaml.safe_dump(document, sort_keys=False))
    result = subprocess.run([sys.executable, "-m", "ccoas.cli", "up", str(stack_file), "--name", NAME], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    permissions = psql(
        engine,
        "SELECT p.action FROM directus.directus_permissions p JOIN directus.directus_policies y ON y.id = p.policy "
        "WHERE y.name = 'app-user' AND p.collection = 'lockout_probe' ORDER BY p.action",
    )
    assert permissions == ["create", "delete", "read", "update"], permissions
