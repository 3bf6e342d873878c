"""Both engines describe the same containers.

For every service of every shipped stack, the Docker API body the local engine sends
(:func:`ccoas.engine.docker_api.container_create_body`) and the inputs the Pulumi program
declares under mocks are normalised into one shape and compared. Each side has its own
normaliser, here and not in the library, so neither translation can hide behind the other.

One gap is explicit rather than silent: pulumi-docker 5.2 has no pids limit, so ``pids``
is compared only on the Docker side and the Pulumi program must export it as
``unenforced`` (see ``test_pulumi_program.py``).
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ccoas.engine.docker_api import container_create_body
from ccoas.plan import Plan
from test_pulumi_program import Declared, declared, declared_stack, example_paths

STACKS = ("prod", "dev", "ci")
NS = 1_000_000_000
MIB = 1024**2
UNENFORCED_BY_PULUMI = {"pids"}
"""Fields pulumi-docker cannot declare; the program exports them as ``unenforced``."""


def _tmpfs(table: dict[str, str]) -> dict[str, tuple[str, ...]]:
    return {target: tuple(sorted(options.split(","))) for target, options in table.items()}


def _seconds(duration: str) -> int:
    """pulumi-docker durations as the program writes them: ``"10s"``."""
    assert duration.endswith("s") and duration[:-1].isdigit(), f"unexpected duration {duration!r}"
    return int(duration[:-1])


def _env(entries: list[str]) -> dict[str, str]:
    return dict(entry.split("=", 1) for entry in entries)


def normalize_docker(body: dict[str, Any]) -> dict[str, Any]:
    """The local engine's ``POST /containers/create`` body in the common shape."""
    host = body["HostConfig"]
    health = body["Healthcheck"]
    return {
        "image": body["Image"],
        "user": body["User"],
        "read_only": host["ReadonlyRootfs"],
        "cap_drop": tuple(sorted(host["CapDrop"])),
        "cap_add": tuple(sorted(host["CapAdd"])),
        "security_opt": tuple(sorted(host["SecurityOpt"])),
        "tmpfs": _tmpfs(host["Tmpfs"]),
        "mounts": sorted((m["Type"], m["Source"], m["Target"], m["ReadOnly"]) for m in host["Mounts"]),
        "env": _env(body["Env"]),
        "command": tuple(body["Cmd"]) if "Cmd" in body else None,
        "entrypoint": tuple(body["Entrypoint"]) if "Entrypoint" in body else None,
        "healthcheck": (
            tuple(health["Test"]),
            health["Interval"] // NS,
            health["Timeout"] // NS,
            health["Retries"],
            health["StartPeriod"] // NS,
        ),
        "memory": host.get("Memory"),
        "nano_cpus": host.get("NanoCpus"),
        "pids": host.get("PidsLimit"),
        "restart": (host["RestartPolicy"]["Name"], host["RestartPolicy"]["MaximumRetryCount"]),
        "stop": (body["StopSignal"], body["StopTimeout"]),
        "logs": (host["LogConfig"]["Type"] or None, dict(host["LogConfig"]["Config"])),
        "networks": {name: tuple(e["Aliases"]) for name, e in body["NetworkingConfig"]["EndpointsConfig"].items()},
        "ports": sorted(
            (int(key.split("/")[0]), key.split("/")[1], b["HostIp"], int(b["HostPort"] or 0))
            for key, bindings in host["PortBindings"].items()
            for b in bindings
        ),
        "labels": dict(body["Labels"]),
    }


def normalize_pulumi(result: Declared, container: dict[str, Any]) -> dict[str, Any]:
    """A ``pulumi_docker.Container``'s recorded inputs in the common shape."""
    capabilities = container.get("capabilities") or {}
    health = container.get("healthcheck") or {}
    return {
        "image": container["image"],
        "user": container.get("user"),
        "read_only": container.get("readOnly", False),
        "cap_drop": tuple(sorted(capabilities.get("drops") or [])),
        "cap_add": tuple(sorted(capabilities.get("adds") or [])),
        "security_opt": tuple(sorted(container.get("securityOpts") or [])),
        "tmpfs": _tmpfs(container.get("tmpfs") or {}),
        "mounts": sorted(
            (m["type"], m.get("source"), m["target"], bool(m.get("readOnly", False))) for m in container.get("mounts") or []
        ),
        "env": _env(container.get("envs") or []),
        "command": tuple(container["command"]) if "command" in container else None,
        "entrypoint": tuple(container["entrypoints"]) if "entrypoints" in container else None,
        "healthcheck": (
            tuple(health.get("tests") or ()),
            _seconds(health.get("interval", "0s")),
            _seconds(health.get("timeout", "0s")),
            int(health.get("retries", 0)),
            _seconds(health.get("startPeriod", "0s")),
        ),
        "memory": int(container["memory"]) * MIB if "memory" in container else None,
        "nano_cpus": int(Decimal(container["cpus"]) * NS) if "cpus" in container else None,
        "pids": None,  # pulumi-docker has no such argument: see UNENFORCED_BY_PULUMI
        "restart": (container.get("restart", "no"), int(container.get("maxRetryCount", 0))),
        "stop": (container.get("stopSignal"), int(container.get("stopTimeout", 0))),
        "logs": (container.get("logDriver"), dict(container.get("logOpts") or {})),
        "networks": {n["name"]: tuple(n.get("aliases") or ()) for n in container.get("networksAdvanced") or []},
        "ports": sorted(
            (int(p["internal"]), p.get("protocol", "tcp"), p.get("ip", "0.0.0.0"), int(p.get("external") or 0))
            for p in container.get("ports") or []
        ),
        "labels": {label["label"]: label["value"] for label in container.get("labels") or []},
    }


def check_equivalent(plan: Plan, result: Declared, service_name: str) -> None:
    """The two engines' containers for ``service_name`` agree on every field (but the declared gaps)."""
    service = plan.service(service_name)
    body = container_create_body(plan, service, example_paths(plan))
    # The local engine creates on its first network and connects the rest; pulumi-docker connects all.
    assert body["HostConfig"]["NetworkMode"] in body["NetworkingConfig"]["EndpointsConfig"]
    local = normalize_docker(body)
    pulumi_side = normalize_pulumi(result, result.containers[service_name])
    for gap in UNENFORCED_BY_PULUMI:
        local.pop(gap)
        pulumi_side.pop(gap)
    differing = sorted(k for k in local if local[k] != pulumi_side.get(k))
    assert local == pulumi_side, f"{plan.stack}/{service_name}: the engines disagree on {differing}"


def _cases() -> list[tuple[str, str]]:
    from ccoas.planner import build_plan, load_stack

    stacks_dir = Path(__file__).resolve().parent.parent / "stacks"
    cases = []
    for stack in STACKS:
        plan = build_plan(load_stack(stacks_dir / f"{stack}.yaml"))
        cases += [(stack, s.name) for s in plan.services]
    return cases


@pytest.mark.parametrize(("stack", "service"), _cases())
def test_local_and_pulumi_engines_declare_the_same_container(load_plan, stack, service):
    plan, result = declared_stack(load_plan, stack)
    check_equivalent(plan, result, service)


@pytest.mark.parametrize("stack", STACKS)
def test_pids_gap_is_declared_not_silent(load_plan, stack):
    plan, result = declared_stack(load_plan, stack)
    for service in plan.services:
        body = container_create_body(plan, service, example_paths(plan))
        if "PidsLimit" in body["HostConfig"]:
            entry = f"pids limit {body['HostConfig']['PidsLimit']}:"
            assert any(g.startswith(entry) for g in result.exports["unenforced"][service.name]), service.name


def test_normalizers_cover_the_same_fields(load_plan):
    """A field known to one normaliser only would compare ``None`` with a value, or nothing at all."""
    plan, result = declared_stack(load_plan, "prod")
    service = plan.service("nginx")
    local = normalize_docker(container_create_body(plan, service, example_paths(plan)))
    pulumi_side = normalize_pulumi(result, result.containers["nginx"])
    assert set(local) == set(pulumi_side) == {
        "image", "user", "read_only", "cap_drop", "cap_add", "security_opt", "tmpfs", "mounts", "env", "command",
        "entrypoint", "healthcheck", "memory", "nano_cpus", "pids", "restart", "stop", "logs", "networks", "ports",
        "labels",
    }  # fmt: skip


# -- the equivalence check bites -------------------------------------------------------------------


def _drop(service: str, *keys: str):
    def transform(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        if name == service:
            for key in keys:
                kwargs.pop(key, None)
        return kwargs

    return transform


def _tamper(service: str, key: str, value: Any):
    def transform(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        if name == service:
            kwargs[key] = value
        return kwargs

    return transform


@pytest.mark.parametrize(
    "transform",
    [
        _drop("postgres", "read_only"),
        _drop("postgres", "capabilities"),
        _drop("postgres", "security_opts"),
        _drop("postgres", "memory"),
        _drop("postgres", "cpus"),
        _drop("postgres", "healthcheck"),
        _drop("postgres", "tmpfs"),
        _drop("postgres", "log_opts"),
        _tamper("postgres", "user", "0:0"),
        _tamper("postgres", "restart", "always"),
        _tamper("postgres", "networks_advanced", []),
        _tamper("postgres", "envs", ["POSTGRES_PASSWORD=hunter2"]),
    ],
    ids=[
        "read_only", "capabilities", "security_opts", "memory", "cpus", "healthcheck", "tmpfs", "log_opts", "root",
        "restart", "networks", "env",
    ],  # fmt: skip
)
def test_equivalence_check_notices_a_mutated_program(load_plan, transform):
    plan = load_plan("prod")
    result = declared(plan, transform=transform)
    check_equivalent(plan, result, "redis")  # untouched services still agree
    with pytest.raises(AssertionError):
        check_equivalent(plan, result, "postgres")


def test_equivalence_check_notices_a_published_port_outside_nginx(load_plan):
    import pulumi_docker

    plan = load_plan("prod")
    published = [pulumi_docker.ContainerPortArgs(internal=5432, external=5432)]
    result = declared(plan, transform=_tamper("postgres", "ports", published))
    with pytest.raises(AssertionError):
        check_equivalent(plan, result, "postgres")


# -- the compose export describes the same containers -----------------------------------------------

COMPOSE_FIELDS = (
    "image", "user", "read_only", "cap_drop", "cap_add", "security_opt", "tmpfs", "mounts", "env", "command",
    "entrypoint", "healthcheck", "memory", "nano_cpus", "pids", "restart", "logs", "networks", "ports", "labels",
)  # fmt: skip
"""Every field: mounts in the terms both sides share (volume names, config directories relative
to the render, secret files relative to the secrets directory, which is one file per reader on
both sides)."""
HARDENING = ("image", "user", "read_only", "cap_drop", "cap_add", "security_opt", "tmpfs")
"""What the containers the export adds (a service's settle container and its gate) share with it."""


def _unescape(value: str) -> str:
    """Compose's ``$$`` is a ``$``."""
    return value.replace("$$", "$")


def normalize_docker_mounts(plan: Plan, body: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """The local engine's mounts, host paths relative to where the stack's files live."""
    paths = example_paths(plan)
    result = []
    for mount in body["HostConfig"]["Mounts"]:
        source = mount["Source"]
        if mount["Type"] == "bind":
            for root, name in ((paths.secrets, "secrets"), (paths.render, "render"), (paths.runtime, "runtime")):
                if source.startswith(f"{root}/"):
                    source = f"{name}/{source.removeprefix(f'{root}/')}"
                    break
        result.append((mount["Type"], source, mount["Target"], mount["ReadOnly"]))
    return sorted(result)


def normalize_compose_mounts(document: dict[str, Any], body: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """A Compose service's volumes and secrets in the same terms."""
    result = []
    for entry in body.get("volumes", []):
        if entry.startswith("${CCOAS_RUNTIME_DIR"):  # a runtime mount: ${CCOAS_RUNTIME_DIR:?…}/NAME:TARGET
            name, target, *mode = entry.split("}/", 1)[1].split(":")
            result.append(("bind", f"runtime/{name}", target, mode == ["ro"]))
            continue
        source, target, *mode = entry.split(":")
        read_only = mode == ["ro"]
        if source.startswith("./"):
            result.append(("bind", f"render/{source.removeprefix('./')}", target, read_only))
        else:
            result.append(("volume", document["volumes"][source]["name"], target, read_only))
    for secret in body.get("secrets", []):
        path = document["secrets"][secret["source"]]["file"]
        result.append(("bind", "secrets/" + path.split("}/", 1)[1], secret["target"], True))
    return sorted(result)


def _compose_seconds(duration: str) -> int:
    assert duration.endswith("s") and duration[:-1].isdigit(), f"unexpected duration {duration!r}"
    return int(duration[:-1])


def _compose_bytes(value: str) -> int:
    units = {"g": 1024**3, "m": 1024**2, "k": 1024, "b": 1}
    return int(value[:-1]) * units[value[-1]]


def normalize_compose(plan: Plan, body: dict[str, Any], document: dict[str, Any] | None = None) -> dict[str, Any]:
    """One service of the compose export in the common shape (network keys → engine names)."""
    from ccoas.compose import compose_document

    document = document if document is not None else compose_document(plan)
    health = body["healthcheck"]
    limits = body.get("deploy", {}).get("resources", {}).get("limits", {})
    policy, _, retries = body["restart"].partition(":")
    return {
        "image": body["image"],
        "user": body["user"],
        "read_only": body["read_only"],
        "cap_drop": tuple(sorted(body["cap_drop"])),
        "cap_add": tuple(sorted(body.get("cap_add", []))),
        "security_opt": tuple(sorted(body["security_opt"])),
        "tmpfs": _tmpfs(dict(entry.split(":", 1) for entry in body.get("tmpfs", []))),
        "mounts": normalize_compose_mounts(document, body),
        "env": {key: _unescape(value) for key, value in body.get("environment", {}).items()},
        "command": tuple(map(_unescape, body["command"])) if "command" in body else None,
        "entrypoint": tuple(map(_unescape, body["entrypoint"])) if "entrypoint" in body else None,
        "healthcheck": None if health.get("disable") else (
            tuple(map(_unescape, health["test"])),
            _compose_seconds(health["interval"]),
            _compose_seconds(health["timeout"]),
            health["retries"],
            _compose_seconds(health["start_period"]),
        ),
        "memory": _compose_bytes(limits["memory"]) if "memory" in limits else None,
        "nano_cpus": int(Decimal(str(limits["cpus"])) * NS) if "cpus" in limits else None,
        "pids": body.get("pids_limit"),
        "restart": (policy, int(retries or 0)),
        "logs": (body.get("logging", {}).get("driver"), dict(body.get("logging", {}).get("options") or {})),
        "networks": {plan.network(n).engine_name: tuple(v["aliases"]) for n, v in body.get("networks", {}).items()},
        "ports": sorted((p["target"], p["protocol"], p["host_ip"], int(p.get("published", 0))) for p in body.get("ports", [])),
        "labels": dict(body["labels"]),
    }


@pytest.mark.parametrize(("stack", "service"), [case for case in _cases() if case[1] != "vault"])  # Compose mode has no Vault
def test_local_engine_and_compose_export_declare_the_same_container(load_plan, stack, service):
    from ccoas.compose import compose_document

    plan = load_plan(stack)
    body = container_create_body(plan, plan.service(service), example_paths(plan))
    local = {**normalize_docker(body), "mounts": normalize_docker_mounts(plan, body)}
    exported = normalize_compose(plan, compose_document(plan)["services"][service])
    local = {k: local[k] for k in COMPOSE_FIELDS}
    if service == "nginx" and plan.edge.listener.kind == "host":
        # the one designed difference: Compose runs no host listener, so it publishes Nginx's
        # ports itself and keeps the PROXY-protocol sockets on a tmpfs of Nginx's own
        edge_dir = next(m.target for m in plan.service("nginx").runtime_mounts if m.name == plan.edge.listener.socket_mount)
        assert local["ports"] == [] and any(m[2] == edge_dir for m in local["mounts"])
        local["ports"] = sorted((p.container_port, p.protocol, p.host_ip, p.host_port) for p in plan.edge.listener.ports)
        local["mounts"] = [m for m in local["mounts"] if m[2] != edge_dir]
        local["tmpfs"] = {**local["tmpfs"], edge_dir: ("mode=1777", "nodev", "noexec", "nosuid", "rw", "size=1m")}
    differing = sorted(k for k in local if local[k] != exported.get(k))
    assert local == exported, f"{stack}/{service}: the local engine and the compose export disagree on {differing}"


@pytest.mark.parametrize("stack", STACKS)
def test_the_containers_the_export_adds_are_hardened_as_their_service(load_plan, stack):
    """A service's settle container (its hooks, in its network namespace) and its gate run its
    image as its user with its hardening; the settle container reads its secrets and config,
    never its data volumes; the gate reads only the marks."""
    from ccoas.compose import MARKS_DIR, compose_document, compose_services, settle_name, settled_name, settled_services

    plan = load_plan(stack)
    document = compose_document(plan)
    exported = compose_services(plan)
    assert settled_services(exported)
    for name in settled_services(exported):
        service = plan.service(name)
        local = normalize_docker(container_create_body(plan, service, example_paths(plan)))
        settle = normalize_compose(plan, document["services"][settle_name(service)], document)
        gate = normalize_compose(plan, document["services"][settled_name(service)], document)
        for added in (settle, gate):
            assert {k: added[k] for k in HARDENING} == {k: local[k] for k in HARDENING}, f"{stack}/{name}"
            assert added["networks"] == {} and added["ports"] == []
        mounts = normalize_compose_mounts(document, document["services"][service.name])
        assert set(settle["mounts"]) - {m for m in mounts if m[0] == "bind"} == {("volume", f"{plan.stack}-ccoas-settled", MARKS_DIR, False)}
        assert gate["mounts"] == [("volume", f"{plan.stack}-ccoas-settled", MARKS_DIR, True)]
        assert document["services"][settle_name(service)]["network_mode"] == f"service:{name}"
        assert document["services"][settled_name(service)]["network_mode"] == "none"
        assert "depends_on" not in document["services"][settled_name(service)]  # see gate_service: Podman 4.3


def test_compose_check_notices_a_tmpfs_without_noexec(load_plan):
    from ccoas.compose import compose_document

    plan = load_plan("dev")
    body = compose_document(plan)["services"]["nginx"]
    body["tmpfs"] = [entry.replace("noexec,", "") for entry in body["tmpfs"]]
    local = normalize_docker(container_create_body(plan, plan.service("nginx"), example_paths(plan)))
    assert normalize_compose(plan, body)["tmpfs"] != local["tmpfs"]


def test_compose_check_notices_a_missing_log_cap(load_plan):
    from ccoas.compose import compose_document

    plan = load_plan("dev")
    body = compose_document(plan)["services"]["postgres"]
    del body["logging"]
    local = normalize_docker(container_create_body(plan, plan.service("postgres"), example_paths(plan)))
    assert normalize_compose(plan, body)["logs"] != local["logs"]


def test_compose_check_notices_a_secret_file_of_another_reader(load_plan):
    from ccoas.compose import compose_document

    plan = load_plan("dev")
    document = compose_document(plan)
    body = document["services"]["directus"]
    mount = next(m for m in body["secrets"] if m["source"] == "directus.postgres_directus_password")
    mount["source"] = "postgres.postgres_directus_password"  # postgres's copy: owned by postgres's uid
    local = container_create_body(plan, plan.service("directus"), example_paths(plan))
    assert normalize_compose(plan, body, document)["mounts"] != normalize_docker_mounts(plan, local)
