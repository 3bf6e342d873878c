"""The plain Hasura v2.51.0 image serves the stack's metadata, applied by ccoas's hook through
Hasura's metadata API (``replace_metadata``), not by a CLI inside the image.

Runs only on a host that holds the pinned image (``ccoas images pull`` where a registry is
reachable): this test never pulls, and no registry is reachable on the machines that develop
ccoas, so here it is skipped with that reason. Where it runs, it proves: ``up`` brings Hasura
up healthy with the hook run; Hasura's own export of its metadata holds exactly the tables
and permissions ccoas rendered; a second ``up`` changes nothing; the metadata API refuses a
request without the admin secret.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import docker.errors
import pytest
import yaml

from ccoas.components.hasura import COMPONENT as HASURA
from ccoas.engine.local import LocalEngine
from ccoas.planner import build_plan, load_stack
from ccoas.render import rendered_files

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
NAME = f"ti-hasura-{uuid.uuid4().hex[:6]}"


def hasura_stack(directory: Path) -> Path:
    """The ci stack with Hasura (registry) as its GraphQL plane, the prod tables, no extras."""
    stack = yaml.safe_load((REPO / "stacks" / "ci.yaml").read_text())
    for component in ("redis", "minio", "ollama", "postgraphile", "embedder"):
        stack["components"][component] = {"enabled": False}
    stack["components"]["hasura"] = {"image": {"source": "registry"}}
    stack["schema"] = yaml.safe_load((REPO / "stacks" / "prod.yaml").read_text())["schema"]
    for table in stack["schema"]["tables"]:
        for column in table["columns"]:
            column.pop("embed", None)
    path = directory / "hasura.yaml"
    path.write_text(yaml.safe_dump(stack, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    plan = build_plan(load_stack(hasura_stack(tmp_path_factory.mktemp("hasura"))), name=NAME)
    engine = LocalEngine.connect(plan)
    try:
        engine.client.images.get(HASURA.registry_image)
    except docker.errors.ImageNotFound:
        pytest.skip(
            f"Hasura's pinned image {HASURA.registry_image} is not on this host: it is only in a registry, "
            "none is reachable here, and this test never pulls (`ccoas images pull` where one is reachable)"
        )
    engine.build_images()
    try:
        engine.up()
        yield engine
    finally:
        engine.down(purge=True)


def hasura_call(engine: LocalEngine, body: dict, secret: bool = True) -> tuple[int, dict]:
    """POST /v1/metadata from inside the Hasura container (its loopback), as the hook does."""
    service = engine.plan.service("hasura")
    script = (
        "printf 'X-Hasura-Admin-Secret: %s\\r\\n' \"$(cat /run/secrets/hasura_admin_secret)\" | "
        if secret
        else "printf 'X-Nothing: 1\\r\\n' | "
    ) + f"curl -sS -H @- -H 'Content-Type: application/json' -d '{json.dumps(body)}' -w '\\n%{{http_code}}' http://127.0.0.1:{service.expose[0]}/v1/metadata"
    container = engine.client.containers.get(service.container_name)
    result = container.exec_run(["sh", "-c", script], user=service.user)
    text, _, status = result.output.decode().rpartition("\n")
    return int(status), json.loads(text)


def test_up_serves_the_rendered_metadata_from_the_plain_image(engine):
    assert {row.service: row.health for row in engine.status()}["hasura"] == "healthy"
    status, exported = hasura_call(engine, {"type": "export_metadata", "version": 2, "args": {}})
    assert status == 200, exported
    rendered = json.loads(rendered_files(engine.plan)["hasura/replace_metadata.json"])["args"]["metadata"]
    [source] = exported["metadata"]["sources"]
    assert sorted(source["tables"], key=lambda t: t["table"]["name"]) == sorted(rendered["sources"][0]["tables"], key=lambda t: t["table"]["name"])


def test_a_second_up_changes_nothing(engine):
    assert engine.up(dry_run=True).operations == []


def test_the_metadata_api_refuses_a_request_without_the_admin_secret(engine):
    status, answer = hasura_call(engine, {"type": "export_metadata", "version": 2, "args": {}}, secret=False)
    assert status in (400, 401, 403), answer
