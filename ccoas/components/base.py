"""What every component module is made of: :class:`Component`, :class:`Recipe` and :class:`Context`.

A component module defines ``COMPONENT``, a :class:`Component` that says what the
component is (image, user, ports, networks, what it needs) and two functions:
``secrets(ctx)``, the credentials it owns, and ``service(ctx)``, its part of the plan.
Shared hardening (read-only root fs, dropped capabilities, no-new-privileges, limits,
restart policy, labels) is applied here, once, by :meth:`Context.service`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

from ccoas import plan as plan_types
from ccoas.plan import (
    LABEL_PREFIX,
    Artifact,
    Bucket,
    ConfigMount,
    Dependency,
    HealthCheck,
    Image,
    Limits,
    LocalRecipe,
    Logs,
    Port,
    RegistryPin,
    Secret,
    SecretMount,
    Service,
    TmpfsMount,
    Volume,
)
from ccoas.stack import COMPONENTS, Stack, UserService, parse_size  # noqa: F401 - UserService: for components/services.py

SECRETS_DIR = "/run/secrets"


@dataclass(frozen=True)
class Recipe:
    """How ccoas builds a component's image locally (no registry): a Containerfile and its inputs."""

    containerfile: str
    files: tuple[str, ...] = ()
    artifacts: tuple[Artifact, ...] = ()


@dataclass(frozen=True)
class Component:
    name: str
    summary: str
    uid: int
    gid: int
    ports: tuple[int, ...]
    networks: tuple[str, ...]
    registry_image: str | None
    """The official image, pinned by digest: the default for hosts that reach a registry (None:
    the component is only built locally, see :attr:`recipe`)."""
    recipe: Recipe | None
    default_limits: dict[str, Any]
    declare_secrets: Callable[["Context"], list[Secret]]
    declare_service: Callable[["Context"], Service]
    requires: tuple[str, ...] = ()
    """Components that must be enabled; this one starts after they are healthy."""
    after: tuple[str, ...] = ()
    """Components this one starts after, when they are enabled."""
    upstream: dict[str, str] = field(default_factory=dict)
    """Image path (``local``, ``registry``) → the upstream version that path runs."""
    registry_digest_source: str | None = None
    """Where the digest of :attr:`registry_image` was seen (a public record), for review."""
    registry_note: str = ""
    """What a reviewer of the registry pin must know (e.g. an advisory the pin does not fix yet)."""
    port_schemes: dict[int, str] = field(default_factory=dict)
    """Container port → what answers there (``https``, ``http``), for published endpoints."""
    declare_buckets: Callable[["Context"], list[Bucket]] | None = None
    """Object-storage buckets this component's clients need (the storage service creates them)."""

    def declare(self, ctx: "Context") -> "Declaration":
        service = self.declare_service(ctx)
        volumes = tuple(
            Volume(
                name=m.volume,
                engine_name=f"{ctx.name}-{m.volume}",
                service=self.name,
                labels={**ctx.labels(self.name), f"{LABEL_PREFIX}.volume": m.volume},
            )
            for m in service.volumes
        )
        buckets = tuple(self.declare_buckets(ctx)) if self.declare_buckets else ()
        return Declaration(service=service, volumes=volumes, secrets=tuple(ctx.owned_secrets(self.name)), buckets=buckets)


@dataclass(frozen=True)
class Declaration:
    service: Service
    volumes: tuple[Volume, ...]
    secrets: tuple[Secret, ...]
    buckets: tuple[Bucket, ...] = ()


@dataclass
class Context:
    """What a component may look at while declaring itself: the stack, its resolved name, the
    catalog and the dependency graph (both given by :mod:`ccoas.planner`)."""

    stack: Stack
    name: str
    components: dict[str, Component]
    graph: dict[str, tuple[str, ...]]
    """Component → what it waits for (the planner's one dependency graph)."""
    models: dict[str, plan_types.EmbeddingModel] = field(default_factory=dict)
    """The embedding models ccoas knows, by name (Ollama's catalog, given by the planner)."""
    _owned: dict[str, list[Secret]] = field(default_factory=dict)

    @cached_property
    def enabled(self) -> frozenset[str]:
        """Enabled components and user services."""
        return frozenset((*self.stack.enabled(), *self.stack.enabled_services()))

    @cached_property
    def all_secrets(self) -> tuple[Secret, ...]:
        secrets: list[Secret] = []
        for name in (*COMPONENTS, *self.stack.enabled_services()):
            if name in self.enabled:
                owned = self.components[name].declare_secrets(self)
                self._owned[name] = owned
                secrets.extend(owned)
        return tuple(secrets)

    def owned_secrets(self, component: str) -> list[Secret]:
        self.all_secrets  # noqa: B018 - populate
        return self._owned.get(component, [])

    def labels(self, component: str) -> dict[str, str]:
        return {f"{LABEL_PREFIX}.stack": self.name, f"{LABEL_PREFIX}.service": component}

    def secret(
        self,
        owner: str,
        what: str,
        generator: str,
        readers: tuple[str, ...],
        description: str,
        length: int = 32,
        reader_formats: dict[str, str] | None = None,
        client: str | None = None,
    ) -> Secret:
        """A secret ``<owner>_<what>`` held by ``owner``; ``client`` when it is another service's
        credential on ``owner`` (a Postgres role, a Redis or MinIO user)."""
        return Secret(
            reader_formats=reader_formats or {},
            name=f"{owner}_{what}",
            vault_path=f"{owner}/{what}",
            owner=owner,
            client=client,
            generator=generator,
            length=length,
            readers=tuple(sorted(set(readers))),
            description=description,
        )

    def secret_file(self, name: str) -> str:
        return f"{SECRETS_DIR}/{name}"

    def registry_pin(self, component: Component) -> RegistryPin | None:
        """The registry image this stack pins for ``component``: the stack file's own ref, else
        the component's, with where its digest was seen."""
        ref = self.stack.component(component.name).image.ref
        if ref is not None:
            return RegistryPin(
                ref=ref, upstream="as its tag names it", digest_source=f"the stack file ({self.stack.config_path(component.name)}.image.ref)"
            )
        if component.registry_image is None:
            return None
        return RegistryPin(
            ref=component.registry_image,
            upstream=component.upstream.get("registry", "not recorded"),
            digest_source=component.registry_digest_source or "not recorded",
            note=component.registry_note,
        )

    def image(self, component: Component) -> Image:
        choice = self.stack.component(component.name).image
        source = self.stack.image_source(component.name)
        if source in ("local", "bundle") and component.recipe is not None:
            recipe = component.recipe
            digest = recipe_digest(recipe.containerfile, recipe.files, recipe.artifacts)
            return Image(
                ref=f"localhost/ccoas/{component.name}:{digest[:12]}",
                source=source,
                recipe=LocalRecipe(
                    component=component.name,
                    containerfile=recipe.containerfile,
                    files=recipe.files,
                    artifacts=recipe.artifacts,
                    digest=digest,
                ),
                upstream=component.upstream,
                registry=self.registry_pin(component),
            )
        ref = choice.ref or component.registry_image
        if ref is None:
            raise ValueError(f"{component.name} has no registry image (validation lets no stack ask for one)")
        return Image(
            ref=ref,
            source="bundle" if source == "bundle" else "registry",
            upstream=component.upstream,
            registry=self.registry_pin(component),
        )

    def published_ports(self, component: Component) -> tuple[Port, ...]:
        """The public addresses the stack file gives ``component`` (``publish``), resolved."""
        return tuple(
            Port(
                container_port=p.container_port,
                host_port=p.host_port,
                host_ip=p.host_ip or self.stack.bind_address,
                protocol=p.protocol,
                scheme=component.port_schemes.get(p.container_port, "tcp"),
            )
            for p in self.stack.component(component.name).publish
        )

    def service(
        self,
        component: Component,
        *,
        healthcheck: HealthCheck,
        liveness: HealthCheck,
        environment: dict[str, str] | None = None,
        config_templates: tuple[str, ...] = (),
        tmpfs: tuple[TmpfsMount, ...] = (),
        publish: bool = True,
        **fields: Any,
    ) -> Service:
        """A hardened service for ``component``; the component supplies only what is its own.
        ``publish=False``: the engine publishes none of its ports (a host listener takes them)."""
        name = component.name
        config = self.stack.component(name)
        limits = {**component.default_limits, **config.limits.model_dump(exclude_none=True)}
        secret_mounts = tuple(
            SecretMount(
                secret=s.name,
                target=self.secret_file(s.name if name not in s.reader_formats else f"{s.name}_{name}"),
                format=s.reader_formats.get(name),
                uid=component.uid,
                gid=component.gid,
            )
            for s in sorted(self.all_secrets, key=lambda s: s.name)
            if name in s.readers
        )
        ports = self.published_ports(component) if publish else ()
        return Service(
            name=name,
            container_name=f"{self.name}-{name}",
            summary=component.summary,
            image=self.image(component),
            user=f"{component.uid}:{component.gid}",
            environment=dict(sorted((environment or {}).items())),
            networks={n: (name,) for n in component.networks},
            expose=component.ports,
            ports=ports,
            config=ConfigMount(source=name, target=f"/etc/ccoas/{name}") if config_templates else None,
            config_templates=config_templates,
            tmpfs=(TmpfsMount(target="/tmp"), *tmpfs),
            secrets=secret_mounts,
            limits=Limits(
                memory_bytes=size_bytes(limits.get("memory")),
                nano_cpus=int(round(limits["cpus"] * 1e9)) if limits.get("cpus") else None,
                pids=limits.get("pids"),
            ),
            logs=Logs(max_size_bytes=parse_size((config.logs or self.stack.logs).max_size)),
            healthcheck=healthcheck,
            liveness=liveness,
            depends_on=tuple(Dependency(service=d) for d in self.graph.get(name, ())),
            labels=self.labels(name),
            **fields,
        )


def recipe_digest(containerfile: str, files: tuple[str, ...], artifacts: tuple[Artifact, ...]) -> str:
    """sha256 over a recipe's Containerfile, files and artifact specs (for a cargo artifact, its
    crate's every file instead of its folder's path): the local image's content key."""
    digest = hashlib.sha256()
    for rel in (containerfile, *files):
        digest.update(rel.encode() + b"\0" + (plan_types.TEMPLATES_DIR / rel).read_bytes() + b"\0")
    for artifact in artifacts:
        if artifact.kind == "cargo":  # a crate: its every file, wherever its folder is
            crate = crate_digest(plan_types.TEMPLATES_DIR / artifact.spec)
            digest.update(artifact.model_dump_json(exclude={"spec"}).encode() + b"\0" + crate.encode() + b"\0")
        else:
            digest.update(artifact.model_dump_json().encode() + b"\0")
    return digest.hexdigest()


def crate_digest(folder: Path) -> str:
    """sha256 over a crate's files (relative path and content), ``target/`` left out."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and "target" not in p.relative_to(folder).parts):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def size_bytes(value: str | None) -> int | None:
    return None if value is None else parse_size(value)


def check(test: str, *args: str, interval: int = 10, timeout: int = 5, retries: int = 5, start: int = 10) -> HealthCheck:
    """A health check. ``check("CMD", "pg_isready")`` or ``check("CMD-SHELL", "…")``."""
    return HealthCheck(test=(test, *args), interval_s=interval, timeout_s=timeout, retries=retries, start_period_s=start)
