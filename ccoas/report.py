"""How ccoas shows things to people: rich tables and progress. No logic lives here."""

from __future__ import annotations

import threading
import time
from typing import Any, Iterable

from rich.console import Console
from rich.table import Table

from ccoas.plan import Plan


def published(plan: Plan, service) -> str:
    """What the service publishes; Nginx behind the host listener: the listener's ports."""
    if service.name == "nginx" and plan.edge is not None and plan.edge.listener.kind == "host":
        ports = ", ".join(f"{p.host_ip}:{p.host_port or 'auto'}->{p.container_port}" for p in plan.edge.listener.ports)
        return f"{ports} (host listener, PROXY protocol)"
    return ", ".join(f"{p.host_ip}:{p.host_port or 'auto'}->{p.container_port}" for p in service.ports) or "-"


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
            published(plan, s),
            ", ".join(d.service for d in s.depends_on) or "-",
            ", ".join(limits),
        )

    paths = Table(title="images: the upstream version each path runs (the README says why they differ)")
    for column in ("service", "this stack", "local build", "registry image"):
        paths.add_column(column, overflow="fold")
    for s in plan.services:
        paths.add_row(s.name, s.image.source, s.image.upstream.get("local", "- (no recipe)"), s.image.upstream.get("registry", "-"))

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
    return [networks, services, paths, security]


def status_table(rows: Iterable[Any]) -> Table:
    table = Table(title="status")
    for column in ("service", "container", "state", "health", "endpoints"):
        table.add_column(column)
    for row in rows:
        table.add_row(row.service, row.container, row.state, row.health, ", ".join(row.endpoints) or "-")
    return table


def alerts_table(alerts: Iterable[Any]) -> Table:
    table = Table(title="firing alerts")
    for column in ("alert", "service", "severity", "since", "summary"):
        table.add_column(column, overflow="fold")
    for alert in alerts:
        table.add_row(alert.name, alert.service, alert.severity, alert.active_since, alert.summary)
    return table


def samples_table(samples: Iterable[Any]) -> Table:
    table = Table(title="instant query")
    for column in ("series", "value"):
        table.add_column(column, overflow="fold")
    for sample in samples:
        series = ", ".join(f"{k}={v}" for k, v in sample.labels.items()) or "{}"
        table.add_row(series, f"{sample.value:g}")
    return table


def secrets_table(rows: Iterable[Any]) -> Table:
    table = Table(title="secrets (values are never shown; `ccoas secrets get OWNER/NAME` prints one)")
    for column in ("secret", "vault path", "version", "readers"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row.name, row.path, str(row.version or "-"), ", ".join(row.readers))
    return table


def print_table(console: Console, table: Table) -> None:
    """On a terminal, ``table`` fitted to its width. Anywhere else (a log, a pipe, CI) every
    value whole on one line: no ellipsis, no folding, however narrow the console thinks it is."""
    if console.is_terminal:
        console.print(table)
        return
    for column in table.columns:
        column.no_wrap, column.overflow = True, "ignore"
    whole = Console(file=console.file, width=1_000_000, color_system=None, highlight=False, emoji=False)
    whole.print(table, soft_wrap=True)


def login_hints(plan: Any, status: Iterable[Any], stack: Any, name: str | None) -> list[str]:
    """Where each human-facing endpoint is and how to log in (never a value)."""
    rows = {row.service: row for row in status}
    web = [e for e in (rows["nginx"].endpoints if "nginx" in rows else ()) if e.startswith("https://")]
    web = web or [e for row in rows.values() for e in row.endpoints if e.startswith("http")]
    if not web:
        return []
    # Nginx answers only to the stack's domain (any other Host, a bare IP included, gets 421)
    scheme, _, address = web[0].partition("://")
    ip, _, port = address.rpartition(":")
    url = f"{scheme}://{plan.domain}:{port}"
    hints = [f"open {url}/" + ("" if plan.domain == "localhost" else f"  ({plan.domain} must resolve to {ip})")]
    web = [url]
    if any(s.name == "directus" for s in plan.services):
        email = plan.service("directus").environment.get("ADMIN_EMAIL", "?")
        args = f" {stack}" + (f" --name {name}" if name else "")
        hints.append(
            f"Directus admin app: {web[0]}/directus/  admin e-mail {email}; password: `ccoas secrets get directus/admin_password{args}`"
        )
        hints.append(
            "only the administrator role may use the admin app: users of the app-user role have no app access "
            "(Directus shows them \"No App Access\"); they use the API, e.g. POST /directus/auth/login"
        )
        if plan.tls is not None and plan.tls.mode == "generate":
            hints.append(f"TLS: the stack CA signs the certificate; `ccoas tls trust{args}` prints it and how to trust it")
    return hints


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


class ProgressReporter:
    """A context manager the engine reports steps to.

    On a terminal: a live status line. Otherwise (a log, CI): one plain line per step with
    the time since the start, and while a step runs longer, a line every ``heartbeat_s``
    saying what is still running and for how long, so a log is never silent for a minute.

    Steps that run at once (the build graph's) each report in a *lane* of their own
    (:meth:`lane_step`, :meth:`lane_end`): every lane whose step runs long gets its own
    ``still`` line.
    """

    def __init__(self, console: Console, heartbeat_s: float = 30.0):
        self.console = console
        self.heartbeat_s = heartbeat_s
        self._status = None
        self._started = time.monotonic()
        self._current = "starting"
        self._current_since = self._started
        self._last_line = self._started
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._lanes: dict[str, list] = {}
        """lane -> [its current step, when it started, when a line last spoke of it]"""

    def __enter__(self) -> "ProgressReporter":
        if self.console.is_terminal:
            self._status = self.console.status("starting")
            self._status.__enter__()
        else:
            self._beat = threading.Thread(target=self._heartbeat, name="ccoas-progress", daemon=True)
            self._beat.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        if self._status is not None:
            self._status.__exit__(*exc)

    def _line(self, text: str) -> None:
        with self._lock:
            now = time.monotonic()
            self._last_line = now
            self.console.print(f"[{_clock(now - self._started):>7}] {text}", highlight=False, markup=False, soft_wrap=True)

    def _heartbeat(self) -> None:
        while not self._stop.wait(min(1.0, self.heartbeat_s / 3)):
            now = time.monotonic()
            with self._lock:
                lanes = [(name, lane) for name, lane in self._lanes.items() if now - lane[2] >= self.heartbeat_s]
            if self._lanes:
                for _, lane in lanes:
                    lane[2] = now
                    self._line(f"… still {lane[0]} ({_clock(now - lane[1])})")
            elif now - self._last_line >= self.heartbeat_s:
                self._line(f"… still {self._current} ({_clock(now - self._current_since)})")

    def lane_step(self, lane: str, message: str) -> None:
        """A step of ``lane`` starts, while steps of other lanes may be running."""
        now = time.monotonic()
        with self._lock:
            self._lanes[lane] = [message, now, now]
        self.step(message)

    def lane_note(self, lane: str, message: str) -> None:
        """A line about ``lane``'s running step (its step and timer unchanged)."""
        with self._lock:
            if lane in self._lanes:
                self._lanes[lane][2] = time.monotonic()
        if self._status is not None:
            self._status.update(message)
        elif self._beat is not None:
            self._line(message)

    def lane_end(self, lane: str) -> None:
        with self._lock:
            self._lanes.pop(lane, None)

    def step(self, message: str) -> None:
        """A step starts (the status line on a terminal, a plain line otherwise)."""
        self._current, self._current_since = message, time.monotonic()
        if self._status is not None:
            self._status.update(message)
        elif self._beat is not None:
            self._line(message)

    def done(self, message: str) -> None:
        """A finished step (printed), with how long its last step ran."""
        if self._status is not None:
            self.console.print(f"[green]✓[/green] {message}", highlight=False)
        else:
            self._line(f"✓ {message} ({_clock(time.monotonic() - self._current_since)})")

    def __call__(self, message: str) -> None:
        self.step(message)
