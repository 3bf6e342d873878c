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

import psycopg
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

DATABASE = "app"  # test_bootstrap_sql's cluster


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


# --- realtime: who hears of what ----------------------------------------------------------------
# Each subscriber gets exactly the changes of rows it may read (inserts, updates, deletes), for
# a user, another user, a tenant, another tenant and no token; nothing else, not even a key or
# a global sequence number. Checked in SQL (ccoas.change_audience, one call for every identity)
# and through the server's websockets.


def connect_as(cluster, applied, role: str) -> psycopg.Connection:
    password = applied["passwords"][f"postgres_{role}_password"]
    return psycopg.connect(host="127.0.0.1", port=cluster.port, dbname=DATABASE, user=role, password=password, autocommit=True)


def new_people() -> dict[str, str]:
    """Users A and B, tenants T1 and T2 and a member of each: fresh ids."""
    return {name: str(uuid.uuid4()) for name in ("a", "b", "t1", "t2", "t1_member", "t2_member")}


def write_rows(cluster, applied, people: dict[str, str]) -> dict[str, str]:
    """As Directus's role: a note of A and of B, a document of T1 and of T2, an article; then
    two updates. Returns the rows' ids."""
    with connect_as(cluster, applied, "directus") as conn:
        def one(sql: str, *params) -> str:
            return str(conn.execute(sql, params).fetchone()[0])

        ids = {
            "note_a": one("INSERT INTO app.notes (owner_id, body) VALUES (%s, 'a secret') RETURNING id", people["a"]),
            "note_b": one("INSERT INTO app.notes (owner_id, body) VALUES (%s, 'b secret') RETURNING id", people["b"]),
            "doc_t1": one("INSERT INTO app.documents (tenant_id, title) VALUES (%s, 't1 plan') RETURNING id", people["t1"]),
            "doc_t2": one("INSERT INTO app.documents (tenant_id, title) VALUES (%s, 't2 plan') RETURNING id", people["t2"]),
            "article": one("INSERT INTO app.articles (owner_id, title) VALUES (%s, 'news') RETURNING id", people["a"]),
        }
        conn.execute("UPDATE app.notes SET body = 'a secret, edited' WHERE id = %s", (ids["note_a"],))
        conn.execute("UPDATE app.documents SET title = 't1 plan, edited' WHERE id = %s", (ids["doc_t1"],))
    return ids


def delete_rows(cluster, applied, ids: dict[str, str]) -> None:
    """Then the deletes AUDIENCE lists (a row inserted and gone before anyone asked is, rightly,
    nobody's insert to hear of: the deletes come once the inserts were heard)."""
    with connect_as(cluster, applied, "directus") as conn:
        for row, table in (("note_b", "notes"), ("doc_t1", "documents"), ("article", "articles"), ("note_a", "notes")):
            conn.execute(f"DELETE FROM app.{table} WHERE id = %s", (ids[row],))


def identities(people: dict) -> dict[str, dict]:
    """Each subscriber's role and claims, as the server hands them to ccoas.change_audience."""
    user = lambda uid, tenant="": {"role": "postgraphile_user", "settings": {"ccoas.user_id": uid, "ccoas.tenant_id": tenant}}  # noqa: E731
    return {
        "a": user(people["a"]),
        "b": user(people["b"]),
        "t1": user(people["t1_member"], people["t1"]),
        "t2": user(people["t2_member"], people["t2"]),
        "anonymous": {"role": "postgraphile_anonymous", "settings": {}},
    }


# who may hear of which change: (row, op) -> subscribers
AUDIENCE = {
    ("note_a", "INSERT"): {"a"}, ("note_a", "UPDATE"): {"a"}, ("note_a", "DELETE"): {"a"},
    ("note_b", "INSERT"): {"b"}, ("note_b", "DELETE"): {"b"},
    ("doc_t1", "INSERT"): {"t1"}, ("doc_t1", "UPDATE"): {"t1"}, ("doc_t1", "DELETE"): {"t1"},
    ("doc_t2", "INSERT"): {"t2"},
    ("article", "INSERT"): {"a", "b", "t1", "t2", "anonymous"}, ("article", "DELETE"): {"a", "b", "t1", "t2", "anonymous"},
}


def test_change_audience_tells_each_identity_only_the_rows_it_may_read(cluster, applied):
    people = new_people()
    names = dict(enumerate(identities(people)))
    heard = {change: set() for change in AUDIENCE}
    with connect_as(cluster, applied, "postgraphile") as conn:
        def ask(ids: dict[str, str], ops: tuple[str, ...]) -> None:
            """Who may hear of each of these rows' logged changes of these kinds, in one call."""
            row_of = {row_id: row for row, row_id in ids.items()}
            log = conn.execute(
                "SELECT seq, op, key ->> 'id' FROM ccoas.change_log WHERE key ->> 'id' = ANY (%s) AND op = ANY (%s)", (list(row_of), list(ops))
            ).fetchall()
            seq_of = {seq: (row_of[row_id], op) for seq, op, row_id in log}
            answer = conn.execute(
                "SELECT identity, seq FROM ccoas.change_audience(%s::jsonb, %s::bigint[])",
                (json.dumps(list(identities(people).values())), list(seq_of)),
            ).fetchall()
            for change in seq_of.values():
                heard.setdefault(change, set())
            for identity, seq in answer:
                heard[seq_of[seq]].add(names[identity])

        ids = write_rows(cluster, applied, people)
        ask(ids, ("INSERT", "UPDATE"))
        delete_rows(cluster, applied, ids)
        ask(ids, ("DELETE",))
        assert heard == AUDIENCE
        # one statement, and the connection is itself again afterwards
        assert conn.execute("SELECT current_user, pg_catalog.current_setting('ccoas.user_id', true)").fetchone() in (("postgraphile", None), ("postgraphile", ""))
        # the deleted rows' images are the owner's: not even the GraphQL plane reads them
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT image FROM ccoas.change_log_image")


@pytest.mark.parametrize("role", ["postgraphile_user", "postgraphile_anonymous", "directus"])
def test_no_request_role_can_ask_who_may_read_what(cluster, applied, role):
    """change_audience acts as anyone: only the GraphQL plane's login role may call it."""
    login = "directus" if role == "directus" else "postgraphile"
    with connect_as(cluster, applied, login) as conn:
        if role != login:
            conn.execute(f"SET ROLE {role}")
        for function in ("change_audience", "deleted_audience"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"SELECT * FROM ccoas.{function}('[]'::jsonb, '{{}}'::bigint[])")


async def _open(server, bearer: str | None, subscriptions: dict[str, str]):
    """A graphql-transport-ws connection with one subscription per id."""
    ws = await websockets.connect(server["ws"], subprotocols=["graphql-transport-ws"], max_queue=None)
    await ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {bearer}"} if bearer else {}}))
    ack = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert ack["type"] == "connection_ack", ack
    for sid, query in subscriptions.items():
        await ws.send(json.dumps({"id": sid, "type": "subscribe", "payload": {"query": query}}))
    return ws


async def _drain(ws, until: float) -> list[dict]:
    messages = []
    while True:
        left = until - time.monotonic()
        if left <= 0:
            return messages
        try:
            messages.append(json.loads(await asyncio.wait_for(ws.recv(), left)))
        except asyncio.TimeoutError:
            return messages


def feed(table: str) -> str:
    return f"subscription {{ {table}Changed {{ seq op key }} }}"


def error_lines(server) -> list[str]:
    return [line for line in server["log"].read_text().splitlines() if "failed" in line or "error" in line.lower()]


def test_subscribers_hear_only_rows_they_may_read_with_their_own_order(cluster, applied, server):
    """Through the server's websockets: A, B, a member of T1, of T2, and no token, each on the
    tables it may read. Each gets exactly its changes (inserts, updates, deletes), numbered 1, 2,
    … for that subscription, and nothing of anyone else's: no row, no key, no count. No token
    on notes or documents: refused when subscribing, once, and no error line per event."""
    people = new_people()
    bearer = {
        "a": token(server["key"], {"id": people["a"]}),
        "b": token(server["key"], {"id": people["b"]}),
        "t1": token(server["key"], {"id": people["t1_member"], "tenant_id": people["t1"]}),
        "t2": token(server["key"], {"id": people["t2_member"], "tenant_id": people["t2"]}),
        "anonymous": None,
    }
    plan = {name: {table: feed(table) for table in ("notes", "documents", "articles")} for name in bearer}
    before = error_lines(server)

    async def scenario():
        sockets = {name: await _open(server, bearer[name], subs) for name, subs in plan.items()}
        refusals = dict(zip(sockets, await asyncio.gather(*(_drain(ws, time.monotonic() + 1.0) for ws in sockets.values()))))
        written = await asyncio.to_thread(write_rows, cluster, applied, people)
        await asyncio.sleep(1)
        await asyncio.to_thread(delete_rows, cluster, applied, written)
        until = time.monotonic() + 3
        later = await asyncio.gather(*(_drain(ws, until) for ws in sockets.values()))
        heard = {name: refusals[name] + messages for name, messages in zip(sockets, later)}
        for ws in sockets.values():
            await ws.close()
        return written, heard

    ids, heard = asyncio.run(scenario())
    row_of = {row_id: row for row, row_id in ids.items()}
    table_of = {"note": "notes", "doc": "documents", "article": "articles"}
    for name, messages in heard.items():
        expected = {table: [] for table in plan[name]}
        for (row, op), audience in AUDIENCE.items():
            if name in audience:
                expected[table_of[row.split("_")[0]]].append((row, op))
        got = {table: [] for table in plan[name]}
        refused = set()
        for message in messages:
            if message["type"] == "error" or (message["type"] == "next" and "errors" in message["payload"]):
                assert "subscription refused" in json.dumps(message["payload"]), (name, message)
                refused.add(message["id"])
                continue
            if message["type"] != "next":
                continue
            change = message["payload"]["data"][f"{message['id']}Changed"]
            key = (change.get("key") or {}).get("id")
            assert key in row_of, (name, change)  # nothing of rows this test did not write, nothing else at all
            got[message["id"]].append((row_of[key], change["op"], change["seq"]))
        for table, changes in got.items():
            assert [seq for _, _, seq in changes] == [str(n) for n in range(1, len(changes) + 1)], (name, table, changes)
            assert sorted((row, op) for row, op, _ in changes) == sorted(expected[table]), (name, table, changes)
        assert refused == ({"notes", "documents"} if name == "anonymous" else set()), (name, messages)
    assert error_lines(server) == before, error_lines(server)[len(before):]



def test_subscriptions_per_connection_are_bounded(server, plan):
    """The settings' per_connection subscriptions on one websocket; the next is refused with
    one clear error, and the connection keeps the ones it has."""
    limit = json.loads(rendered_files(plan)["postgraphile/settings.json"])["subscriptions"]["per_connection"]

    async def scenario():
        ws = await _open(server, None, {f"s{n}": feed("articles") for n in range(limit + 1)})
        messages = await _drain(ws, time.monotonic() + 3)
        await ws.close()
        return messages

    messages = asyncio.run(scenario())
    refusals = [m for m in messages if m["type"] == "error" or (m["type"] == "next" and "errors" in m["payload"])]
    assert len(refusals) == 1 and "too many subscriptions on this connection" in json.dumps(refusals[0]), refusals


def test_a_burst_of_anonymous_subscriptions_cannot_slow_another_users_query(cluster, applied, server):
    """Three anonymous websockets with 100 subscriptions each on a public table, one with 100
    on a table it may not read (refused), while 20 notes and 20 articles are written (6,000
    deliveries): B's query keeps a p50 under 100 ms and a p95 under 500 ms (measured here: p50
    22-34 ms, p95 170-210 ms, against 10-15 and 28-30 ms alone; the bound is generous for a
    2-core host that runs this client and other tests too; the figures are printed), and the
    server logs no error line for it. Before: one transaction per subscription per event, and
    another user's p50 went from 5 to 205 ms (issue 21)."""
    bob = str(uuid.uuid4())
    bearer = token(server["key"], {"id": bob})
    insert_notes_as(cluster, applied, bob, 3)
    query = "{ allNotes { totalCount } }"

    def latencies(count: int) -> list[float]:
        spent = []
        for _ in range(count):
            began = time.monotonic()
            answer = gql(server, query, bearer)
            spent.append(time.monotonic() - began)
            assert answer["data"]["allNotes"]["totalCount"] == 3, answer
        return spent

    baseline = latencies(30)
    before = error_lines(server)

    async def scenario():
        crowd = [await _open(server, None, {f"s{n}": feed("articles") for n in range(100)}) for _ in range(3)]
        crowd.append(await _open(server, None, {f"s{n}": feed("notes") for n in range(100)}))
        drains = [asyncio.create_task(_drain(ws, time.monotonic() + 8)) for ws in crowd]
        writer = asyncio.to_thread(_write_burst, cluster, applied, bob)
        during = asyncio.to_thread(latencies, 40)
        _, measured = await asyncio.gather(writer, during)
        heard = await asyncio.gather(*drains)
        for ws in crowd:
            await ws.close()
        return measured, heard

    during, heard = asyncio.run(scenario())
    ms = lambda values, q: sorted(values)[int(len(values) * q / 100) - 1] * 1000  # noqa: E731
    print(f"\nB's query: p50 {ms(baseline, 50):.1f} ms, p95 {ms(baseline, 95):.1f} ms alone; "
          f"p50 {ms(during, 50):.1f} ms, p95 {ms(during, 95):.1f} ms beside 300 anonymous subscriptions and 100 refused")
    assert ms(during, 50) < 100 and ms(during, 95) < 500
    delivered = [m for messages in heard[:3] for m in messages if m["type"] == "next" and "data" in m["payload"]]
    assert len(delivered) == 300 * 20  # each public article to each anonymous subscription
    assert all(m["type"] in ("error", "next", "complete") for m in heard[3])
    assert not any(m["type"] == "next" and "data" in m["payload"] and m["payload"]["data"] for m in heard[3])
    assert error_lines(server) == before, error_lines(server)[len(before):]


def _write_burst(cluster, applied, owner: str) -> None:
    with connect_as(cluster, applied, "directus") as conn:
        conn.execute("SELECT pg_catalog.set_config('ccoas.user_id', %s, false)", (owner,))
        for n in range(20):
            conn.execute("INSERT INTO app.notes (owner_id, body) VALUES (%s, %s)", (str(uuid.uuid4()), f"burst {n}"))
            conn.execute("INSERT INTO app.articles (owner_id, title) VALUES (%s, %s)", (owner, f"burst {n}"))
            time.sleep(0.05)
