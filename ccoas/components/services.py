"""Services of the stack's own (the stack file's ``services:``), declared like components.

:func:`component` turns a ``services.<name>`` entry into a :class:`Component`, so the planner
resolves it through the same :meth:`Context.service` as every component: non-root user,
read-only root, every capability dropped, no-new-privileges, ``/tmp`` on a
nosuid,nodev,noexec tmpfs, limits, log cap, restart policy and labels. What is its own: its
image (a Rust crate of the user's own, a recipe of :data:`RECIPES`, or a ref pinned by
digest), its networks (``auth`` and/or ``db``: only nginx is on ``edge``), its plain
environment, its secrets (generated into Vault, each mounted as a file
``/run/secrets/<service>_<name>``, never an environment value) and its health check.

A crate (``image.crate``: its folder) is built the way ccoas builds its embedding worker: one
``cargo`` artifact (``cargo build --release --locked`` on the host with the toolchain of host
preparation, cached by the crate's content and ``rustc -V``), its program copied into
:data:`CRATE_CONTAINERFILE` on the Debian base. The image's content key covers every file of
the crate, so a changed crate is a new image.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ccoas.components.base import Component, Context, Recipe, UserService, check
from ccoas.plan import Artifact, Secret, Service

RECIPES: dict[str, Recipe] = {}
"""Local image recipes a user service may name (``image.recipe``)."""

CRATE_CONTAINERFILE = "services/crate.Containerfile.j2"
"""The image of a user's crate: its program on the Debian base, as an unprivileged user."""

DEFAULT_LIMITS = {"memory": "256Mi", "cpus": 0.5, "pids": 128}

_PROGRAM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class Crate:
    """What ccoas needs of a user's crate: where it is, its package and the program it builds."""

    folder: Path
    package: str
    version: str
    program: str


def read_crate(folder: Path) -> Crate:
    """The crate in ``folder`` (``Cargo.toml`` read): its one program is its ``[[bin]]`` target,
    else ``src/main.rs`` named after the package. Raises ValueError saying what is wrong."""
    manifest_path = folder / "Cargo.toml"
    try:
        manifest = tomllib.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read {manifest_path}: {exc}") from None
    package = manifest.get("package")
    if not isinstance(package, dict) or not isinstance(package.get("name"), str):
        raise ValueError(f"{manifest_path} has no [package] name: expected one package (a workspace root is not one)")
    version = package.get("version") if isinstance(package.get("version"), str) else "0.0.0"
    targets = manifest.get("bin", [])
    if targets:
        names = [t.get("name") for t in targets if isinstance(t, dict)]
        if len(targets) != 1 or not isinstance(names[0], str):
            raise ValueError(f"{manifest_path} declares {len(targets)} [[bin]] targets: expected one program, the service's")
        program = names[0]
    elif (folder / "src" / "main.rs").is_file():
        program = package["name"]
    else:
        raise ValueError(f"{folder} has no src/main.rs and no [[bin]] target: a library crate builds no program to run")
    if not _PROGRAM_NAME.match(program):
        raise ValueError(f"expected a program name matching {_PROGRAM_NAME.pattern}, got {program!r}")
    return Crate(folder=folder, package=package["name"], version=version, program=program)


def crate_recipe(crate: Crate) -> Recipe:
    """The local recipe of a user's crate: one cargo artifact (its folder) into the crate image."""
    return Recipe(containerfile=CRATE_CONTAINERFILE, artifacts=(Artifact(kind="cargo", spec=str(crate.folder), binary=crate.program),))


def component(name: str, config: UserService) -> Component:
    """The component a user service is, for the planner."""
    uid, gid = (int(part) for part in config.user.split(":"))
    crate = None
    if config.image.crate is not None:
        try:
            crate = read_crate(Path(config.image.crate))
        except ValueError:
            pass  # reported by the planner's rule (ensure_service_crate_builds_one_program): never planned
    upstream = {}
    if crate is not None:
        upstream = {"local": f"{crate.package} {crate.version} (the crate {crate.folder}, its dependencies pinned by its Cargo.lock)"}
    elif config.image.recipe is not None:
        upstream = {"local": f"ccoas recipe {config.image.recipe}"}

    def secrets(ctx: Context) -> list[Secret]:
        return [
            ctx.secret(name, what, spec.generator, (name,), spec.description or f"{what} of the user service {name}", length=spec.length)
            for what, spec in sorted(config.secrets.items())
        ]

    def service(ctx: Context) -> Service:
        health = config.healthcheck
        probe = check(
            health.test[0], *health.test[1:], interval=health.interval, timeout=health.timeout, retries=health.retries, start=health.start_period
        )
        return ctx.service(
            COMPONENT,
            environment=dict(config.environment),
            entrypoint=config.entrypoint,
            command=config.command,
            healthcheck=probe,
            liveness=probe,
        )

    COMPONENT = Component(
        name=name,
        summary=f"user service {name} (services.{name} of the stack file)",
        uid=uid,
        gid=gid,
        ports=config.expose,
        networks=config.networks,
        registry_image=config.image.ref,
        recipe=crate_recipe(crate) if crate else RECIPES.get(config.image.recipe) if config.image.recipe else None,
        default_limits=DEFAULT_LIMITS,
        declare_secrets=secrets,
        declare_service=service,
        upstream=upstream,
        requires=("vault",) if config.secrets else (),
        after=("postgres", "ollama", "vault"),
    )
    return COMPONENT
