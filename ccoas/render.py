"""Render a plan into files: every service's config templates, ``compose.yaml`` and ``plan.json``.

:func:`render` writes ``templates/<component>/<file>.j2`` to ``<out>/<component>/<file>``
(the directory the engine bind-mounts read-only at the service's ``config.target``),
plus ``<out>/compose.yaml`` (:func:`ccoas.compose.compose_document`) and
``<out>/plan.json`` (:meth:`Plan.to_json`).

The output is a pure function of the plan: templates are rendered with
:class:`~jinja2.StrictUndefined`, everything is iterated in sorted order, no file holds a
timestamp, a host path or a secret value (templates only *name* secret files), and modes
are fixed (0644, 0755 for ``*.sh`` and for directories). The same plan renders to the
same bytes on every run and every machine. :func:`render` never deletes anything: render
into a fresh directory to drop files of components that were disabled.

Templates see ``plan`` and ``service`` and the small pure helpers registered in
:func:`environment`. :func:`vault_policy_hcl` is also what the Vault bootstrap uploads for
each service, and :func:`ccoas_policy_hcl` is the bootstrap's own operator policy, so the
rendered ``policies.hcl`` is the live policy text.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import yaml

from ccoas.errors import CcoasError
from ccoas import plan as plan_types
from ccoas.plan import Plan, Service, VaultPolicy

TEMPLATE_SUFFIX = ".j2"
FILE_MODE = 0o644
SCRIPT_MODE = 0o755
DIR_MODE = 0o755
COMPOSE_FILE = "compose.yaml"
PLAN_FILE = "plan.json"


class RenderError(CcoasError):
    """A template could not be rendered from the plan (a template bug, not a user error)."""


# --- helpers templates may call ----------------------------------------------------------


def vault_policy_hcl(policy: VaultPolicy, plan: Plan) -> str:
    """A service's Vault policy, as the bootstrap uploads it (:mod:`ccoas.secrets` owns the text)."""
    from ccoas.secrets import service_policy_hcl  # imported late: secrets imports render lazily too

    if plan.vault is None:
        raise RenderError(f"policy {policy.name}: the plan has no vault")
    return service_policy_hcl(policy, plan)


def ccoas_policy_hcl(plan: Plan) -> str:
    """ccoas's own operator policy, as the bootstrap uploads it."""
    from ccoas.secrets import ccoas_policy_hcl as operator_policy

    if plan.vault is None:
        raise RenderError("the plan has no vault")
    return operator_policy(plan)


def secret_file(service: Service, secret: str) -> str:
    """Where ``secret`` is mounted in ``service`` (the plan's target, e.g. ``/run/secrets/<name>``)."""
    for mount in service.secrets:
        if mount.secret == secret:
            return mount.target
    raise RenderError(f"{service.name} does not mount the secret {secret!r}")


def sql_ident(name: str) -> str:
    """A Postgres identifier, always double-quoted (quotes inside doubled)."""
    return '"' + name.replace('"', '""') + '"'


def sql_literal(value: str) -> str:
    """A Postgres string literal (standard_conforming_strings: only ``'`` needs doubling)."""
    if "\\" in value or "\0" in value:
        raise RenderError(f"refusing to quote {value!r} as SQL: backslash or NUL")
    return "'" + value.replace("'", "''") + "'"


VECTOR_TYPE_SCHEMA = "public"
"""Where the bootstrap creates the pgvector extension, so where its ``vector`` type lives."""
SQL_DEFAULTS = {"gen_random_uuid()": "pg_catalog.gen_random_uuid()", "now()": "pg_catalog.now()"}


def sql_type(column_type: str) -> str:
    """A stack column type as SQL that resolves the same on any search_path:
    ``vector(384)`` → ``public.vector(384)``; built-in types are pg_catalog's."""
    return f"{VECTOR_TYPE_SCHEMA}.{column_type}" if column_type.startswith("vector(") else column_type


def sql_default(default: str) -> str:
    """A stack column default, schema-qualified (``now()`` → ``pg_catalog.now()``)."""
    return SQL_DEFAULTS.get(default, default)


def sql_cast(expression: str, column_type: str) -> str:
    """``expression`` (text) cast to an owner or tenant column's type (uuid or text), for a comparison."""
    return expression if column_type == "text" else f"CAST({expression} AS pg_catalog.{column_type})"


def sh_quote(value: Any) -> str:
    """A POSIX shell word."""
    return shlex.quote(str(value))


def hcl_string(value: str) -> str:
    """An HCL string literal."""
    return json.dumps(value)


def json_text(value: Any, indent: int | None = 2) -> str:
    """Deterministic JSON: sorted keys, ASCII only; plan models as their JSON form."""
    return json.dumps(value, indent=indent, sort_keys=True, ensure_ascii=True, default=_plan_json)


def _plan_json(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def yaml_text(value: Any) -> str:
    """Deterministic YAML (sorted keys, block style, no line folding)."""
    return yaml.safe_dump(value, sort_keys=True, default_flow_style=False, width=10_000, allow_unicode=False)


def mebibytes(value: int | None, fraction: float = 1.0, default: int = 0) -> int:
    """``fraction`` of a byte count, in whole MiB (``default`` when there is no limit)."""
    if value is None:
        return default
    return max(1, int(value * fraction) // 1024**2)


def environment(templates_dir: Path | None = None) -> jinja2.Environment:
    """The one Jinja environment of every template: config files and the images' Containerfiles
    (``templates_dir``: :data:`ccoas.plan.TEMPLATES_DIR`, read at each call)."""
    return _environment(templates_dir or plan_types.TEMPLATES_DIR)


@lru_cache(maxsize=None)
def _environment(templates_dir: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(
        vault_policy_hcl=vault_policy_hcl,
        ccoas_policy_hcl=ccoas_policy_hcl,
        secret_file=secret_file,
    )
    env.filters.update(
        sql_ident=sql_ident,
        sql_literal=sql_literal,
        sql_type=sql_type,
        sql_default=sql_default,
        sql_cast=sql_cast,
        sh_quote=sh_quote,
        hcl_string=hcl_string,
        json_text=json_text,
        yaml_text=yaml_text,
        mebibytes=mebibytes,
    )
    return env


def render_text(template: str, **context: Any) -> str:
    """Render a template given as text, with the same environment and helpers as the files."""
    try:
        return environment().from_string(template).render(**context)
    except jinja2.TemplateError as exc:
        raise RenderError(f"cannot render template text: {exc}") from None


def render_template(template: str, plan: Plan, service: Service) -> str:
    """Render one template file (a path relative to ``templates/``) for ``service``."""
    try:
        return environment().get_template(template).render(plan=plan, service=service)
    except jinja2.TemplateError as exc:
        where = f"{exc.filename}:{exc.lineno}: " if isinstance(exc, jinja2.TemplateSyntaxError) else ""
        raise RenderError(f"{service.name}: cannot render {template}: {where}{exc}") from None


# --- the render ----------------------------------------------------------------------------


def output_path(template: str) -> str:
    """``hasura/metadata/version.yaml.j2`` → ``hasura/metadata/version.yaml``."""
    if not template.endswith(TEMPLATE_SUFFIX):
        raise RenderError(f"{template}: a config template must end with {TEMPLATE_SUFFIX}")
    return template[: -len(TEMPLATE_SUFFIX)]


def file_mode(relative: str) -> int:
    return SCRIPT_MODE if relative.endswith(".sh") else FILE_MODE


def rendered_files(plan: Plan) -> dict[str, str]:
    """Every file of the render, relative path → text, without touching the disk."""
    from ccoas.compose import compose_text

    files = config_files(plan)
    files[COMPOSE_FILE] = compose_text(plan, yaml_text)
    files[PLAN_FILE] = plan.to_json()
    return dict(sorted(files.items()))


def config_files(plan: Plan) -> dict[str, str]:
    """Every service's rendered config templates, relative path (``<source>/<file>``) → text."""
    files: dict[str, str] = {}
    for service in sorted(plan.services, key=lambda s: s.name):
        if service.config_templates and service.config is None:
            raise RenderError(f"{service.name}: has config templates but no config mount")
        for template in sorted(service.config_templates):
            relative = output_path(template)
            if service.config is not None and not relative.startswith(f"{service.config.source}/"):
                raise RenderError(f"{service.name}: {template} is outside its config directory {service.config.source}/")
            if relative in files:
                raise RenderError(f"{relative} is rendered twice")
            files[relative] = render_template(template, plan, service)
    return dict(sorted(files.items()))


def config_digest(files: dict[str, str], source: str) -> str:
    """The content hash of one service's rendered config directory (paths, modes, bytes), from
    :func:`rendered_files` alone: equal to hashing the directory :func:`render` writes."""
    prefix = f"{source}/"
    entries: dict[tuple[str, ...], str | None] = {}
    for relative, text in files.items():
        if not relative.startswith(prefix):
            continue
        parts = tuple(relative[len(prefix) :].split("/"))
        for depth in range(1, len(parts)):
            entries.setdefault(parts[:depth], None)
        entries[parts] = relative
    if not entries:
        return ""
    digest = hashlib.sha256()
    for parts in sorted(entries):
        rel, relative = "/".join(parts), entries[parts]
        if relative is None:
            digest.update(f"{rel}/\0".encode())
        else:
            digest.update(f"{rel}\0{file_mode(relative):o}\0".encode() + files[relative].encode("utf-8") + b"\0")
    return digest.hexdigest()


def render(plan: Plan, out: Path, files: dict[str, str] | None = None) -> list[Path]:
    """Write every rendered file under ``out`` (``files``: :func:`rendered_files` of ``plan``,
    when the caller has them already); returns their paths, sorted.

    Files are replaced atomically (a symlink in ``out`` is replaced, never followed);
    directories this call creates get mode 0755. Nothing is removed.
    """
    out = Path(out)
    files = rendered_files(plan) if files is None else files
    _make_dirs(out)
    written: list[Path] = []
    for relative, text in files.items():
        path = out / relative
        _make_dirs(path.parent)
        _write(path, text.encode("utf-8"), file_mode(relative))
        written.append(path)
    return written


def _make_dirs(directory: Path) -> None:
    missing = []
    for candidate in (directory, *directory.parents):
        if candidate.exists():
            break
        missing.append(candidate)
    for created in reversed(missing):
        created.mkdir()
        os.chmod(created, DIR_MODE)
    if not directory.is_dir():
        raise RenderError(f"{directory} exists and is not a directory")


def _write(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
