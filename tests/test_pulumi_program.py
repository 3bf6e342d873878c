"""The Pulumi program under ``pulumi.runtime.set_mocks``: golden checks of the resources it declares.

No engine, no CLI, no network: Pulumi's own mocks record every resource's inputs, and the
checks below read them. :func:`declared` is also what ``test_engine_equivalence.py`` uses.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import pulumi
import pulumi_docker
import pytest

from ccoas import pulumi_program
from ccoas.errors import CcoasError
from ccoas.plan import Plan
from ccoas.state import StackPaths, stack_paths

DOCKER_HOST = "unix:///run/user/1001/podman/podman.sock"
CONTAINER = "docker:index/container:Container"
NETWORK = "docker:index/network:Network"
VOLUME = "docker:index/volume:Volume"
PROVIDER = "pulumi:providers:docker"
SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|PRIVATE|ACCESS_KEY|JWT|CREDENTIAL")
TOKEN_SETTING = re.compile(r"_(COOKIE_SECURE|TTL)$")
"""How long a token lives or how its cookie travels (``ACCESS_TOKEN_TTL``,
``REFRESH_TOKEN_COOKIE_SECURE``): a setting, not a secret."""


def example_paths(plan: Plan) -> StackPaths:
    return stack_paths(Path("/var/lib/ccoas"), Path("/run/user/1001"), plan.stack)


# -- running the program under mocks -------------------------------------------------------------


class RecordingMocks(pulumi.runtime.Mocks):
    """Answers every registration with its own inputs and records it."""

    def __init__(self) -> None:
        self.registered: list[tuple[str, str, dict[str, Any]]] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.registered.append((args.typ, args.name, dict(args.inputs)))
        return f"{args.name}-id", dict(args.inputs)

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        raise AssertionError(f"the program must not invoke anything (no image lookups, no pulls): {args.token}")


@dataclass
class Declared:
    """Everything the program declared: resources by type and logical name, exports, container dependencies."""

    resources: list[tuple[str, str, dict[str, Any]]]
    exports: dict[str, Any]
    depends_on: dict[str, set[str]] = field(default_factory=dict)

    def of(self, typ: str) -> dict[str, dict[str, Any]]:
        return {name: inputs for t, name, inputs in self.resources if t == typ}

    @property
    def containers(self) -> dict[str, dict[str, Any]]:
        return self.of(CONTAINER)


Transform = Callable[[str, dict[str, Any]], dict[str, Any]]


def declared(plan: Plan, paths: StackPaths | None = None, transform: Transform | None = None) -> Declared:
    """Run :func:`ccoas.pulumi_program.declare` for ``plan`` under mocks.

    ``transform(name, kwargs)`` may rewrite the keyword arguments of each ``Container`` before it is
    declared: the mutation tests use it to prove the checks notice a dropped setting.
    """
    paths = paths or example_paths(plan)
    mocks = RecordingMocks()
    pulumi.runtime.set_mocks(mocks, project="ccoas", stack=plan.stack, preview=False)
    exports: dict[str, Any] = {}
    resolved: dict[str, Any] = {}
    depends_on: dict[str, set[str]] = {}
    names: dict[int, str] = {}
    real_container = pulumi_docker.Container

    def container(resource_name: str, opts: pulumi.ResourceOptions | None = None, **kwargs: Any) -> Any:
        depends_on[resource_name] = {names[id(r)] for r in (opts.depends_on if opts and opts.depends_on else [])}
        if transform is not None:
            kwargs = transform(resource_name, dict(kwargs))
        created = real_container(resource_name, opts=opts, **kwargs)
        names[id(created)] = resource_name
        return created

    @pulumi.runtime.test
    def program() -> pulumi.Output[Any]:
        pulumi_program.declare(plan, paths, DOCKER_HOST)
        return pulumi.Output.from_input(exports).apply(resolved.update)

    with mock.patch.object(pulumi_docker, "Container", container), mock.patch.object(pulumi, "export", exports.__setitem__):
        program()
    return Declared(resources=mocks.registered, exports=resolved, depends_on=depends_on)


_CACHE: dict[str, Declared] = {}


def declared_stack(load_plan: Callable[..., Plan], stack: str) -> tuple[Plan, Declared]:
    """The plan of a shipped stack and what the program declares for it (declared once per session)."""
    plan = load_plan(stack)
    if stack not in _CACHE:
        _CACHE[stack] = declared(plan)
    return plan, _CACHE[stack]


STACKS = ("prod", "dev")
PROD_SERVICES = ("directus", "hasura", "minio", "monitoring", "nginx", "ollama", "postgres", "redis", "vault")


# -- security, per service -----------------------------------------------------------------------


def check_security(plan: Plan, service_name: str, container: dict[str, Any]) -> None:
    """The hardening every container must carry, read from the Pulumi inputs."""
    service = plan.service(service_name)
    user = container.get("user", "")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit(), f"{service_name}: user {user!r} must be a non-root uid:gid"
    assert user == service.user
    assert container.get("readOnly") is True, f"{service_name}: root filesystem must be read-only"
    capabilities = container.get("capabilities") or {}
    assert capabilities.get("drops") == ["ALL"], f"{service_name}: must drop ALL capabilities"
    assert list(capabilities.get("adds") or []) == list(service.cap_add)
    assert "no-new-privileges:true" in (container.get("securityOpts") or []), f"{service_name}: no-new-privileges"
    tmpfs = container.get("tmpfs") or {}
    assert set(tmpfs) == {t.target for t in service.tmpfs} and "/tmp" in tmpfs, f"{service_name}: tmpfs {sorted(tmpfs)}"
    for target, options in tmpfs.items():
        assert {"nosuid", "nodev"} <= set(options.split(",")), f"{service_name}: tmpfs {target} options {options}"
    assert container.get("memory") is not None and int(container["memory"]) * 1024**2 == service.limits.memory_bytes
    assert container.get("cpus") is not None and Decimal(container["cpus"]) * 10**9 == service.limits.nano_cpus
    assert container.get("restart") == "on-failure", f"{service_name}: restart policy"
    assert int(container.get("maxRetryCount", 0)) == service.restart.max_retries
    health = container.get("healthcheck") or {}
    assert health.get("tests") == list(service.healthcheck.test), f"{service_name}: healthcheck"
    assert container.get("mustRun") is True


@pytest.mark.parametrize("stack", STACKS)
def test_every_service_is_declared_once(load_plan, stack):
    plan, result = declared_stack(load_plan, stack)
    assert sorted(result.containers) == sorted(s.name for s in plan.services)
    if stack == "prod":
        assert sorted(result.containers) == list(PROD_SERVICES)
    for name, container in result.containers.items():
        assert container["name"] == plan.service(name).container_name


@pytest.mark.parametrize("stack", STACKS)
def test_every_container_is_hardened(load_plan, stack):
    plan, result = declared_stack(load_plan, stack)
    for name, container in result.containers.items():
        check_security(plan, name, container)


@pytest.mark.parametrize("stack", STACKS)
def test_db_and_auth_networks_are_internal_and_isolated(load_plan, stack):
    plan, result = declared_stack(load_plan, stack)
    networks = result.of(NETWORK)
    assert sorted(networks) == sorted(n.name for n in plan.networks)
    for name, net in networks.items():
        assert net["name"] == plan.network(name).engine_name
        assert bool(net.get("internal")) is (name != "edge"), f"network {name}: internal"
        assert net.get("options") == {"isolate": "true"}
        assert {label["label"]: label["value"] for label in net["labels"]} == plan.network(name).labels
    assert networks["db"]["internal"] is True and networks["auth"]["internal"] is True


@pytest.mark.parametrize("stack", STACKS)
def test_containers_join_their_plan_networks_with_aliases(load_plan, stack):
    plan, result = declared_stack(load_plan, stack)
    for name, container in result.containers.items():
        service = plan.service(name)
        joined = {n["name"]: n.get("aliases") for n in container["networksAdvanced"]}
        assert joined == {plan.network(n).engine_name: list(a) for n, a in service.networks.items()}
        assert "networkMode" not in container, "network_mode plus networks_advanced would attach one network twice"


@pytest.mark.parametrize("stack", STACKS)
def test_only_nginx_publishes_ports(load_plan, stack):
    plan, result = declared_stack(load_plan, stack)
    publishing = sorted(name for name, c in result.containers.items() if c.get("ports"))
    behind_listener = plan.edge.listener.kind == "host"  # the listener binds the public ports
    assert publishing == ([] if behind_listener else ["nginx"])
    if behind_listener:
        return
    ports = result.containers["nginx"]["ports"]
    expected = sorted((p.container_port, p.host_port, p.host_ip, p.protocol) for p in plan.service("nginx").ports)
    assert sorted((int(p["internal"]), int(p["external"]), p["ip"], p["protocol"]) for p in ports) == expected


@pytest.mark.parametrize("stack", STACKS)
def test_secrets_are_read_only_files_never_env_values(load_plan, stack):
    plan, result = declared_stack(load_plan, stack)
    paths = example_paths(plan)
    for name, container in result.containers.items():
        service = plan.service(name)
        binds = {m["target"]: m for m in container.get("mounts") or [] if m["type"] == "bind"}
        for secret in service.secrets:
            mount = binds.get(secret.target)
            assert mount is not None, f"{name}: secret {secret.secret} is not mounted"
            assert mount["readOnly"] is True, f"{name}: secret {secret.secret} must be mounted read-only"
            assert mount["source"] == str(paths.secret_file(name, secret.secret))
        secret_targets = {s.target for s in service.secrets}
        for entry in container.get("envs") or []:
            key, _, value = entry.partition("=")
            if SECRETISH.search(key) and not TOKEN_SETTING.search(key):
                assert key.endswith("_FILE"), f"{name}: {key} carries a value; secrets arrive as files"
                assert value in secret_targets, f"{name}: {key} must point at a mounted secret file, got {value!r}"
        assert sorted(container.get("envs") or []) == sorted(f"{k}={v}" for k, v in service.environment.items())


@pytest.mark.parametrize("stack", STACKS)
def test_config_is_a_read_only_bind_and_volumes_are_named_by_the_plan(load_plan, stack):
    plan, result = declared_stack(load_plan, stack)
    paths = example_paths(plan)
    volumes = result.of(VOLUME)
    assert sorted(volumes) == sorted(v.name for v in plan.volumes)
    for name, vol in volumes.items():
        assert vol["name"] == plan.volume(name).engine_name
        assert {label["label"]: label["value"] for label in vol["labels"]} == plan.volume(name).labels
    for name, container in result.containers.items():
        service = plan.service(name)
        mounts = {m["target"]: m for m in container.get("mounts") or []}
        if service.config is not None:
            config = mounts[service.config.target]
            expected = ("bind", str(paths.config_dir(service.config.source)), True)
            assert (config["type"], config["source"], config["readOnly"]) == expected
        for m in service.volumes:
            assert (mounts[m.target]["type"], mounts[m.target]["source"]) == ("volume", plan.volume(m.volume).engine_name)


@pytest.mark.parametrize("stack", STACKS)
def test_images_are_used_by_name_and_never_pulled(load_plan, stack):
    """No image resource (a RemoteImage pulls): every container names the plan's image, which
    ccoas has built or `ccoas images pull` has fetched before Pulumi runs."""
    plan, result = declared_stack(load_plan, stack)
    assert {typ for typ, _, _ in result.resources} == {PROVIDER, NETWORK, VOLUME, CONTAINER}
    for service in plan.services:
        assert result.containers[service.name]["image"] == service.image.ref
        if service.image.source == "registry":
            assert "@sha256:" in service.image.ref


@pytest.mark.parametrize("stack", STACKS)
def test_start_order_follows_the_plan_dependencies(load_plan, stack):
    plan, result = declared_stack(load_plan, stack)
    for service in plan.services:
        assert result.depends_on[service.name] == {d.service for d in service.depends_on}, service.name


@pytest.mark.parametrize("stack", STACKS)
def test_the_provider_talks_to_the_rootless_socket(load_plan, stack):
    _, result = declared_stack(load_plan, stack)
    providers = result.of(PROVIDER)
    assert [p.get("host") for p in providers.values()] == [DOCKER_HOST]


# -- outputs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_outputs_are_vault_paths_and_endpoints_never_values(load_plan, stack):
    plan, result = declared_stack(load_plan, stack)
    assert set(result.exports) == {"endpoints", "secrets", "containers", "unenforced"}
    secrets = result.exports["secrets"]
    assert sorted(secrets) == sorted(s.name for s in plan.secrets)
    for name, path in secrets.items():
        assert path == f"ccoas/data/{plan.stack}/{plan.secret(name).vault_path}"
    assert list(result.exports["endpoints"]) == ([] if plan.edge.listener.kind == "host" else ["nginx"])
    expected = sorted(f"{p.host_ip}:{p.host_port}->{p.container_port}/{p.protocol}" for p in plan.service("nginx").ports)
    assert sorted(result.exports["endpoints"].get("nginx", [])) == expected


@pytest.mark.parametrize("stack", STACKS)
def test_what_the_program_cannot_enforce_is_exported(load_plan, stack):
    plan, result = declared_stack(load_plan, stack)
    gaps = result.exports["unenforced"]
    for service in plan.services:
        if service.limits.pids is not None:
            assert any(g.startswith(f"pids limit {service.limits.pids}:") for g in gaps[service.name])
        for hook in service.hooks:
            assert any(hook.kind in g for g in gaps[service.name])


def test_pulumi_docker_still_has_no_pids_limit():
    """If pulumi-docker grows a pids argument, map ``limits.pids`` to it and drop the ``unenforced`` entry."""
    parameters = inspect.signature(pulumi_docker.ContainerArgs.__init__).parameters
    assert not [p for p in parameters if "pid" in p and p != "pid_mode"]


# -- exact limits -----------------------------------------------------------------------------


@pytest.mark.parametrize("nano", [1, 250_000_000, 500_000_000, 1_000_000_000, 1_500_000_000, 64_000_000_000, 333_333_333])
def test_cpus_string_parses_back_to_the_same_nano_cpus(load_plan, nano):
    service = load_plan("prod").service("nginx")
    service = service.model_copy(update={"limits": service.limits.model_copy(update={"nano_cpus": nano})})
    assert Decimal(pulumi_program.cpus(service)) * 10**9 == nano


def test_memory_that_is_not_whole_mib_is_refused(load_plan):
    service = load_plan("prod").service("nginx")
    service = service.model_copy(update={"limits": service.limits.model_copy(update={"memory_bytes": 10**9})})
    with pytest.raises(CcoasError, match="whole number of MiB"):
        pulumi_program.memory_mib(service)


# -- the checks bite --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "setting",
    ["read_only", "capabilities", "security_opts", "user", "tmpfs", "memory", "restart", "healthcheck"],
)
def test_security_check_notices_a_dropped_setting(load_plan, setting):
    plan = load_plan("prod")

    def drop(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        if name == "postgres":
            kwargs.pop(setting)
        return kwargs

    result = declared(plan, transform=drop)
    check_security(plan, "redis", result.containers["redis"])  # the others are untouched
    with pytest.raises(AssertionError):
        check_security(plan, "postgres", result.containers["postgres"])


# -- the entry the Pulumi CLI runs ----------------------------------------------------------------


def test_cli_entry_reads_the_stack_file_and_name_from_config(monkeypatch, repo_root):
    from ccoas import pulumi_main

    monkeypatch.setenv("CCOAS_ENGINE_USER", "root")
    monkeypatch.setenv("DOCKER_HOST", DOCKER_HOST)
    seen: dict[str, Any] = {}
    monkeypatch.setattr(pulumi_program, "declare", lambda plan, paths, host: seen.update(plan=plan, paths=paths, host=host))
    pulumi.runtime.set_mocks(RecordingMocks(), project="ccoas", stack="pr-42", preview=False)
    pulumi.runtime.set_all_config({"ccoas:stackFile": str(repo_root / "stacks" / "ci.yaml"), "ccoas:name": "pr-42"})
    try:
        pulumi_main.main()
    finally:
        pulumi.runtime.set_all_config({})
    assert seen["plan"].stack == "pr-42" and seen["plan"].environment == "ci"
    assert seen["host"] == DOCKER_HOST
    assert seen["paths"].state.name == "pr-42"


def test_cli_entry_without_a_stack_file_says_how_to_set_it(monkeypatch):
    from ccoas import pulumi_main

    monkeypatch.delenv("CCOAS_STACK_FILE", raising=False)
    pulumi.runtime.set_mocks(RecordingMocks(), project="ccoas", stack="dev", preview=False)
    pulumi.runtime.set_all_config({})
    with pytest.raises(pulumi.RunError, match="pulumi config set ccoas:stackFile"):
        pulumi_main.main()


# -- the Automation API driver: what it needs before it starts ------------------------------------


def test_driver_without_the_pulumi_cli_says_what_to_install(monkeypatch, load_plan, tmp_path):
    from ccoas import pulumi_engine
    from ccoas.errors import MissingToolError

    monkeypatch.setattr(pulumi_engine.shutil, "which", lambda name: None)
    plan = load_plan("dev")
    with pytest.raises(MissingToolError) as caught:
        pulumi_engine.up(plan, stack_paths(tmp_path, tmp_path, plan.stack), DOCKER_HOST, "stacks/dev.yaml")
    message = str(caught.value)
    assert "pulumi.com" in message
    assert f"pulumi plugin install resource docker {pulumi_engine.provider_version()}" in message
    assert "--engine local" in message


def test_driver_without_the_docker_plugin_says_what_to_install(monkeypatch, load_plan, tmp_path):
    from ccoas import pulumi_engine
    from ccoas.errors import MissingToolError

    monkeypatch.setattr(pulumi_engine.shutil, "which", lambda name: str(tmp_path / "no-such-pulumi"))
    monkeypatch.setenv("PULUMI_HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "plugins" / "resource-docker-v4.5.0").mkdir(parents=True)
    plan = load_plan("dev")
    with pytest.raises(MissingToolError, match=r"docker provider plugin v5\.x is not installed \(found 4\.5\.0\)"):
        pulumi_engine.preview(plan, stack_paths(tmp_path, tmp_path, plan.stack), DOCKER_HOST, "stacks/dev.yaml")


def test_driver_finds_a_matching_docker_plugin(monkeypatch, tmp_path):
    from ccoas import pulumi_engine

    monkeypatch.setattr(pulumi_engine.shutil, "which", lambda name: "/usr/local/bin/pulumi")
    monkeypatch.setenv("PULUMI_HOME", str(tmp_path))
    (tmp_path / "plugins" / f"resource-docker-v{pulumi_engine.provider_version()}").mkdir(parents=True)
    (tmp_path / "plugins" / f"resource-docker-v{pulumi_engine.provider_version()}.partial").touch()
    assert pulumi_engine.require_tools() == "/usr/local/bin/pulumi"


def test_driver_needs_a_passphrase(monkeypatch, tmp_path):
    from ccoas import pulumi_engine

    monkeypatch.delenv("PULUMI_CONFIG_PASSPHRASE", raising=False)
    monkeypatch.delenv("PULUMI_CONFIG_PASSPHRASE_FILE", raising=False)
    with pytest.raises(CcoasError, match="PULUMI_CONFIG_PASSPHRASE"):
        pulumi_engine.passphrase_env()
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE_FILE", str(tmp_path / "missing"))
    with pytest.raises(CcoasError, match="no such file"):
        pulumi_engine.passphrase_env()
    (tmp_path / "passphrase").write_text("correct horse\n")
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE_FILE", str(tmp_path / "passphrase"))
    assert pulumi_engine.passphrase_env() == {"PULUMI_CONFIG_PASSPHRASE_FILE": str(tmp_path / "passphrase")}


def test_driver_state_is_a_local_file_backend(load_plan, tmp_path):
    from ccoas import pulumi_engine

    plan = load_plan("dev")
    paths = stack_paths(tmp_path, tmp_path, plan.stack)
    assert pulumi_engine.backend_url(paths) == f"file://{paths.pulumi}/backend"


def test_driver_lists_the_mount_sources_it_cannot_create(load_plan, tmp_path):
    from ccoas import pulumi_engine

    plan = load_plan("dev")
    paths = stack_paths(tmp_path, tmp_path, plan.stack)
    missing = pulumi_engine.missing_mount_sources(plan, paths)
    assert paths.secret_file("postgres", "postgres_superuser_password") in missing
    assert paths.config_dir("nginx") in missing and paths.runtime_mount("vault-socket") in missing


class FakeStack:
    """Stands in for an Automation API stack: records what the driver asks of it."""

    def __init__(self) -> None:
        self.config: dict[str, Any] = {}
        self.calls: list[str] = []

    def set_all_config(self, config: dict[str, Any]) -> None:
        self.config.update({k: v.value for k, v in config.items()})

    def preview(self, on_output: Any = None, **_: Any) -> Any:
        from pulumi.automation.events import OpType

        self.calls.append("preview")
        return mock.Mock(change_summary={OpType.CREATE: 27, OpType.SAME: 1})

    def up(self, on_output: Any = None, **_: Any) -> Any:
        from pulumi import automation as auto
        from pulumi.automation.events import OpType

        self.calls.append("up")
        outputs = {"secrets": auto.OutputValue({"x": "ccoas/data/dev/x"}, False), "hidden": auto.OutputValue("s", True)}
        return mock.Mock(summary=mock.Mock(resource_changes={OpType.SAME: 28}), outputs=outputs)


@pytest.fixture
def automation(monkeypatch):
    """The driver with tools present, a passphrase set and the Automation API faked."""
    from pulumi import automation as auto

    from ccoas import pulumi_engine

    monkeypatch.setattr(pulumi_engine, "require_tools", lambda: "/usr/local/bin/pulumi")
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "test-only")
    monkeypatch.delenv("PULUMI_CONFIG_PASSPHRASE_FILE", raising=False)
    created: dict[str, Any] = {"stack": FakeStack()}

    def create_or_select_stack(**kwargs: Any) -> FakeStack:
        created.update(kwargs)
        return created["stack"]

    monkeypatch.setattr(auto, "create_or_select_stack", create_or_select_stack)
    return created


def test_driver_previews_with_a_local_file_backend_and_an_inline_program(automation, load_plan, tmp_path):
    from ccoas import pulumi_engine

    plan = load_plan("dev")
    paths = stack_paths(tmp_path, tmp_path, plan.stack)
    printed: list[str] = []
    result = pulumi_engine.preview(plan, paths, DOCKER_HOST, "stacks/dev.yaml", on_output=printed.append)
    assert result.operations == {"create": 27, "same": 1} and result.changes == 27
    assert automation["stack_name"] == "dev" and automation["project_name"] == "ccoas"
    options = automation["opts"]
    assert options.env_vars["PULUMI_BACKEND_URL"] == f"file://{paths.pulumi}/backend"
    assert options.project_settings.backend.url.startswith("file://")
    assert options.env_vars["PULUMI_CONFIG_PASSPHRASE"] == "test-only"
    assert options.secrets_provider == "passphrase"
    assert automation["stack"].config == {"ccoas:stackFile": "stacks/dev.yaml", "ccoas:name": "dev"}
    assert any(line.startswith("note: postgres: pids limit") for line in printed)
    # The inline program is this plan's declaration.
    seen: dict[str, Any] = {}
    with mock.patch.object(pulumi_program, "declare", lambda *args: seen.update(args=args)):
        automation["program"]()
    assert seen["args"] == (plan, paths, DOCKER_HOST)


def test_driver_refuses_to_up_without_the_files_the_containers_mount(automation, load_plan, tmp_path):
    from ccoas import pulumi_engine
    from ccoas.errors import HostError

    plan = load_plan("dev")
    with pytest.raises(HostError, match="does not render config"):
        pulumi_engine.up(plan, stack_paths(tmp_path, tmp_path, plan.stack), DOCKER_HOST, "stacks/dev.yaml")
    assert automation["stack"].calls == []


def test_driver_up_reports_changes_and_plain_outputs_only(automation, load_plan, tmp_path, monkeypatch):
    from ccoas import pulumi_engine

    plan = load_plan("dev")
    paths = stack_paths(tmp_path, tmp_path, plan.stack)
    monkeypatch.setattr(pulumi_engine, "missing_mount_sources", lambda plan, paths, only=None: [])
    result = pulumi_engine.up(plan, paths, DOCKER_HOST, "stacks/dev.yaml", on_output=lambda line: None)
    assert result.changes == 0 and result.outputs == {"secrets": {"x": "ccoas/data/dev/x"}}


@pytest.mark.parametrize("stack", STACKS)
def test_targeted_vault_update_names_resources_the_program_declares(load_plan, stack):
    """`up --engine pulumi` first creates Vault alone: its target URNs must be real resources."""
    from ccoas import pulumi_engine

    plan, found = declared_stack(load_plan, stack)
    prefix = f"urn:pulumi:{plan.stack}::ccoas::"
    declared_urns = {f"{prefix}{typ}::{name}" for typ, name, _ in found.resources}
    declared_urns.add(f"{prefix}pulumi:providers:docker::docker")
    targets = pulumi_engine.resource_urns(plan, ["vault"])
    assert set(targets) <= declared_urns, set(targets) - declared_urns
    assert f"{prefix}{CONTAINER}::vault" in targets
    assert not any(t.endswith("::postgres") for t in targets)
