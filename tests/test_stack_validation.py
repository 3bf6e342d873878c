"""Bad stack files are rejected at the boundary, before anything runs.

Each defect yields ONE problem naming the file, the field path and what was expected —
through :func:`ccoas.stack.load_stack` (a :class:`StackError` with ``.problems``) and
through the CLI (``ccoas plan FILE``: exit code 2, the path on stderr, never a traceback).
Every case starts from a shipped stack and breaks exactly one thing.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from ccoas.cli import app
from ccoas.planner import CATALOG, load_stack
from ccoas.errors import StackError
from ccoas.stack import Stack

REPO_ROOT = Path(__file__).resolve().parent.parent
STACK_NAMES = tuple(sorted(p.stem for p in (REPO_ROOT / "stacks").glob("*.yaml")))

Mutation = Callable[[dict[str, Any]], None]


# --- the mutations -----------------------------------------------------------------------------


def drop(*keys: str) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        node = doc
        for key in keys[:-1]:
            node = node[key]
        del node[keys[-1]]

    return mutate


def put(*keys: str | int, value: Any) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        node = doc
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return mutate


def both(*mutations: Mutation) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        for mutation in mutations:
            mutation(doc)

    return mutate


def components(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["components"]


def hasura_without_directus(doc: dict[str, Any]) -> None:
    components(doc)["directus"] = {"enabled": False}


def only_directus_without_postgres(doc: dict[str, Any]) -> None:
    components(doc)["postgres"] = {"enabled": False}
    components(doc)["hasura"] = {"enabled": False}
    del doc["schema"]


def duplicate_first_table(doc: dict[str, Any]) -> None:
    doc["schema"]["tables"].append(copy.deepcopy(doc["schema"]["tables"][0]))  # no shared node: no YAML alias


def duplicate_body_column(doc: dict[str, Any]) -> None:
    doc["schema"]["tables"][0]["columns"].append({"name": "body", "type": "text"})


def no_primary_key(doc: dict[str, Any]) -> None:
    doc["schema"]["tables"][0]["columns"][0]["primary_key"] = False


def without_column(table: int, column: str) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        columns = doc["schema"]["tables"][table]["columns"]
        doc["schema"]["tables"][table]["columns"] = [c for c in columns if c["name"] != column]

    return mutate


# (id, base stack, mutation, expected field path, fragment the message must contain)
CASES: list[tuple[str, str, Mutation, str, str]] = [
    ("unknown-top-level-key", "prod", put("colour", value="blue"), "colour", "unknown key"),
    ("unknown-nested-key", "prod", put("components", "nginx", "publsh", value=[]), "components.nginx.publsh", "unknown key"),
    ("unknown-component", "prod", put("components", "mysql", value={}), "components.mysql", "unknown key"),
    ("version-is-a-string", "prod", put("version", value="1"), "version", "expected 1"),
    ("version-2", "prod", put("version", value=2), "version", "expected 1"),
    ("pids-is-a-word", "prod", put("components", "postgres", "limits", "pids", value="many"), "components.postgres.limits.pids", "integer"),
    ("pids-too-low", "prod", put("components", "postgres", "limits", "pids", value=1), "components.postgres.limits.pids", "16"),
    ("memory-not-a-size", "prod", put("components", "redis", "limits", value={"memory": "lots"}), "components.redis.limits.memory", "512Mi"),
    ("log-cap-too-small", "prod", put("logs", value={"max_size": "4Ki"}), "logs.max_size", "64Ki"),
    ("edge-listener-unknown", "prod", put("edge", value={"listener": "slirp"}), "edge.listener", "'host'"),
    ("edge-rate-zero", "prod", put("edge", value={"limits": {"requests_per_second": 0}}), "edge.limits.requests_per_second", "1"),
    ("edge-websockets-over-connections", "prod", put("edge", value={"limits": {"connections": 10, "websockets": 20}}), "edge.limits.websockets", "at most connections (10)"),
    ("edge-connections-over-total", "prod", put("edge", value={"limits": {"connections": 5000}}), "edge.limits.connections", "at most total_connections (4096)"),
    ("log-cap-not-a-size", "prod", put("components", "ollama", "logs", value={"max_size": "lots"}), "components.ollama.logs.max_size", "512Mi"),
    ("enabled-is-a-string", "prod", put("components", "redis", "enabled", value="yes"), "components.redis.enabled", "bool"),
    ("environment-unknown", "prod", put("environment", value="staging"), "environment", "'prod'"),
    ("tls-missing", "prod", drop("tls"), "tls", "missing"),
    ("name-missing", "prod", drop("name"), "name", "missing"),
    ("name-bad-pattern", "prod", put("name", value="Bad_Name"), "name", "Bad_Name"),
    ("name-too-long", "prod", put("name", value="a" * 40), "name", "[a-z]"),
    ("hasura-without-directus", "prod", hasura_without_directus, "components.hasura", "requires directus"),
    ("directus-without-postgres", "prod", only_directus_without_postgres, "components.directus", "postgres"),
    ("nginx-bad-container-port", "prod", put("components", "nginx", "publish", value=[{"container_port": 80, "host_port": 80}]), "components.nginx.publish[0].container_port", "8443"),
    ("table-without-policy", "prod", drop("schema", "tables", 0, "policy"), "schema.tables[0].policy", "missing"),
    ("table-unknown-policy", "prod", put("schema", "tables", 0, "policy", value="everyone"), "schema.tables[0].policy", "owner-only"),
    ("owner-column-missing", "prod", without_column(0, "owner_id"), "schema.tables[0].columns", "owner_id"),
    ("tenant-column-missing", "prod", without_column(1, "tenant_id"), "schema.tables[1].columns", "tenant_id"),
    ("owner-column-wrong-type", "prod", put("schema", "tables", 0, "columns", 1, "type", value="integer"), "schema.tables[0].columns", "uuid or text"),
    ("column-type-unknown", "prod", put("schema", "tables", 0, "columns", 2, "type", value="varchar"), "schema.tables[0].columns[2].type", "vector(N)"),
    ("column-type-trailing-newline", "prod", put("schema", "tables", 0, "columns", 2, "type", value="text\n"), "schema.tables[0].columns[2].type", "got 'text\\n'"),
    ("column-type-trailing-space", "prod", put("schema", "tables", 0, "columns", 2, "type", value="uuid "), "schema.tables[0].columns[2].type", "vector(N)"),
    ("vector-zero-dims", "prod", put("schema", "tables", 1, "columns", 3, "type", value="vector(0)"), "schema.tables[1].columns[3].type", "from 1 to 16000"),
    ("vector-too-many-dims", "prod", put("schema", "tables", 1, "columns", 3, "type", value="vector(16001)"), "schema.tables[1].columns[3].type", "from 1 to 16000"),
    ("schema-pg-prefix", "prod", put("schema", "name", value="pg_app"), "schema.name", "reserved"),
    ("schema-information-schema", "prod", put("schema", "name", value="information_schema"), "schema.name", "reserved"),
    ("schema-public", "prod", put("schema", "name", value="public"), "schema.name", "reserved"),
    ("schema-hasura-catalog", "prod", put("schema", "name", value="hdb_catalog"), "schema.name", "reserved"),
    ("schema-directus", "prod", put("schema", "name", value="directus"), "schema.name", "reserved"),
    ("schema-ccoas", "prod", put("schema", "name", value="ccoas"), "schema.name", "reserved"),
    ("table-directus-prefix", "prod", put("schema", "tables", 0, "name", value="directus_users"), "schema.tables[0].name", "Directus"),
    ("duplicate-table", "prod", duplicate_first_table, "schema.tables[2].name", "duplicate table 'notes'"),
    ("duplicate-column", "prod", duplicate_body_column, "schema.tables[0].columns", "duplicate column 'body'"),
    ("no-primary-key", "prod", no_primary_key, "schema.tables[0].columns", "primary_key"),
    (
        "dependency-cycle",
        "prod",
        both(put("components", "postgres", "depends_on", value=["redis"]), put("components", "redis", "depends_on", value=["postgres"])),
        "components",
        "cycle",
    ),
    ("self-dependency", "prod", put("components", "redis", "depends_on", value=["redis"]), "components.redis.depends_on", "itself"),
    ("depends-on-unknown", "prod", put("components", "redis", "depends_on", value=["mysql"]), "components.redis.depends_on[0]", "'postgres'"),
    ("hasura-local-image", "prod", put("components", "hasura", "image", value={"source": "local"}), "components.hasura.image.source", "registry"),
    ("hasura-local-by-default", "dev", both(put("components", "hasura", value={}), put("components", "postgraphile", value={"enabled": False})), "components.hasura.image.source", "registry"),
    ("image-ref-without-digest", "prod", put("components", "redis", "image", value={"ref": "docker.io/library/redis:7.4"}), "components.redis.image.ref", "sha256"),
    ("image-source-unknown", "prod", put("images", value={"source": "github"}), "images.source", "'local'"),
    ("tls-supplied-without-cert-and-key", "prod", put("tls", value={"mode": "supplied"}), "tls", "cert"),
    ("tls-supplied-without-key", "prod", drop("tls", "key"), "tls", "key"),
    ("tls-generate-in-prod", "prod", put("tls", value={"mode": "generate"}), "tls.mode", "prod"),
    ("tls-generate-with-cert", "dev", put("tls", "cert", value="/x.pem"), "tls", "supplied"),
    ("two-graphql-planes", "prod", put("components", "postgraphile", value={"image": {"source": "local"}}), "components", "one GraphQL plane"),
    ("postgraphile-from-a-registry", "dev", put("components", "postgraphile", "image", value={"source": "registry"}), "components.postgraphile.image.source", "source: local"),
    ("schema-name-reserved", "prod", put("schema", "name", value="ccoas"), "schema.name", "reserved"),
    ("change-log-too-short", "prod", put("schema", "changes", value={"max_entries": 10}), "schema.changes.max_entries", "100"),
    ("change-log-unknown-key", "prod", put("schema", "changes", value={"max_rows": 10}), "schema.changes.max_rows", "max_entries"),
    ("tables-without-postgres", "dev", both(put("components", "postgres", "enabled", value=False), both(put("components", "directus", "enabled", value=False), put("components", "postgraphile", "enabled", value=False))), "schema.tables", "postgres"),
]

# A published port on anything but nginx: every other component, with a port it does listen on.
PUBLISHERS = [name for name in CATALOG if name != "nginx" and CATALOG[name].ports]


def case_params() -> list[Any]:
    params = [pytest.param(base, mutation, path, fragment, id=case_id) for case_id, base, mutation, path, fragment in CASES]
    for name in PUBLISHERS:
        port = CATALOG[name].ports[0]
        mutation = put("components", name, "publish", value=[{"container_port": port, "host_port": port}])
        base = "dev" if name == "postgraphile" else "prod"  # the stack where it is the GraphQL plane
        params.append(pytest.param(base, mutation, f"components.{name}.publish", "only nginx", id=f"{name}-publishes-a-port"))
    return params


def problems_of(path: Path) -> list:
    with pytest.raises(StackError) as raised:
        load_stack(path)
    return raised.value.problems


def assert_clean_exit_2(result) -> None:
    """Exit code 2, no traceback, no exception other than the exit itself."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


# --- one defect, one problem -------------------------------------------------------------------


@pytest.mark.parametrize(("base", "mutation", "path", "fragment"), case_params())
def test_one_defect_is_one_problem(base, mutation, path, fragment, stack_document, write_stack, tmp_path):
    doc = stack_document(base)
    mutation(doc)
    file = write_stack(tmp_path, doc)

    problems = problems_of(file)

    assert [(p.file, p.path) for p in problems] == [(str(file), path)], problems
    assert fragment in problems[0].message
    assert str(problems[0]) == f"{file}: {path}: {problems[0].message}"


@pytest.mark.parametrize(("base", "mutation", "path", "fragment"), case_params())
def test_one_defect_through_the_cli(base, mutation, path, fragment, stack_document, write_stack, tmp_path, runner):
    doc = stack_document(base)
    mutation(doc)
    file = write_stack(tmp_path, doc)

    result = runner.invoke(app, ["plan", str(file)])

    assert_clean_exit_2(result)
    (problem,) = problems_of(file)
    assert error_lines(result) == [f"error: {file}: {path}: {problem.message}"]
    assert fragment in result.stderr
    assert result.stdout == ""


def test_dependency_cycle_names_the_services(stack_document, write_stack, tmp_path):
    doc = stack_document("prod")
    doc["components"]["postgres"]["depends_on"] = ["redis"]
    doc["components"]["redis"]["depends_on"] = ["postgres"]

    (problem,) = problems_of(write_stack(tmp_path, doc))

    assert "postgres" in problem.message and "redis" in problem.message


def test_cycle_through_a_components_own_order_is_found(stack_document, write_stack, tmp_path):
    # nginx starts after directus by itself; directus waiting for nginx closes a loop.
    doc = stack_document("prod")
    doc["components"]["directus"]["depends_on"] = ["nginx"]

    (problem,) = problems_of(write_stack(tmp_path, doc))

    assert problem.path == "components" and "cycle" in problem.message


# --- files that are not stack documents --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        pytest.param("version: 1\nname: [dev\n", 3, None, id="unclosed-flow-sequence"),
        pytest.param("version: 1\n  name: dev\n", 2, 7, id="bad-indentation"),
        pytest.param("version: 1\n\tname: dev\n", 2, 1, id="tab"),
        pytest.param("version: 1\nname: !!python/object:os.system dev\n", 2, 7, id="unsafe-tag"),
    ],
)
def test_invalid_yaml_names_line_and_column(text, line, column, write_stack, tmp_path, runner):
    file = write_stack(tmp_path, text)

    (problem,) = problems_of(file)

    assert problem.file == str(file)
    assert f"line {line}, column " in problem.path
    if column is not None:
        assert problem.path == f"line {line}, column {column}"
    assert problem.message.startswith("invalid YAML")
    result = runner.invoke(app, ["plan", str(file)])
    assert_clean_exit_2(result)
    assert error_lines(result) == [f"error: {problem}"]


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        pytest.param("- version: 1\n- name: dev\n", "list", id="sequence"),
        pytest.param("just a string\n", "str", id="scalar"),
        pytest.param("42\n", "int", id="number"),
    ],
)
def test_top_level_must_be_a_mapping(text, kind, write_stack, tmp_path, runner):
    file = write_stack(tmp_path, text)

    (problem,) = problems_of(file)

    assert (problem.file, problem.path) == (str(file), "")
    assert "mapping" in problem.message and kind in problem.message
    assert_clean_exit_2(runner.invoke(app, ["plan", str(file)]))


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"], ids=["empty", "blank-lines", "comment", "document-marker"])
def test_empty_file(text, write_stack, tmp_path, runner):
    file = write_stack(tmp_path, text)

    (problem,) = problems_of(file)

    assert (problem.file, problem.path) == (str(file), "")
    assert "mapping" in problem.message or "empty" in problem.message
    assert_clean_exit_2(runner.invoke(app, ["plan", str(file)]))


def test_missing_file(tmp_path, runner):
    file = tmp_path / "nope.yaml"

    (problem,) = problems_of(file)

    assert (problem.file, problem.path) == (str(file), "")
    assert "no such" in problem.message
    result = runner.invoke(app, ["plan", str(file)])
    assert_clean_exit_2(result)
    assert str(file) in result.stderr


def test_directory_instead_of_a_file(tmp_path, runner):
    (problem,) = problems_of(tmp_path)

    assert problem.file == str(tmp_path)
    assert_clean_exit_2(runner.invoke(app, ["plan", str(tmp_path)]))


def test_file_that_is_not_utf8(tmp_path, runner):
    file = tmp_path / "latin1.yaml"
    file.write_bytes("name: caf\xe9\n".encode("latin-1"))

    (problem,) = problems_of(file)

    assert problem.file == str(file)
    assert_clean_exit_2(runner.invoke(app, ["plan", str(file)]))


ALIAS_BOMB = "version: 1\na: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]\n" for previous, name in zip("abcdefgh", "bcdefghi")
)


def test_expanding_yaml_aliases_are_rejected_at_once(write_stack, tmp_path, runner):
    """A few hundred bytes of nested aliases (9**9 strings once expanded) took minutes."""
    file = write_stack(tmp_path, ALIAS_BOMB)
    started = time.monotonic()

    (problem,) = problems_of(file)

    assert time.monotonic() - started < 2
    assert "aliases are not allowed" in problem.message and problem.path == "line 3, column 8"
    assert_clean_exit_2(runner.invoke(app, ["plan", str(file)]))


def test_a_merge_key_alias_is_rejected(write_stack, tmp_path):
    (problem,) = problems_of(write_stack(tmp_path, "version: 1\nbase: &base {enabled: true}\nother:\n  <<: *base\n"))
    assert "aliases are not allowed" in problem.message


def test_an_hnsw_indexed_vector_column_has_at_most_2000_dimensions(stack_document, write_stack, tmp_path, monkeypatch):
    from ccoas.stack import Column

    monkeypatch.setattr(Column, "hnsw_indexed", property(lambda column: column.dimensions is not None))
    doc = stack_document("prod")
    doc["schema"]["tables"][1]["columns"][3]["type"] = "vector(2000)"
    assert load_stack(write_stack(tmp_path, doc)).schema_.tables[1].columns[3].dimensions == 2000
    doc["schema"]["tables"][1]["columns"][3]["type"] = "vector(2001)"
    (problem,) = problems_of(write_stack(tmp_path, doc))
    assert problem.path == "schema.tables[1].columns[3].type" and "at most 2000" in problem.message


def test_self_referencing_yaml_anchor(write_stack, tmp_path, runner):
    file = write_stack(tmp_path, "version: 1\nname: &loop [*loop]\n")

    problems_of(file)
    assert_clean_exit_2(runner.invoke(app, ["plan", str(file)]))


# --- many problems at once ---------------------------------------------------------------------


def test_schema_problems_are_reported_together(stack_document, write_stack, tmp_path, runner):
    doc = stack_document("prod")
    doc["colour"] = "blue"
    doc["version"] = "1"
    del doc["tls"]
    doc["components"]["nginx"]["publsh"] = []
    doc["components"]["postgres"]["limits"]["pids"] = "many"
    file = write_stack(tmp_path, doc)

    problems = problems_of(file)

    expected = {"colour", "version", "tls", "components.nginx.publsh", "components.postgres.limits.pids"}
    assert len(problems) == 5
    assert {p.path for p in problems} == expected
    assert {p.file for p in problems} == {str(file)}
    result = runner.invoke(app, ["plan", str(file)])
    assert_clean_exit_2(result)
    assert len(error_lines(result)) == 5
    for path in expected:
        assert f"{file}: {path}: " in result.stderr


def test_rule_problems_are_reported_together(stack_document, write_stack, tmp_path, runner):
    doc = stack_document("prod")
    doc["tls"] = {"mode": "generate"}
    doc["components"]["redis"]["publish"] = [{"container_port": 6379, "host_port": 6379}]
    doc["components"]["minio"]["depends_on"] = ["minio"]
    doc["schema"]["tables"][0]["columns"][0]["primary_key"] = False
    file = write_stack(tmp_path, doc)

    problems = problems_of(file)

    assert sorted(p.path for p in problems) == sorted(
        ["tls.mode", "components.redis.publish", "components.minio.depends_on", "schema.tables[0].columns"]
    )
    result = runner.invoke(app, ["plan", str(file)])
    assert_clean_exit_2(result)
    assert len(error_lines(result)) == 4


def test_each_problem_is_reported_once(stack_document, write_stack, tmp_path):
    doc = stack_document("prod")
    doc["components"]["postgres"] = {"enabled": False}
    del doc["schema"]
    file = write_stack(tmp_path, doc)

    problems = problems_of(file)

    # directus and hasura each stand on postgres: one problem each, none repeated.
    assert sorted(p.path for p in problems) == ["components.directus", "components.hasura"]
    assert len({str(p) for p in problems}) == len(problems)


# --- the shipped stacks ------------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACK_NAMES)
def test_shipped_stacks_validate(stack):
    loaded = load_stack(REPO_ROOT / "stacks" / f"{stack}.yaml")

    assert isinstance(loaded, Stack)
    assert loaded.name == stack and loaded.environment == stack


def test_the_three_stacks_are_shipped():
    assert set(STACK_NAMES) >= {"dev", "ci", "prod"}


def test_cli_error_never_shows_a_traceback_in_a_real_process(stack_document, write_stack, tmp_path):
    """The console script as a user runs it, not through CliRunner."""
    doc = stack_document("prod")
    doc["components"]["redis"]["publish"] = [{"container_port": 6379, "host_port": 6379}]
    file = write_stack(tmp_path, doc)

    result = subprocess.run(
        [sys.executable, "-c", "from ccoas.cli import app; app()", "plan", str(file)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "NO_COLOR": "1"},
        timeout=60,
    )

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert f"{file}: components.redis.publish: only nginx" in result.stderr


# --- edges: markup, odd keys, addresses, ports, versions, duplicates ---------------------------


def test_problem_text_is_not_rich_markup(write_stack, tmp_path, runner):
    file = write_stack(tmp_path, 'version: 1\nname: ok\nenvironment: dev\ntls: {mode: generate}\n"[/x]": 1\n')

    result = runner.invoke(app, ["plan", str(file)])

    assert_clean_exit_2(result)
    assert f"{file}: [/x]: unknown key" in result.stderr


def test_problem_text_is_printed_verbatim(write_stack, tmp_path, runner):
    file = write_stack(tmp_path, 'version: 1\nname: ok\nenvironment: dev\ntls: {mode: generate}\n"[bold]colour": 1\n')

    result = runner.invoke(app, ["plan", str(file)])

    assert_clean_exit_2(result)
    assert f"{file}: [bold]colour: unknown key" in result.stderr


def test_expected_pattern_is_printed_verbatim(stack_document, write_stack, tmp_path, runner):
    doc = stack_document("prod")
    doc["name"] = "Bad_Name"
    file = write_stack(tmp_path, doc)

    result = runner.invoke(app, ["plan", str(file)])

    assert_clean_exit_2(result)
    assert error_lines(result) == [f"error: {problems_of(file)[0]}"]
    assert "[a-z][a-z0-9-]{0,22}[a-z0-9]" in result.stderr


def test_unknown_key_says_which_keys_are_expected(stack_document, write_stack, tmp_path):
    doc = stack_document("prod")
    doc["components"]["nginx"]["publsh"] = []

    (problem,) = problems_of(write_stack(tmp_path, doc))

    assert "publish" in problem.message


def test_bind_address_must_be_an_ip_address(stack_document, write_stack, tmp_path):
    doc = stack_document("prod")
    doc["bind_address"] = "not an address"

    (problem,) = problems_of(write_stack(tmp_path, doc))

    assert problem.path == "bind_address"
    assert "IP address" in problem.message


def test_published_host_ip_must_be_an_ip_address(stack_document, write_stack, tmp_path):
    doc = stack_document("prod")
    doc["components"]["nginx"]["publish"][0]["host_ip"] = "localhost; true"

    (problem,) = problems_of(write_stack(tmp_path, doc))

    assert problem.path == "components.nginx.publish[0].host_ip"
    assert "IP address" in problem.message


def test_host_port_published_twice(stack_document, write_stack, tmp_path):
    doc = stack_document("prod")
    doc["components"]["nginx"]["publish"] = [
        {"container_port": 8443, "host_port": 443},
        {"container_port": 8080, "host_port": 443},
    ]

    (problem,) = problems_of(write_stack(tmp_path, doc))

    assert problem.path == "components.nginx.publish[1].host_port"
    assert "443" in problem.message


@pytest.mark.parametrize("value", ["true", "yes"])
def test_version_true_is_not_version_1(value, stack_document, write_stack, tmp_path):
    text = (REPO_ROOT / "stacks" / "prod.yaml").read_text(encoding="utf-8").replace("version: 1\n", f"version: {value}\n")

    (problem,) = problems_of(write_stack(tmp_path, text))

    assert problem.path == "version"


@pytest.mark.parametrize(
    ("edit", "key", "where"),
    [
        pytest.param(lambda text: text + "name: other\n", "name", None, id="top-level"),
        pytest.param(lambda text: text.replace("  redis: {}\n", "  redis: {}\n  redis: {enabled: false}\n"), "redis", "  redis: {enabled: false}", id="nested"),
    ],
)
def test_duplicate_yaml_keys_are_rejected(edit, key, where, write_stack, tmp_path, runner):
    text = edit((REPO_ROOT / "stacks" / "prod.yaml").read_text(encoding="utf-8"))
    lines = text.splitlines()
    line = len(lines) if where is None else lines.index(where) + 1
    file = write_stack(tmp_path, text)

    (problem,) = problems_of(file)

    assert problem.path.startswith(f"line {line}, column ")
    assert f"duplicate key '{key}'" in problem.message
    assert_clean_exit_2(runner.invoke(app, ["plan", str(file)]))


def test_cpus_below_the_engine_minimum(stack_document, write_stack, tmp_path):
    doc = stack_document("prod")
    doc["components"]["redis"]["limits"] = {"cpus": 0.000000001}

    (problem,) = problems_of(write_stack(tmp_path, doc))

    assert problem.path == "components.redis.limits.cpus"


def test_image_ref_accepts_the_official_minio_reference(stack_document, write_stack, tmp_path):
    doc = stack_document("prod")
    doc["components"]["minio"]["image"] = {"ref": CATALOG["minio"].registry_image}

    assert load_stack(write_stack(tmp_path, doc)).components.minio.image.ref == CATALOG["minio"].registry_image


def test_one_problem_is_one_line_even_with_a_line_break_in_a_key(write_stack, tmp_path, runner):
    file = write_stack(tmp_path, 'version: 1\nname: ok\nenvironment: dev\ntls: {mode: generate}\n"col\\nour": 1\n')

    result = runner.invoke(app, ["plan", str(file)])

    assert_clean_exit_2(result)
    assert len(result.stderr.splitlines()) == 1, result.stderr


def test_a_problem_is_reported_once_even_when_keys_coerce_alike(write_stack, tmp_path):
    text = (REPO_ROOT / "stacks" / "prod.yaml").read_text(encoding="utf-8") + "true: 1\n'true': 2\n"

    problems = problems_of(write_stack(tmp_path, text))

    assert len({str(p) for p in problems}) == len(problems), problems
