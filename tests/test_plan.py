"""The plan of every shipped stack, control by control and service by service.

Parametrized testinfra-style: a failure names the stack, the service and the control.
No container, no network: only :func:`ccoas.plan.build_plan` and its JSON.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck as HypothesisHealthCheck
from hypothesis import given, settings
from hypothesis import strategies as st

import ccoas.plan
from ccoas.planner import CATALOG, build_plan, load_stack
from ccoas.plan import LABEL_PREFIX, PLAN_SCHEMA_VERSION, Plan
from ccoas.stack import NAME_RE

REPO_ROOT = Path(__file__).resolve().parent.parent
STACK_NAMES = tuple(sorted(p.stem for p in (REPO_ROOT / "stacks").glob("*.yaml")))


def stack_path(stack: str | Path) -> Path:
    return Path(stack) if isinstance(stack, Path) or "/" in stack else REPO_ROOT / "stacks" / f"{stack}.yaml"

SECRETS_DIR = "/run/secrets"
STACK_LABEL = f"{LABEL_PREFIX}.stack"
SERVICE_LABEL = f"{LABEL_PREFIX}.service"

# The design's network placement: which networks each component sits on, exactly.
# Each service on the networks it uses, no more: Directus and Hasura never call Vault (their
# secrets are files), so they are off auth; MinIO's clients (Directus, nginx) are on edge;
# Ollama's API (pull, create, delete) is reached only by its client, the embedder, on models.
NETWORKS = {
    "nginx": {"edge"},
    "directus": {"edge", "db"},
    "hasura": {"edge", "db"},
    "postgraphile": {"edge", "db"},
    "vault": {"auth"},
    "postgres": {"db"},
    "redis": {"db"},
    "ollama": {"models"},
    "embedder": {"db", "models"},
    "minio": {"edge"},
    "monitoring": {"edge", "auth", "db"},
}

# The stable JSON schema (schema_version 1). The plan's and each service's keys must match
# exactly: adding one is a compatible change made here on purpose; renaming or removing one
# must bump PLAN_SCHEMA_VERSION. Nested objects must keep at least the keys listed.
PLAN_KEYS = {
    "schema_version", "stack", "environment", "domain", "labels", "networks", "volumes", "secrets",
    "services", "start_order", "tls", "vault", "app_schema", "buckets", "changes", "embedding_models", "edge",
}  # fmt: skip
SERVICE_KEYS = {
    "name", "container_name", "summary", "image", "user", "entrypoint", "command", "environment",
    "networks", "expose", "ports", "volumes", "config", "runtime_mounts", "tmpfs", "secrets",
    "read_only", "cap_drop", "cap_add", "cap_add_reason", "security_opt", "limits", "restart",
    "stop", "logs", "healthcheck", "liveness", "depends_on", "hooks", "labels", "config_templates",
}  # fmt: skip
NETWORK_KEYS = {"name", "engine_name", "internal", "isolate", "dns", "purpose", "labels"}
VOLUME_KEYS = {"name", "engine_name", "service", "labels"}
SECRET_KEYS = {"name", "vault_path", "owner", "client", "generator", "length", "readers", "description"}
IMAGE_KEYS = {"ref", "source", "pull", "recipe"}
HEALTHCHECK_KEYS = {"test", "interval_s", "timeout_s", "retries", "start_period_s"}
SECRET_MOUNT_KEYS = {"secret", "target", "uid", "gid", "mode"}
LIMITS_KEYS = {"memory_bytes", "nano_cpus", "pids"}
VAULT_KEYS = {"kv_mount", "prefix", "policies", "ccoas_policy", "audit_path", "socket_mount", "socket_file"}
CHANGES_KEYS = {"log_table", "resume_function", "resync_sqlstate", "payload_key_bytes", "max_entries", "max_age_hours", "tables"}
TABLE_CHANGES_KEYS = {"schema_name", "table", "channel", "key"}
TLS_KEYS = {"mode", "domain", "cert_file", "key_file"}

DIGEST_PINNED = re.compile(r"^[a-z0-9][^\s@]*@sha256:[0-9a-f]{64}$")
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|PRIVATE|(^|_)KEY($|_)|API_?KEY")
TOKEN_LIKE = re.compile(r"^[A-Za-z0-9+=_-]{24,}$")
TOKEN_SETTING = re.compile(r"_(COOKIE_SECURE|TTL)$")
"""How long a token lives or how its cookie travels (``ACCESS_TOKEN_TTL``,
``REFRESH_TOKEN_COOKIE_SECURE``): a setting, not a secret."""


def enabled_services(stack: str) -> list[str]:
    """Collected from the stack file alone, so collection never depends on templates."""
    return list(load_stack(stack_path(stack)).enabled())


STACK_SERVICES = [pytest.param(stack, service, id=f"{stack}-{service}") for stack in STACK_NAMES for service in enabled_services(stack)]
STACKS = [pytest.param(stack, id=stack) for stack in STACK_NAMES]


@pytest.fixture(scope="module")
def plan_of(load_plan):
    """A cached plan per (stack, name): plans are immutable and every test only reads them."""
    cache: dict[tuple[str, str | None], Plan] = {}

    def _plan_of(stack: str, name: str | None = None) -> Plan:
        if (stack, name) not in cache:
            cache[(stack, name)] = load_plan(stack, name=name)
        return cache[(stack, name)]

    return _plan_of


# --- per service: hardening --------------------------------------------------------------------


@pytest.mark.parametrize(("stack", "service"), STACK_SERVICES)
def test_runs_as_a_non_root_user(stack, service, plan_of):
    s = plan_of(stack).service(service)
    assert re.fullmatch(r"\d+:\d+", s.user), s.user
    assert s.uid != 0
    assert s.gid != 0
    assert s.uid == CATALOG[service].uid


@pytest.mark.parametrize(("stack", "service"), STACK_SERVICES)
def test_root_filesystem_is_read_only(stack, service, plan_of):
    assert plan_of(stack).service(service).read_only is True


@pytest.mark.parametrize(("stack", "service"), STACK_SERVICES)
def test_every_capability_is_dropped(stack, service, plan_of):
    s = plan_of(stack).service(service)
    assert s.cap_drop == ("ALL",)
    if s.cap_add:
        assert s.cap_add_reason and not s.cap_add_reason.startswith("none"), f"{service} adds {s.cap_add} without a reason"
    else:
        assert s.cap_add == ()


@pytest.mark.parametrize(("stack", "service"), STACK_SERVICES)
def test_no_new_privileges(stack, service, plan_of):
    assert "no-new-privileges:true" in plan_of(stack).service(service).security_opt


@pytest.mark.parametrize(("stack", "service"), STACK_SERVICES)
def test_restarts_on_failure_a_bounded_number_of_times(stack, service, plan_of):
    restart = plan_of(stack).service(service).restart
    assert restart.policy == "on-failure"
    assert 1 <= restart.max_retries <= 5


def assert_docker_healthcheck(check) -> None:
    assert check.test[0] in ("CMD", "CMD-SHELL"), check.test
    if check.test[0] == "CMD-SHELL":
        assert len(check.test) == 2 and check.test[1].strip(), check.test
    else:
        assert len(check.test) >= 2 and all(arg for arg in check.test[1:]), check.test
    assert check.interval_s > 0 and check.timeout_s > 0 and check.retries > 0 and check.start_period_s >= 0


@pytest.mark.parametrize(("stack", "service"), STACK_SERVICES)
def test_readiness_and_liveness_checks(stack, service, plan_of):
    s = plan_of(stack).service(service)
    assert_docker_healthcheck(s.healthcheck)
    assert_docker_healthcheck(s.liveness)


@pytest.mark.parametrize(("stack", "service"), STACK_SERVICES)
def test_tmp_is_a_tmpfs(stack, service, plan_of):
    targets = [t.target for t in plan_of(stack).service(service).tmpfs]
    assert "/tmp" in targets
    assert len(targets) == len(set(targets))


@pytest.mark.parametrize(("stack", "service"), STACK_SERVICES)
def test_logs_are_capped(stack, service, plan_of):
    logs = plan_of(stack).service(service).logs
    assert 64 * 1024 <= logs.max_size_bytes <= 100 * 1024**2
    assert logs.max_files == 1


def test_a_components_log_cap_overrides_the_stacks(stack_document, write_stack, tmp_path, load_plan):
    doc = stack_document("prod")
    doc["logs"] = {"max_size": "2Mi"}
    doc["components"]["ollama"]["logs"] = {"max_size": "50Mi"}

    plan = load_plan(write_stack(tmp_path, doc))

    assert plan.service("ollama").logs.max_size_bytes == 50 * 1024**2
    assert {s.logs.max_size_bytes for s in plan.services if s.name != "ollama"} == {2 * 1024**2}


@pytest.mark.parametrize(("stack", "service"), STACK_SERVICES)
def test_limits_are_set(stack, service, plan_of):
    limits = plan_of(stack).service(service).limits
    assert limits.memory_bytes and limits.memory_bytes >= 16 * 1024**2
    assert limits.nano_cpus and limits.nano_cpus > 0
    assert limits.pids and limits.pids >= 16


@pytest.mark.parametrize(("stack", "service"), STACK_SERVICES)
def test_secrets_are_read_only_files_of_the_service_user(stack, service, plan_of):
    plan = plan_of(stack)
    s = plan.service(service)
    for mount in s.secrets:
        assert os.path.dirname(mount.target) == SECRETS_DIR, mount.target
        assert os.path.basename(mount.target).startswith(mount.secret), mount.target
        assert mount.mode == 0o400
        assert (mount.uid, mount.gid) == (s.uid, s.gid)
        assert service in plan.secret(mount.secret).readers
    assert len({m.secret for m in s.secrets}) == len(s.secrets)
    assert len({m.target for m in s.secrets}) == len(s.secrets)
    readable = {secret.name for secret in plan.secrets if service in secret.readers}
    assert {m.secret for m in s.secrets} == readable


@pytest.mark.parametrize(("stack", "service"), STACK_SERVICES)
def test_environment_holds_no_secret_values(stack, service, plan_of):
    s = plan_of(stack).service(service)
    mounted = {m.target for m in s.secrets}
    for key, value in s.environment.items():
        if SECRET_NAME.search(key) and not TOKEN_SETTING.search(key):
            assert key.endswith("_FILE"), f"{service}: {key} looks secret but is not a *_FILE reference"
        if key.endswith("_FILE") and (SECRET_NAME.search(key) or value.startswith(SECRETS_DIR)):
            assert value in mounted, f"{service}: {key}={value} is not a secret file mounted in the service"
        assert not TOKEN_LIKE.fullmatch(value), f"{service}: {key} has a value that looks like a credential"


@pytest.mark.parametrize(("stack", "service"), STACK_SERVICES)
def test_labels_carry_stack_and_service(stack, service, plan_of):
    plan = plan_of(stack)
    labels = plan.service(service).labels
    assert labels[STACK_LABEL] == plan.stack == stack
    assert labels[SERVICE_LABEL] == service
    for volume in plan.volumes:
        if volume.service == service:
            assert volume.labels[STACK_LABEL] == plan.stack
            assert volume.labels[SERVICE_LABEL] == service


# --- per service: network placement ------------------------------------------------------------


@pytest.mark.parametrize(("stack", "service"), STACK_SERVICES)
def test_network_placement(stack, service, plan_of):
    s = plan_of(stack).service(service)
    assert set(s.networks) == NETWORKS[service]
    for aliases in s.networks.values():
        assert service in aliases


@pytest.mark.parametrize(("stack", "service"), STACK_SERVICES)
def test_only_nginx_publishes_ports(stack, service, plan_of):
    plan = plan_of(stack)
    s = plan.service(service)
    if service != "nginx":
        assert s.ports == ()
        return
    # behind the host listener, the public ports are the listener's and the engine publishes none
    public = plan.edge.listener.ports
    assert s.ports == (() if plan.edge.listener.kind == "host" else public)
    assert [name for name, _ in plan.published()] == ["edge listener" if plan.edge.listener.kind == "host" else "nginx"] * len(public)
    assert public, "nginx publishes nothing"
    assert {p.container_port for p in public} <= set(CATALOG["nginx"].ports)
    loaded = load_stack(stack_path(stack))
    for port in public:
        if plan.environment in ("dev", "ci"):
            assert port.host_ip == "127.0.0.1", f"{stack} publishes nginx beyond loopback"
        assert port.host_ip == loaded.bind_address or any(p.host_ip == port.host_ip for p in loaded.components.nginx.publish)


@pytest.mark.parametrize("stack", STACKS)
def test_networks_edge_is_routed_auth_and_db_are_internal(stack, plan_of):
    plan = plan_of(stack)
    by_name = {n.name: n for n in plan.networks}
    assert set(by_name) == {n for s in plan.services for n in s.networks}
    assert by_name["edge"].internal is False
    for name in ("auth", "db"):
        if name in by_name:
            assert by_name[name].internal is True
            assert by_name[name].isolate is True
    for network in plan.networks:
        assert network.labels[STACK_LABEL] == plan.stack


@pytest.mark.parametrize("stack", STACKS)
def test_data_services_never_share_a_network_with_nginx(stack, plan_of):
    plan = plan_of(stack)
    nginx = set(plan.service("nginx").networks)
    for name in ("postgres", "redis", "ollama", "vault"):
        if plan.has(name):
            assert not nginx & set(plan.service(name).networks), name


# --- start order -------------------------------------------------------------------------------


def assert_valid_tiers(plan: Plan) -> None:
    tier_of = {name: index for index, tier in enumerate(plan.start_order) for name in tier}
    flat = [name for tier in plan.start_order for name in tier]
    assert len(flat) == len(set(flat)) == len(plan.services)
    assert [s.name for s in plan.services] == flat, "services are not in start order"
    for tier in plan.start_order:
        assert list(tier) == sorted(tier), "a tier is not sorted (nondeterministic order)"
    for s in plan.services:
        deps = [d.service for d in s.depends_on]
        assert all(tier_of[d] < tier_of[s.name] for d in deps), f"{s.name} starts before one of {deps}"
        # Each service starts as early as its dependencies allow.
        assert tier_of[s.name] == (max((tier_of[d] for d in deps), default=-1) + 1)


@pytest.mark.parametrize("stack", STACKS)
def test_start_order_is_a_topological_order(stack, plan_of):
    plan = plan_of(stack)
    assert_valid_tiers(plan)
    for s in plan.services:
        needed = {d for d in (*CATALOG[s.name].requires, *CATALOG[s.name].after) if plan.has(d)}
        assert needed <= {d.service for d in s.depends_on}, s.name
        assert all(d.condition == "service_healthy" for d in s.depends_on)


@pytest.mark.parametrize("stack", STACKS)
def test_start_order_is_deterministic(stack, load_plan):
    assert load_plan(stack).start_order == load_plan(stack).start_order


def test_depends_on_of_the_stack_is_honoured(stack_document, write_stack, tmp_path, load_plan):
    doc = stack_document("prod")
    doc["components"]["postgres"]["depends_on"] = ["minio", "ollama"]

    plan = load_plan(write_stack(tmp_path, doc))

    assert_valid_tiers(plan)
    assert {"minio", "ollama"} <= {d.service for d in plan.service("postgres").depends_on}
    tier_of = {name: index for index, tier in enumerate(plan.start_order) for name in tier}
    assert tier_of["postgres"] > tier_of["minio"] > tier_of["vault"]


# --- the plan as JSON --------------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_plan_json_is_byte_identical_across_builds(stack, load_plan):
    first, second = load_plan(stack).to_json(), load_plan(stack).to_json()
    assert first == second
    assert first.endswith("\n")


PRINT_PLANS = (
    "import sys\n"
    "from ccoas.planner import build_plan\n"
    "from ccoas.planner import load_stack\n"
    "for path in sys.argv[1:]:\n"
    "    sys.stdout.write(build_plan(load_stack(path)).to_json() + '\\0')\n"
)


@pytest.mark.parametrize("seed", ["0", "4242"])
def test_plan_json_does_not_depend_on_the_hash_seed(seed, load_plan, tmp_path):
    paths = [str(stack_path(stack)) for stack in STACK_NAMES]
    result = subprocess.run(
        [sys.executable, "-c", PRINT_PLANS, *paths],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": seed},
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    outputs = result.stdout.split("\0")[:-1]
    assert outputs == [load_plan(stack).to_json() for stack in STACK_NAMES]


@pytest.mark.parametrize("stack", STACKS)
def test_plan_json_schema(stack, load_plan):
    data = json.loads(load_plan(stack).to_json())
    assert data["schema_version"] == PLAN_SCHEMA_VERSION == 1
    assert set(data) == PLAN_KEYS
    for service in data["services"]:
        assert set(service) == SERVICE_KEYS, service["name"]
        assert IMAGE_KEYS <= set(service["image"])
        assert HEALTHCHECK_KEYS <= set(service["healthcheck"])
        assert HEALTHCHECK_KEYS <= set(service["liveness"])
        assert LIMITS_KEYS <= set(service["limits"])
        for mount in service["secrets"]:
            assert SECRET_MOUNT_KEYS <= set(mount)
    for network in data["networks"]:
        assert NETWORK_KEYS <= set(network)
    for volume in data["volumes"]:
        assert VOLUME_KEYS <= set(volume)
    for secret in data["secrets"]:
        assert SECRET_KEYS <= set(secret)
        assert "value" not in secret
    assert VAULT_KEYS <= set(data["vault"])
    assert TLS_KEYS <= set(data["tls"])
    assert CHANGES_KEYS <= set(data["changes"])
    assert [t["table"] for t in data["changes"]["tables"]] == [t["name"] for t in data["app_schema"]["tables"]]
    for table in data["changes"]["tables"]:
        assert TABLE_CHANGES_KEYS <= set(table)


@pytest.mark.parametrize("stack", STACKS)
def test_plan_json_is_sorted_and_round_trips(stack, load_plan):
    plan = load_plan(stack)
    text = plan.to_json()
    data = json.loads(text)
    assert text == json.dumps(data, indent=2, sort_keys=True) + "\n"
    assert Plan.model_validate_json(text) == plan


# --- --name: ephemeral stacks ------------------------------------------------------------------


def engine_names(plan: Plan) -> set[str]:
    return (
        {s.container_name for s in plan.services}
        | {n.engine_name for n in plan.networks}
        | {v.engine_name for v in plan.volumes}
    )


def all_labels(plan: Plan) -> list[dict[str, str]]:
    return [plan.labels, *(s.labels for s in plan.services), *(n.labels for n in plan.networks), *(v.labels for v in plan.volumes)]


@pytest.mark.parametrize("stack", STACKS)
def test_name_prefixes_every_engine_name_and_label(stack, plan_of):
    plan = plan_of(stack, "pr-42")
    assert plan.stack == "pr-42"
    for name in engine_names(plan):
        assert name.startswith("pr-42-"), name
    for labels in all_labels(plan):
        assert labels[STACK_LABEL] == "pr-42"
    counted = len(plan.services) + len(plan.networks) + len(plan.volumes)
    assert len(engine_names(plan)) == counted, "two resources share an engine name"
    if plan.vault is not None:
        assert plan.vault.prefix == "pr-42"
        assert all(p.name.startswith("pr-42-") for p in plan.vault.policies)
        assert plan.vault.ccoas_policy.startswith("pr-42-")


@pytest.mark.parametrize("stack", STACKS)
def test_two_names_share_no_engine_name(stack, plan_of):
    a, b, default = plan_of(stack, "pr-42"), plan_of(stack, "pr-43"), plan_of(stack)
    assert not engine_names(a) & engine_names(b)
    assert not engine_names(a) & engine_names(default)


@settings(max_examples=40, deadline=None, suppress_health_check=[HypothesisHealthCheck.function_scoped_fixture])
@given(first=st.from_regex(NAME_RE, fullmatch=True), second=st.from_regex(NAME_RE, fullmatch=True))
def test_any_two_valid_names_share_no_engine_name(first, second):
    if first == second:
        return
    stack = _prod_stack()
    assert not engine_names(build_plan(stack, name=first)) & engine_names(build_plan(stack, name=second))


_PROD: list[Any] = []


def _prod_stack():
    if not _PROD:
        _PROD.append(load_stack(REPO_ROOT / "stacks" / "prod.yaml"))
    return _PROD[0]


# --- Vault policies ----------------------------------------------------------------------------


@pytest.mark.parametrize(("stack", "service"), STACK_SERVICES)
def test_vault_policy_reads_exactly_the_mounted_secrets(stack, service, plan_of):
    plan = plan_of(stack)
    if plan.vault is None:
        pytest.skip(f"{stack} runs without vault")
    s = plan.service(service)
    mounted = {plan.secret(m.secret).vault_path for m in s.secrets}
    policies = [p for p in plan.vault.policies if p.service == service]
    if not mounted:
        assert all(not p.read_paths for p in policies)
        return
    (policy,) = policies
    assert set(policy.read_paths) == mounted
    assert list(policy.read_paths) == sorted(policy.read_paths)
    assert policy.name == f"{plan.stack}-{service}"


@pytest.mark.parametrize("stack", STACKS)
def test_vault_policies_belong_to_services_of_the_plan(stack, plan_of):
    plan = plan_of(stack)
    if plan.vault is None:
        pytest.skip(f"{stack} runs without vault")
    names = [p.service for p in plan.vault.policies]
    assert len(names) == len(set(names))
    assert all(plan.has(name) for name in names)
    assert len({s.vault_path for s in plan.secrets}) == len(plan.secrets)


# --- images ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("stack", "service"), STACK_SERVICES)
def test_image_is_pinned(stack, service, plan_of):
    image = plan_of(stack).service(service).image
    assert image.pull == "never"  # provisioning uses what the host has: built or fetched beforehand
    if image.source == "registry":
        assert DIGEST_PINNED.fullmatch(image.ref), image.ref
        assert image.recipe is None
        return
    recipe = image.recipe
    assert recipe is not None, f"{service}: local image without a recipe"
    assert re.fullmatch(rf"localhost/ccoas/{service}:[0-9a-f]{{12}}", image.ref), image.ref
    assert re.fullmatch(r"[0-9a-f]{64}", recipe.digest)
    assert image.ref.endswith(":" + recipe.digest[:12])
    assert recipe.component == service
    for rel in (recipe.containerfile, *recipe.files):
        assert (ccoas.plan.TEMPLATES_DIR / rel).is_file(), rel


@pytest.mark.parametrize("stack", STACKS)
def test_image_source_follows_the_stack(stack, plan_of):
    loaded = load_stack(stack_path(stack))
    plan = plan_of(stack)
    for s in plan.services:
        assert s.image.source == loaded.image_source(s.name), s.name


def test_prod_uses_only_registry_images(plan_of):
    # monitoring has no single official image (Prometheus, Alertmanager and the exporters share
    # one container): it is built locally even there
    assert {s.image.source for s in plan_of("prod").services if s.name != "monitoring"} == {"registry"}
    assert plan_of("prod").service("monitoring").image.source == "local"


def test_image_ref_override_is_used(stack_document, write_stack, tmp_path, load_plan):
    ref = "registry.example.org/redis:7@sha256:" + "ab" * 32
    doc = stack_document("prod")
    doc["components"]["redis"]["image"] = {"ref": ref}

    assert load_plan(write_stack(tmp_path, doc)).service("redis").image.ref == ref


def local_refs(stack: str) -> dict[str, str]:
    plan = build_plan(load_stack(stack_path(stack)))
    return {s.name: s.image.ref for s in plan.services if s.image.source == "local"}


def use_a_copy_of_the_templates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    copy = tmp_path / "templates"
    shutil.copytree(ccoas.plan.TEMPLATES_DIR, copy)
    monkeypatch.setattr(ccoas.plan, "TEMPLATES_DIR", copy)
    return copy


LOCAL_STACKS = [pytest.param(stack, id=stack) for stack in STACK_NAMES if load_stack(stack_path(stack)).images.source == "local"]


@pytest.mark.parametrize("stack", LOCAL_STACKS)
def test_local_image_ref_is_keyed_by_the_containerfile(stack, tmp_path, monkeypatch):
    before = local_refs(stack)
    assert before, f"{stack} builds no local image"
    templates = use_a_copy_of_the_templates(tmp_path, monkeypatch)
    assert local_refs(stack) == before, "the ref depends on where the templates live, not only on their content"

    for component in sorted(before):
        containerfile = templates / component / "Containerfile.j2"
        text = containerfile.read_text(encoding="utf-8")
        containerfile.write_text(text + "\n# changed\n", encoding="utf-8")
        after = local_refs(stack)
        assert after[component] != before[component], f"{component}: Containerfile changed, ref did not"
        assert {k: v for k, v in after.items() if k != component} == {k: v for k, v in before.items() if k != component}
        containerfile.write_text(text, encoding="utf-8")
        assert local_refs(stack) == before, f"{component}: same content, different ref"


def test_local_image_ref_is_keyed_by_the_recipe_files(tmp_path, monkeypatch):
    recipe = CATALOG["postgres"].recipe
    assert recipe is not None and recipe.files
    before = local_refs("dev")["postgres"]
    extra = use_a_copy_of_the_templates(tmp_path, monkeypatch) / recipe.files[0]
    extra.write_text(extra.read_text(encoding="utf-8") + "\n# changed\n", encoding="utf-8")
    assert local_refs("dev")["postgres"] != before


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_every_component_is_registry_pinned(name):
    if CATALOG[name].registry_image is None:  # built locally only (postgraphile with ccoas's server)
        assert CATALOG[name].recipe is not None
        return
    assert DIGEST_PINNED.fullmatch(CATALOG[name].registry_image), CATALOG[name].registry_image


@pytest.mark.parametrize(
    ("schema", "table", "channel"),
    [
        ("app", "notes", "ccoas_app_notes"),
        ("a" * 63, "t", None),
        ("app", "b" * 63, None),
    ],
)
def test_change_channels_are_identifiers_of_at_most_63_bytes(schema, table, channel):
    from ccoas.planner import change_channel

    got = change_channel(schema, table)
    assert len(got.encode()) <= 63 and re.fullmatch(r"[a-z_][a-z0-9_]*", got)
    if channel is not None:
        assert got == channel
    assert change_channel(schema, table + "x") != got


def test_change_retention_comes_from_the_stack(stack_document, write_stack, tmp_path, load_plan):
    document = stack_document("dev")
    document["schema"]["changes"] = {"max_entries": 500, "max_age_hours": 2}
    plan = load_plan(write_stack(tmp_path, document))
    assert (plan.changes.max_entries, plan.changes.max_age_hours) == (500, 2)


@pytest.mark.parametrize(
    ("service", "signal"),
    [("postgres", "SIGINT"), ("redis", "SIGTERM"), ("vault", "SIGTERM"), ("minio", "SIGTERM"), ("nginx", "SIGQUIT")],
)
def test_data_services_declare_how_they_stop(load_plan, service, signal):
    """Postgres stops with a fast shutdown (SIGINT), nginx gracefully (SIGQUIT): each service's own
    stop signal, with a timeout long enough for it to finish writing."""
    stop = load_plan("ci").service(service).stop
    assert stop.signal == signal
    assert stop.timeout_s >= 15
    assert stop.reason


def test_every_image_path_names_the_upstream_version_it_runs():
    from ccoas.planner import CATALOG

    for name, component in CATALOG.items():
        assert bool(component.upstream.get("registry")) == (component.registry_image is not None), name
        assert bool(component.upstream.get("local")) == (component.recipe is not None), name


def test_source_bundle_uses_the_local_refs_and_never_builds(load_plan, tmp_path):
    import yaml

    document = yaml.safe_load((Path(__file__).resolve().parent.parent / "stacks" / "ci.yaml").read_text())
    document["images"] = {"source": "bundle"}
    path = tmp_path / "bundle.yaml"
    path.write_text(yaml.safe_dump(document))
    local, bundle = load_plan("ci"), load_plan(path)
    for service in bundle.services:
        assert service.image.source == "bundle"
        assert service.image.ref == local.service(service.name).image.ref
