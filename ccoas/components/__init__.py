"""The component catalog: one module per component, each a small desired-state declaration.

A component module defines ``COMPONENT``, a :class:`~ccoas.components.base.Component`
that says what the component is (image, user, ports, networks, what it needs), with two
functions: ``secrets(ctx)``, the credentials it owns, and ``service(ctx)``, its part of
the plan. Shared hardening (read-only root fs, dropped capabilities, no-new-privileges,
limits, restart policy, labels) is applied once, by
:meth:`~ccoas.components.base.Context.service`.
"""

from __future__ import annotations

from ccoas.components import directus, hasura, minio, nginx, ollama, postgres, redis, vault
from ccoas.components.base import Component, Context, Recipe

CATALOG: dict[str, Component] = {
    m.COMPONENT.name: m.COMPONENT for m in (nginx, directus, hasura, postgres, redis, minio, ollama, vault)
}

__all__ = ["CATALOG", "Component", "Context", "Recipe"]
