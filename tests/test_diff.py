"""The diff from recorded observed states, with no engine (as pyinfra tests operations from facts).

``tests/fixtures/observed/`` holds the plan of the small stack ``stack.yaml`` (Vault,
Postgres with its bootstrap hook and a secret, Redis) as recorded (``plan.json``: later
changes to the components do not move these tests), the hashes its converged state carries
(``desired.json``) and one observed state per situation (``record.py`` wrote them). Each test feeds one to
:func:`ccoas.engine.diff.diff` and compares the operations, causes included.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ccoas.engine.diff import Desired, DesiredService, Operation, diff
from ccoas.engine.observed import ObservedState
from ccoas.errors import EngineError
from ccoas.plan import Plan

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "observed"
PLAN = Plan.model_validate_json((FIXTURES / "plan.json").read_text())


def desired() -> Desired:
    data = json.loads((FIXTURES / "desired.json").read_text())
    return Desired(services={k: DesiredService(**v) for k, v in data["services"].items()}, steps=data["steps"])


def observed(situation: str) -> ObservedState:
    return ObservedState.from_json((FIXTURES / f"{situation}.json").read_text())


def operations(situation: str) -> list[str]:
    return [str(op) for op in diff(PLAN, desired(), observed(situation))]


EXPECTED = {
    "nothing_changed": [],
    "image_changed": ["recreate postgres: image changed"],
    "config_changed": ["recreate redis: config changed"],
    "secret_rotated": [
        "write secrets: secret versions changed since the files were written",
        "recreate postgres: secret rotated",
    ],
    "dependency_replaced": [
        "recreate vault: config changed",
        "restart postgres: dependency vault replaced",
        "restart redis: dependency vault replaced",
    ],
    "container_missing": ["create redis: container missing"],
    "container_exited": ["start postgres: container exited"],
    "network_missing": ["create network fx-db: missing"],
    "extra_container": ["remove fx-minio: service minio is not in the plan"],
    "vault_sealed": ["unseal vault: sealed"],
    "hook_interrupted": [
        "run postgres: apply roles, pgvector and row-level security (idempotent): not run on this container with these inputs"
    ],
    "first_up": [
        "create network fx-auth: missing",
        "create network fx-db: missing",
        "create volume fx-vault-data: missing",
        "create volume fx-postgres-data: missing",
        "create volume fx-redis-data: missing",
        "create vault: container missing",
        "create postgres: container missing",
        "create redis: container missing",
    ],
}


def test_every_fixture_has_an_expectation():
    assert {p.stem for p in FIXTURES.glob("*.json")} - {"desired", "plan"} == set(EXPECTED)


@pytest.mark.parametrize("situation", sorted(EXPECTED))
def test_diff_of_a_recorded_state(situation):
    assert operations(situation) == EXPECTED[situation]


@pytest.mark.parametrize("situation", sorted(EXPECTED))
def test_observed_states_round_trip_through_json(situation):
    state = observed(situation)
    assert ObservedState.from_json(state.to_json()) == state


def test_a_dependency_restarts_after_its_dependency_and_only_once():
    ops = diff(PLAN, desired(), observed("dependency_replaced"))
    assert [op.resource for op in ops] == ["vault", "postgres", "redis"]
    assert all(op.kind == "container" for op in ops)


def test_the_diff_does_not_change_its_inputs():
    state, wanted = observed("image_changed"), desired()
    before = (state.to_json(), repr(wanted))
    diff(PLAN, wanted, state)
    assert (state.to_json(), repr(wanted)) == before


def test_a_network_of_the_wrong_kind_stops_the_diff():
    import dataclasses

    from ccoas.engine.observed import ObservedNetwork

    state = observed("nothing_changed")
    state = dataclasses.replace(state, networks={**state.networks, "fx-db": ObservedNetwork("fx-db", internal=False)})
    with pytest.raises(EngineError, match="fx-db exists with internal=False"):
        diff(PLAN, desired(), state)


def test_operation_lines_name_resource_and_cause():
    assert str(Operation("recreate", "container", "postgres", "image changed")) == "recreate postgres: image changed"
    assert str(Operation("create", "network", "dev-db", "missing")) == "create network dev-db: missing"


def test_a_running_container_that_is_not_healthy_is_waited_for():
    import dataclasses

    state = observed("nothing_changed")
    redis = dataclasses.replace(state.containers["fx-redis"], health="starting")
    state = dataclasses.replace(state, containers={**state.containers, "fx-redis": redis})
    assert [str(op) for op in diff(PLAN, desired(), state)] == ["wait redis: health is starting"]


@pytest.mark.parametrize(
    "isolate,enforced,expected",
    [
        (False, False, ["reload network fx-db", "restart postgres", "restart redis"]),
        (True, False, ["restart postgres", "restart redis"]),  # the file was read again, the running bridge was not
        (False, True, ["reload network fx-db", "restart postgres", "restart redis"]),
    ],
)
def test_a_network_held_or_run_without_isolation_is_repaired(isolate, enforced, expected):
    """The engine's copy lacks ``isolate`` (read again from its file) and/or its bridge lacks
    netavark's rule: every running container on it restarts, so netavark isolates it."""
    import dataclasses

    from ccoas.engine.observed import ObservedNetwork

    state = observed("nothing_changed")
    state = dataclasses.replace(state, networks={**state.networks, "fx-db": ObservedNetwork("fx-db", True, isolate, enforced)})
    ops = diff(PLAN, desired(), state)
    assert [str(op).split(":")[0] for op in ops] == expected
    assert all(op.cause == "network db started without isolation" for op in ops if op.kind == "container")


@pytest.mark.parametrize(
    ("vault_change", "expected"),
    [
        ({"certificate_renewal": "the edge certificate has 12.0 days left (renewed under 30)"},
         ["renew secrets: the edge certificate has 12.0 days left (renewed under 30)"]),
        ({"certificate_renewal": "the edge certificate is not the stack CA's (self-signed, from before the stack CA)"},
         ["renew secrets: the edge certificate is not the stack CA's (self-signed, from before the stack CA)"]),
        ({"stack_ca_missing": True}, ["bootstrap vault: no stack CA yet (a stack from before it)"]),
    ],
)
def test_a_converged_stack_renews_its_certificate_and_gets_a_stack_ca_without_any_other_change(vault_change, expected):
    """What `up` observes about the edge certificate is an operation of its own: a no-op `up`
    on a converged stack still renews a certificate near its end, or one from before the CA."""
    import dataclasses

    state = observed("nothing_changed")
    state = dataclasses.replace(state, vault=dataclasses.replace(state.vault, **vault_change))

    assert [str(op) for op in diff(PLAN, desired(), state)] == expected
