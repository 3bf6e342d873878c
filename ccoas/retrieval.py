"""Retrieval for operators and smoke tests: embed a text through the stack's Ollama and ask the
table's ``<table>_nearest`` function, as a front door would for one user and tenant.

Ollama and Postgres sit on internal networks the host cannot reach, so both steps run inside
their containers through the engine (``curl`` in the Ollama image, ``psql`` on Postgres's unix
socket). The SQL runs in one transaction that sets the role of the stack's first database
client (Directus, else Hasura) and ``ccoas.user_id``/``ccoas.tenant_id`` with ``SET LOCAL``:
exactly what a front door does, so row-level security filters the answer. Values travel as
psql variables (``:'name'``), never spliced into SQL text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ccoas.errors import CcoasError
from ccoas.plan import EmbeddingModel, Plan
from ccoas.stack import Table

AUTO_K_MAX = 10
"""``--k auto``: at most this many rows, cut at the first large distance gap."""


class QueryError(CcoasError):
    """A query that cannot run: unknown table, stack without that service, a failed step."""


@dataclass(frozen=True)
class Match:
    row: dict[str, Any]
    """The key columns and the source column of the row."""
    distance: float
    """Cosine distance to the query (0 = same direction, 2 = opposite)."""


def embedded_table(plan: Plan, name: str) -> Table:
    tables = {t.name: t for t in plan.app_schema.embedded_tables()}
    if name not in tables:
        known = ", ".join(sorted(tables)) or "none"
        raise QueryError(f"table {name!r} has no embedded column (embedded tables: {known})")
    return tables[name]


def model_of(plan: Plan, table: Table) -> EmbeddingModel:
    (column,) = table.embedded
    assert column.embed is not None
    return plan.embedding_model(column.embed.model)


def parse_k(value: str) -> tuple[int, bool]:
    """``"auto"`` → (AUTO_K_MAX, dynamic); ``"5"`` → (5, fixed)."""
    if value == "auto":
        return AUTO_K_MAX, True
    if value.isdigit() and 1 <= int(value) <= 1000:
        return int(value), False
    raise QueryError(f"--k: expected a number from 1 to 1000 or auto, got {value!r}")


def _exec(client: Any, plan: Plan, service_name: str, cmd: list[str]) -> str:
    import docker.errors

    if not plan.has(service_name):
        raise QueryError(f"stack {plan.stack} has no {service_name} service")
    service = plan.service(service_name)
    try:
        container = client.containers.get(service.container_name)
    except docker.errors.NotFound:
        raise QueryError(f"{service.container_name} is not running: run `ccoas up` first") from None
    result = container.exec_run(cmd, user=service.user)
    output = result.output.decode(errors="replace")
    if result.exit_code != 0:
        raise QueryError(f"{service_name}: {' '.join(cmd[:2])} failed (exit {result.exit_code}): {output.strip()[-500:]}")
    return output


def embed(client: Any, plan: Plan, model: EmbeddingModel, texts: list[str]) -> list[list[float]]:
    """Embeddings of ``texts`` from the stack's Ollama (inside its container)."""
    port = plan.service("ollama").expose[0]
    body = json.dumps({"model": model.tag, "input": texts})
    reply = _exec(client, plan, "ollama", ["curl", "-fsS", "--max-time", "120", "-d", body, f"http://127.0.0.1:{port}/api/embed"])
    vectors = json.loads(reply)["embeddings"]
    if len(vectors) != len(texts) or any(len(v) != model.dimensions for v in vectors):
        raise QueryError(f"ollama: expected {len(texts)} embeddings of {model.dimensions} dimensions from {model.tag}")
    return vectors


NEAREST_SQL = """\\set ON_ERROR_STOP on
BEGIN;
SET LOCAL ROLE :"role";
SELECT set_config('ccoas.user_id', :'user_id', true), set_config('ccoas.tenant_id', :'tenant_id', true) \\g /dev/null
SELECT coalesce(json_agg(json_build_object('row', to_jsonb(r) - 'distance', 'distance', r.distance)), '[]')
FROM {function}(:'query'::public.vector, :'k_max'::integer, :'dynamic'::boolean) AS r;
COMMIT;
"""


def nearest_script(
    plan: Plan, table: Table, vector: list[float], *, user: str = "", tenant: str = "", k_max: int = AUTO_K_MAX, dynamic: bool = False
) -> tuple[str, dict[str, str]]:
    """The psql script of a nearest-rows query and its variables (``psql -v key=value``)."""
    from ccoas.render import sql_ident

    function = f"{sql_ident(plan.app_schema.name)}.{sql_ident(table.name + '_nearest')}"
    variables = {
        # the tables' owner: RLS is forced on it, so the preset policies decide (directus's
        # role would read every row through its control-plane policy)
        "role": plan.app_schema.owner_role,
        "user_id": user,
        "tenant_id": tenant,
        "query": "[" + ",".join(repr(float(x)) for x in vector) + "]",
        "k_max": str(k_max),
        "dynamic": "true" if dynamic else "false",
    }
    return NEAREST_SQL.format(function=function), variables


def parse_matches(output: str) -> list[Match]:
    """The script's last output line: a JSON array of ``{row, distance}``."""
    lines = output.strip().splitlines()
    rows = json.loads(lines[-1]) if lines else []
    return [Match(row=r["row"], distance=float(r["distance"])) for r in rows]


def nearest(
    client: Any, plan: Plan, table: Table, vector: list[float], *, user: str = "", tenant: str = "", k_max: int = AUTO_K_MAX, dynamic: bool = False
) -> list[Match]:
    """The rows nearest to ``vector`` that ``user``/``tenant`` may read, nearest first."""
    from ccoas.components.postgres import DATABASE, SOCKET_DIR, SUPERUSER

    script, variables = nearest_script(plan, table, vector, user=user, tenant=tenant, k_max=k_max, dynamic=dynamic)
    psql = ["psql", "-X", "-qAt", "-h", SOCKET_DIR, "-U", SUPERUSER, "-d", DATABASE, "-f", "-"]
    for key, value in variables.items():
        psql += ["-v", f"{key}={value}"]
    # the script goes in on stdin (meta-commands and :'variables' need psql's script mode)
    shell = ["sh", "-c", 'printf "%s" "$0" | "$@"', script, *psql]
    return parse_matches(_exec(client, plan, "postgres", shell))


def query(client: Any, plan: Plan, table_name: str, text: str, *, user: str = "", tenant: str = "", k: str = "auto") -> list[Match]:
    """``ccoas query``: embed ``text`` with the table's model and return its nearest rows."""
    table = embedded_table(plan, table_name)
    k_max, dynamic = parse_k(k)
    (vector,) = embed(client, plan, model_of(plan, table), [text])
    return nearest(client, plan, table, vector, user=user, tenant=tenant, k_max=k_max, dynamic=dynamic)
