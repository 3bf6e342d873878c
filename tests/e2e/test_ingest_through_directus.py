"""Ingest through the front door: rows written through Directus (REST through Nginx over TLS)
by real users of two tenants are embedded by the worker within a bounded time, and `ccoas
query` as each user ranks a paraphrase first and returns none of the other tenant's rows.

A stack of its own (vault, postgres, directus, nginx, ollama with the packaged model, the
embedding worker) with the dev stack's ``documents`` table (tenant preset, ``embedding``
filled from ``title``). Users A and B are made by Directus's admin with the role ccoas
provisions, each in a tenant of its own; they write as any app would, with their own tokens.
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

from ccoas.planner import build_plan, load_stack
from directus_client import Directus  # tests/e2e is on sys.path (rootdir imports)
from healthy_stack import healthy_stack
from test_identity import psql

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
RUNNING = ("vault", "postgres", "directus", "nginx", "ollama", "embedder")
BOUND_S = 300
"""How long a row written through Directus may wait for its embedding (a handful of rows: on
a quiet host, seconds)."""
A_ROWS = {
    "password": ["How do I reset my password", "Steps to change a forgotten password"],
    "sea": ["Waves break on the rocky shore", "Sailors watch the sea at dawn", "The moon pulls the tide"],
}
B_ROWS = ["I forgot my password and cannot log in", "Password recovery for a locked account"]
"""B's rows are closer to the query than any of A's: a leak would rank them first."""
QUERY = "I forgot my password"


def stack_document(name: str) -> dict:
    """The ci stack with only what the front door and the worker need, and the dev stack's
    embedded ``documents`` table."""
    stack = yaml.safe_load((REPO / "stacks" / "ci.yaml").read_text())
    stack["name"] = name
    for component in ("redis", "minio", "postgraphile"):
        stack["components"][component] = {"enabled": False}
    stack["components"]["ollama"] = {}  # the local image: it carries the model
    dev = yaml.safe_load((REPO / "stacks" / "dev.yaml").read_text())
    stack["schema"] = {"tables": [t for t in dev["schema"]["tables"] if t["name"] == "documents"]}
    return stack


@pytest.fixture(scope="module")
def stack_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ingest") / "ingest.yaml"
    path.write_text(yaml.safe_dump(stack_document(f"e2e-h13c-{uuid.uuid4().hex[:6]}"), sort_keys=False))
    return path


@pytest.fixture(scope="module")
def engine(stack_file):
    with healthy_stack(build_plan(load_stack(stack_file)), RUNNING) as engine:
        yield engine


@pytest.fixture(scope="module")
def users(engine) -> dict[str, dict[str, str]]:
    directus = Directus(engine)
    return directus.app_users(directus.admin_token(engine), "a", "b")


@pytest.fixture(scope="module")
def written(engine, users) -> dict[str, list[str]]:
    """Each user's rows, written through Directus with their own token, once every one has its
    embedding (bounded); the ids by user."""
    directus = Directus(engine)
    ids = {}
    for name, titles in (("a", [t for group in A_ROWS.values() for t in group]), ("b", B_ROWS)):
        created = directus.ok("POST", "/items/documents", [{"title": t} for t in titles], users[name]["token"])
        ids[name] = [row["id"] for row in created]
        assert {row["tenant_id"] for row in created} == {users[name]["tenant"]}  # Directus set the writer's tenant
    every = ", ".join(f"'{i}'" for group in ids.values() for i in group)
    started = time.monotonic()
    while (left := int(psql(engine, f"SELECT count(*) FROM app.documents WHERE id IN ({every}) AND embedding IS NULL")[0])) > 0:
        assert time.monotonic() - started < BOUND_S, f"{left} rows written through Directus still without an embedding after {BOUND_S} s"
        time.sleep(1)
    print(f"\n{len(A_ROWS['password']) + len(A_ROWS['sea']) + len(B_ROWS)} rows written through Directus embedded in {time.monotonic() - started:.1f} s")
    return ids


def ccoas_query(stack_file: Path, engine, person: dict[str, str], k: str) -> list[dict]:
    """`ccoas query documents QUERY` as ``person`` (their user id and tenant), as an operator runs it."""
    result = subprocess.run(
        [sys.executable, "-m", "ccoas.cli", "query", "documents", QUERY, str(stack_file), "--name", engine.plan.stack,
         "--user", person["id"], "--tenant", person["tenant"], "--k", k, "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_rows_written_through_directus_get_their_embedding(engine, written):
    every = ", ".join(f"'{i}'" for group in written.values() for i in group)
    assert psql(engine, f"SELECT DISTINCT vector_dims(embedding) FROM app.documents WHERE id IN ({every})") == ["384"]


def test_a_query_as_a_ranks_a_paraphrase_first_and_never_returns_bs_rows(stack_file, engine, users, written):
    rows = ccoas_query(stack_file, engine, users["a"], "10")
    assert rows[0]["row"]["title"] in A_ROWS["password"], rows
    assert sorted(r["row"]["id"] for r in rows) == sorted(written["a"])  # every row of A's, none of B's
    assert [r["distance"] for r in rows] == sorted(r["distance"] for r in rows)


def test_auto_k_as_a_stops_after_the_matching_cluster(stack_file, engine, users, written):
    rows = ccoas_query(stack_file, engine, users["a"], "auto")
    assert {r["row"]["title"] for r in rows} == set(A_ROWS["password"]), rows


def test_b_sees_only_bs_rows(stack_file, engine, users, written):
    rows = ccoas_query(stack_file, engine, users["b"], "10")
    assert sorted(r["row"]["id"] for r in rows) == sorted(written["b"])
