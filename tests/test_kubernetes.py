"""The Kubernetes target: goldens, determinism, strict decoding against the real API types,
Checkov, the NetworkPolicies measured against the plan's reachability matrix, hardening of every
container (with mutations that must be caught), secrets, hooks and start order.

Golden manifests live in ``tests/golden/<stack>/kubernetes/``; after an intended change:

    CCOAS_UPDATE_GOLDEN=1 python -m pytest tests/test_kubernetes.py
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from ccoas import kubernetes
from ccoas.cli import app
from ccoas.plan import Hook, Plan
from ccoas.planner import build_plan
from ccoas.planner import load_stack

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden"
STACKS = {"dev": ("stacks/dev.yaml", None), "ci": ("stacks/ci.yaml", "pr-42"), "prod": ("stacks/prod.yaml", None)}
PLANS = {key: build_plan(load_stack(REPO / path), name=name) for key, (path, name) in STACKS.items()}


LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.lru_cache(maxsize=256)
def _parse(text: str) -> tuple[dict[str, Any], ...]:
    return tuple(doc for doc in yaml.load_all(text, Loader=LOADER) if doc)


def objects(files: dict[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object of a render (fresh copies: tests may change them)."""
    found = []
    for relative in kubernetes.manifests(files):
        found.extend(copy.deepcopy(_parse(files[relative])))
    return found


@functools.lru_cache(maxsize=None)
def rendered(key: str) -> dict[str, str]:
    return kubernetes.manifest_files(PLANS[key])


def pod_templates(files: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Workload name → its pod template."""
    return {o["metadata"]["name"]: o["spec"]["template"] for o in objects(files) if o["kind"] in ("Deployment", "StatefulSet")}


# --- goldens and determinism -------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(STACKS))
def test_manifests_match_the_golden_files(key):
    files = rendered(key)
    golden = GOLDEN / key / "kubernetes"
    if os.environ.get("CCOAS_UPDATE_GOLDEN") == "1":
        shutil.rmtree(golden, ignore_errors=True)
        golden.mkdir(parents=True)
        for relative, text in files.items():
            (golden / relative).write_text(text)
    expected = {p.name: p.read_text() for p in sorted(golden.iterdir())}
    assert sorted(files) == sorted(expected), "files differ: regenerate with CCOAS_UPDATE_GOLDEN=1 and review the diff"
    for relative in sorted(expected):
        assert files[relative] == expected[relative], f"{key}/kubernetes/{relative} differs from tests/golden"


@pytest.mark.parametrize("key", sorted(STACKS))
def test_render_target_kubernetes_is_deterministic_and_writes_the_files(key, tmp_path):
    first = kubernetes.render(PLANS[key], tmp_path / "a")
    second = kubernetes.render(PLANS[key], tmp_path / "b")
    read = lambda paths, root: {p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mode & 0o777) for p in paths}  # noqa: E731
    assert read(first, tmp_path / "a") == read(second, tmp_path / "b")
    assert {p.name for p in first} == set(rendered(key))
    assert all(p.stat().st_mode & 0o777 == (0o755 if p.name.endswith(".sh") else 0o644) for p in first)


def test_cli_renders_the_kubernetes_target_and_refuses_an_unknown_one(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["render", str(REPO / "stacks/dev.yaml"), "--target", "kubernetes", "--out", str(tmp_path / "k")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "k" / "kustomization.yaml").is_file() and not (tmp_path / "k" / "compose.yaml").exists()
    result = runner.invoke(app, ["render", str(REPO / "stacks/dev.yaml"), "--out", str(tmp_path / "local")])
    assert result.exit_code == 0 and (tmp_path / "local" / "compose.yaml").is_file()  # the default target is unchanged
    result = runner.invoke(app, ["render", str(REPO / "stacks/dev.yaml"), "--target", "helm", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "--target" in result.output and not (tmp_path / "x").exists()


@pytest.mark.parametrize("key", sorted(STACKS))
def test_kustomization_lists_every_manifest_and_the_namespace_first(key):
    files = rendered(key)
    kustomization = yaml.safe_load(files["kustomization.yaml"])
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["resources"][0] == "namespace.yaml"
    assert sorted(kustomization["resources"]) == kubernetes.manifests(files)
    namespace = kubernetes.namespace(PLANS[key])
    for obj in objects(files):
        if obj["kind"] not in ("Namespace", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == namespace, obj["metadata"]["name"]


# --- workloads: one per service, data services as StatefulSets ------------------------------------


@pytest.mark.parametrize("key", sorted(STACKS))
def test_one_workload_per_service_statefulsets_for_data_and_services_for_every_port(key):
    plan = PLANS[key]
    found = {(o["kind"], o["metadata"]["name"]): o for o in objects(rendered(key))}
    for service in plan.services:
        kind = "StatefulSet" if service.volumes else "Deployment"
        workload = found[(kind, service.name)]
        claims = {c["metadata"]["name"]: c["spec"]["resources"]["requests"]["storage"] for c in workload["spec"].get("volumeClaimTemplates", [])}
        assert claims == {m.volume: plan.volume(m.volume).size for m in service.volumes}
        [container] = workload["spec"]["template"]["spec"]["containers"]
        assert container["image"] == service.image.ref
        assert container.get("command") == (list(service.entrypoint) if service.entrypoint else None)
        assert container.get("args") == (list(service.command) if service.command else None)
        assert {e["name"]: e["value"] for e in container.get("env", [])} == service.environment
        assert container["imagePullPolicy"] == ("IfNotPresent" if service.image.source == "registry" else "Never")
        for alias in {a for names in service.networks.values() for a in names if service.expose}:  # a listener only
            ports = {p["port"] for p in found[("Service", alias)]["spec"]["ports"]}
            assert ports == set(service.expose)
        assert found[("Service", kubernetes.pods_service(service))]["spec"]["clusterIP"] == "None"
        public = found.get(("Service", kubernetes.public_service(service)))
        assert (public is not None) == bool(kubernetes.public_ports(plan, service))
        if public is not None:
            assert public["spec"]["type"] == "LoadBalancer"
            assert sorted(p["targetPort"] for p in public["spec"]["ports"]) == sorted(p.container_port for p in kubernetes.public_ports(plan, service))
    assert not [o for o in found.values() if o["kind"] == "Service" and o["spec"].get("type") == "LoadBalancer" and not kubernetes.public_ports(plan, plan.service(o["metadata"]["labels"]["app.kubernetes.io/name"]))]


@pytest.mark.parametrize("key", sorted(STACKS))
def test_config_maps_hold_the_rendered_config_files_mounted_where_the_plan_says(key):
    from ccoas.render import config_files

    plan = PLANS[key]
    files = rendered(key)
    configs = config_files(plan)
    found = {(o["kind"], o["metadata"]["name"]): o for o in objects(files)}
    templates = pod_templates(files)
    for service in plan.services:
        if service.config is None:
            assert ("ConfigMap", f"{service.name}-config") not in found
            continue
        data = found[("ConfigMap", f"{service.name}-config")]["data"]
        volume = next(v for v in templates[service.name]["spec"]["volumes"] if v["name"] == "config")
        mounted = {item["path"]: data[item["key"]] for item in volume["configMap"]["items"]}
        assert mounted == {r.removeprefix(f"{service.config.source}/"): t for r, t in configs.items() if r.startswith(f"{service.config.source}/")}
        modes = {item["path"]: item["mode"] for item in volume["configMap"]["items"]}
        assert all(mode == (0o555 if path.endswith(".sh") else 0o444) for path, mode in modes.items())
        [container] = templates[service.name]["spec"]["containers"]
        assert {"name": "config", "mountPath": service.config.target, "readOnly": True} in container["volumeMounts"]


# --- hardening, and mutations of the translation that must be caught ------------------------------


def hardening_problems(plan: Plan, files: dict[str, str]) -> list[str]:
    """What is wrong with the hardening of any container of the render (empty: all hardened)."""
    problems = []
    templates = pod_templates(files)
    for service in plan.services:
        template = templates.get(service.name)
        if template is None:
            problems.append(f"{service.name}: no workload")
            continue
        spec = template["spec"]
        pod = spec.get("securityContext", {})
        expected_pod = {"runAsNonRoot": True, "runAsUser": service.uid, "runAsGroup": service.gid, "fsGroup": service.gid,
                        "seccompProfile": {"type": "RuntimeDefault"}}
        for field, value in expected_pod.items():
            if pod.get(field) != value:
                problems.append(f"{service.name}: pod securityContext.{field} is {pod.get(field)!r}, expected {value!r}")
        containers = spec["containers"] + spec.get("initContainers", [])
        for container in containers:
            where = f"{service.name}/{container['name']}"
            context = container.get("securityContext", {})
            expected = {
                "runAsNonRoot": True, "runAsUser": service.uid, "runAsGroup": service.gid, "readOnlyRootFilesystem": True,
                "allowPrivilegeEscalation": False, "privileged": False, "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            }
            for field, value in expected.items():
                if context.get(field) != value:
                    problems.append(f"{where}: securityContext.{field} is {context.get(field)!r}, expected {value!r}")
            limits = container.get("resources", {}).get("limits", {})
            if not limits.get("cpu") or not limits.get("memory") or container["resources"].get("requests") != limits:
                problems.append(f"{where}: resources {container.get('resources')!r}")
        [main] = spec["containers"]
        expected_limits = {"cpu": f"{service.limits.nano_cpus // 1_000_000}m", "memory": kubernetes.memory_quantity(service.limits.memory_bytes)}
        if main.get("resources", {}).get("limits") != expected_limits:
            problems.append(f"{service.name}: limits {main.get('resources')!r}, expected {expected_limits!r}")
        for probe, check in (("readinessProbe", service.healthcheck), ("livenessProbe", service.liveness), ("startupProbe", service.liveness)):
            body = main.get(probe)
            if body is None or body["exec"]["command"] != kubernetes.check_command(check) or body["periodSeconds"] != check.interval_s:
                problems.append(f"{service.name}: {probe} is {body!r}, expected the plan's check {check.test!r}")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        mounts = {m["mountPath"]: m["name"] for m in main.get("volumeMounts", [])}
        for tmpfs in service.tmpfs:
            volume = volumes.get(mounts.get(tmpfs.target, ""), {})
            if volume.get("emptyDir") != {"medium": "Memory", "sizeLimit": kubernetes.tmpfs_size(tmpfs.size)}:
                problems.append(f"{service.name}: tmpfs {tmpfs.target} is {volume!r}, expected an in-memory emptyDir of {tmpfs.size}")
        # the token is mounted only where the Vault Agent authenticates with it, and in Vault (token review)
        if spec.get("automountServiceAccountToken") is not (bool(service.secrets) or service.name == kubernetes.VAULT_SERVICE):
            problems.append(f"{service.name}: automountServiceAccountToken {spec.get('automountServiceAccountToken')!r}")
        for dependency in service.depends_on:
            if not any(c["name"] == f"wait-for-{dependency.service}" for c in spec.get("initContainers", [])):
                problems.append(f"{service.name}: no init container waits for {dependency.service}")
    return problems


@pytest.mark.parametrize("key", sorted(STACKS))
def test_every_container_is_hardened_as_the_plan_says(key):
    assert hardening_problems(PLANS[key], rendered(key)) == []


def _drop(function, *path):
    """A wrapper of ``function`` whose result lacks the key at ``path`` (a mutation)."""

    def mutated(*args, **kwargs):
        result = function(*args, **kwargs)
        items = result if isinstance(result, list) else [result]
        for item in items:
            target = item
            for key in path[:-1]:
                target = target[key]
            target.pop(path[-1], None)
        return result

    return mutated


CONTAINER_FIELDS = ("runAsNonRoot", "runAsUser", "runAsGroup", "readOnlyRootFilesystem", "allowPrivilegeEscalation",
                    "privileged", "capabilities", "seccompProfile")
MUTATIONS = (
    [("container_security_context", (field,)) for field in CONTAINER_FIELDS]
    + [("container_security_context", ("capabilities", "drop"))]
    + [("pod_security_context", (field,)) for field in ("runAsNonRoot", "runAsUser", "runAsGroup", "fsGroup", "seccompProfile")]
    + [("tmpfs_volumes", ("emptyDir", "medium")), ("tmpfs_volumes", ("emptyDir", "sizeLimit"))]
    + [("resources", ("limits",)), ("resources", ("requests",))]
    + [("probes", (probe,)) for probe in ("readinessProbe", "livenessProbe", "startupProbe")]
)


@pytest.mark.parametrize(("function", "path"), MUTATIONS, ids=[f"{f}-{'.'.join(p)}" for f, p in MUTATIONS])
def test_dropping_a_hardening_field_from_the_translation_is_caught(function, path, monkeypatch):
    plan = PLANS["prod"]
    monkeypatch.setattr(kubernetes, function, _drop(getattr(kubernetes, function), *path))
    assert hardening_problems(plan, kubernetes.manifest_files(plan)), f"dropping {function} {'.'.join(path)} went unnoticed"


def test_dropping_the_dependency_waits_or_the_token_rule_is_caught(monkeypatch):
    plan = PLANS["prod"]
    monkeypatch.setattr(kubernetes, "wait_containers", lambda plan, service: [])
    assert any("waits for" in p for p in hardening_problems(plan, kubernetes.manifest_files(plan)))
    monkeypatch.undo()
    monkeypatch.setattr(kubernetes, "needs_token", lambda plan, service: True)
    assert any("automountServiceAccountToken" in p for p in hardening_problems(plan, kubernetes.manifest_files(plan)))


@pytest.mark.parametrize("key", sorted(STACKS))
def test_settings_without_a_kubernetes_field_are_said_in_the_workloads_manifest(key):
    plan = PLANS[key]
    files = rendered(key)
    for service in plan.services:
        text = files[f"{service.name}.yaml"]
        comment, workload = text.rsplit("---\n", 1)[1].split("\napiVersion:", 1)
        assert yaml.safe_load("apiVersion:" + workload)["kind"] in ("Deployment", "StatefulSet")
        assert f"limits.pids {service.limits.pids}" in comment
        assert f"at most {service.restart.max_retries} times" in comment
        assert "isolate" in comment
        for hook in service.hooks:
            assert (f"hook {hook.kind}" in comment) == (hook.kind != "exec")


# --- networks: the NetworkPolicies allow exactly the plan's reachability matrix -------------------


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"the test understands matchLabels only: {selector}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _peer_pods(peers: list[dict[str, Any]], pods: dict[str, dict[str, str]]) -> set[str]:
    """Pods of the namespace a rule's peers select (ipBlocks and other namespaces select none of them)."""
    found = set()
    for peer in peers:
        if "podSelector" in peer and "namespaceSelector" not in peer and "ipBlock" not in peer:
            found |= {name for name, labels in pods.items() if _selects(peer["podSelector"], labels)}
    return found


def _allows(policy: dict[str, Any], direction: str, peer: str, port: int, pods: dict[str, dict[str, str]]) -> bool:
    rules = policy["spec"].get(direction, [])
    key = "to" if direction == "egress" else "from"
    for rule in rules:
        ports = rule.get("ports")
        if ports is not None and not any(p.get("port") == port and p.get("protocol", "TCP") == "TCP" for p in ports):
            continue
        if key not in rule or peer in _peer_pods(rule[key], pods):
            return True
    return False


def reachable(files: dict[str, str], reasons: set[str] | None = None) -> dict[tuple[str, str], set[int]]:
    """(client, server) → ports, computed from the manifests alone: a connection is allowed when a
    policy selecting the client allows it out AND a policy selecting the server allows it in."""
    found = objects(files)
    pods = {name: template["metadata"]["labels"] for name, template in pod_templates(files).items()}
    ports = {name: {p["containerPort"] for p in template["spec"]["containers"][0].get("ports", [])} for name, template in pod_templates(files).items()}
    policies = [o for o in found if o["kind"] == "NetworkPolicy"]
    if reasons is not None:
        policies = [p for p in policies if p["metadata"]["annotations"][kubernetes.REASON] in reasons]
    pairs: dict[tuple[str, str], set[int]] = {}
    for client in pods:
        for server in pods:
            if client == server:
                continue
            for port in ports[server]:
                out = any(_selects(p["spec"]["podSelector"], pods[client]) and "Egress" in p["spec"]["policyTypes"]
                          and _allows(p, "egress", server, port, pods) for p in policies)
                into = any(_selects(p["spec"]["podSelector"], pods[server]) and "Ingress" in p["spec"]["policyTypes"]
                           and _allows(p, "ingress", client, port, pods) for p in policies)
                if out and into:
                    pairs.setdefault((client, server), set()).add(port)
    return pairs


def plan_matrix(plan: Plan) -> set[tuple[str, str]]:
    """The plan's reachability matrix: services that share a network (with one that listens)."""
    return {(a.name, b.name) for a in plan.services for b in plan.services if a.name != b.name and set(a.networks) & set(b.networks) and b.expose}


@pytest.mark.parametrize("key", sorted(STACKS))
def test_network_policies_allow_exactly_the_plans_reachability_matrix(key):
    plan = PLANS[key]
    files = rendered(key)
    placement = reachable(files, reasons={"placement", "deny", "dns"})
    assert set(placement) == plan_matrix(plan)
    for (client, server), ports in placement.items():
        assert ports == set(plan.service(server).expose), (client, server)
    # everything together: the matrix, plus each secret reader's agent reaching Vault's API, and nothing else
    everything = reachable(files)
    vault = plan.service(kubernetes.VAULT_SERVICE)
    delivery = {(s.name, vault.name) for s in plan.services if s.secrets}
    assert set(everything) == plan_matrix(plan) | delivery
    for pair in delivery - plan_matrix(plan):
        assert everything[pair] == set(vault.expose), pair


def test_network_policies_follow_the_plans_placement_when_it_changes():
    """Move postgres onto the edge network: the manifests allow nginx → postgres, and only then."""
    plan = PLANS["dev"]
    postgres = plan.service("postgres")
    moved = plan.model_copy(update={"services": tuple(
        s.model_copy(update={"networks": {**s.networks, "edge": ("postgres",)}}) if s is postgres else s for s in plan.services
    )})
    assert ("nginx", "postgres") not in reachable(rendered("dev"))
    moved_files = kubernetes.manifest_files(moved)
    assert set(reachable(moved_files, reasons={"placement", "deny", "dns"})) == plan_matrix(moved)
    assert ("nginx", "postgres") in reachable(moved_files)


@pytest.mark.parametrize("key", sorted(STACKS))
def test_every_network_policy_says_why_and_default_deny_comes_first(key):
    files = rendered(key)
    policies = list(yaml.safe_load_all(files["network-policies.yaml"]))
    deny = policies[0]
    assert deny["metadata"]["name"] == "default-deny-all"
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"], "ingress": [], "egress": []}
    for policy in policies:
        annotations = policy["metadata"]["annotations"]
        assert annotations[kubernetes.REASON] in {"deny", "dns", "placement", "secret-delivery", "published"}
        assert len(annotations[kubernetes.WHY]) > 20
        for direction in ("ingress", "egress"):
            for rule in policy["spec"].get(direction, []):
                peers = rule.get("to", rule.get("from", []))
                assert peers, f"{policy['metadata']['name']}: a rule without peers allows everyone"
                if any("ipBlock" in p for p in peers):
                    assert annotations[kubernetes.REASON] in {"published", "secret-delivery"}
    dns = next(p for p in policies if p["metadata"]["name"] == "dns")
    assert {(p["port"], p["protocol"]) for p in dns["spec"]["egress"][0]["ports"]} == {(53, "UDP"), (53, "TCP")}


# --- secrets: from Vault at run time, never in a manifest ---------------------------------------


@pytest.mark.parametrize("key", sorted(STACKS))
def test_no_secret_in_any_manifest_and_every_secret_file_comes_from_vault(key):
    plan = PLANS[key]
    files = rendered(key)
    found = objects(files)
    assert not [o for o in found if o["kind"] == "Secret"]
    for relative, text in files.items():
        assert "-----BEGIN" not in text, relative
    templates = pod_templates(files)
    for service in plan.services:
        annotations = templates[service.name]["metadata"]["annotations"]
        container = templates[service.name]["spec"]["containers"][0]
        assert not [e for e in container.get("env", []) if "valueFrom" in e]
        if not service.secrets:
            assert not [a for a in annotations if a.startswith("vault.hashicorp.com/")]
            continue
        assert annotations["vault.hashicorp.com/role"] == f"{plan.stack}-{service.name}"
        assert annotations["vault.hashicorp.com/agent-run-as-user"] == str(service.uid)
        for mount in service.secrets:
            name = Path(mount.target).name
            path = f"{plan.vault.kv_mount}/data/{plan.vault.prefix}/{plan.secret(mount.secret).vault_path}"
            assert annotations[f"vault.hashicorp.com/agent-inject-secret-{name}"] == path
            assert annotations[f"vault.hashicorp.com/secret-volume-path-{name}"] == str(Path(mount.target).parent)
            assert annotations[f"vault.hashicorp.com/agent-inject-perms-{name}"] == "0400"
            template = annotations[f"vault.hashicorp.com/agent-inject-template-{name}"]
            assert f'secret "{path}"' in template and "{{ .Data.data.value }}" in template
        readable = {f"{plan.vault.kv_mount}/data/{plan.vault.prefix}/{p}" for p in next(p for p in plan.vault.policies if p.service == service.name).read_paths}
        assert {v for a, v in annotations.items() if a.startswith("vault.hashicorp.com/agent-inject-secret-")} <= readable


@pytest.mark.parametrize("key", sorted(STACKS))
def test_vault_side_has_one_kubernetes_auth_role_per_service_mirroring_its_policy(key):
    from ccoas.render import vault_policy_hcl

    plan = PLANS[key]
    files = rendered(key)
    script = files[kubernetes.VAULT_AUTH_SCRIPT]
    roles = re.findall(r"vault write auth/kubernetes/role/(\S+) \\\n  bound_service_account_names=(\S+) \\\n  bound_service_account_namespaces=(\S+) \\\n  token_policies=(\S+) ", script)
    assert roles == [(p.name, p.service, kubernetes.namespace(plan), p.name) for p in plan.vault.policies]
    for policy in plan.vault.policies:
        assert f"vault policy write {policy.name} - <<'POLICY'\n{vault_policy_hcl(policy, plan).rstrip()}\nPOLICY\n" in script
    service_accounts = {o["metadata"]["name"] for o in objects(files) if o["kind"] == "ServiceAccount"}
    for name, template in pod_templates(files).items():
        assert template["spec"]["serviceAccountName"] == name in service_accounts
    for secret in plan.secrets:
        assert f"{plan.vault.prefix}/{secret.vault_path}" in script
    binding = next(o for o in objects(files) if o["kind"] == "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == "system:auth-delegator"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "vault", "namespace": kubernetes.namespace(plan)}]


def test_vault_side_script_parses(tmp_path):
    for key, plan in PLANS.items():
        script = tmp_path / f"{key}.sh"
        script.write_text(kubernetes.manifest_files(plan)[kubernetes.VAULT_AUTH_SCRIPT])
        result = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


# --- hooks and start order -----------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(STACKS))
def test_every_exec_hook_runs_its_own_command_as_a_sidecar_of_its_service(key):
    plan = PLANS[key]
    templates = pod_templates(rendered(key))
    for service in plan.services:
        sidecars = [c for c in templates[service.name]["spec"].get("initContainers", []) if c["name"].startswith("hook-")]
        hooks = [h for h in service.hooks if h.kind == "exec"]
        assert len(sidecars) == len(hooks)
        for hook, sidecar in zip(hooks, sidecars):
            script = sidecar["command"][2]
            check = service.healthcheck if hook.stage == "ready" else service.liveness
            assert sidecar["image"] == service.image.ref and sidecar["restartPolicy"] == "Always"
            assert script.index(shlex.join(kubernetes.check_command(check))) < script.index(shlex.join(hook.command))
            assert sidecar["readinessProbe"]["exec"]["command"][:2] == ["test", "-f"]
            mounted = {m["mountPath"] for m in sidecar["volumeMounts"]}
            assert {t.target for t in service.tmpfs} <= mounted
            assert service.config is None or service.config.target in mounted


def test_a_new_exec_hook_translates_without_changing_the_translation():
    plan = PLANS["dev"]
    directus = plan.service("directus")
    hook = Hook(kind="exec", stage="alive", command=("sh", "/etc/ccoas/directus/provision.sh"), description="provision directus")
    changed = plan.model_copy(update={"services": tuple(
        s.model_copy(update={"hooks": (*s.hooks, hook)}) if s is directus else s for s in plan.services
    )})
    template = pod_templates(kubernetes.manifest_files(changed))["directus"]
    sidecars = [c for c in template["spec"]["initContainers"] if c["name"].startswith("hook-")]
    assert len(sidecars) == len(directus.hooks) + 1
    [sidecar] = [c for c in sidecars if shlex.join(hook.command) in c["command"][2]]
    assert shlex.join(kubernetes.check_command(directus.liveness)) in sidecar["command"][2]


@pytest.mark.parametrize("key", sorted(STACKS))
def test_start_order_waits_on_each_dependencys_ready_pods(key):
    plan = PLANS[key]
    files = rendered(key)
    headless = {o["metadata"]["name"] for o in objects(files) if o["kind"] == "Service" and o["spec"].get("clusterIP") == "None"}
    templates = pod_templates(files)
    for service in plan.services:
        waits = [c for c in templates[service.name]["spec"].get("initContainers", []) if c["name"].startswith("wait-for-")]
        assert [c["name"] for c in waits] == [f"wait-for-{d.service}" for d in service.depends_on]
        for wait, dependency in zip(waits, service.depends_on):
            name = kubernetes.pods_service(plan.service(dependency.service))
            assert name in headless and f"getent hosts {name} " in wait["command"][2]


# --- strict decoding against the Kubernetes API types, and Checkov ------------------------------


def test_the_validator_cache_key_changes_with_the_go_version():
    assert kubernetes.validator_key("go1.27.3") == kubernetes.validator_key("go1.27.3")
    assert kubernetes.validator_key("go1.27.3") != kubernetes.validator_key("go1.28.0")


@pytest.fixture(scope="session")
def validator() -> Path:
    return kubernetes.validator_binary()  # fails naming `ccoas host prepare` when the Go toolchain is missing


@pytest.mark.parametrize("key", sorted(STACKS))
def test_every_golden_manifest_decodes_strictly_against_the_kubernetes_api(key, validator):
    golden = GOLDEN / key / "kubernetes"
    paths = [golden / name for name in kubernetes.manifests({p.name: "" for p in golden.iterdir()})]
    result = subprocess.run([str(validator), *map(str, paths)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    decoded = [line.split()[2:] for line in result.stdout.splitlines()]
    expected = [[o["kind"], o["metadata"]["name"]] for p in paths for o in yaml.safe_load_all(p.read_text()) if o]
    assert decoded == expected
    assert kubernetes.validate(paths) == []


def test_the_validator_rejects_a_misspelt_field_and_an_unknown_kind(validator, tmp_path):
    text = kubernetes.manifest_files(PLANS["dev"])["postgres.yaml"]
    assert "readOnlyRootFilesystem" in text
    (tmp_path / "typo.yaml").write_text(text.replace("readOnlyRootFilesystem", "readOnlyRootFileSystem", 1))
    (tmp_path / "kind.yaml").write_text("apiVersion: v1\nkind: Secrett\nmetadata: {name: x}\n")
    problems = kubernetes.validate([tmp_path / "typo.yaml", tmp_path / "kind.yaml"])
    assert len(problems) == 2
    assert 'unknown field "spec.template.spec' in problems[0] and "readOnlyRootFileSystem" in problems[0]
    assert "Secrett" in problems[1]


@pytest.fixture(scope="module")
def checkov_results(tmp_path_factory) -> dict[str, set[tuple[str, str]]]:
    """Stack → (check id, resource) of every Checkov Kubernetes check failing on its manifests
    (one Checkov run over the three stacks, each in a directory of its own)."""
    root = tmp_path_factory.mktemp("checkov")
    for key in sorted(STACKS):
        files = rendered(key)
        (root / key).mkdir()
        for relative in kubernetes.manifests(files):
            (root / key / relative).write_text(files[relative])
    result = subprocess.run(
        [str(kubernetes.checkov_executable()), "--directory", str(root), "--framework", "kubernetes", "--output", "json",
         "--compact", "--skip-download"],
        capture_output=True, text=True, env={**os.environ, "BC_SKIP_MAPPING": "TRUE"}, timeout=900,
    )
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    assert all(r["summary"]["parsing_errors"] == 0 for r in reports)
    checked = {(p["file_path"].strip("/").split("/")[0], p["resource"]) for r in reports for p in r["results"]["passed_checks"]}
    for key in STACKS:  # Checkov did read every workload of every stack
        for template_name in pod_templates(rendered(key)):
            assert any(stack == key and resource.endswith(f".{kubernetes.namespace(PLANS[key])}.{template_name}") for stack, resource in checked)
    failures: dict[str, set[tuple[str, str]]] = {key: set() for key in STACKS}
    for r in reports:
        for failure in r["results"]["failed_checks"]:
            failures[failure["file_path"].strip("/").split("/")[0]].add((failure["check_id"], failure["resource"]))
    return failures


@pytest.mark.parametrize("key", sorted(STACKS))
def test_checkov_finds_no_unexplained_failure(key, checkov_results):
    unexplained = sorted((check, resource) for check, resource in checkov_results[key] if check not in kubernetes.CHECKOV_SKIPS)
    assert unexplained == [], "explain each in kubernetes.CHECKOV_SKIPS, or fix the translation"


def test_every_skipped_checkov_check_is_still_needed(checkov_results):
    failing = {check for failures in checkov_results.values() for check, _ in failures}
    assert sorted(set(kubernetes.CHECKOV_SKIPS) - failing) == [], "a skip no longer needed: remove it"
