"""The stack file: its schema, and the reader that checks a file against it.

A stack file is YAML. :func:`read_stack` returns a :class:`Stack` or raises
:class:`~ccoas.errors.StackError` with one problem per defect, each naming the
file, the field path and what was expected. The cross-field rules (which need the
component catalog) live in :mod:`ccoas.planner`; :func:`ccoas.planner.load_stack` runs
schema and rules, and nothing downstream re-validates. This module imports no other
ccoas module but :mod:`ccoas.errors`: it is the bottom layer.
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from ccoas.errors import Problem, StackError

COMPONENTS = ("nginx", "directus", "hasura", "postgraphile", "postgres", "redis", "minio", "ollama", "embedder", "vault", "monitoring")
ComponentName = Literal["nginx", "directus", "hasura", "postgraphile", "postgres", "redis", "minio", "ollama", "embedder", "vault", "monitoring"]

NAME_RE = r"^[a-z][a-z0-9-]{0,22}[a-z0-9]$"
IDENT_RE = r"^[a-z_][a-z0-9_]{0,62}$"
DOMAIN_LABEL_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
"""One label of a DNS name: 1-63 letters, digits and inner hyphens (matched whole)."""
DIGEST_REF_RE = r"^[a-z0-9][a-z0-9._/-]*(:[0-9]+/[a-z0-9._/-]+)?(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?@sha256:[0-9a-f]{64}$"
COLUMN_TYPE_RE = re.compile(r"text|integer|bigint|boolean|uuid|timestamptz|date|jsonb|numeric|double precision|vector\((\d{1,5})\)")
"""Matched whole (``fullmatch``): ``"text\\n"`` is not ``text``."""
VECTOR_MAX_DIMS = 16000
"""What pgvector's ``vector`` type accepts."""
HNSW_MAX_DIMS = 2000
"""What pgvector's HNSW index accepts on a ``vector`` column."""
RESERVED_TABLE_PREFIX = "directus_"
"""Directus treats every ``directus_*`` table as one of its own system collections."""
_SIZE_RE = re.compile(r"(\d+)(Ki|Mi|Gi|K|M|G)?")
_SIZE_UNITS = {None: 1, "K": 1000, "M": 1000**2, "G": 1000**3, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}


def parse_size(value: str | int) -> int:
    """``"512Mi"`` → bytes. Integers are bytes already."""
    if isinstance(value, int):
        return value
    match = _SIZE_RE.fullmatch(value)
    if not match:
        raise ValueError(f"expected a size like 512Mi, 1Gi or a number of bytes, got {value!r}")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


def check_ip(value: str | None) -> str | None:
    if value is not None:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"expected an IP address such as 127.0.0.1 or 0.0.0.0, got {value!r}") from None
    return value


IpAddress = Annotated[str, AfterValidator(check_ip)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ImageChoice(_Strict):
    """Where a component's image comes from."""

    source: Literal["registry", "local", "bundle"] | None = None
    """``registry``: the official image pinned by digest (fetched by ``ccoas images pull``);
    ``local``: built by ccoas from packages; ``bundle``: the images ``ccoas images load`` put
    here (the local refs where a recipe exists, else the registry ones), never built or pulled.
    Provisioning pulls none."""
    ref: Annotated[str, Field(pattern=DIGEST_REF_RE)] | None = None
    """Override of the official image, which must be pinned by digest (``name:tag@sha256:…``)."""


class Limits(_Strict):
    memory: str | None = None
    cpus: Annotated[float, Field(ge=0.01, le=64)] | None = None
    pids: Annotated[int, Field(ge=16, le=65536)] | None = None

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str | None) -> str | None:
        if value is not None and parse_size(value) < 16 * 1024**2:
            raise ValueError("must be at least 16Mi")
        return value


class Logs(_Strict):
    """How much log each container may keep on disk (one file, emptied when full)."""

    max_size: str | int = "10Mi"

    @field_validator("max_size")
    @classmethod
    def _max_size(cls, value: str | int) -> str | int:
        if parse_size(value) < 64 * 1024:
            raise ValueError("must be at least 64Ki")
        return value


class PublishedPort(_Strict):
    container_port: Annotated[int, Field(ge=1, le=65535)]
    host_port: Annotated[int, Field(ge=0, le=65535)]
    """0 lets the engine choose a free port (ephemeral stacks side by side)."""
    host_ip: IpAddress | None = None
    protocol: Literal["tcp", "udp"] = "tcp"


class ComponentConfig(_Strict):
    enabled: bool = True
    image: ImageChoice = ImageChoice()
    limits: Limits = Limits()
    publish: tuple[PublishedPort, ...] = ()
    depends_on: tuple[ComponentName, ...] = ()
    """Extra start-order dependencies beyond the ones the component declares itself."""
    logs: Logs | None = None
    """This component's log cap, when it is not the stack's :attr:`Stack.logs`."""


class EdgeLimits(_Strict):
    """What one client address may take at the edge (Nginx, and Directus's own limiter).

    The rule behind the defaults: one address is a browser tab, a small backend, or a few
    people behind one NAT. A tab opens at most 6 HTTP/1.1 connections or one HTTP/2
    connection of up to 128 streams, and a few websockets; an app loading a page makes tens
    of requests in a second. So: 100 requests/s sustained with a burst of 200, 256 requests
    in flight and 64 open websockets per address, and 4,096 connections for all clients
    together (Nginx's ``worker_connections`` holds two per proxied request)."""

    requests_per_second: Annotated[int, Field(ge=1, le=100000)] = 100
    burst: Annotated[int, Field(ge=0, le=1000000)] = 200
    """Requests above the rate answered at once (not delayed) before 429s begin."""
    connections: Annotated[int, Field(ge=1, le=100000)] = 256
    """Requests in flight at once per client address (websockets included)."""
    websockets: Annotated[int, Field(ge=1, le=100000)] = 64
    """Open websockets per client address (Directus realtime, GraphQL subscriptions)."""
    total_connections: Annotated[int, Field(ge=64, le=1000000)] = 4096
    """Client connections the edge holds for all clients together."""


class Edge(_Strict):
    """How clients reach Nginx (``edge:`` in the stack file)."""

    listener: Literal["host", "engine"] = "host"
    """``host``: ccoas runs HAProxy as the engine user in the host's network namespace on the
    published ports; it hands each connection to Nginx with the PROXY protocol over a unix
    socket only it can reach, so Nginx sees each client's address (rootless Podman's port
    forwarder shows every client as one address). ``engine``: the engine publishes Nginx's
    ports itself (a rootful engine keeps client addresses; a rootless one does not)."""
    limits: EdgeLimits = EdgeLimits()


SERVICE_NETWORKS = ("auth", "db")
"""The networks a user service may join: only nginx is on ``edge`` (it alone publishes)."""
ENV_NAME_RE = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
USER_RE = r"^[1-9][0-9]{0,9}:[1-9][0-9]{0,9}$"
"""``uid:gid``, neither 0: a user service never runs as root."""


CRATE_FILES = ("Cargo.toml", "Cargo.lock")
"""What a crate folder must hold: its manifest, and the lock ``cargo build --locked`` builds."""


class ServiceImage(_Strict):
    """A user service's image: a Rust crate of its own, a local recipe ccoas knows, or an image
    pinned by digest (exactly one: the planner's rules say so)."""

    crate: str | None = None
    """The folder of a Rust crate, relative to the stack file (or absolute), holding
    ``Cargo.toml`` and ``Cargo.lock``: ccoas builds it on the host like the embedding worker
    (``cargo build --release --locked``, cached by its content) into an image on the Debian
    base. Once validated, the folder's absolute path."""
    recipe: Annotated[str, Field(pattern=NAME_RE)] | None = None
    """A recipe of :data:`ccoas.components.services.RECIPES`, built by ccoas like a component's."""
    ref: Annotated[str, Field(pattern=DIGEST_REF_RE)] | None = None
    """``name:tag@sha256:…``: never a tag alone."""

    @field_validator("crate")
    @classmethod
    def _crate(cls, value: str | None, info: ValidationInfo) -> str | None:
        """Resolved against the stack file's folder (the validation context's ``directory``)."""
        if value is None:
            return None
        directory = (info.context or {}).get("directory")
        folder = (Path(directory) / value if directory is not None else Path(value)).resolve()
        if not folder.is_dir():
            raise ValueError(f"expected the folder of a Rust crate, relative to the stack file; {folder} is not a folder")
        missing = [name for name in CRATE_FILES if not (folder / name).is_file()]
        if missing:
            raise ValueError(
                f"expected a Rust crate with {' and '.join(CRATE_FILES)} (ccoas builds with --locked: "
                f"`cargo generate-lockfile` writes the lock); {folder} has no {' and no '.join(missing)}"
            )
        return str(folder)

    @property
    def source(self) -> str:
        return "local" if self.recipe is not None or self.crate is not None else "registry"


class ServiceHealthCheck(_Strict):
    test: Annotated[tuple[str, ...], Field(min_length=2)]
    """``[CMD, program, arg…]`` or ``[CMD-SHELL, "command line"]``."""
    interval: Annotated[int, Field(ge=1, le=3600)] = 10
    timeout: Annotated[int, Field(ge=1, le=600)] = 5
    retries: Annotated[int, Field(ge=1, le=100)] = 5
    start_period: Annotated[int, Field(ge=0, le=3600)] = 10

    @field_validator("test")
    @classmethod
    def _test(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if value[0] not in ("CMD", "CMD-SHELL"):
            raise ValueError(f"expected CMD or CMD-SHELL first, got {value[0]!r}")
        return value


class ServiceSecret(_Strict):
    """A credential of the service's own, generated into Vault and mounted as a file."""

    generator: Literal["password", "token", "key"] = "password"
    length: Annotated[int, Field(ge=16, le=256)] = 32
    description: str = ""


class UserService(_Strict):
    """A service of the stack's own (``services.<name>``), hardened like every component."""

    enabled: bool = True
    image: ServiceImage
    user: Annotated[str, Field(pattern=USER_RE)] = "65534:65534"
    entrypoint: tuple[str, ...] | None = None
    command: tuple[str, ...] | None = None
    networks: Annotated[tuple[str, ...], Field(min_length=1)]
    """``auth`` and/or ``db`` (validated against the placement rules by the planner)."""
    expose: tuple[Annotated[int, Field(ge=1, le=65535)], ...] = ()
    """Ports other services of its networks reach it on (never published)."""
    environment: dict[Annotated[str, Field(pattern=ENV_NAME_RE)], str] = {}
    """Plain settings; a secret never goes here (the planner refuses secret-looking names)."""
    secrets: dict[Annotated[str, Field(pattern=IDENT_RE)], ServiceSecret] = {}
    """Each mounted read-only at ``/run/secrets/<service>_<name>``."""
    healthcheck: ServiceHealthCheck
    limits: Limits = Limits()
    depends_on: tuple[str, ...] = ()
    """Components or other user services this one starts after (healthy)."""
    logs: Logs | None = None

    @property
    def publish(self) -> tuple[PublishedPort, ...]:
        """Nothing: a user service publishes no port (only nginx does)."""
        return ()


class Embed(_Strict):
    """How a ``vector(N)`` column is filled: the embedding of another column's text, by a model."""

    source: Annotated[str, Field(pattern=IDENT_RE)]
    """The text column of the same table whose content is embedded."""
    model: str
    """An embedding model ccoas imports into Ollama from a package (``all-minilm-l6-v2``)."""


class Column(_Strict):
    name: Annotated[str, Field(pattern=IDENT_RE)]
    type: str
    nullable: bool = True
    primary_key: bool = False
    default: Literal["gen_random_uuid()", "now()", "true", "false", "0"] | None = None
    embed: Embed | None = None
    """On a ``vector(N)`` column: filled by the embedding worker, indexed (HNSW, cosine), searched
    by the table's ``<table>_nearest`` function."""

    @property
    def dimensions(self) -> int | None:
        """N of a ``vector(N)`` column, else None."""
        match = COLUMN_TYPE_RE.fullmatch(self.type)
        return int(match.group(1)) if match and match.group(1) else None

    @field_validator("type")
    @classmethod
    def _type(cls, value: str) -> str:
        match = COLUMN_TYPE_RE.fullmatch(value)
        if not match:
            raise ValueError(
                "expected one of text, integer, bigint, boolean, uuid, timestamptz, date, jsonb, "
                f"numeric, double precision, vector(N); got {value!r}"
            )
        if match.group(1) is not None and not 1 <= int(match.group(1)) <= VECTOR_MAX_DIMS:
            raise ValueError(f"expected vector(N) with N from 1 to {VECTOR_MAX_DIMS} (what pgvector accepts), got {value!r}")
        return value

    @property
    def hnsw_indexed(self) -> bool:
        """Whether the bootstrap gives this column an HNSW index (every embedded column): then
        N is at most 2000."""
        return self.embed is not None

    @property
    def server_set(self) -> bool:
        """Set by the database (``gen_random_uuid()``, ``now()``): never written by a user,
        through any front door."""
        return self.default in ("gen_random_uuid()", "now()")


PolicyPreset = Literal["owner-only", "tenant", "public-read"]


class Table(_Strict):
    name: Annotated[str, Field(pattern=IDENT_RE)]
    policy: PolicyPreset
    """The access policy preset the RLS bootstrap turns into policies."""
    owner_column: Annotated[str, Field(pattern=IDENT_RE)] = "owner_id"
    tenant_column: Annotated[str, Field(pattern=IDENT_RE)] = "tenant_id"
    columns: Annotated[tuple[Column, ...], Field(min_length=1)]

    @property
    def embedded(self) -> tuple[Column, ...]:
        """Its columns that carry ``embed`` (at most one: the stack rules say so)."""
        return tuple(c for c in self.columns if c.embed is not None)

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    def key_columns(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.primary_key)

    @field_validator("name")
    @classmethod
    def _not_directus(cls, value: str) -> str:
        if value.startswith(RESERVED_TABLE_PREFIX):
            raise ValueError(f"table names starting with {RESERVED_TABLE_PREFIX} are Directus's system collections, got {value!r}")
        return value


class ChangeRetention(_Strict):
    """How long the change log keeps entries: an entry goes when it is older than ``max_age_hours``
    or when ``max_entries`` newer ones follow it, whichever comes first. A subscriber whose
    watermark falls before what is kept is told to resync."""

    max_entries: Annotated[int, Field(ge=100, le=100_000_000)] = 100_000
    max_age_hours: Annotated[int, Field(ge=1, le=24 * 366)] = 168


class Schema(_Strict):
    name: Annotated[str, Field(pattern=IDENT_RE)] = "app"
    tables: tuple[Table, ...] = ()
    changes: ChangeRetention = ChangeRetention()
    """Retention of the change log every table's trigger writes to (see :class:`ccoas.plan.ChangeFeed`)."""

    @property
    def owner_role(self) -> str:
        """The NOLOGIN role that owns the schema and its tables. RLS is forced, so it is subject
        to the preset policies like any front door: SQL on a user's behalf runs as it."""
        return f"{self.name}_owner"

    def embedded_tables(self) -> tuple[Table, ...]:
        return tuple(t for t in self.tables if t.embedded)

    def embedding_models(self) -> tuple[str, ...]:
        """The models the stack's embedded columns name, sorted: what Ollama must serve."""
        return tuple(sorted({c.embed.model for t in self.tables for c in t.embedded if c.embed is not None}))


class Tls(_Strict):
    mode: Literal["generate", "supplied"]
    cert: str | None = None
    key: str | None = None


LOCAL_ONLY = ("monitoring",)
"""Components with no single official image (Prometheus, Alertmanager and the exporters share
one container): built locally even in a stack whose images come from a registry."""
DURATION_RE = r"^[1-9][0-9]{0,5}(s|m|h|d|w|y)$"
"""A Prometheus duration of one unit: ``30s``, ``15d``."""


class Retention(_Strict):
    """How much the time-series store keeps: whichever cap is reached first removes the oldest
    blocks (Prometheus's ``--storage.tsdb.retention.time`` and ``.size``)."""

    time: Annotated[str, Field(pattern=DURATION_RE)] = "15d"
    size: str = "1Gi"

    @field_validator("size")
    @classmethod
    def _size(cls, value: str) -> str:
        if parse_size(value) < 64 * 1024**2:
            raise ValueError("must be at least 64Mi")
        return value


class Monitoring(ComponentConfig):
    """The monitoring component: Prometheus, Alertmanager and the exporters, in one container."""

    enabled: bool | None = None  # type: ignore[assignment]
    """Unset: on in dev and prod stacks, off in ci stacks."""
    retention: Retention = Retention()
    scrape_interval: Annotated[str, Field(pattern=DURATION_RE)] = "30s"
    evaluation_interval: Annotated[str, Field(pattern=DURATION_RE)] = "30s"
    alert_for: Annotated[str, Field(pattern=DURATION_RE)] = "2m"
    """How long a condition must hold before its alert fires (short in test stacks)."""
    webhook: Annotated[str, Field(pattern=IDENT_RE)] | None = None
    """The name of the webhook Alertmanager posts alerts to; its URL is the Vault secret
    ``monitoring/webhook_url`` (``ccoas secrets set``). Unset: alerts go to Alertmanager's log."""
    backup_interval: Annotated[str, Field(pattern=DURATION_RE)] = "1d"
    """The longest a stack may go without a backup before the ``BackupOverdue`` alert fires."""


class Components(_Strict):
    nginx: ComponentConfig = ComponentConfig()
    directus: ComponentConfig = ComponentConfig()
    hasura: ComponentConfig = ComponentConfig()
    postgraphile: ComponentConfig = ComponentConfig(enabled=False)
    """Off unless asked for: a stack enables at most one GraphQL plane (hasura or postgraphile)."""
    postgres: ComponentConfig = ComponentConfig()
    redis: ComponentConfig = ComponentConfig()
    minio: ComponentConfig = ComponentConfig()
    ollama: ComponentConfig = ComponentConfig()
    embedder: ComponentConfig = ComponentConfig()
    """The embedding worker: runs only when the schema has embedded columns (and not when disabled)."""
    vault: ComponentConfig = ComponentConfig()
    monitoring: Monitoring = Monitoring()
    """Prometheus and Alertmanager: unless set, on in dev and prod stacks and off in ci ones."""


class Stack(_Strict):
    """A validated stack file."""

    version: Literal[1]
    name: Annotated[str, Field(pattern=NAME_RE)]
    environment: Literal["dev", "ci", "prod"]
    domain: Annotated[str, Field(min_length=1, max_length=253)] = "localhost"
    """A DNS name: dot-separated labels of letters, digits and inner hyphens (no empty label)."""

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        if not all(DOMAIN_LABEL_RE.fullmatch(label) for label in value.split(".")):
            raise ValueError(
                "expected a DNS name: labels of 1-63 lower-case letters, digits and inner hyphens "
                f"joined by single dots (such as app.example.org), got {value!r}"
            )
        return value
    bind_address: IpAddress = "127.0.0.1"
    """Default host address for published ports."""
    images: ImageChoice = ImageChoice(source="registry")
    tls: Tls
    logs: Logs = Logs()
    """Every container's log cap (a component's ``logs`` overrides it)."""
    edge: Edge = Edge()
    components: Components = Components()
    schema_: Schema = Field(default=Schema(), alias="schema")
    services: dict[Annotated[str, Field(pattern=NAME_RE)], UserService] = {}
    """Services of the stack's own (see :mod:`ccoas.components.services`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)

    def component(self, name: str) -> ComponentConfig | UserService:
        """A component's settings, or a user service's (both carry image, limits, logs,
        depends_on and publish)."""
        if name in COMPONENTS:
            return getattr(self.components, name)
        return self.services[name]

    def config_path(self, name: str) -> str:
        """Where ``name``'s settings are in the stack file: ``components.X`` or ``services.X``."""
        return f"components.{name}" if name in COMPONENTS else f"services.{name}"

    def enabled(self) -> tuple[str, ...]:
        """Enabled components; the embedder only when there is something to embed."""
        return tuple(
            name
            for name in COMPONENTS
            if self.component_enabled(name) and (name != "embedder" or self.embedder_wanted())
        )

    def component_enabled(self, name: str) -> bool:
        """A component's ``enabled``, or for monitoring when unset, whether the stack is not ci."""
        enabled = self.component(name).enabled
        return self.environment != "ci" if enabled is None else enabled

    def embedder_wanted(self) -> bool:
        """The embedding worker runs when there is something to embed and what it needs runs
        (else the rules name what is missing for the embedded columns themselves)."""
        needed = (self.components.postgres, self.components.ollama, self.components.vault)
        return bool(self.schema_.embedded_tables()) and all(c.enabled for c in needed)

    def enabled_services(self) -> tuple[str, ...]:
        """The stack's own services that are enabled, sorted by name."""
        return tuple(sorted(name for name, config in self.services.items() if config.enabled))

    def image_source(self, name: str) -> str:
        """Where ``name``'s image comes from: its own choice, else (for the components only built
        locally, :data:`LOCAL_ONLY`) ``local``, else the stack's."""
        default = "local" if name in LOCAL_ONLY and self.images.source == "registry" else self.images.source
        return self.component(name).image.source or default or "registry"


RESERVED_SCHEMAS = ("ccoas", "public", "information_schema", "directus", "hdb_catalog", "hdb_views", "hdb_pro_catalog")
"""Schemas the app schema may not be (nor any ``pg_*``): ``ccoas`` holds the change log and the
identity functions, ``directus`` Directus's system tables, ``hdb_*`` Hasura's catalogs; the
others are Postgres's."""

_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _field_path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            name = "schema" if item == "schema_" else str(item)
            if not _PLAIN_KEY.match(name) and not name.isprintable():
                name = json.dumps(name)  # one problem stays one line, whatever the key holds
            parts.append(("." if parts else "") + name)
    return "".join(parts)


def _expected_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys the schema allows at the mapping that holds ``loc[-1]``."""
    model: Any = Stack
    skip = False
    for item in loc[:-1]:
        if isinstance(item, int) or skip:
            skip = False
            continue
        fields = getattr(model, "model_fields", {})
        field = fields.get(item) or next((f for f in fields.values() if f.alias == item), None)
        if field is None:
            return []
        annotation = field.annotation
        for candidate in (annotation, *getattr(annotation, "__args__", ())):
            candidate = getattr(candidate, "__args__", (candidate,))[0] if getattr(candidate, "__origin__", None) is tuple else candidate
            if getattr(candidate, "__origin__", None) is dict:
                candidate, skip = candidate.__args__[1], True
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                model = candidate
                break
        else:
            return []
    return sorted(f.alias or name for name, f in model.model_fields.items())


def _message(error: dict[str, Any]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        expected = _expected_keys(tuple(error["loc"]))
        return f"unknown key (expected one of: {', '.join(expected)})" if expected else "unknown key"
    if kind == "missing":
        return "required field is missing"
    if kind == "literal_error":
        return f"expected {error['ctx']['expected']}, got {error.get('input')!r}"
    if kind == "string_pattern_mismatch":
        return f"expected a value matching {error['ctx']['pattern']}, got {error.get('input')!r}"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def validate_document(data: Any, file: str) -> Stack:
    """Validate already-parsed YAML data against the schema. Raises :class:`StackError`.

    Paths in it (a service's ``image.crate``) are relative to the folder of ``file``. The
    cross-field rules (which need the component catalog) are the planner's:
    :func:`ccoas.planner.parse_stack` runs both."""
    if not isinstance(data, dict):
        got = "an empty file" if data is None else type(data).__name__
        raise StackError([Problem(file, "", f"expected a mapping at the top level, got {got}")])
    if isinstance(data.get("version"), bool):  # JSON true would pass as 1
        raise StackError([Problem(file, "version", f"expected 1, got {data['version']!r}")])
    try:
        # Through JSON so strict mode reads YAML sequences as tuples and nothing is coerced.
        document = json.dumps(data, default=str)
    except (TypeError, ValueError, RecursionError) as exc:
        raise StackError([Problem(file, "", f"unsupported YAML content: {exc}")]) from None
    try:
        stack = Stack.model_validate_json(document, context={"directory": Path(file).parent})
    except ValidationError as exc:
        problems = list(dict.fromkeys(Problem(file, _field_path(e["loc"]), _message(e)) for e in exc.errors()))
        raise StackError(problems) from None
    return stack


def check_name(name: str, source: str = "--name") -> str:
    """A stack name given outside the file (``--name``) obeys the file's rule."""
    if not re.fullmatch(NAME_RE.removeprefix("^").removesuffix("$"), name):
        raise StackError([Problem(source, "", f"expected a stack name matching {NAME_RE}, got {name!r}")])
    return name


def read_stack(path: str | Path) -> Stack:
    """Read a stack file and validate it against the schema. Raises :class:`StackError`.

    :func:`ccoas.planner.load_stack` also runs the cross-field rules: use that one."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StackError([Problem(file, "", "no such stack file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StackError([Problem(file, "", f"cannot read the stack file: {exc}")]) from None
    return validate_document(parse_yaml(text, file), file)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of keeping the last one silently, and
    aliases (``*name``, merge keys ``<<: *name``): nested aliases expand exponentially (a few
    hundred bytes can take minutes to load), and a stack file is short enough to spell out."""

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"aliases are not allowed in a stack file (found *{event.anchor}): write the value out", event.start_mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # unhashable keys are reported by the constructor itself
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, file: str) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise StackError([Problem(file, where, f"invalid YAML: {exc.problem}")]) from None
    except (yaml.YAMLError, RecursionError, ValueError) as exc:
        raise StackError([Problem(file, "", f"invalid YAML: {exc}")]) from None
