"""The components: one module per component, each a small desired-state declaration.

A component module defines ``COMPONENT``, a :class:`~ccoas.components.base.Component`
that says what the component is (image, user, ports, networks, what it needs), with two
functions: ``secrets(ctx)``, the credentials it owns, and ``service(ctx)``, its part of
the plan (and optionally ``buckets(ctx)``, the object-storage buckets it needs). Shared
hardening (read-only root fs, dropped capabilities, no-new-privileges, limits, restart
policy, labels) is applied once, by :meth:`~ccoas.components.base.Context.service`.

Component modules import only :mod:`ccoas.plan` (the types) and
:mod:`ccoas.components.base`; the catalog of all of them is :data:`ccoas.planner.CATALOG`.
"""
