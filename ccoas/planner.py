"""The planner: turns a stack file into the :class:`~ccoas.plan.Plan` every consumer reads.

It is the one module that knows every component. It holds

- :data:`CATALOG`, the component modules (``ccoas/components/<name>.py``);
- the cross-field rules, each a small named function in :data:`RULES` returning its problems;
- :func:`dependency_graph`, the ONE dependency graph, used both to reject cycles
  (:func:`ensure_no_cycles`) and to order start-up (:func:`start_tiers`, ``depends_on``).

:func:`load_stack`/:func:`parse_stack` validate a stack file (schema, then rules) and
:func:`build_plan` resolves a validated stack. Layers, lowest first: ``stack`` (schema) →
``plan`` (types) → ``components`` (declarations, import only the types) → ``planner``.
Adding a component: write ``ccoas/components/<name>.py`` (see ``components/base.py``), add
it to :data:`CATALOG` and to ``ccoas.stack.COMPONENTS``.
"""

from __future__ import annotations

from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any, Callable

from ccoas.components import directus, embedder, hasura, minio, monitoring, nginx, ollama, postgraphile, postgres, redis, services, vault
from ccoas.components.base import Component, Context
from ccoas.errors import Problem, StackError
from ccoas.plan import LABEL_PREFIX, Bucket, ChangeFeed, Network, Plan, TableChanges, Tls, VaultPlan, VaultPolicy, change_channel
from ccoas.stack import COMPONENTS, HNSW_MAX_DIMS, RESERVED_SCHEMAS, SERVICE_NETWORKS, Schema, Stack, check_name, read_stack, validate_document

CATALOG: dict[str, Component] = {
    m.COMPONENT.name: m.COMPONENT for m in (nginx, directus, hasura, postgraphile, postgres, redis, minio, ollama, embedder, vault, monitoring)
}
"""Every component ccoas knows, by name."""

GRAPHQL_PLANES = ("hasura", "postgraphile")
"""The GraphQL planes: a stack enables at most one; Nginx routes it at :data:`GRAPHQL_PATH`."""
GRAPHQL_PATH = "/graphql"

NETWORK_PURPOSE = {
    "edge": "published side: only nginx publishes ports; directus, hasura and minio are reached through it",
    "auth": "internal: the services that authenticate users and Vault",
    "db": "internal: data services, never reachable from the edge",
    "models": "internal: Ollama and its clients only (its API pulls, creates and deletes models, with no credential)",
}

Graph = dict[str, tuple[str, ...]]


def stack_catalog(stack: Stack) -> dict[str, Component]:
    """:data:`CATALOG` and the stack's own services (``services:``), each a component."""
    own = {name: services.component(name, config) for name, config in sorted(stack.services.items())}
    return {**CATALOG, **own}


# -- the one dependency graph -------------------------------------------------------------------


def dependency_graph(stack: Stack) -> Graph:
    """Enabled component → what it waits for: its requirements, its soft order and the stack's
    extra ``depends_on``, when enabled. Validation and start order both read this graph."""
    names = (*stack.enabled(), *stack.enabled_services())
    enabled = set(names)
    catalog = stack_catalog(stack)
    graph: Graph = {}
    for name in names:
        spec = catalog[name]
        wanted = {*spec.requires, *spec.after, *stack.component(name).depends_on}
        graph[name] = tuple(sorted(d for d in wanted if d in enabled and d != name))
    return graph


def start_tiers(graph: Graph) -> list[list[str]]:
    """Tiers of a graph without cycles: every node of a tier depends only on earlier tiers."""
    sorter = TopologicalSorter({name: set(deps) for name, deps in graph.items()})
    sorter.prepare()
    tiers: list[list[str]] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready())
        tiers.append(ready)
        sorter.done(*ready)
    return tiers


# -- the cross-field rules ----------------------------------------------------------------------

Rule = Callable[[Stack], list[tuple[str, str]]]


def ensure_only_nginx_publishes(stack: Stack) -> list[tuple[str, str]]:
    return [
        (f"components.{name}.publish", "only nginx may publish ports; every other service stays on internal networks")
        for name in COMPONENTS
        if stack.component(name).publish and name != "nginx"
    ]


def ensure_requirements_enabled(stack: Stack) -> list[tuple[str, str]]:
    problems = []
    enabled = set(stack.enabled())
    for name in stack.enabled():
        config = stack.component(name)
        for needed in sorted(set(CATALOG[name].requires) | set(config.depends_on)):
            if needed == name:
                problems.append((f"components.{name}.depends_on", f"{name} cannot depend on itself"))
            elif needed not in enabled:
                problems.append((f"components.{name}", f"{name} requires {needed}, which is not enabled"))
    return problems


def ensure_local_recipe_exists(stack: Stack) -> list[tuple[str, str]]:
    return [
        (f"components.{name}.image.source", f"{name} has no local image recipe (no package ships it); use source: registry")
        for name in stack.enabled()
        if stack.image_source(name) == "local" and CATALOG[name].recipe is None
    ]


def ensure_registry_image_exists(stack: Stack) -> list[tuple[str, str]]:
    return [
        (f"components.{name}.image.source", f"{name} has no official registry image; use source: local (or give image.ref)")
        for name in stack.enabled()
        if stack.image_source(name) == "registry" and CATALOG[name].registry_image is None and stack.component(name).image.ref is None
    ]


def ensure_one_graphql_plane(stack: Stack) -> list[tuple[str, str]]:
    planes = [name for name in GRAPHQL_PLANES if name in stack.enabled()]
    if len(planes) > 1:
        return [("components", f"enable one GraphQL plane, not {' and '.join(planes)}: both would serve {GRAPHQL_PATH}")]
    return []


def ensure_published_ports_exist(stack: Stack) -> list[tuple[str, str]]:
    problems = []
    for name in stack.enabled():
        ports = CATALOG[name].ports
        for index, port in enumerate(stack.component(name).publish):
            if port.container_port not in ports:
                problems.append(
                    (f"components.{name}.publish[{index}].container_port", f"expected one of {sorted(ports)}, got {port.container_port}")
                )
    return problems


def ensure_host_ports_unique(stack: Stack) -> list[tuple[str, str]]:
    problems = []
    host_ports: dict[tuple[str, int, str], str] = {}
    for index, port in enumerate(stack.components.nginx.publish):
        if port.host_port == 0:
            continue
        key = (port.host_ip or stack.bind_address, port.host_port, port.protocol)
        where = f"components.nginx.publish[{index}].host_port"
        if key in host_ports:
            problems.append((where, f"host port {port.host_port} is already published by {host_ports[key]}"))
        host_ports.setdefault(key, where)
    return problems


def ensure_edge_limits_consistent(stack: Stack) -> list[tuple[str, str]]:
    """Per-client limits fit inside the edge's total, websockets inside a client's connections."""
    limits = stack.edge.limits
    problems = []
    if limits.connections > limits.total_connections:
        problems.append(("edge.limits.connections", f"expected at most total_connections ({limits.total_connections}), got {limits.connections}"))
    if limits.websockets > limits.connections:
        problems.append(("edge.limits.websockets", f"expected at most connections ({limits.connections}): a websocket is a connection, got {limits.websockets}"))
    return problems


def ensure_no_cycles(stack: Stack) -> list[tuple[str, str]]:
    try:
        tuple(TopologicalSorter({n: set(d) for n, d in dependency_graph(stack).items()}).static_order())
    except CycleError as exc:
        return [("components", f"dependency cycle: {' -> '.join(exc.args[1])}")]
    return []


def ensure_tls_consistent(stack: Stack) -> list[tuple[str, str]]:
    problems = []
    if stack.tls.mode == "supplied" and not (stack.tls.cert and stack.tls.key):
        problems.append(("tls", "mode supplied needs both cert and key paths"))
    if stack.tls.mode == "generate" and stack.environment == "prod":
        problems.append(("tls.mode", "prod stacks must supply their certificate (generate is for dev and ci)"))
    if stack.tls.mode == "generate" and (stack.tls.cert or stack.tls.key):
        problems.append(("tls", "cert and key are only read with mode: supplied"))
    return problems


def ensure_schema_name_free(stack: Stack) -> list[tuple[str, str]]:
    name = stack.schema_.name
    if name in RESERVED_SCHEMAS or name.startswith("pg_"):
        return [("schema.name", f"{name!r} is reserved ({', '.join(RESERVED_SCHEMAS)} and pg_*): choose a schema of the application's own, such as app")]
    return []


def ensure_tables_have_postgres(stack: Stack) -> list[tuple[str, str]]:
    if stack.schema_.tables and "postgres" not in stack.enabled():
        return [("schema.tables", "tables need postgres, which is not enabled")]
    return []


def ensure_tables_well_formed(stack: Stack) -> list[tuple[str, str]]:
    problems = []
    seen: set[str] = set()
    for index, table in enumerate(stack.schema_.tables):
        path = f"schema.tables[{index}]"
        if table.name in seen:
            problems.append((f"{path}.name", f"duplicate table {table.name!r}"))
        seen.add(table.name)
        columns = [c.name for c in table.columns]
        for column in sorted({c for c in columns if columns.count(c) > 1}):
            problems.append((f"{path}.columns", f"duplicate column {column!r}"))
        if not any(c.primary_key for c in table.columns):
            problems.append((f"{path}.columns", "expected one column with primary_key: true"))
        needed = {"owner-only": table.owner_column, "tenant": table.tenant_column, "public-read": table.owner_column}[table.policy]
        match = [c for c in table.columns if c.name == needed]
        if not match:
            problems.append((f"{path}.columns", f"policy {table.policy} needs a column {needed!r}"))
        elif match[0].type not in ("uuid", "text"):
            problems.append((f"{path}.columns", f"column {needed!r} used by policy {table.policy} must be uuid or text"))
    return problems


def ensure_embedded_columns_valid(stack: Stack) -> list[tuple[str, str]]:
    """An embedded column: one per table, a vector of its model's size, a text source of the same
    table, names short enough for its index and function, and Ollama from its local image."""
    problems = []
    for table_index, table in enumerate(stack.schema_.tables):
        path = f"schema.tables[{table_index}]"
        embedded = [i for i, c in enumerate(table.columns) if c.embed is not None]
        if len(embedded) > 1:
            problems.append((f"{path}.columns", "expected at most one column with embed per table (one retrieval function per table)"))
        for index in embedded:
            column = table.columns[index]
            embed = column.embed
            assert embed is not None
            where = f"{path}.columns[{index}].embed"
            if column.dimensions is None:
                problems.append((where, f"embed needs a vector(N) column, got {column.type!r}"))
            model = ollama.MODELS.get(embed.model)
            if model is None:
                problems.append((f"{where}.model", f"expected one of {', '.join(sorted(ollama.MODELS))}, got {embed.model!r}"))
            elif column.dimensions is not None and column.dimensions != model.dimensions:
                problems.append((where, f"model {model.name} makes vector({model.dimensions}), the column is {column.type}"))
            sources = [c for c in table.columns if c.name == embed.source]
            if not sources:
                problems.append((f"{where}.source", f"expected a text column of table {table.name!r}, got {embed.source!r}"))
            elif sources[0].type != "text":
                problems.append((f"{where}.source", f"column {embed.source!r} must be text, got {sources[0].type!r}"))
            if len(f"{table.name}_nearest") > 63 or len(f"{table.name}_{column.name}_hnsw") > 63:
                problems.append((where, "table and column names too long for the <table>_nearest function and <table>_<column>_hnsw index (63 characters)"))
            if "ollama" not in stack.enabled():
                problems.append((where, "embedded columns need ollama, which is not enabled"))
            elif stack.image_source("ollama") != "local":
                problems.append((where, "embedded columns need ollama's local image (it carries the model files); set components.ollama.image.source: local"))
    return problems


def ensure_hnsw_columns_fit(stack: Stack) -> list[tuple[str, str]]:
    """pgvector's HNSW index takes ``vector`` columns of at most 2000 dimensions."""
    return [
        (f"schema.tables[{index}].columns[{number}].type", f"an HNSW-indexed vector column has at most {HNSW_MAX_DIMS} dimensions (pgvector), got {column.type!r}")
        for index, table in enumerate(stack.schema_.tables)
        for number, column in enumerate(table.columns)
        if column.hnsw_indexed and (column.dimensions or 0) > HNSW_MAX_DIMS
    ]


# -- identifiers that change meaning downstream (README "Boundary: stack author ↔ host") --------

YAML_NON_STRINGS = ("null", "true", "false", "yes", "no", "on", "off", "y", "n")
"""Names a YAML reader takes for null or a boolean (YAML 1.1, as Hasura's metadata reader does):
unquoted in rendered metadata they stop being names."""
FILTER_OPERATORS = (
    "_and", "_or", "_not", "_exists", "_eq", "_neq", "_in", "_nin", "_gt", "_gte", "_lt", "_lte",
    "_like", "_nlike", "_ilike", "_nilike", "_similar", "_nsimilar", "_regex", "_iregex", "_nregex", "_niregex",
    "_is_null", "_null", "_nnull", "_empty", "_nempty", "_contains", "_ncontains", "_icontains", "_nicontains",
    "_starts_with", "_nstarts_with", "_istarts_with", "_nistarts_with", "_ends_with", "_nends_with",
    "_iends_with", "_niends_with", "_between", "_nbetween", "_some", "_none", "_intersects", "_nintersects",
    "_intersects_bbox", "_nintersects_bbox", "_has_key", "_has_keys_any", "_has_keys_all", "_contained_in",
    "_cast", "_ceq", "_cne", "_cgt", "_clt", "_cgte", "_clte",
)
"""Keys Hasura's and Directus's permission filters read as operators, not as column names."""
POSTGRES_SYSTEM_COLUMNS = ("tableoid", "xmin", "cmin", "xmax", "cmax", "ctid", "oid")
"""Every Postgres table has these already: ``CREATE TABLE`` refuses a column of that name."""
LOADER_ENV_NAMES = (
    "GCONV_PATH", "GETCONF_DIR", "HOSTALIASES", "LOCALDOMAIN", "LOCPATH", "MALLOC_TRACE", "NIS_PATH",
    "NLSPATH", "RESOLV_HOST_CONF", "RES_OPTIONS",
)
"""glibc's unsecure environment variables besides ``LD_*`` (it drops them for setuid programs):
each changes what code or data the dynamic loader and libc load."""
RESERVED_PROGRAM_PREFIX = "ccoas"
"""ccoas's own programs (``ccoas-embedder``) are named so; a user crate's program may not be."""


def _columns(stack: Stack):
    """(field path, table, column) of every column of the schema."""
    for index, table in enumerate(stack.schema_.tables):
        for number, column in enumerate(table.columns):
            yield f"schema.tables[{index}].columns[{number}]", table, column


def _named_identifiers(stack: Stack):
    """(field path, name) of every identifier the stack file gives the database."""
    yield "schema.name", stack.schema_.name
    for index, table in enumerate(stack.schema_.tables):
        yield f"schema.tables[{index}].name", table.name
    for path, _, column in _columns(stack):
        yield f"{path}.name", column.name


def ensure_identifiers_are_yaml_strings(stack: Stack) -> list[tuple[str, str]]:
    return [
        (where, f"{name!r} reads as a YAML {'null' if name == 'null' else 'boolean'} in the rendered Hasura metadata, not as a name: rename it (e.g. {name}_value; rename the column in the database too)")
        for where, name in _named_identifiers(stack)
        if name in YAML_NON_STRINGS
    ]


def ensure_no_filter_operator_names(stack: Stack) -> list[tuple[str, str]]:
    """A name that is an operator of a permission filter (``_or``, ``_eq``…) changes the filter's
    meaning; an owner or tenant column is a filter key in every permission, so none starts with ``_``."""
    policy_keys = {f"{path}.name" for path, table, column in _columns(stack) if column.name in (table.owner_column, table.tenant_column)}
    problems = []
    for where, name in _named_identifiers(stack):
        if name in FILTER_OPERATORS or (where in policy_keys and name.startswith("_")):
            problems.append((where, f"{name!r} is (or looks like) an operator of Hasura's and Directus's permission filters ({', '.join(FILTER_OPERATORS[:4])}…): rename it without the leading underscore (rename the column in the database too)"))
    return problems


def ensure_no_postgres_system_columns(stack: Stack) -> list[tuple[str, str]]:
    return [
        (f"{path}.name", f"{column.name!r} is a Postgres system column of every table ({', '.join(POSTGRES_SYSTEM_COLUMNS)}): the bootstrap could not create it; choose another name")
        for path, _, column in _columns(stack)
        if column.name in POSTGRES_SYSTEM_COLUMNS
    ]


def ensure_policy_columns_not_nullable(stack: Stack) -> list[tuple[str, str]]:
    """The owner (owner-only, public-read) or tenant (tenant) column decides who sees a row: a row
    with NULL there belongs to nobody the policies can name."""
    problems = []
    for path, table, column in _columns(stack):
        needed = table.tenant_column if table.policy == "tenant" else table.owner_column
        if column.name == needed and column.nullable:
            problems.append((
                f"{path}.nullable",
                f"column {needed!r} decides who may see a row under policy {table.policy}: set nullable: false "
                f"(an existing table: give rows with a NULL {needed} one, then run ALTER TABLE {stack.schema_.name}.{table.name} "
                f"ALTER COLUMN {needed} SET NOT NULL; ccoas does not change an existing column)",
            ))
    return problems


def ensure_service_program_not_ccoas(stack: Stack) -> list[tuple[str, str]]:
    """A user crate builds in the same build cache as ccoas's own programs: one named like them
    could be taken for them."""
    problems = []
    for name, config in sorted(stack.services.items()):
        if config.image.crate is None:
            continue
        try:
            crate = services.read_crate(Path(config.image.crate))
        except ValueError:
            continue  # ensure_service_crate_builds_one_program says why
        for what, value in (("package", crate.package), ("program", crate.program)):
            if value.lower().replace("_", "-").startswith(RESERVED_PROGRAM_PREFIX):
                problems.append((f"services.{name}.image.crate", f"the crate's {what} {value!r} starts with {RESERVED_PROGRAM_PREFIX!r}, which names ccoas's own programs (ccoas-embedder): rename it in Cargo.toml"))
                break  # one crate, one problem
    return problems


def ensure_service_environment_values_plain(stack: Stack) -> list[tuple[str, str]]:
    """A value is one line of printable text: a line break or control character would start a new
    variable in every env file a translation writes."""
    return [
        (f"services.{name}.environment.{key}", f"expected one line of printable text, got {value!r}: put multi-line content in a file the service reads")
        for name, config in sorted(stack.services.items())
        for key, value in sorted(config.environment.items())
        if not value.isprintable()
    ]


def ensure_service_environment_no_loader_variables(stack: Stack) -> list[tuple[str, str]]:
    return [
        (f"services.{name}.environment.{key}", "changes what the dynamic loader loads into the service's programs (LD_*, GCONV_PATH and glibc's other unsecure variables): build what the service needs into its image instead")
        for name, config in sorted(stack.services.items())
        for key in sorted(config.environment)
        if key.upper().startswith("LD_") or key.upper() in LOADER_ENV_NAMES
    ]


SECRET_ENV_WORDS = ("PASSWORD", "PASSWD", "SECRET", "TOKEN", "CREDENTIAL", "PRIVATE_KEY", "API_KEY", "ACCESS_KEY")
"""An environment name holding one of these is a secret: it goes under ``secrets:`` (a file)."""


def ensure_service_names_free(stack: Stack) -> list[tuple[str, str]]:
    return [
        (f"services.{name}", f"{name!r} is a component of ccoas: name the service otherwise")
        for name in stack.services
        if name in COMPONENTS
    ]


def ensure_service_networks_allowed(stack: Stack) -> list[tuple[str, str]]:
    """Placement: only nginx is on edge (it alone publishes); a user service joins auth and/or db."""
    problems = []
    for name, config in stack.services.items():
        for index, network in enumerate(config.networks):
            where = f"services.{name}.networks[{index}]"
            if network == "edge":
                problems.append((where, "only nginx is on the edge network (it alone publishes); a user service joins auth and/or db"))
            elif network not in SERVICE_NETWORKS:
                problems.append((where, f"expected one of {', '.join(SERVICE_NETWORKS)}, got {network!r}"))
        if len(set(config.networks)) != len(config.networks):
            problems.append((f"services.{name}.networks", "a network is listed twice"))
    return problems


def ensure_service_image_known(stack: Stack) -> list[tuple[str, str]]:
    problems = []
    for name, config in stack.services.items():
        image = config.image
        where = f"services.{name}.image"
        if sum(choice is not None for choice in (image.crate, image.recipe, image.ref)) != 1:
            problems.append(
                (where, "expected exactly one of crate (a Rust crate of your own), recipe (a local recipe ccoas knows) or ref (an image pinned by digest)")
            )
        elif image.recipe is not None and image.recipe not in services.RECIPES:
            known = ", ".join(sorted(services.RECIPES)) or "none"
            problems.append((f"{where}.recipe", f"expected a recipe ccoas knows ({known}), got {image.recipe!r}"))
    return problems


def ensure_service_crate_builds_one_program(stack: Stack) -> list[tuple[str, str]]:
    """A crate's manifest names its package and one program (the image's command)."""
    problems = []
    for name, config in sorted(stack.services.items()):
        if config.image.crate is not None:
            try:
                services.read_crate(Path(config.image.crate))
            except ValueError as exc:
                problems.append((f"services.{name}.image.crate", str(exc)))
    return problems


def ensure_service_environment_has_no_secret(stack: Stack) -> list[tuple[str, str]]:
    return [
        (
            f"services.{name}.environment.{key}",
            "looks like a secret: environment values are visible to anyone who inspects the container; declare it under secrets: (mounted as a file)",
        )
        for name, config in stack.services.items()
        for key in config.environment
        if any(word in key.upper() for word in SECRET_ENV_WORDS)
    ]


def ensure_service_dependencies_enabled(stack: Stack) -> list[tuple[str, str]]:
    enabled = {*stack.enabled(), *stack.enabled_services()}
    problems = []
    for name in stack.enabled_services():
        for index, needed in enumerate(stack.services[name].depends_on):
            where = f"services.{name}.depends_on[{index}]"
            if needed == name:
                problems.append((where, f"{name} cannot depend on itself"))
            elif needed not in enabled:
                problems.append((where, f"{name} depends on {needed!r}, which is not an enabled component or service"))
        if stack.services[name].secrets and "vault" not in enabled:
            problems.append((f"services.{name}.secrets", "secrets are kept in vault, which is not enabled"))
    return problems


RULES: tuple[Rule, ...] = (
    ensure_only_nginx_publishes,
    ensure_requirements_enabled,
    ensure_local_recipe_exists,
    ensure_registry_image_exists,
    ensure_one_graphql_plane,
    ensure_published_ports_exist,
    ensure_host_ports_unique,
    ensure_edge_limits_consistent,
    ensure_no_cycles,
    ensure_tls_consistent,
    ensure_schema_name_free,
    ensure_tables_have_postgres,
    ensure_tables_well_formed,
    ensure_embedded_columns_valid,
    ensure_hnsw_columns_fit,
    ensure_identifiers_are_yaml_strings,
    ensure_no_filter_operator_names,
    ensure_no_postgres_system_columns,
    ensure_policy_columns_not_nullable,
    ensure_service_names_free,
    ensure_service_networks_allowed,
    ensure_service_image_known,
    ensure_service_crate_builds_one_program,
    ensure_service_environment_has_no_secret,
    ensure_service_environment_values_plain,
    ensure_service_environment_no_loader_variables,
    ensure_service_program_not_ccoas,
    ensure_service_dependencies_enabled,
)
"""Cross-field rules that a schema alone cannot say; each returns ``(field path, message)`` pairs."""


def semantic_problems(stack: Stack) -> list[tuple[str, str]]:
    """Every rule's problems, in rule order."""
    return [problem for rule in RULES for problem in rule(stack)]


def validate(stack: Stack, file: str) -> Stack:
    """Raise :class:`StackError` naming ``file`` if any rule fails; otherwise return ``stack``."""
    problems = [Problem(file, path, message) for path, message in semantic_problems(stack)]
    if problems:
        raise StackError(problems)
    return stack


def parse_stack(data: Any, file: str) -> Stack:
    """Validate already-parsed YAML data: the schema, then the rules. Raises :class:`StackError`."""
    return validate(validate_document(data, file), file)


def load_stack(path: str | Path) -> Stack:
    """Read and validate a stack file: the schema, then the rules. Raises :class:`StackError`."""
    return validate(read_stack(path), str(path))


# -- the plan -------------------------------------------------------------------------------------


def build_plan(stack: Stack, name: str | None = None) -> Plan:
    """Resolve a validated stack into a plan. ``name`` overrides the stack name (ephemeral stacks)."""
    graph = dependency_graph(stack)
    catalog = stack_catalog(stack)
    ctx = Context(stack=stack, name=check_name(name) if name is not None else stack.name, components=catalog, graph=graph, models=ollama.MODELS)
    labels = {f"{LABEL_PREFIX}.stack": ctx.name}
    tiers = start_tiers(graph)
    order = [c for tier in tiers for c in tier]
    declared = {c: catalog[c].declare(ctx) for c in order}
    services = tuple(declared[c].service for c in order)
    used_networks = {n for s in services for n in s.networks}
    networks = tuple(
        Network(
            name=n,
            engine_name=f"{ctx.name}-{n}",
            internal=n != "edge",
            purpose=NETWORK_PURPOSE[n],
            labels={**labels, f"{LABEL_PREFIX}.network": n},
        )
        for n in NETWORK_PURPOSE
        if n in used_networks
    )
    volumes = tuple(v for c in order for v in declared[c].volumes)
    secrets = tuple(sorted((s for c in order for s in declared[c].secrets), key=lambda s: s.name))
    buckets: tuple[Bucket, ...] = tuple(sorted((b for c in order for b in declared[c].buckets), key=lambda b: b.name))
    vault_plan = None
    if "vault" in ctx.enabled:
        vault_service = declared["vault"].service
        vault_plan = VaultPlan(
            prefix=ctx.name,
            policies=tuple(
                VaultPolicy(
                    service=s.name,
                    name=f"{ctx.name}-{s.name}",
                    read_paths=tuple(sorted(sec.vault_path for sec in secrets if s.name in sec.readers)),
                )
                for s in services
                if any(s.name in sec.readers for sec in secrets)
            ),
            ccoas_policy=f"{ctx.name}-ccoas",
            socket_mount=vault_service.runtime_mounts[0].name,
            socket_file=vault.SOCKET_FILE,
        )
    tls = None
    if "nginx" in ctx.enabled:
        tls = Tls(mode=stack.tls.mode, domain=stack.domain, cert_file=stack.tls.cert, key_file=stack.tls.key)
    return Plan(
        stack=ctx.name,
        environment=stack.environment,
        domain=stack.domain,
        labels=labels,
        networks=networks,
        volumes=volumes,
        secrets=secrets,
        buckets=buckets,
        services=services,
        start_order=tuple(tuple(t) for t in tiers),
        tls=tls,
        vault=vault_plan,
        app_schema=stack.schema_,
        edge=nginx.edge(ctx) if "nginx" in ctx.enabled else None,
        changes=change_feed(stack.schema_) if "postgres" in ctx.enabled else None,
        embedding_models=tuple(ollama.MODELS[name] for name in stack.schema_.embedding_models()),
    )


def change_feed(schema: Schema) -> ChangeFeed:
    """Every application table's channel and key, and the log's retention."""
    return ChangeFeed(
        max_entries=schema.changes.max_entries,
        max_age_hours=schema.changes.max_age_hours,
        tables=tuple(
            TableChanges(
                schema_name=schema.name,
                table=table.name,
                channel=change_channel(schema.name, table.name),
                key=tuple(c.name for c in table.columns if c.primary_key),
            )
            for table in schema.tables
        ),
    )


def load_plan(path: str | Path, name: str | None = None) -> Plan:
    """``build_plan(load_stack(path), name)``: what most callers want."""
    return build_plan(load_stack(path), name=name)
