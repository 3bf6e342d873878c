"""How ccoas shows things to people: rich tables and progress. No logic lives here."""

from __future__ import annotations

from typing import Any, Iterable

from rich.console import Console
from rich.table import Table

from ccoas.plan import Plan


def plan_tables(plan: Plan) -> list[Table]:
    networks = Table(title=f"stack {plan.stack} ({plan.environment}): networks")
    for column in ("network", "engine name", "internal", "isolated", "purpose"):
        networks.add_column(column)
    for n in plan.networks:
        networks.add_row(n.name, n.engine_name, str(n.internal).lower(), str(n.isolate).lower(), n.purpose)

    services = Table(title="services, in start order")
    for column in ("tier", "service", "image", "user", "networks", "published", "depends on", "limits"):
        services.add_column(column, no_wrap=column in ("tier", "service"), overflow="fold")
    tier_of = {name: index for index, tier in enumerate(plan.start_order) for name in tier}
    for s in plan.services:
        limits = []
        if s.limits.memory_bytes:
            limits.append(f"mem {s.limits.memory_bytes // 1024**2}Mi")
        if s.limits.nano_cpus:
            limits.append(f"cpu {s.limits.nano_cpus / 1e9:g}")
        if s.limits.pids:
            limits.append(f"pids {s.limits.pids}")
        services.add_row(
            str(tier_of[s.name]),
            s.name,
            f"{s.image.ref} ({s.image.source})",
            s.user,
            ", ".join(sorted(s.networks)),
            ", ".join(f"{p.host_ip}:{p.host_port or 'auto'}->{p.container_port}" for p in s.ports) or "-",
            ", ".join(d.service for d in s.depends_on) or "-",
            ", ".join(limits),
        )

    security = Table(title="security settings")
    for column in ("service", "read-only root", "cap drop", "cap add", "security opt", "secrets (files)", "restart"):
        security.add_column(column)
    for s in plan.services:
        security.add_row(
            s.name,
            str(s.read_only).lower(),
            ",".join(s.cap_drop),
            ",".join(s.cap_add) or "-",
            ",".join(s.security_opt),
            str(len(s.secrets)),
            f"{s.restart.policy}:{s.restart.max_retries}",
        )
    return [networks, services, security]


def status_table(rows: Iterable[Any]) -> Table:
    table = Table(title="status")
    for column in ("service", "container", "state", "health", "endpoints"):
        table.add_column(column)
    for row in rows:
        table.add_row(row.service, row.container, row.state, row.health, ", ".join(row.endpoints) or "-")
    return table


def secrets_table(rows: Iterable[Any]) -> Table:
    table = Table(title="secrets (values are never shown)")
    for column in ("secret", "vault path", "version", "readers"):
        table.add_column(column)
    for row in rows:
        table.add_row(row.name, row.path, str(row.version or "-"), ", ".join(row.readers))
    return table


class ProgressReporter:
    """A context manager the engine reports steps to; shows a rich status line."""

    def __init__(self, console: Console):
        self.console = console
        self._status = None

    def __enter__(self) -> "ProgressReporter":
        if self.console.is_terminal:
            self._status = self.console.status("starting")
            self._status.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            self._status.__exit__(*exc)

    def step(self, message: str) -> None:
        """A transient step (shown on the status line)."""
        if self._status is not None:
            self._status.update(message)

    def done(self, message: str) -> None:
        """A finished step (printed)."""
        self.console.print(f"[green]✓[/green] {message}", highlight=False)

    def __call__(self, message: str) -> None:
        self.step(message)
