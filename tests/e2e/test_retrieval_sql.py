"""Retrieval in SQL against a real Postgres 18 with pgvector: the HNSW index and the
``<table>_nearest`` function the bootstrap creates for every embedded column.

The cluster, secrets and bootstrap come from ``test_bootstrap_sql`` (same fixtures, a plan
of its own: the shipped dev stack, which embeds ``documents.title``). Vectors here are
built by hand (no model needed): what is proven is the SQL — ranking by cosine distance,
row-level security through the invoker-rights function, the dynamic-k cut, the pinned
search_path, and that a tenant gets k_max rows even when the index's first candidates
belong to another tenant (pgvector's iterative scan).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from ccoas import retrieval
from ccoas.plan import Plan
from ccoas.planner import load_plan
from test_bootstrap_sql import applied, as_owner, cluster  # noqa: F401 - fixtures shared with the bootstrap tests

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
DIMENSIONS = 384


@pytest.fixture(scope="module")
def plan() -> Plan:
    return load_plan(REPO / "stacks" / "dev.yaml")


def vector(*head: float) -> str:
    """A 384-dimension vector literal: ``head`` then a small constant tail (never the zero vector)."""
    values = list(head) + [0.0] * (DIMENSIONS - len(head))
    values[-1] = values[-1] or 0.001
    return "[" + ",".join(f"{v:g}" for v in values) + "]"


def unit(index: int, scale: float = 1.0, **extra: float) -> tuple[float, ...]:
    values = [0.0] * 16
    values[index] = scale
    for key, value in extra.items():
        values[int(key[1:])] = value
    return tuple(values)


def insert(cluster, applied, tenant: str, rows: dict[str, tuple[float, ...]]) -> None:
    values = ", ".join(f"('{tenant}', '{title}', '{vector(*head)}')" for title, head in rows.items())
    result = as_owner(cluster, f"INSERT INTO app.documents (tenant_id, title, embedding) VALUES {values}", tenant_id=tenant)
    assert result.returncode == 0, result.stderr


def nearest(cluster, applied, tenant: str | None, query: tuple[float, ...], *args: str, prefix: str = "") -> list[tuple[str, float]]:
    settings = {"tenant_id": tenant} if tenant else {}
    call = ", ".join([f"'{vector(*query)}'", *args])
    result = as_owner(cluster, f"{prefix}SELECT title, distance FROM app.documents_nearest({call})", **settings)
    assert result.returncode == 0, result.stderr
    return [(line.split("|")[0], float(line.split("|")[1])) for line in result.stdout.split("\n") if line]


def test_an_hnsw_cosine_index_per_embedded_column(cluster, applied):
    definition = cluster.value("SELECT indexdef FROM pg_indexes WHERE schemaname = 'app' AND indexname = 'documents_embedding_hnsw'")
    assert "USING hnsw (embedding vector_cosine_ops)" in definition
    assert cluster.value("SELECT count(*) FROM pg_indexes WHERE schemaname = 'app' AND indexdef LIKE '%USING hnsw%'") == "1"


def test_the_function_runs_with_invoker_rights_a_pinned_search_path_and_no_public_execute(cluster, applied):
    row = cluster.value(
        "SELECT prosecdef, proconfig, proowner::regrole, provolatile, has_function_privilege('public', p.oid, 'EXECUTE') "
        "FROM pg_proc AS p WHERE p.oid = 'app.documents_nearest'::regproc"
    )
    secdef, config, owner, volatility, public_execute = row.split("|")
    assert secdef == "f"
    assert '"search_path=pg_catalog, pg_temp"' in config and "hnsw.iterative_scan=strict_order" in config
    assert owner == "app_owner" and volatility == "s" and public_execute == "f"
    assert cluster.value("SELECT has_function_privilege('directus', 'app.documents_nearest'::regproc, 'EXECUTE')") == "t"


def test_nearest_rows_come_first_and_only_the_callers_tenant_is_searched(cluster, applied):
    mine, theirs = str(uuid.uuid4()), str(uuid.uuid4())
    insert(cluster, applied, mine, {"m-near": unit(0, e1=0.2), "m-mid": unit(0, e1=1.0), "m-far": unit(2)})
    insert(cluster, applied, theirs, {"t-exact": unit(0), "t-near": unit(0, e1=0.1)})
    ranked = nearest(cluster, applied, mine, unit(0), "10")
    assert [title for title, _ in ranked] == ["m-near", "m-mid", "m-far"]
    assert ranked[0][1] == pytest.approx(1 - 1 / (1.04**0.5), abs=1e-4)
    assert ranked[2][1] == pytest.approx(1.0, abs=1e-4)
    assert [title for title, _ in nearest(cluster, applied, theirs, unit(0), "10")] == ["t-exact", "t-near"]
    assert nearest(cluster, applied, None, unit(0), "10") == []  # no tenant set: no rows
    assert len(nearest(cluster, applied, mine, unit(0), "2")) == 2


def test_dynamic_k_cuts_at_the_first_large_distance_gap(cluster, applied):
    tenant = str(uuid.uuid4())
    cluster_rows = {f"c{i}": unit(0, **{f"e{i + 1}": 0.1 * (i + 1)}) for i in range(3)}
    insert(cluster, applied, tenant, {**cluster_rows, **{f"far{i}": unit(5 + i) for i in range(5)}})
    fixed = nearest(cluster, applied, tenant, unit(0), "8")
    assert len(fixed) == 8
    dynamic = nearest(cluster, applied, tenant, unit(0), "8", "true")
    assert sorted(title for title, _ in dynamic) == ["c0", "c1", "c2"]
    # k_min keeps at least that many rows; a min_gap larger than any gap keeps all k_max
    assert len(nearest(cluster, applied, tenant, unit(0), "8", "true", "0.1", "5")) == 8
    assert len(nearest(cluster, applied, tenant, unit(0), "8", "true", "1.5")) == 8


def test_a_tenant_gets_k_max_rows_when_another_tenants_rows_are_nearer(cluster, applied):
    """HNSW returns ef_search (40) candidates; RLS then drops the other tenant's. The iterative
    scan the function sets keeps going until k_max rows pass the filter."""
    mine, crowd = str(uuid.uuid4()), str(uuid.uuid4())
    crowd_rows = (  # built in the server: 200 literals of 384 numbers overflow a command line
        "INSERT INTO app.documents (tenant_id, title, embedding) "
        f"SELECT '{crowd}', 'crowd' || i, ('[1,' || (0.01 * i) || ',' || (0.001 * i) || repeat(',0', {DIMENSIONS - 4}) || ',0.001]')::public.vector "
        "FROM generate_series(0, 199) AS i"
    )
    assert as_owner(cluster, crowd_rows, tenant_id=crowd).returncode == 0
    insert(cluster, applied, mine, {f"mine{i}": unit(0, e3=1.0 + i) for i in range(5)})
    rows = nearest(cluster, applied, mine, unit(0), "5", prefix="SET enable_seqscan = off; ")
    assert sorted(title for title, _ in rows) == [f"mine{i}" for i in range(5)]
    plan = as_owner(
        cluster,
        f"SET enable_seqscan = off; EXPLAIN SELECT id FROM app.documents ORDER BY embedding OPERATOR(public.<=>) '{vector(*unit(0))}' LIMIT 5",
        tenant_id=mine,
    )
    assert "documents_embedding_hnsw" in plan.stdout, plan.stdout


def test_the_function_ignores_objects_the_caller_puts_on_its_search_path(cluster, applied):
    """Objects in a schema the caller puts first on its search_path: the function's pinned path
    never resolves them."""
    tenant = str(uuid.uuid4())
    insert(cluster, applied, tenant, {"plain": unit(0)})
    trap = (
        "CREATE SCHEMA callers_trap; GRANT USAGE ON SCHEMA callers_trap TO PUBLIC; "
        "CREATE FUNCTION callers_trap.greatest(integer, integer) RETURNS int LANGUAGE sql AS 'SELECT 1'; "
        "CREATE FUNCTION callers_trap.row_number(bigint) RETURNS bigint LANGUAGE sql AS 'SELECT 0::bigint'; "
    )
    assert cluster.sql(trap, check=False).returncode == 0
    try:
        rows = nearest(cluster, applied, tenant, unit(0), "3", prefix="SET search_path = callers_trap, pg_catalog; ")
        assert [title for title, _ in rows] == ["plain"]
    finally:
        cluster.sql("DROP SCHEMA callers_trap CASCADE")


def test_the_ccoas_query_script_reads_under_rls_with_the_tenant_set(cluster, plan, applied):
    """``ccoas query``'s psql script and variables, run by the same psql the container has: as the
    tables' owner (RLS forced on it), so the tenant setting alone decides the rows."""
    tenant, other = str(uuid.uuid4()), str(uuid.uuid4())
    insert(cluster, applied, tenant, {"q-near": unit(0, e1=0.1), "q-far": unit(4)})
    insert(cluster, applied, other, {"q-other": unit(0)})
    table = retrieval.embedded_table(plan, "documents")
    query = [float(x) for x in vector(*unit(0))[1:-1].split(",")]

    def psql(**options):
        script, variables = retrieval.nearest_script(plan, table, query, **options)
        path = cluster.root / "query.sql"
        path.write_text(script)
        path.chmod(0o644)
        args = [str(cluster.bindir / "psql"), "-X", "-qAt", "-h", str(cluster.root / "sock"), "-p", str(cluster.port), "-U", "postgres", "-d", "app", "-f", str(path)]
        for key, value in variables.items():
            args += ["-v", f"{key}={value}"]
        return cluster.run(*args, check=False)

    def run(**options) -> list[retrieval.Match]:
        result = psql(**options)
        assert result.returncode == 0, result.stderr
        return retrieval.parse_matches(result.stdout)

    matches = run(tenant=tenant, k_max=5)
    assert [m.row["title"] for m in matches] == ["q-near", "q-far"]
    assert set(matches[0].row) == {"id", "title"} and matches[0].distance == pytest.approx(1 - 1 / 1.01**0.5, abs=1e-4)
    assert [m.row["title"] for m in run(tenant=tenant, k_max=5, dynamic=True)] == ["q-near"]
    assert run(k_max=5) == []  # no tenant: nothing
    assert [m.row["title"] for m in run(tenant=other, k_max=5)] == ["q-other"]
    # a hostile "tenant" is a value, never SQL: it fails as a uuid and drops nothing
    hostile = psql(tenant="x'); DROP TABLE app.documents; --", k_max=5)
    assert hostile.returncode != 0 and "invalid input syntax for type uuid" in hostile.stderr
    assert cluster.value("SELECT count(*) > 0 FROM app.documents") == "t"
