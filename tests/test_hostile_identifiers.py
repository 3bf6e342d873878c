"""Identifiers and values that change meaning downstream are refused at the boundary.

Each case starts from a shipped stack, plants one hostile name or value the way a stack author
would write it, and runs the real CLI (``ccoas plan FILE``): exit code 2, no traceback, one
problem naming the field path, and a message that says how to move on (README "Boundary:
stack author ↔ host"). What each would have done downstream:

- a column ``null``/``true``: a YAML null or boolean in the rendered Hasura metadata;
- an owner or tenant column ``_or``/``_and``: an operator of Hasura's and Directus's
  permission filters, turning "rows whose owner is me" into something else;
- a column ``xmin``: a Postgres system column (``plan`` passed, the bootstrap failed);
- a nullable owner or tenant column: rows that belong to nobody the policies can name;
- a domain ``a..b``: an empty DNS label in certificates, URLs and the admin address;
- a crate whose program is ``ccoas-embedder``: taken for ccoas's own program;
- environment values with a line break (a second variable in every env file) or
  ``LD_PRELOAD`` and its kin (code the loader injects into the service's programs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from ccoas.cli import app
from ccoas.errors import StackError
from ccoas.planner import load_stack

REPO_ROOT = Path(__file__).resolve().parent.parent
DBPING = REPO_ROOT / "stacks" / "examples" / "dbping.yaml"

Edit = Callable[[dict[str, Any], Path], None]


def column(table: int, index: int, **values: Any) -> Edit:
    def edit(doc: dict[str, Any], _: Path) -> None:
        doc["schema"]["tables"][table]["columns"][index].update(values)

    return edit


def owner_column(table: int, index: int, name: str, key: str = "owner_column") -> Edit:
    """Rename the policy column ``index`` of ``table`` and point the table's ``key`` at it."""

    def edit(doc: dict[str, Any], _: Path) -> None:
        doc["schema"]["tables"][table]["columns"][index]["name"] = name
        doc["schema"]["tables"][table][key] = name

    return edit


def top(key: str, value: Any) -> Edit:
    def edit(doc: dict[str, Any], _: Path) -> None:
        doc[key] = value

    return edit


def environment(key: str, value: str) -> Edit:
    def edit(doc: dict[str, Any], _: Path) -> None:
        doc["services"]["dbping"]["environment"][key] = value

    return edit


def crate_named(program: str) -> Edit:
    """A real crate (manifest, lock, main) whose package and program are ``program``."""

    def edit(doc: dict[str, Any], directory: Path) -> None:
        crate = directory / "crate"
        (crate / "src").mkdir(parents=True)
        (crate / "Cargo.toml").write_text(f'[package]\nname = "{program}"\nversion = "0.1.0"\nedition = "2021"\n')
        (crate / "Cargo.lock").write_text(f'version = 3\n\n[[package]]\nname = "{program}"\nversion = "0.1.0"\n')
        (crate / "src" / "main.rs").write_text("fn main() {}\n")
        doc["services"]["dbping"]["image"] = {"crate": "crate"}

    return edit


def dbping_document() -> dict[str, Any]:
    import yaml

    doc = yaml.safe_load(DBPING.read_text())
    doc["services"]["dbping"]["image"] = {"crate": str(DBPING.parent / "dbping")}
    return doc


# (id, base, edit, field path, fragment of the message that says what to do)
CASES: list[tuple[str, str, Edit, str, str]] = [
    ("column-null", "prod", column(0, 2, name="null"), "schema.tables[0].columns[2].name", "YAML null"),
    ("column-true", "prod", column(0, 2, name="true"), "schema.tables[0].columns[2].name", "rename it"),
    ("column-no", "prod", column(1, 2, name="no"), "schema.tables[1].columns[2].name", "YAML boolean"),
    ("table-off", "prod", lambda d, _: d["schema"]["tables"][0].update(name="off"), "schema.tables[0].name", "YAML boolean"),
    ("owner-column-_or", "prod", owner_column(0, 1, "_or"), "schema.tables[0].columns[1].name", "permission filters"),
    ("tenant-column-_and", "prod", owner_column(1, 1, "_and", "tenant_column"), "schema.tables[1].columns[1].name", "permission filters"),
    ("owner-column-_owner", "prod", owner_column(0, 1, "_owner"), "schema.tables[0].columns[1].name", "leading underscore"),
    ("column-_eq", "prod", column(0, 2, name="_eq"), "schema.tables[0].columns[2].name", "permission filters"),
    ("column-xmin", "prod", column(0, 2, name="xmin"), "schema.tables[0].columns[2].name", "system column"),
    ("column-ctid", "prod", column(1, 2, name="ctid"), "schema.tables[1].columns[2].name", "system column"),
    ("owner-column-nullable", "prod", column(0, 1, nullable=True), "schema.tables[0].columns[1].nullable", "SET NOT NULL"),
    ("tenant-column-nullable", "prod", column(1, 1, nullable=True), "schema.tables[1].columns[1].nullable", "nullable: false"),
    ("domain-empty-label", "prod", top("domain", "a..b"), "domain", "single dots"),
    ("domain-leading-hyphen", "prod", top("domain", "-app.example.org"), "domain", "DNS name"),
    ("domain-trailing-dot", "prod", top("domain", "app.example.org."), "domain", "DNS name"),
    ("crate-named-ccoas-embedder", "dbping", crate_named("ccoas-embedder"), "services.dbping.image.crate", "rename it in Cargo.toml"),
    ("env-newline", "dbping", environment("DBPING_LISTEN", "0.0.0.0:8080\nLD_PRELOAD=/tmp/x.so"), "services.dbping.environment.DBPING_LISTEN", "one line"),
    ("env-carriage-return", "dbping", environment("GREETING", "hi\r"), "services.dbping.environment.GREETING", "one line"),
    ("env-nul", "dbping", environment("GREETING", "hi\x00there"), "services.dbping.environment.GREETING", "one line"),
    ("env-ld-preload", "dbping", environment("LD_PRELOAD", "/tmp/evil.so"), "services.dbping.environment.LD_PRELOAD", "dynamic loader"),
    ("env-ld-library-path", "dbping", environment("LD_LIBRARY_PATH", "/tmp"), "services.dbping.environment.LD_LIBRARY_PATH", "dynamic loader"),
    ("env-ld-audit", "dbping", environment("LD_AUDIT", "/tmp/a.so"), "services.dbping.environment.LD_AUDIT", "into its image"),
    ("env-gconv-path", "dbping", environment("GCONV_PATH", "/tmp"), "services.dbping.environment.GCONV_PATH", "dynamic loader"),
]


def write(base: str, edit: Edit, tmp_path: Path, stack_document, write_stack) -> Path:
    doc = dbping_document() if base == "dbping" else stack_document(base)
    edit(doc, tmp_path)
    return write_stack(tmp_path, doc)


@pytest.mark.parametrize(("base", "edit", "path", "fragment"), [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_hostile_identifier_is_refused_through_the_cli(base, edit, path, fragment, tmp_path, stack_document, write_stack, runner):
    file = write(base, edit, tmp_path, stack_document, write_stack)

    result = runner.invoke(app, ["plan", str(file)])

    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(f"error: {file}: {path}: "), errors
    assert fragment in result.stderr


@pytest.mark.parametrize(
    "name", ["y_value", "nullable", "true_count", "or_group", "owner", "xmin_seen", "_note"], ids=lambda n: n
)
def test_ordinary_names_near_the_hostile_ones_are_accepted(name, tmp_path, stack_document, write_stack):
    """The rules name what they refuse, not everything that looks alike."""
    file = write("prod", column(0, 2, name=name), tmp_path, stack_document, write_stack)
    load_stack(file)


def test_ordinary_environment_and_crate_are_accepted(tmp_path, write_stack):
    doc = dbping_document()
    doc["services"]["dbping"]["environment"].update(LANG="C.UTF-8", GREETING="héllo, wörld = 1; echo $HOME", LDAP_URI="ldap://x")
    load_stack(write_stack(tmp_path, doc))
    crate_named("ccoa-tool")(doc, tmp_path)
    load_stack(write_stack(tmp_path, doc))


def test_every_hostile_kind_in_one_file_is_reported_together(tmp_path, stack_document, write_stack):
    doc = stack_document("prod")
    for edit in (column(0, 2, name="null"), column(0, 1, nullable=True), column(1, 2, name="xmin"), top("domain", "a..b")):
        edit(doc, tmp_path)
    file = write_stack(tmp_path, doc)
    with pytest.raises(StackError) as raised:
        load_stack(file)
    # the schema (domain) is checked first; fix it and the three rules speak at once
    assert [p.path for p in raised.value.problems] == ["domain"]
    doc["domain"] = "app.example.org"
    with pytest.raises(StackError) as raised:
        load_stack(write_stack(tmp_path, doc))
    assert sorted(p.path for p in raised.value.problems) == [
        "schema.tables[0].columns[1].nullable",
        "schema.tables[0].columns[2].name",
        "schema.tables[1].columns[2].name",
    ]


def test_each_boundary_rule_is_in_the_readme_table():
    """README "Boundary: stack author ↔ host" lists every rule that holds that boundary."""
    from ccoas import planner

    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Boundary: stack author ↔ host", 1)[1].split("\n## ", 1)[0]
    for rule in (
        planner.ensure_identifiers_are_yaml_strings,
        planner.ensure_no_filter_operator_names,
        planner.ensure_no_postgres_system_columns,
        planner.ensure_policy_columns_not_nullable,
        planner.ensure_service_program_not_ccoas,
        planner.ensure_service_environment_values_plain,
        planner.ensure_service_environment_no_loader_variables,
    ):
        assert rule in planner.RULES and f"`{rule.__name__}`" in section, rule.__name__
