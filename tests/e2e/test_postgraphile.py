"""PostGraphile 5 with ccoas's server against the rendered bootstrap on a real Postgres 18.

The server is the image's: ``templates/postgraphile/server.mjs`` run by the recipe's Node 22
with the recipe's npm install (both fetched by :mod:`ccoas.images`, content-cached), reading the
rendered ``settings.json`` (database host and port pointed at the test cluster, secret files in
a temporary directory). Tokens are HS256, signed with the Directus SECRET file as Directus does.

Proves: a query with A's token returns exactly A's rows (the count SQL gives under A's
settings); without a token only public-read tables can be read and mutations are refused; a
forged, expired or wrongly signed token is refused; introspection is refused outside dev; a
subscription on notes receives A's own insert within 2 s and nothing for B's.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests
import websockets
import yaml
from test_bootstrap_sql import OS_USER, REPO, applied, as_owner, cluster  # noqa: F401 - fixtures

from ccoas.edge import gather_events, graphql_subscribe
from ccoas.images import fetch_npm_app, fetch_npm_runtime
from ccoas.host import host_layout
from ccoas.plan import Plan
from ccoas.planner import CATALOG, build_plan, parse_stack
from ccoas.render import rendered_files

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", params=["ci"])
def plan(request) -> Plan:
    """The dev stack's tables (owner-only notes, tenant documents, public-read articles) with
    PostGraphile as its GraphQL plane, in a ci environment (no introspection)."""
    data = yaml.safe_load((REPO / "stacks" / "dev.yaml").read_text())
    data["environment"] = request.param
    data["components"]["postgraphile"] = {}
    data["components"]["ollama"] = {"enabled": False}
    for table in data["schema"]["tables"]:
        for column in table["columns"]:
            column.pop("embed", None)
    return build_plan(parse_stack(data, "dev+postgraphile"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def token(key: str, claims: dict, alg: str = "HS256") -> str:
    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    head = part({"alg": alg, "typ": "JWT"})
    body = part({"iss": "directus", "iat": int(time.time()), "exp": int(time.time()) + 600, **claims})
    signature = hmac.new(key.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def server(cluster, applied, plan, tmp_path_factory):
    recipe = CATALOG["postgraphile"].recipe
    layout = host_layout()
    runtime_artifact = next(a for a in recipe.artifacts if a.spec.startswith("node-linux"))
    app_artifact = next(a for a in recipe.artifacts if a.spec.startswith("postgraphile@"))
    runtime = fetch_npm_runtime(layout, runtime_artifact)
    app = fetch_npm_app(layout, app_artifact, runtime_artifact, runtime)
    root = tmp_path_factory.mktemp("postgraphile")
    shutil.copytree(app, root / "app", symlinks=True)
    shutil.copy(REPO / "templates" / "postgraphile" / "server.mjs", root / "app" / "server.mjs")
    jwt_key = secrets.token_urlsafe(36)
    (root / "directus_secret").write_text(jwt_key + "\n")
    (root / "postgres_postgraphile_password").write_text(applied["passwords"]["postgres_postgraphile_password"] + "\n")
    settings = json.loads(rendered_files(plan)["postgraphile/settings.json"])
    port = _free_port()
    settings["port"] = port
    settings["database"].update(host="127.0.0.1", port=cluster.port, password_file=str(root / "postgres_postgraphile_password"))
    settings["jwt"]["secret_file"] = str(root / "directus_secret")
    (root / "settings.json").write_text(json.dumps(settings))
    log = open(root / "server.log", "w")
    process = subprocess.Popen(
        [str(runtime / "bin" / "node"), str(root / "app" / "server.mjs")],
        env={"PATH": "/usr/bin:/bin", "CCOAS_SETTINGS": str(root / "settings.json"), "NODE_ENV": "production"},
        stdout=log, stderr=subprocess.STDOUT, cwd=root / "app",
    )
    url = f"http://127.0.0.1:{port}/graphql"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.post(url, json={"query": "{__typename}"}, timeout=2).json().get("data"):
                    break
            except requests.RequestException:
                pass
            assert process.poll() is None, (root / "server.log").read_text()
            assert time.monotonic() < deadline, (root / "server.log").read_text()
            time.sleep(0.5)
        yield {"url": url, "ws": f"ws://127.0.0.1:{port}/graphql", "key": jwt_key, "log": root / "server.log"}
    finally:
        process.terminate()
        process.wait(timeout=10)


def gql(server, query: str, bearer: str | None = None, variables: dict | None = None) -> dict:
    headers = {"authorization": f"Bearer {bearer}"} if bearer else {}
    return requests.post(server["url"], json={"query": query, "variables": variables or {}}, headers=headers, timeout=10).json()


def assert_refused(server, answer: dict, reason: str) -> None:
    """No data, and an error whose cause (masked for the client, as in production) the server
    logged under the error's id."""
    assert answer.get("errors"), answer
    assert not any((answer.get("data") or {}).values()), answer
    error_id = answer["errors"][0].get("extensions", {}).get("errorId")
    text = json.dumps(answer["errors"]) if error_id is None else server["log"].read_text()
    assert reason in text and (error_id is None or error_id in text), (answer, text[-2000:])


def insert_notes_as(cluster, applied, owner: str, count: int) -> None:
    password = applied["passwords"]["postgres_directus_password"]
    values = ", ".join(f"('{owner}', 'note {i}')" for i in range(count))
    cluster.sql(f"SET ccoas.user_id = '{owner}'; INSERT INTO app.notes (owner_id, body) VALUES {values}", user="directus", password=password)


def test_a_token_sees_exactly_its_own_rows(cluster, applied, server):
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    insert_notes_as(cluster, applied, alice, 3)
    insert_notes_as(cluster, applied, bob, 2)
    as_alice = gql(server, "{ allNotes { totalCount nodes { ownerId body } } }", token(server["key"], {"id": alice}))
    assert "errors" not in as_alice, as_alice
    notes = as_alice["data"]["allNotes"]
    # as the tables' owner, RLS forced (directus reads every row through its control-plane policy)
    sql_count = as_owner(cluster, "SELECT count(*) FROM app.notes", user_id=alice).stdout.strip().splitlines()[-1]
    assert notes["totalCount"] == int(sql_count) == 3
    assert {n["ownerId"] for n in notes["nodes"]} == {alice}


def test_a_token_writes_only_as_itself(server):
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    bearer = token(server["key"], {"id": alice})
    created = gql(server, "mutation($o: UUID!) { createNote(input: {note: {ownerId: $o, body: \"mine\"}}) { note { body } } }", bearer, {"o": alice})
    assert created.get("data", {}).get("createNote", {}).get("note", {}).get("body") == "mine", created
    forged = gql(server, "mutation($o: UUID!) { createNote(input: {note: {ownerId: $o, body: \"forged\"}}) { note { body } } }", bearer, {"o": bob})
    assert_refused(server, forged, "row-level security")


def test_without_a_token_only_public_read_tables_and_no_mutations(cluster, applied, server):
    owner = str(uuid.uuid4())
    cluster.sql(
        f"SET ccoas.user_id = '{owner}'; INSERT INTO app.articles (owner_id, title) VALUES ('{owner}', 'public')",
        user="directus", password=applied["passwords"]["postgres_directus_password"],
    )
    insert_notes_as(cluster, applied, owner, 1)
    articles = gql(server, "{ allArticles { nodes { title } } }")
    assert "errors" not in articles and {"title": "public"} in articles["data"]["allArticles"]["nodes"]
    for query in ("{ allNotes { totalCount } }", "{ allDocuments { totalCount } }"):
        refused = gql(server, query)
        assert_refused(server, refused, "permission denied")
    mutation = gql(server, "mutation($o: UUID!) { createArticle(input: {article: {ownerId: $o, title: \"x\"}}) { article { title } } }", variables={"o": owner})
    assert_refused(server, mutation, "permission denied")


@pytest.mark.parametrize(
    "bad",
    [
        lambda key: token("not-the-directus-secret", {"id": str(uuid.uuid4())}),
        lambda key: token(key, {"id": str(uuid.uuid4()), "exp": int(time.time()) - 10}),
        lambda key: token(key, {"id": str(uuid.uuid4()), "iss": "someone-else"}),
        lambda key: token(key, {"id": str(uuid.uuid4())}).rsplit(".", 1)[0] + ".",
        lambda key: "garbage",
    ],
    ids=["wrong-key", "expired", "wrong-issuer", "unsigned", "garbage"],
)
def test_a_bad_token_is_refused(server, bad):
    answer = gql(server, "{ allNotes { totalCount } }", bad(server["key"]))
    assert answer.get("data") in (None, {}) or answer["data"].get("allNotes") is None
    assert answer.get("errors"), answer


def test_introspection_is_refused_outside_dev(server, plan):
    assert plan.environment != "dev"
    answer = gql(server, "{ __schema { types { name } } }")
    assert "introspection" in json.dumps(answer.get("errors")).lower(), answer


async def _subscribe(server, bearer: str, received: list, ready: asyncio.Event, stop: asyncio.Event) -> None:
    async with websockets.connect(server["ws"], subprotocols=["graphql-transport-ws"]) as ws:
        await graphql_subscribe(ws, bearer, "subscription { notesChanged { seq op node { body ownerId } } }")
        ready.set()
        await gather_events(ws, received, stop)


def test_a_subscriber_gets_its_own_insert_within_2s_and_nothing_of_others(cluster, applied, server):
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    received: list = []

    async def scenario() -> float:
        ready, stop = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(_subscribe(server, token(server["key"], {"id": alice}), received, ready, stop))
        await asyncio.wait_for(ready.wait(), 10)
        await asyncio.to_thread(insert_notes_as, cluster, applied, bob, 1)
        await asyncio.sleep(1.5)
        assert received == [], received
        began = time.monotonic()
        await asyncio.to_thread(insert_notes_as, cluster, applied, alice, 1)
        while not received and time.monotonic() - began < 2:
            await asyncio.sleep(0.02)
        stop.set()
        await task
        return began

    began = asyncio.run(scenario())
    assert len(received) == 1, received
    at, message = received[0]
    assert at - began < 2
    assert message["type"] == "next"
    change = message["payload"]["data"]["notesChanged"]
    assert change["op"] == "INSERT" and change["node"] == {"body": "note 0", "ownerId": alice}
    print(f"\ninsert→GraphQL subscriber: {(at - began) * 1000:.1f} ms")
