"""The embedding worker in a real stack: Vault, Postgres, Ollama (the packaged model) and the
worker built from its crate, brought up by ``ccoas up``'s engine.

Rows written through Postgres by a role subject to row-level security get their embedding
within a bounded time; the worker's role, logged in with its own password by a real psql,
reads only the key, source and embedding of the embedded table and writes only the
embedding; and killing Ollama or Postgres in the middle of an ingest loses no row: every
row, including those written while a service was down, ends with an embedding.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from ccoas.planner import CATALOG, build_plan, load_stack
from healthy_stack import healthy_stack  # tests/e2e is on sys.path (rootdir imports)

pytestmark = pytest.mark.e2e

RUNNING = ("vault", "postgres", "ollama", "embedder")
TENANT = str(uuid.uuid4())
BOUND_S = 600
"""How long every row may wait for its embedding: measured under a load of 9 on 2 cores,
Ollama embedded 2–3 rows/s; on a quiet host, tens."""
INGEST = 200
"""Rows of an ingest a service is killed in the middle of (the worker takes 32 at a time)."""


def stack_document(name: str) -> dict:
    return {
        "version": 1,
        "name": name,
        "environment": "ci",
        "images": {"source": "local"},
        "tls": {"mode": "generate"},
        "components": {c: {"enabled": False} for c in sorted(CATALOG) if c not in RUNNING},
        "schema": {
            "tables": [
                {
                    "name": "documents",
                    "policy": "tenant",
                    "columns": [
                        {"name": "id", "type": "uuid", "primary_key": True, "nullable": False, "default": "gen_random_uuid()"},
                        {"name": "tenant_id", "type": "uuid", "nullable": False},
                        {"name": "title", "type": "text", "nullable": False},
                        {"name": "secret_note", "type": "text"},
                        {"name": "embedding", "type": "vector(384)", "embed": {"source": "title", "model": "all-minilm-l6-v2"}},
                    ],
                },
                {
                    "name": "notes",
                    "policy": "owner-only",
                    "columns": [
                        {"name": "id", "type": "uuid", "primary_key": True, "nullable": False, "default": "gen_random_uuid()"},
                        {"name": "owner_id", "type": "uuid", "nullable": False},
                        {"name": "body", "type": "text"},
                    ],
                },
            ]
        },
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    path = Path(tmp_path_factory.mktemp("stacks")) / "h13b.yaml"
    name = f"e2e-h13b-{uuid.uuid4().hex[:6]}"
    path.write_text(yaml.safe_dump(stack_document(name), sort_keys=False))
    with healthy_stack(build_plan(load_stack(path)), RUNNING) as engine:
        yield engine


def psql(engine, sql: str, role: str | None = None) -> tuple[int, str]:
    """``sql`` by a real psql in the postgres container: as the superuser on the socket, or as
    ``role`` over TCP with its own password (the secret file postgres also reads)."""
    service = engine.plan.service("postgres")
    container = engine.client.containers.get(service.container_name)
    if role is None:
        command = ["psql", "-X", "-qAt", "-v", "ON_ERROR_STOP=1", "-h", "/tmp", "-U", "postgres", "-d", "app", "-c", sql]
    else:
        password = f"/run/secrets/postgres_{role}_password"
        script = f'PGPASSWORD="$(cat {password})" exec psql -X -qAt -v ON_ERROR_STOP=1 -h 127.0.0.1 -U {role} -d app -c "$0"'
        command = ["sh", "-c", script, sql]
    result = container.exec_run(command, user=service.user)
    return result.exit_code, result.output.decode(errors="replace").strip()


def sql_ok(engine, sql: str, role: str | None = None) -> str:
    code, out = psql(engine, sql, role)
    assert code == 0, out
    return out


def insert(engine, titles: list[str], tenant: str = TENANT) -> None:
    """Through the tables' owner role: row-level security is forced on it, so it writes only
    with the tenant set, as any front door does."""
    values = ", ".join(f"('{tenant}', '{t}', 'not for the worker')" for t in titles)
    sql_ok(engine, f"SET ROLE app_owner; SET ccoas.tenant_id = '{tenant}'; INSERT INTO app.documents (tenant_id, title, secret_note) VALUES {values}")


def missing(engine) -> int:
    return int(sql_ok(engine, "SELECT count(*) FROM app.documents WHERE embedding IS NULL"))


def wait_until_embedded(engine, bound_s: float = BOUND_S) -> float:
    started = time.monotonic()
    while (left := missing(engine)) > 0:
        assert time.monotonic() - started < bound_s, f"{left} rows still without an embedding after {bound_s} s"
        time.sleep(1)
    return time.monotonic() - started


def wait_until_some_embedded(engine, total: int) -> int:
    deadline = time.monotonic() + BOUND_S
    while (left := missing(engine)) == total:
        assert time.monotonic() < deadline, "the worker embedded nothing"
        time.sleep(0.2)
    return left


def test_rows_written_under_rls_get_their_embedding_in_bounded_time(stack):
    titles = ["How do I reset my password", "Steps to change a forgotten password", "The tide comes in twice a day"]
    insert(stack, titles)
    seconds = wait_until_embedded(stack, 120)
    print(f"\n3 rows embedded in {seconds:.1f} s")
    assert sql_ok(stack, "SELECT DISTINCT vector_dims(embedding) FROM app.documents") == "384"
    nearest = sql_ok(
        stack,
        "SELECT b.title FROM app.documents a, app.documents b WHERE a.title = 'How do I reset my password' AND b.id <> a.id "
        "ORDER BY a.embedding <=> b.embedding LIMIT 1",
    )
    assert nearest == "Steps to change a forgotten password"
    before = sql_ok(stack, "SELECT embedding::text FROM app.documents WHERE title = 'The tide comes in twice a day'")
    sql_ok(stack, f"SET ROLE app_owner; SET ccoas.tenant_id = '{TENANT}'; UPDATE app.documents SET title = 'The moon pulls the sea' WHERE title = 'The tide comes in twice a day'")
    wait_until_embedded(stack, 120)
    after = sql_ok(stack, "SELECT embedding::text FROM app.documents WHERE title = 'The moon pulls the sea'")
    assert after.startswith("[") and after != before  # the changed text was embedded again


def ccoas_query(engine, tmp_path: Path, text: str, tenant: str, k: str) -> list[dict]:
    """`ccoas query documents TEXT` as an operator runs it: the CLI, its JSON rows."""
    stack_file = tmp_path / "stack.yaml"
    stack_file.write_text(yaml.safe_dump(stack_document(engine.plan.stack), sort_keys=False))
    result = subprocess.run(
        [sys.executable, "-m", "ccoas.cli", "query", "documents", text, str(stack_file), "--tenant", tenant, "--k", k, "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_ccoas_query_ranks_a_paraphrase_first_sees_one_tenant_and_auto_k_cuts_the_cluster(stack, tmp_path):
    """The tenant's corpus: the password rows of the test above and a cluster about the sea; the
    other tenant holds the closest text of all. As the tenant, the paraphrase ranks first and
    nothing of the other tenant ever shows; `--k auto` stops after the password cluster."""
    other = str(uuid.uuid4())
    insert(stack, ["Waves break on the rocky shore", "Sailors watch the sea at dawn"])
    insert(stack, ["I forgot my password and cannot log in"], tenant=other)
    wait_until_embedded(stack, 120)
    own = {"How do I reset my password", "Steps to change a forgotten password", "The moon pulls the sea", "Waves break on the rocky shore", "Sailors watch the sea at dawn"}

    every = ccoas_query(stack, tmp_path, "I forgot my password", TENANT, "10")
    auto = ccoas_query(stack, tmp_path, "I forgot my password", TENANT, "auto")

    titles = [row["row"]["title"] for row in every]
    assert set(titles) == own  # all of the tenant's rows, the other tenant's never
    assert titles[0] in {"How do I reset my password", "Steps to change a forgotten password"}
    assert [d["distance"] for d in every] == sorted(d["distance"] for d in every)
    assert {row["row"]["title"] for row in auto} == {"How do I reset my password", "Steps to change a forgotten password"}
    assert [row["row"]["title"] for row in ccoas_query(stack, tmp_path, "I forgot my password", other, "10")] == ["I forgot my password and cannot log in"]


@pytest.mark.parametrize(
    ("sql", "allowed"),
    [
        ("SELECT count(id), count(title), count(embedding) FROM app.documents", True),
        ("UPDATE app.documents SET embedding = embedding WHERE false", True),
        ("SELECT tenant_id FROM app.documents", False),
        ("SELECT secret_note FROM app.documents", False),
        ("SELECT * FROM app.documents", False),
        ("UPDATE app.documents SET title = 'x'", False),
        ("UPDATE app.documents SET secret_note = 'x'", False),
        ("INSERT INTO app.documents (tenant_id, title) VALUES (gen_random_uuid(), 'x')", False),
        ("DELETE FROM app.documents", False),
        ("TRUNCATE app.documents", False),
        ("SELECT * FROM app.notes", False),
        ("SELECT id FROM app.notes", False),
        ("SELECT * FROM ccoas.change_log", False),
        ("SELECT * FROM ccoas.changes_since(0)", False),
        ("SELECT * FROM directus.directus_users", False),
        ("CREATE TABLE app.mine (id int)", False),
        ("CREATE TABLE public.mine (id int)", False),
    ],
)
def test_the_worker_role_reads_and_writes_nothing_else(stack, sql, allowed):
    code, out = psql(stack, sql, role="embedder")
    if allowed:
        assert code == 0, out
    else:
        assert code != 0 and ("permission denied" in out or "does not exist" in out), out


def test_the_worker_role_has_one_named_policy_and_sees_every_row(stack):
    assert sql_ok(stack, "SELECT policyname FROM pg_policies WHERE 'embedder' = ANY(roles) ORDER BY 1") == "ccoas_embedder"
    total = sql_ok(stack, "SELECT count(*) FROM app.documents")
    assert sql_ok(stack, "SELECT count(id) FROM app.documents", role="embedder") == total != "0"


def wait_for(engine, sql: str, bound_s: float = 120) -> float:
    """Until ``sql`` (a count) reads 0, at most ``bound_s``; the seconds it took."""
    started = time.monotonic()
    while (left := int(sql_ok(engine, sql))) > 0:
        assert time.monotonic() - started < bound_s, f"{left} rows still match after {bound_s} s: {sql}"
        time.sleep(1)
    return time.monotonic() - started


def test_a_row_that_fails_alone_is_skipped_and_holds_back_no_other(stack):
    """One row of a batch whose vector the database refuses (a CHECK constraint of the
    application's) fails the worker's batch: it does the batch again a row at a time, skips
    that row (in its log, until its text changes) and embeds every other row in bounded time;
    once the text changes, the row is embedded too."""
    tenant = str(uuid.uuid4())  # rows of their own: the other tests' tenant keeps its corpus
    sql_ok(stack, "ALTER TABLE app.documents ADD CONSTRAINT e2e_refuses_poison CHECK (embedding IS NULL OR title NOT LIKE 'poison%')")
    try:
        insert(stack, ["poison pill", *(f"a fine row {i} about gardening" for i in range(5))], tenant=tenant)  # one batch
        seconds = wait_for(stack, f"SELECT count(*) FROM app.documents WHERE tenant_id = '{tenant}' AND embedding IS NULL AND title NOT LIKE 'poison%'")
        print(f"\nthe 5 other rows embedded in {seconds:.1f} s")
        assert sql_ok(stack, f"SELECT count(*) FROM app.documents WHERE tenant_id = '{tenant}' AND embedding IS NULL") == "1"
        logs = stack.client.containers.get(stack.plan.service("embedder").container_name).logs().decode(errors="replace")
        assert "doing its rows one at a time" in logs and "skipped: " in logs and "e2e_refuses_poison" in logs, logs[-2000:]
        sql_ok(stack, f"SET ROLE app_owner; SET ccoas.tenant_id = '{tenant}'; UPDATE app.documents SET title = 'a harmless pill' WHERE title = 'poison pill'")
        wait_for(stack, f"SELECT count(*) FROM app.documents WHERE tenant_id = '{tenant}' AND embedding IS NULL")
    finally:
        sql_ok(stack, "ALTER TABLE app.documents DROP CONSTRAINT IF EXISTS e2e_refuses_poison")
        sql_ok(stack, f"DELETE FROM app.documents WHERE tenant_id = '{tenant}'")


def test_every_compliance_control_holds_for_the_worker(stack, tmp_path):
    """`ccoas check` on this stack: the hardening controls per container (the worker's among
    them) and the measured reachability matrix (the worker listens on nothing: its probe is
    proved by a peer it may reach)."""
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(stack_document(stack.plan.stack), sort_keys=False))
    result = subprocess.run([sys.executable, "-m", "ccoas.cli", "check", str(path)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "embedder →" in result.stdout


@pytest.mark.parametrize("killed", ["ollama", "postgres"])
def test_killing_a_service_mid_ingest_loses_no_row(stack, killed):
    before = int(sql_ok(stack, "SELECT count(*) FROM app.documents"))
    batch = [f"{killed} ingest row {i}: a short text about item {i * 7 % 13}" for i in range(INGEST)]
    insert(stack, batch)
    left = wait_until_some_embedded(stack, INGEST)
    assert left > 0, "the ingest finished before the kill: nothing proven"
    container = stack.client.containers.get(stack.plan.service(killed).container_name)
    container.kill()
    if killed == "postgres":
        container.wait(timeout=30)
    else:
        insert(stack, [f"written while {killed} is down {i}" for i in range(50)])
    print(f"\nkilled {killed} with {left} of {INGEST} rows left")
    time.sleep(5)
    result = stack.up()
    assert {r.service: r.health for r in result.status} == {s: "healthy" for s in RUNNING}
    if killed == "postgres":
        insert(stack, [f"written after {killed} came back {i}" for i in range(50)])
    seconds = wait_until_embedded(stack)
    assert int(sql_ok(stack, "SELECT count(*) FROM app.documents")) == before + INGEST + 50
    print(f"all rows embedded {seconds:.1f} s after {killed} came back")
