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

from ccoas.errors import StackError
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


def test_the_bootstrap_indexes_and_searches_each_embedded_column():
    sql = rendered_files(build_plan(parse_stack(DEV, "dev.yaml")))["postgres/bootstrap.sql"]
    assert 'CREATE INDEX IF NOT EXISTS "documents_embedding_hnsw"\n    ON "app"."documents" USING hnsw ("embedding" public.vector_cosine_ops);' in sql
    assert 'CREATE OR REPLACE FUNCTION "app"."documents_nearest"(' in sql
    assert "SECURITY INVOKER" in sql and "SET search_path = pg_catalog, pg_temp" in sql
    assert sql.count("USING hnsw") == 1
