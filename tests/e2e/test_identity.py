"""One identity through every front door, proven live: Directus users own the same rows in
Directus (REST through Nginx over TLS) and in SQL, and their tokens carry Hasura's claims,
signed with the key Hasura verifies with.

A stack of its own (vault, postgres, directus, nginx; the dev stack's three tables, one per
preset) comes up under a unique name; the admin creates users A and B in two tenants with
the role ccoas provisions; each writes and reads through Directus as an attacker would try.
Hasura cannot run here (no image): its side is proven by rendering its entrypoint for the
same stack with Hasura enabled and running it up to the point where it execs the engine,
and, in test_bootstrap_sql.py, by its hasura.user sessions against a real Postgres.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import websockets
import yaml

from ccoas.edge import directus_subscribe, gather_events, graphql_subscribe
from ccoas.engine.local import LocalEngine
from ccoas.planner import build_plan, load_stack
from ccoas.render import rendered_files
from directus_client import Directus  # tests/e2e is on sys.path (rootdir imports)

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
NAME = f"e2e-h9-{uuid.uuid4().hex[:6]}"
CLAIMS = "https://hasura.io/jwt/claims"


def identity_stack() -> dict[str, Any]:
    """The ci stack with the dev stack's tables (owner-only, tenant, public-read) and only
    what Directus needs."""
    stack = yaml.safe_load((REPO / "stacks" / "ci.yaml").read_text())
    for component in ("redis", "minio", "ollama", "hasura"):
        stack["components"][component] = {"enabled": False, **({"image": {"source": "registry"}} if component == "hasura" else {})}
    stack["schema"] = yaml.safe_load((REPO / "stacks" / "dev.yaml").read_text())["schema"]
    for table in stack["schema"]["tables"]:  # no Ollama here: the columns stay, unembedded
        for column in table["columns"]:
            column.pop("embed", None)
    return stack


def identity_stack_file(directory: Path) -> Path:
    return _write(directory / "identity.yaml", identity_stack())


@pytest.fixture(scope="module")
def stack_file(tmp_path_factory) -> Path:
    return identity_stack_file(tmp_path_factory.mktemp("identity"))


@pytest.fixture(scope="module")
def engine(stack_file):
    engine = LocalEngine.connect(build_plan(load_stack(stack_file), name=NAME))
    try:
        engine.up()
        yield engine
    finally:
        engine.down(purge=True)


@pytest.fixture(scope="module")
def directus(engine) -> Directus:
    return Directus(engine)


@pytest.fixture(scope="module")
def admin(engine, directus) -> str:
    return directus.admin_token(engine)


@pytest.fixture(scope="module")
def users(directus, admin) -> dict[str, dict[str, str]]:
    """A and B, app users in two tenants, created by the admin; each logged in."""
    return directus.app_users(admin, "a", "b")


@pytest.fixture(scope="module")
def written(directus, users) -> dict[str, dict[str, list[str]]]:
    """Rows each user creates through Directus: A 2 notes and 2 documents, B 1 note and 3 documents."""
    ids: dict[str, dict[str, list[str]]] = {}
    for name, notes, documents in (("a", 2, 2), ("b", 1, 3)):
        token = users[name]["token"]
        ids[name] = {
            "notes": [directus.ok("POST", "/items/notes", {"body": f"{name} note {n}"}, token)["id"] for n in range(notes)],
            "documents": [directus.ok("POST", "/items/documents", {"title": f"{name} doc {n}"}, token)["id"] for n in range(documents)],
        }
    return ids


def psql(engine, sql: str) -> list[str]:
    container = engine.client.containers.get(engine.plan.service("postgres").container_name)
    result = container.exec_run(["psql", "-X", "-qAt", "-v", "ON_ERROR_STOP=1", "-h", "/tmp", "-U", "postgres", "-d", "app", "-c", sql], user="999:999")
    assert result.exit_code == 0, result.output.decode()
    return [line for line in result.output.decode().split("\n") if line]


def provision(engine) -> str:
    service = engine.plan.service("directus")
    [hook] = service.hooks
    result = engine.client.containers.get(service.container_name).exec_run(list(hook.command), user=service.user)
    assert result.exit_code == 0, result.output.decode()
    return result.output.decode().strip()


# --- Directus serves the app tables, from a schema of its own --------------------------------


def test_directus_lists_the_app_tables_and_keeps_its_own_in_its_schema(engine, directus, admin):
    collections = {c["collection"] for c in directus.ok("GET", "/collections", token=admin)}
    assert {"notes", "documents", "articles"} <= collections
    assert psql(engine, "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relname LIKE 'directus\\_%'") == ["0"]
    assert int(psql(engine, "SELECT count(*) FROM pg_class WHERE relnamespace = 'directus'::regnamespace AND relname = 'directus_users'")[0]) == 1


def test_the_directus_role_cannot_create_or_alter_app_objects(engine):
    container = engine.client.containers.get(engine.plan.service("postgres").container_name)
    for sql in ("CREATE TABLE app.sneaky (v int)", "CREATE TABLE public.sneaky (v int)", "ALTER TABLE app.notes ADD COLUMN sneaky int", "ALTER TABLE app.notes DISABLE ROW LEVEL SECURITY", "CREATE SCHEMA sneaky"):
        # as Directus logs in: over TCP with its password, from the secret file Postgres reads too
        command = ["sh", "-c", f'PGPASSWORD="$(cat /run/secrets/postgres_directus_password)" psql -X -qAt -h 127.0.0.1 -U directus -d app -c "{sql}"']
        result = container.exec_run(command, user="999:999")
        assert result.exit_code != 0, sql
        assert "permission denied" in result.output.decode() or "must be owner" in result.output.decode(), result.output.decode()


def test_provisioning_is_idempotent_and_repairs_drift(engine, directus, admin):
    assert provision(engine) == "directus provision: 0 created, 0 updated, 0 deleted"
    [policy] = directus.ok("GET", "/policies?filter[name][_eq]=app-user", token=admin)
    permissions = directus.ok("GET", f"/permissions?filter[policy][_eq]={policy['id']}&filter[collection][_eq]=notes&limit=-1", token=admin)
    read = next(p for p in permissions if p["action"] == "read")
    directus.ok("PATCH", f"/permissions/{read['id']}", {"permissions": {}}, admin)  # someone opens notes to every user
    delete = next(p for p in permissions if p["action"] == "delete")
    directus.ok("DELETE", f"/permissions/{delete['id']}", token=admin)
    directus.ok("POST", "/permissions", {"policy": policy["id"], "collection": "notes", "action": "share", "fields": ["*"]}, admin)
    assert provision(engine) == "directus provision: 1 created, 1 updated, 1 deleted"
    assert provision(engine) == "directus provision: 0 created, 0 updated, 0 deleted"


# --- each user reaches their own rows, and only those -----------------------------------------


def test_each_user_lists_only_their_notes_and_their_tenants_documents(directus, users, written):
    for name in ("a", "b"):
        token = users[name]["token"]
        notes = directus.ok("GET", "/items/notes?limit=-1", token=token)
        documents = directus.ok("GET", "/items/documents?limit=-1", token=token)
        assert sorted(n["id"] for n in notes) == sorted(written[name]["notes"])
        assert {n["owner_id"] for n in notes} == {users[name]["id"]}
        assert sorted(d["id"] for d in documents) == sorted(written[name]["documents"])
        assert {d["tenant_id"] for d in documents} == {users[name]["tenant"]}


def test_a_user_cannot_write_a_row_for_someone_else(directus, users):
    a, b = users["a"], users["b"]
    for path, body in (("/items/notes", {"body": "forged", "owner_id": b["id"]}), ("/items/documents", {"title": "forged", "tenant_id": b["tenant"]})):
        status, _ = directus.call("POST", path, body, a["token"])
        assert status == 403, (path, status)


def test_b_can_neither_update_nor_delete_as_note(directus, users, written):
    note = written["a"]["notes"][0]
    b = users["b"]["token"]
    assert directus.call("PATCH", f"/items/notes/{note}", {"body": "defaced"}, b)[0] == 403
    assert directus.call("DELETE", f"/items/notes/{note}", token=b)[0] == 403
    assert directus.call("PATCH", "/items/notes", {"keys": [note], "data": {"body": "defaced"}}, b)[0] == 403
    assert directus.call("GET", f"/items/notes/{note}", token=b)[0] == 403
    mine = directus.ok("GET", f"/items/notes/{note}", token=users["a"]["token"])
    assert mine["body"] == "a note 0"
    # the owner cannot give a row away either
    assert directus.call("PATCH", f"/items/notes/{note}", {"owner_id": users["b"]["id"]}, users["a"]["token"])[0] == 403


def test_a_user_cannot_change_their_own_tenant(directus, users):
    a = users["a"]
    status, _ = directus.call("PATCH", "/users/me", {"tenant_id": users["b"]["tenant"]}, a["token"])
    assert status == 403
    assert directus.call("GET", f"/items/documents/{uuid.uuid4()}", token=a["token"])[0] == 403


def test_articles_are_readable_without_a_token_and_writable_only_by_their_owner(directus, users):
    a, b = users["a"]["token"], users["b"]["token"]
    article = directus.ok("POST", "/items/articles", {"title": "hello"}, a)
    assert article["owner_id"] == users["a"]["id"]
    assert article["id"] in {x["id"] for x in directus.ok("GET", "/items/articles?limit=-1")}
    assert article["id"] in {x["id"] for x in directus.ok("GET", "/items/articles?limit=-1", token=b)}
    assert directus.call("POST", "/items/articles", {"title": "anonymous"})[0] in (401, 403)
    assert directus.call("PATCH", f"/items/articles/{article['id']}", {"title": "defaced"}, b)[0] == 403
    assert directus.call("DELETE", f"/items/articles/{article['id']}", token=b)[0] == 403
    assert directus.call("PATCH", f"/items/articles/{article['id']}", {"title": "edited"})[0] in (401, 403)
    assert directus.ok("PATCH", f"/items/articles/{article['id']}", {"title": "edited"}, a)["title"] == "edited"


# --- the same rows through SQL -----------------------------------------------------------------


def test_sql_sees_the_same_rows_count_for_count(engine, users, written):
    """The tables' owner (RLS forced), as any front door that sets ccoas.user_id does."""
    for name in ("a", "b"):
        user, tenant = users[name]["id"], users[name]["tenant"]
        notes = psql(engine, f"SET ROLE app_owner; SET ccoas.user_id = '{user}'; SELECT id FROM app.notes")
        documents = psql(engine, f"SET ROLE app_owner; SET ccoas.tenant_id = '{tenant}'; SELECT id FROM app.documents")
        assert sorted(notes) == sorted(written[name]["notes"])
        assert sorted(documents) == sorted(written[name]["documents"])
    assert psql(engine, "SET ROLE app_owner; SELECT count(*) FROM app.notes") == ["0"]


# --- the token works at Hasura too ----------------------------------------------------------


def decode(segment: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def hasura_jwt_key(engine, stack_file: Path, tmp_path: Path) -> str:
    """The key Hasura is configured with for this stack: its rendered entrypoint, run with the
    stack's secret files up to the point where it execs the engine, which prints its env."""
    data = yaml.safe_load(stack_file.read_text())
    data["components"]["hasura"] = {"enabled": True, "image": {"source": "registry"}}
    data["components"]["postgraphile"] = {"enabled": False}  # one GraphQL plane per stack
    plan = build_plan(load_stack(_write(tmp_path / "with-hasura.yaml", data)), name=engine.plan.stack)
    assert plan.secret("directus_secret").vault_path == engine.plan.secret("directus_secret").vault_path
    assert set(plan.secret("directus_secret").readers) == {"directus", "hasura"}
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    for mount in plan.service("hasura").secrets:
        live = engine.paths.secret_file("directus", mount.secret) if mount.secret == "directus_secret" else None
        (secrets_dir / mount.secret).write_text(live.read_text() if live else "x" * 32)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # the entrypoint execs its arguments (the plain image's graphql-engine): a stand-in prints the key it got
    (bin_dir / "graphql-engine").write_text('#!/bin/sh\nprintf %s "$HASURA_GRAPHQL_JWT_SECRET"\n')
    os.chmod(bin_dir / "graphql-engine", 0o755)
    script = tmp_path / "entrypoint.sh"
    script.write_text(rendered_files(plan)["hasura/entrypoint.sh"].replace("/run/secrets/", f"{secrets_dir}/"))
    result = subprocess.run(["sh", str(script), "graphql-engine", "serve"], capture_output=True, text=True, env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}, timeout=30)
    assert result.returncode == 0, result.stderr
    configured = json.loads(result.stdout)
    assert configured["type"] == "HS256"
    return configured["key"]


def _write(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_as_token_carries_hasura_claims_and_verifies_with_hasuras_key(engine, stack_file, users, tmp_path):
    a = users["a"]
    header, payload, signature = a["token"].split(".")
    assert decode(header)["alg"] == "HS256"
    assert decode(payload)["tenant_id"] == a["tenant"]  # PostGraphile's tenant claim
    claims = decode(payload)[CLAIMS]
    assert claims == {
        "x-hasura-user-id": a["id"],
        "x-hasura-tenant-id": a["tenant"],
        "x-hasura-default-role": "user",
        "x-hasura-allowed-roles": ["user"],
    }
    key = hasura_jwt_key(engine, stack_file, tmp_path)
    expected = base64.urlsafe_b64encode(hmac.new(key.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()).rstrip(b"=").decode()
    assert hmac.compare_digest(expected, signature)
    forged = base64.urlsafe_b64encode(hmac.new(b"another key", f"{header}.{payload}".encode(), hashlib.sha256).digest()).rstrip(b"=").decode()
    assert forged != signature


# --- the same user at the GraphQL plane (PostGraphile) through Nginx, with the same token -------


def graphql(directus: Directus, query: str, token: str | None = None) -> dict:
    return directus.edge.request("POST", "/graphql", {"query": query}, token)[1]


def test_a_directus_login_reads_the_same_rows_through_graphql(directus, users, written):
    for name in ("a", "b"):
        answer = graphql(directus, "{ allNotes { nodes { rowId ownerId } } allDocuments { nodes { rowId tenantId } } }", users[name]["token"])
        assert "errors" not in answer, answer
        notes, documents = answer["data"]["allNotes"]["nodes"], answer["data"]["allDocuments"]["nodes"]
        assert sorted(n["rowId"] for n in notes) == sorted(written[name]["notes"])
        assert {n["ownerId"] for n in notes} == {users[name]["id"]}
        assert sorted(d["rowId"] for d in documents) == sorted(written[name]["documents"])
        assert {d["tenantId"] for d in documents} == {users[name]["tenant"]}
    anonymous = graphql(directus, "{ allNotes { nodes { rowId } } }")
    refused = (anonymous.get("data") or {}).get("allNotes")  # no token: owner-only rows are nobody's
    assert refused is None or refused["nodes"] == [], anonymous


# --- changes reach only the subscribers allowed to see them, through Nginx -----------------------


async def _directus_subscriber(directus: Directus, token: str, received: list, ready: asyncio.Event, stop: asyncio.Event) -> None:
    """Directus realtime over wss: authenticate in the handshake message, subscribe to notes."""
    url = directus.edge.websocket_url("/directus/websocket")
    async with websockets.connect(url, ssl=directus.context, open_timeout=20) as ws:
        await directus_subscribe(ws, token, "notes", ["id", "owner_id", "body"])
        ready.set()
        await gather_events(ws, received, stop)


async def _graphql_subscriber(directus: Directus, token: str, received: list, ready: asyncio.Event, stop: asyncio.Event) -> None:
    """PostGraphile over wss (graphql-transport-ws), authenticated with the Directus token."""
    url = directus.edge.websocket_url("/graphql")
    async with websockets.connect(url, ssl=directus.context, subprotocols=["graphql-transport-ws"], open_timeout=20) as ws:
        await graphql_subscribe(ws, token, "subscription { notesChanged { op key node { body ownerId } } }")
        ready.set()
        await gather_events(ws, received, stop)


@pytest.mark.parametrize("subscriber", [_directus_subscriber, _graphql_subscriber], ids=["directus-realtime", "graphql"])
def test_a_subscriber_gets_its_own_change_and_nothing_of_others(directus, users, subscriber):
    """A subscribes; B's insert (through Directus) must not reach A; A's own insert must, within 2 s."""
    a, b = users["a"], users["b"]
    received: list = []
    marker = uuid.uuid4().hex[:8]

    async def scenario() -> float:
        ready, stop = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(subscriber(directus, a["token"], received, ready, stop))
        await asyncio.wait_for(ready.wait(), 20)
        await asyncio.to_thread(directus.ok, "POST", "/items/notes", {"body": f"b {marker}"}, b["token"])
        await asyncio.sleep(1.5)
        leaked = list(received)
        began = time.monotonic()
        await asyncio.to_thread(directus.ok, "POST", "/items/notes", {"body": f"a {marker}"}, a["token"])
        while not received[len(leaked):] and time.monotonic() - began < 2:
            await asyncio.sleep(0.02)
        stop.set()
        await task
        assert leaked == [], leaked
        return began

    began = asyncio.run(scenario())
    assert len(received) == 1, received
    at, message = received[0]
    assert f"a {marker}" in json.dumps(message) and a["id"] in json.dumps(message), message
    assert f"b {marker}" not in json.dumps(message)
    print(f"\ninsert through Directus → {subscriber.__name__.strip('_')}: {(at - began) * 1000:.1f} ms")


@pytest.mark.parametrize("subscriber", [_directus_subscriber, _graphql_subscriber], ids=["directus-realtime", "graphql"])
def test_a_delete_reaches_only_who_could_read_the_row(directus, users, subscriber):
    """A subscribes; B creates and deletes a note (through Directus): A hears nothing of it, not
    even its key. A creates and deletes one: A hears both, the delete naming A's key."""
    a, b = users["a"], users["b"]
    received: list = []

    async def scenario() -> tuple[str, str, list]:
        ready, stop = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(subscriber(directus, a["token"], received, ready, stop))
        await asyncio.wait_for(ready.wait(), 20)
        theirs = (await asyncio.to_thread(directus.ok, "POST", "/items/notes", {"body": "b, soon gone"}, b["token"]))["id"]
        await asyncio.to_thread(directus.ok, "DELETE", f"/items/notes/{theirs}", None, b["token"])
        await asyncio.sleep(1.5)
        leaked = list(received)
        mine = (await asyncio.to_thread(directus.ok, "POST", "/items/notes", {"body": "a, soon gone"}, a["token"]))["id"]
        await asyncio.sleep(0.5)
        await asyncio.to_thread(directus.ok, "DELETE", f"/items/notes/{mine}", None, a["token"])
        began = time.monotonic()
        while len(received) < len(leaked) + 2 and time.monotonic() - began < 3:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)
        stop.set()
        await task
        return theirs, mine, leaked

    theirs, mine, leaked = asyncio.run(scenario())
    assert leaked == [], leaked
    assert theirs not in json.dumps(received), received
    messages = [message for _, message in received]
    assert len(messages) == 2, messages
    created, deleted = (json.dumps(m) for m in messages)
    assert mine in created and ("create" in created or "INSERT" in created), messages
    assert mine in deleted and ("delete" in deleted or "DELETE" in deleted), messages


# --- last, as it changes the stack: a changed preset converges on the next up ----------------


def test_a_changed_preset_converges_on_the_next_up(engine, stack_file, directus, users, tmp_path):
    """articles: public-read → owner-only. The next up changes the policies in Postgres and the
    permissions in Directus: no more anonymous reads; each owner keeps their own."""
    a = users["a"]["token"]
    article = directus.ok("POST", "/items/articles", {"title": "private now"}, a)
    data = yaml.safe_load(stack_file.read_text())
    [articles] = [t for t in data["schema"]["tables"] if t["name"] == "articles"]
    articles["policy"] = "owner-only"
    changed = LocalEngine.connect(build_plan(load_stack(_write(tmp_path / "changed.yaml", data)), name=engine.plan.stack))
    assert changed.up().changes > 0
    # the up may recreate Nginx (it starts after PostGraphile, which serves the changed schema),
    # and with host_port 0 the engine then picks a new port: reach it as a client would, anew
    directus = Directus(changed)
    assert directus.call("GET", "/items/articles?limit=-1")[0] in (401, 403)
    assert article["id"] not in {x["id"] for x in directus.ok("GET", "/items/articles?limit=-1", token=users["b"]["token"])}
    assert article["id"] in {x["id"] for x in directus.ok("GET", "/items/articles?limit=-1", token=a)}
    assert psql(engine, "SELECT string_agg(policyname, ',' ORDER BY policyname) FROM pg_policies WHERE tablename = 'articles'") == ["ccoas_directus_control_plane,ccoas_owner_only"]
    assert provision(changed) == "directus provision: 0 created, 0 updated, 0 deleted"
