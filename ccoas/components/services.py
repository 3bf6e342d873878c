"""Services of the stack's own (the stack file's ``services:``), declared like components.

:func:`component` turns a ``services.<name>`` entry into a :class:`Component`, so the planner
resolves it through the same :meth:`Context.service` as every component: non-root user,
read-only root, every capability dropped, no-new-privileges, ``/tmp`` on a
nosuid,nodev,noexec tmpfs, limits, log cap, restart policy and labels. What is its own: its
image (a recipe of :data:`RECIPES`, built by ccoas, or a ref pinned by digest), its networks
(``auth`` and/or ``db``: only nginx is on ``edge``), its plain environment, its secrets
(generated into Vault, each mounted as a file ``/run/secrets/<service>_<name>``, never an
environment value) and its health check.
"""

from __future__ import annotations

from ccoas.components.base import Component, Context, Recipe, UserService, check
from ccoas.plan import Secret, Service

RECIPES: dict[str, Recipe] = {}
"""Local image recipes a user service may name (``image.recipe``)."""

DEFAULT_LIMITS = {"memory": "256Mi", "cpus": 0.5, "pids": 128}


def component(name: str, config: UserService) -> Component:
    """The component a user service is, for the planner."""
    uid, gid = (int(part) for part in config.user.split(":"))

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
        recipe=RECIPES.get(config.image.recipe) if config.image.recipe else None,
        default_limits=DEFAULT_LIMITS,
        declare_secrets=secrets,
        declare_service=service,
        upstream={"local": f"ccoas recipe {config.image.recipe}"} if config.image.recipe else {},
        requires=("vault",) if config.secrets else (),
        after=("postgres", "ollama", "vault"),
    )
    return COMPONENT
