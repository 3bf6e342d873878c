"""Ollama's API (pull, create, delete: no credential) is reachable only by its clients: the plan
puts it on the internal ``models`` network with the embedding worker alone, so nothing else on
``db`` (Postgres, Redis, the stack's own services) shares a network with it. The e2e tier
measures the same from a container on ``db`` (tests/e2e/test_ollama_api_exposure.py)."""

from __future__ import annotations

import pytest
import yaml

from ccoas.compliance.reachability import declared
from ccoas.errors import StackError
from ccoas.planner import build_plan, load_stack
from ccoas.stack import SERVICE_NETWORKS


def test_only_the_embedder_shares_a_network_with_ollama(load_plan):
    plan = load_plan("dev")
    assert plan.network("models").internal
    port = plan.service("ollama").expose[0]
    reaching = sorted(source for (source, target, p), shared in declared(plan).items() if target == "ollama" and p == port and shared)
    assert reaching == ["embedder"]


def test_a_user_service_cannot_join_the_models_network(repo_root, tmp_path, write_stack):
    assert "models" not in SERVICE_NETWORKS
    doc = yaml.safe_load((repo_root / "stacks" / "examples" / "dbping.yaml").read_text())
    doc["services"]["dbping"]["image"] = {"crate": str(repo_root / "stacks" / "examples" / "dbping")}
    doc["services"]["dbping"]["networks"] = ["db", "models"]
    with pytest.raises(StackError) as raised:
        load_stack(write_stack(tmp_path, doc))
    assert [p.path for p in raised.value.problems] == ["services.dbping.networks[1]"]
    doc["services"]["dbping"]["networks"] = ["db"]
    doc["components"]["ollama"] = {"image": {"source": "local"}}
    plan = build_plan(load_stack(write_stack(tmp_path, doc)))
    assert not declared(plan)[("dbping", "ollama", plan.service("ollama").expose[0])]
