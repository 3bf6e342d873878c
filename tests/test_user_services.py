"""Services of the stack's own (``services:``): validated at the boundary, planned like a
component (same hardening), and translated by every consumer of the plan without a special case."""

from __future__ import annotations

import os
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from ccoas import kubernetes
from ccoas.cli import app
from ccoas.components import services
from ccoas.compose import compose_document
from ccoas.errors import StackError
from ccoas.images import render_containerfile
from ccoas.planner import build_plan, load_stack, parse_stack
from tests.conftest import REPO_ROOT
from tests.test_pulumi_program import check_security, declared

REF = "registry.example.org/acme/worker:1.2@sha256:" + "ab" * 32


def worker(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "image": {"ref": REF},
        "user": "1000:1000",
        "command": ["worker", "--serve"],
        "networks": ["db"],
        "expose": [8080],
        "environment": {"MODE": "fast"},
        "secrets": {"api_key": {"generator": "token"}},
        "healthcheck": {"test": ["CMD", "worker", "--check"], "interval": 5},
        "depends_on": ["postgres"],
    }
    body.update(changes)
    return body


def with_service(stack_document, body: dict[str, Any], name: str = "worker", base: str = "dev") -> dict[str, Any]:
    doc = stack_document(base)
    doc["services"] = {name: body}
    return doc


def problems(doc: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(StackError) as raised:
        parse_stack(doc, "stack.yaml")
    return [(p.path, p.message) for p in raised.value.problems]


@pytest.mark.parametrize(
    ("change", "path", "fragment"),
    [
        ({"networks": ["edge"]}, "services.worker.networks[0]", "only nginx"),
        ({"networks": ["lan"]}, "services.worker.networks[0]", "auth, db"),
        ({"networks": []}, "services.worker.networks", "at least 1"),
        ({"networks": ["db", "db"]}, "services.worker.networks", "twice"),
        ({"image": {"ref": "registry.example.org/acme/worker:1.2"}}, "services.worker.image.ref", "sha256"),
        ({"image": {}}, "services.worker.image", "exactly one"),
        ({"image": {"ref": REF, "recipe": "embedder"}}, "services.worker.image", "exactly one"),
        ({"image": {"recipe": "no-such-recipe"}}, "services.worker.image.recipe", "recipe ccoas knows"),
        ({"user": "0:0"}, "services.worker.user", "[1-9]"),
        ({"user": "root"}, "services.worker.user", "[1-9]"),
        ({"environment": {"DB_PASSWORD": "hunter2"}}, "services.worker.environment.DB_PASSWORD", "secrets:"),
        ({"environment": {"api_token": "x"}}, "services.worker.environment.api_token", "secrets:"),
        ({"healthcheck": {"test": ["RUN", "x"]}}, "services.worker.healthcheck.test", "CMD"),
        ({"healthcheck": None}, "services.worker.healthcheck", "object"),
        ({"publish": [{"container_port": 8080, "host_port": 8080}]}, "services.worker.publish", "unknown key (expected one of"),
        ({"privileged": True}, "services.worker.privileged", "healthcheck"),
        ({"depends_on": ["nosuch"]}, "services.worker.depends_on[0]", "not an enabled"),
        ({"depends_on": ["worker"]}, "services.worker.depends_on[0]", "itself"),
    ],
)
def test_a_bad_service_is_one_problem_naming_its_field(stack_document, change, path, fragment):
    found = problems(with_service(stack_document, worker(**change)))
    assert len(found) == 1, found
    assert found[0][0] == path and fragment in found[0][1], found


def test_a_service_may_not_take_a_component_name(stack_document):
    assert problems(with_service(stack_document, worker(), name="redis")) == [
        ("services.redis", "'redis' is a component of ccoas: name the service otherwise")
    ]


def test_secrets_need_vault(stack_document):
    doc = with_service(stack_document, worker())
    doc["components"]["vault"] = {"enabled": False}
    assert ("services.worker.secrets", "secrets are kept in vault, which is not enabled") in problems(doc)


def test_the_cli_exits_2_without_a_traceback(stack_document, write_stack, tmp_path, runner):
    path = write_stack(tmp_path, with_service(stack_document, worker(networks=["edge"])))
    result = runner.invoke(app, ["plan", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "services.worker.networks[0]" in result.stderr and "only nginx" in result.stderr


@pytest.fixture
def plan(stack_document):
    return build_plan(parse_stack(with_service(stack_document, worker()), "stack.yaml"))


def test_the_plan_hardens_it_like_every_component(plan):
    service = plan.service("worker")
    assert service.user == "1000:1000" and service.read_only is True
    assert service.cap_drop == ("ALL",) and service.cap_add == ()
    assert service.security_opt == ("no-new-privileges:true",)
    assert [t.target for t in service.tmpfs] == ["/tmp"] and "nosuid,nodev,noexec" in service.tmpfs[0].options
    assert service.limits.memory_bytes and service.limits.nano_cpus and service.limits.pids
    assert service.ports == () and dict(service.networks) == {"db": ("worker",)}
    assert service.expose == (8080,)
    assert service.environment == {"MODE": "fast"}
    assert service.healthcheck.test == ("CMD", "worker", "--check") and service.healthcheck.interval_s == 5
    assert service.image.ref == REF and service.image.pull == "never"
    assert service.image.registry.digest_source == "the stack file (services.worker.image.ref)"
    assert {d.service for d in service.depends_on} == {"postgres", "vault", "ollama"}


def test_its_secrets_are_files_it_alone_reads_and_vault_lets_it_read(plan):
    secret = next(s for s in plan.secrets if s.name == "worker_api_key")
    assert secret.owner == "worker" and secret.readers == ("worker",) and secret.generator == "token"
    mount = plan.service("worker").secrets
    assert [(m.secret, m.target, m.uid, m.gid, m.mode) for m in mount] == [("worker_api_key", "/run/secrets/worker_api_key", 1000, 1000, 0o400)]
    policy = next(p for p in plan.vault.policies if p.service == "worker")
    assert policy.read_paths == ("worker/api_key",)
    assert not any(secret.name in value for value in plan.service("worker").environment.values())


def test_it_starts_after_what_it_depends_on(plan):
    tier = {name: index for index, names in enumerate(plan.start_order) for name in names}
    assert tier["worker"] > tier["postgres"] and tier["worker"] > tier["vault"]


def test_a_disabled_service_is_not_planned(stack_document):
    plan = build_plan(parse_stack(with_service(stack_document, worker(enabled=False)), "stack.yaml"))
    assert "worker" not in {s.name for s in plan.services}


def test_the_compose_export_translates_it(plan):
    body = compose_document(plan)["services"]["worker"]
    assert body["image"] == REF and body["user"] == "1000:1000" and body["read_only"] is True
    assert body["cap_drop"] == ["ALL"] and "ports" not in body
    assert list(body["networks"]) == ["db"]


def test_the_pulumi_program_translates_it(plan):
    container = declared(plan).containers["worker"]
    check_security(plan, "worker", container)


def test_kubernetes_translates_it(plan):
    files = kubernetes.manifest_files(plan)
    objects = [o for name in kubernetes.manifests(files) for o in yaml.safe_load_all(files[name]) if o]
    workloads = [o for o in objects if o.get("kind") in ("Deployment", "StatefulSet") and "worker" in o["metadata"]["name"]]
    assert len(workloads) == 1
    pod = workloads[0]["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "worker")
    assert container["image"] == REF
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


# --- a service built from a Rust crate of the user's own (image.crate) -----------------------

EXAMPLE = REPO_ROOT / "stacks" / "examples" / "dbping.yaml"
EXAMPLE_CRATE = EXAMPLE.parent / "dbping"
GOLDEN = REPO_ROOT / "tests" / "golden" / "examples" / "dbping"


def crate_in(tmp_path: Path, manifest: str | None = None, lock: bool = True, main: bool = True) -> Path:
    """A copy of the example crate under ``tmp_path/crates/svc`` (its manifest, lock or main changed)."""
    folder = tmp_path / "crates" / "svc"
    shutil.copytree(EXAMPLE_CRATE, folder, ignore=shutil.ignore_patterns("target"))
    if manifest is not None:
        (folder / "Cargo.toml").write_text(manifest)
    if not lock:
        (folder / "Cargo.lock").unlink()
    if not main:
        (folder / "src" / "main.rs").unlink()
    return folder


def crate_stack(stack_document, tmp_path: Path, crate: str = "crates/svc") -> tuple[dict[str, Any], str]:
    """A dev stack with a service built from ``crate`` (relative to the stack file in tmp_path)."""
    return with_service(stack_document, worker(image={"crate": crate})), str(tmp_path / "stack.yaml")


def crate_problems(doc: dict[str, Any], file: str) -> list[tuple[str, str]]:
    with pytest.raises(StackError) as raised:
        parse_stack(doc, file)
    return [(p.path, p.message) for p in raised.value.problems]


@pytest.mark.parametrize(
    ("make", "crate", "fragment"),
    [
        (lambda tmp: None, "crates/svc", "is not a folder"),
        (lambda tmp: (tmp / "crates").mkdir() or (tmp / "crates" / "svc").write_text("x"), "crates/svc", "is not a folder"),
        (lambda tmp: crate_in(tmp, lock=False), "crates/svc", "has no Cargo.lock"),
        (lambda tmp: (tmp / "crates" / "svc").mkdir(parents=True), "crates/svc", "has no Cargo.toml and no Cargo.lock"),
        (lambda tmp: crate_in(tmp, manifest="[workspace]\nmembers = []\n"), "crates/svc", "has no [package] name"),
        (lambda tmp: crate_in(tmp, manifest="[package\n"), "crates/svc", "cannot read"),
        (lambda tmp: crate_in(tmp, main=False), "crates/svc", "a library crate builds no program"),
        (
            lambda tmp: crate_in(tmp, manifest='[package]\nname = "svc"\nversion = "0.1.0"\n[[bin]]\nname = "a"\n[[bin]]\nname = "b"\n'),
            "crates/svc",
            "2 [[bin]] targets",
        ),
        (lambda tmp: crate_in(tmp, manifest='[package]\nname = "svc$(id)"\nversion = "0.1.0"\n'), "crates/svc", "program name"),
    ],
)
def test_a_crate_that_cannot_be_built_is_one_problem_naming_its_field(stack_document, tmp_path, make, crate, fragment):
    make(tmp_path)
    doc, file = crate_stack(stack_document, tmp_path, crate)
    found = crate_problems(doc, file)
    assert len(found) == 1, found
    assert found[0][0] == "services.worker.image.crate" and fragment in found[0][1], found


def test_a_crate_and_a_ref_are_one_choice_too_many(stack_document, tmp_path):
    crate_in(tmp_path)
    doc = with_service(stack_document, worker(image={"crate": "crates/svc", "ref": REF}))
    assert crate_problems(doc, str(tmp_path / "stack.yaml")) == [
        ("services.worker.image", "expected exactly one of crate (a Rust crate of your own), recipe (a local recipe ccoas knows) or ref (an image pinned by digest)")
    ]


def test_the_cli_refuses_a_missing_crate_with_exit_2(stack_document, write_stack, tmp_path, runner):
    path = write_stack(tmp_path, with_service(stack_document, worker(image={"crate": "nowhere"})))
    result = runner.invoke(app, ["plan", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "services.worker.image.crate" in result.stderr and f"{tmp_path / 'nowhere'} is not a folder" in result.stderr


def test_the_crate_is_found_relative_to_the_stack_file_and_planned_as_a_local_cargo_build(stack_document, tmp_path):
    folder = crate_in(tmp_path)
    doc, file = crate_stack(stack_document, tmp_path)
    service = build_plan(parse_stack(doc, file)).service("worker")
    image = service.image
    assert image.source == "local" and image.pull == "never" and image.registry is None
    assert image.recipe.containerfile == services.CRATE_CONTAINERFILE and image.recipe.files == ()
    assert [(a.kind, a.spec, a.binary) for a in image.recipe.artifacts] == [("cargo", str(folder), "dbping")]
    assert image.ref == f"localhost/ccoas/worker:{image.recipe.digest[:12]}"
    assert image.upstream == {"local": f"dbping 0.1.0 (the crate {folder}, its dependencies pinned by its Cargo.lock)"}
    assert service.user == "1000:1000" and service.read_only and service.cap_drop == ("ALL",)


def test_the_image_is_keyed_by_the_crates_content_not_its_place(stack_document, tmp_path):
    def ref(folder: str) -> str:
        doc = with_service(stack_document, worker(image={"crate": folder}))
        return build_plan(parse_stack(doc, str(tmp_path / "stack.yaml"))).service("worker").image.ref

    folder = crate_in(tmp_path)
    before = ref("crates/svc")
    shutil.copytree(folder, tmp_path / "elsewhere")
    assert ref("elsewhere") == before  # the same crate elsewhere: the same image
    (folder / "target" / "release").mkdir(parents=True)
    (folder / "target" / "release" / "dbping").write_bytes(b"built")
    assert ref("crates/svc") == before  # build output is not the crate
    (folder / "src" / "extra.rs").write_text("// a new module\n")
    assert ref("crates/svc") != before  # any file of the crate, not only the listed ones


def test_a_crate_names_its_program_with_one_bin_target(tmp_path):
    folder = crate_in(tmp_path, manifest='[package]\nname = "svc"\nversion = "2.0.1"\n[[bin]]\nname = "serve"\npath = "src/main.rs"\n')
    assert services.read_crate(folder) == services.Crate(folder=folder, package="svc", version="2.0.1", program="serve")


def example_plan():
    return build_plan(load_stack(EXAMPLE), name="dbping-golden")


def test_the_example_stack_runs_its_crate_hardened_on_the_db_network_only():
    plan = example_plan()
    service = plan.service("dbping")
    assert service.image.recipe.artifacts[0].spec == str(EXAMPLE_CRATE)
    assert dict(service.networks) == {"db": ("dbping",)} and service.ports == ()
    assert service.user == "65534:65534" and service.read_only and service.cap_drop == ("ALL",)
    assert [m.target for m in service.secrets] == ["/run/secrets/dbping_api_key"]
    assert service.environment["DBPING_AUTH_FILE"] == "/run/secrets/dbping_api_key"
    assert service.healthcheck.test == ("CMD", "/usr/local/bin/dbping", "--check")
    assert [s.name for s in plan.services] == ["vault", "postgres", "dbping"]


def test_the_example_crate_pins_everything_it_builds_from():
    manifest = tomllib.loads((EXAMPLE_CRATE / "Cargo.toml").read_text())
    lock = tomllib.loads((EXAMPLE_CRATE / "Cargo.lock").read_text())
    assert manifest.get("dependencies", {}) == {}  # the standard library only
    assert [p["name"] for p in lock["package"]] == ["dbping"]


@pytest.mark.parametrize("golden", ["Containerfile", "compose-service.yaml"])
def test_the_example_renders_its_golden_files(golden):
    """The crate image's Containerfile and the service as the compose export writes it.
    Regenerate after an intended change: CCOAS_UPDATE_GOLDEN=1 python -m pytest tests/test_user_services.py"""
    plan = example_plan()
    actual = {
        "Containerfile": render_containerfile(plan.service("dbping").image.recipe),
        "compose-service.yaml": yaml.safe_dump(compose_document(plan)["services"]["dbping"], sort_keys=True),
    }[golden]
    if os.environ.get("CCOAS_UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(parents=True, exist_ok=True)
        (GOLDEN / golden).write_text(actual)
    assert actual == (GOLDEN / golden).read_text(), f"tests/golden/examples/dbping/{golden} differs (CCOAS_UPDATE_GOLDEN=1 to regenerate)"
