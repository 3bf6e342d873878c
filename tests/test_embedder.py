"""The embedding worker as planned: a component of every stack with embedded columns, on the db
network only, its Postgres role limited by column GRANTs and one named policy, its image built
from the crate ccoas ships (pinned by Cargo.lock, cached by content)."""

from __future__ import annotations

import json
import re
import shutil
import tomllib
from pathlib import Path

import pytest

from ccoas.components import embedder
from ccoas.images import crate_digest, template_variables
from ccoas.plan import TEMPLATES_DIR
from ccoas.planner import build_plan, parse_stack
from ccoas.render import rendered_files

CRATE = TEMPLATES_DIR / embedder.CRATE


def test_the_dev_stack_runs_it_on_the_db_and_models_networks_only(load_plan):
    plan = load_plan("dev")
    service = plan.service("embedder")
    assert dict(service.networks) == {"db": ("embedder",), "models": ("embedder",)} and service.ports == () and service.expose == ()
    assert service.user == "10001:10001" and service.read_only and service.cap_drop == ("ALL",)
    assert {d.service for d in service.depends_on} == {"postgres", "ollama", "vault"}
    assert service.image.source == "local" and service.image.recipe.artifacts[0].kind == "cargo"


def test_it_is_told_every_embedded_table_with_its_channel_and_model(load_plan):
    plan = load_plan("dev")
    targets = json.loads(plan.service("embedder").environment["CCOAS_EMBED_TABLES"])
    channels = {(t.schema_name, t.table): t.channel for t in plan.changes.tables}
    assert targets == [
        {
            "schema": "app",
            "table": "documents",
            "key": ["id"],
            "key_types": ["uuid"],
            "source": "title",
            "column": "embedding",
            "model": plan.embedding_model("all-minilm-l6-v2").tag,
            "channel": channels[("app", "documents")],
        }
    ]


def test_its_password_is_a_file_only_it_and_postgres_read(load_plan):
    plan = load_plan("dev")
    secret = next(s for s in plan.secrets if s.name == "postgres_embedder_password")
    assert secret.readers == ("embedder", "postgres") and secret.client == "embedder"
    environment = plan.service("embedder").environment
    assert environment["CCOAS_PG_PASSWORD_FILE"] == "/run/secrets/postgres_embedder_password"
    assert not any("PASSWORD" in key and not key.endswith("_FILE") for key in environment)


@pytest.mark.parametrize("stack", ["ci", "prod"])
def test_no_embedded_column_no_worker(load_plan, stack):
    assert not load_plan(stack, name="pr-1" if stack == "ci" else None).has("embedder")


def test_it_can_be_switched_off(stack_document):
    doc = stack_document("dev")
    doc["components"]["embedder"] = {"enabled": False}
    assert not build_plan(parse_stack(doc, "dev+no-embedder")).has("embedder")


def test_its_role_gets_column_grants_and_one_policy_never_table_rights(load_plan):
    sql = rendered_files(load_plan("dev"))["postgres/bootstrap.sql"]
    assert 'GRANT SELECT ("id", "title", "embedding") ON "app"."documents" TO "embedder";' in sql
    assert 'GRANT UPDATE ("embedding") ON "app"."documents" TO "embedder";' in sql
    assert 'CREATE POLICY ccoas_embedder ON "app"."documents" FOR ALL TO "embedder"' in sql
    for line in sql.splitlines():
        if re.match(r"GRANT (SELECT, INSERT|EXECUTE|SELECT ON ccoas)", line):
            assert '"embedder"' not in line, line
    for table in ("notes", "articles"):
        assert f'REVOKE ALL ON "app"."{table}" FROM "embedder";' in sql
        assert f'ON "app"."{table}" TO "embedder"' not in sql
    assert 'host    app             embedder        all             scram-sha-256' in rendered_files(load_plan("dev"))["postgres/pg_hba.conf"]


def test_a_changed_source_makes_the_embedding_stale(load_plan):
    sql = rendered_files(load_plan("dev"))["postgres/bootstrap.sql"]
    assert 'CREATE TRIGGER ccoas_embedding_stale BEFORE UPDATE OF "title" ON "app"."documents"' in sql
    assert "EXECUTE FUNCTION ccoas.embedding_stale('embedding');" in sql


def test_the_crate_pins_every_dependency_and_ships_its_lock_file():
    manifest = tomllib.loads((CRATE / "Cargo.toml").read_text())
    for name, spec in manifest["dependencies"].items():
        version = spec if isinstance(spec, str) else spec["version"]
        assert version.startswith("="), f"{name} is not pinned: {version}"
    lock = tomllib.loads((CRATE / "Cargo.lock").read_text())
    locked = {p["name"]: p["version"] for p in lock["package"]}
    for name, spec in manifest["dependencies"].items():
        version = spec if isinstance(spec, str) else spec["version"]
        assert locked[name] == version.removeprefix("=")
    assert all(p.get("source", "registry+https://github.com/rust-lang/crates.io-index").startswith("registry+") for p in lock["package"])
    assert set(embedder.CRATE_FILES) == {f"{embedder.CRATE}/{p.relative_to(CRATE)}" for p in CRATE.rglob("*") if p.is_file() and "target" not in p.parts}


def test_the_image_takes_the_built_binary_and_its_key_follows_the_crate(tmp_path, load_plan):
    recipe = load_plan("dev").service("embedder").image.recipe
    assert template_variables(recipe)["go"] == {embedder.BINARY: f"bin/{embedder.BINARY}"}
    copy = tmp_path / "worker"
    shutil.copytree(CRATE, copy)
    before = crate_digest(copy)
    assert crate_digest(copy) == before
    (copy / "target").mkdir()
    (copy / "target" / "junk").write_text("build output is not content")
    assert crate_digest(copy) == before
    main = copy / "src" / "main.rs"
    main.write_text(main.read_text() + "\n")
    assert crate_digest(copy) != before
