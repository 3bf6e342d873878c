"""Ollama's API (pull, create, delete: no credential) is out of reach of the db network.

A stack of its own (vault, postgres, ollama) comes up; then a container like a user service,
joined to the stack's ``db`` network the way ``services.<name>.networks: [db]`` joins it,
tries to call ``/api/delete`` and ``/api/pull``, by Ollama's name and by each of its addresses.
The same probe from the ``models`` network (where Ollama's clients are) gets HTTP answers, so a
refusal is never a broken probe.
"""

from __future__ import annotations

import uuid

import pytest

from ccoas.planner import build_plan, parse_stack
from healthy_stack import healthy_stack  # tests/e2e is on sys.path (rootdir imports)
from conftest import component_stack

pytestmark = pytest.mark.e2e

NAME = f"ti-ollama-{uuid.uuid4().hex[:6]}"

# bash only (the postgres image has no curl): an HTTP request over /dev/tcp, its status line out
REQUEST = r"""
host="$0"; method="$1"; path="$2"; body="$3"
exec 3<>"/dev/tcp/$host/11434" || { echo "no connection"; exit 7; }
printf '%s %s HTTP/1.0\r\nHost: ollama\r\nContent-Type: application/json\r\nContent-Length: %s\r\n\r\n%s' "$method" "$path" "${#body}" "$body" >&3
head -n 1 <&3
"""


@pytest.fixture(scope="module")
def engine():
    plan = build_plan(parse_stack(component_stack(NAME, ("vault", "postgres", "ollama")), f"{NAME}.yaml"))
    with healthy_stack(plan, ("vault", "postgres", "ollama")) as engine:
        yield engine


def ollama_addresses(engine) -> list[str]:
    container = engine.client.containers.get(engine.plan.service("ollama").container_name)
    container.reload()
    return sorted(n["IPAddress"] for n in container.attrs["NetworkSettings"]["Networks"].values() if n.get("IPAddress"))


def call_from(engine, network: str, host: str, method: str, path: str, body: str) -> str:
    """From a throwaway container on ``network`` (the postgres image, an unprivileged user like a
    user service): the status line Ollama answered, or what went wrong."""
    image = engine.plan.service("postgres").image.ref
    container = engine.client.containers.run(
        image,
        ["timeout", "10", "bash", "-c", REQUEST, host, method, path, body],
        entrypoint=[],
        network=engine.plan.network(network).engine_name,
        user="65534:65534",
        detach=True,
        labels={"ccoas.test": NAME},
    )
    try:
        container.wait(timeout=60)
        return container.logs().decode(errors="replace").strip()
    finally:
        container.remove(force=True)


def test_ollama_is_only_on_the_models_network(engine):
    assert set(engine.plan.service("ollama").networks) == {"models"}
    assert engine.plan.network("models").internal


@pytest.mark.parametrize(("method", "path", "body"), [("DELETE", "/api/delete", '{"model":"all-minilm-l6-v2"}'), ("POST", "/api/pull", '{"model":"evil/model"}')])
def test_a_service_on_the_db_network_cannot_call_the_model_api(engine, method, path, body):
    for host in ("ollama", *ollama_addresses(engine)):
        answer = call_from(engine, "db", host, method, path, body)
        assert not answer.startswith("HTTP/"), f"{method} {path} via {host} from the db network was answered: {answer}"


def test_the_same_probe_from_the_models_network_is_answered(engine):
    """The control: the request reaches Ollama from where its clients are."""
    assert call_from(engine, "models", "ollama", "GET", "/api/tags", "").startswith("HTTP/1.") 
    answer = call_from(engine, "models", "ollama", "DELETE", "/api/delete", '{"model":"no-such-model"}')
    assert answer.startswith("HTTP/1.") and " 404" in answer, answer
