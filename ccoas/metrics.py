"""Reading the monitoring component from the host: instant queries and firing alerts.

Prometheus listens only on the loopback of its container (nothing is published, no network
reaches it), so ccoas asks it from inside: ``curl`` run in the monitoring container through the
engine's exec API, as the container's own user. Requests (:func:`query_command`,
:func:`alerts_command`) and parsers (:func:`parse_query`, :func:`parse_alerts`) are apart, and
the parsers are tested from output recorded from the real Prometheus.

ccoas's own figures (:func:`textfile`) are written at every ``up`` into a host directory the
monitoring container mounts, where the node exporter's textfile collector reads them.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ccoas import host_files
from ccoas.errors import CcoasError, EngineError
from ccoas.plan import Plan, Service

PROMETHEUS = "http://127.0.0.1:9090"
TEXTFILE = "ccoas.prom"


class Exec(Protocol):
    def exec(self, service: Service, command: list[str], container: Any | None = None) -> tuple[int, str]: ...


@dataclass(frozen=True)
class Sample:
    """One series of an instant query's result."""

    labels: dict[str, str]
    value: float
    timestamp: float

    def as_dict(self) -> dict[str, Any]:
        value: Any = self.value if math.isfinite(self.value) else str(self.value)
        return {"labels": self.labels, "value": value, "timestamp": self.timestamp}


@dataclass(frozen=True)
class FiringAlert:
    name: str
    service: str
    severity: str
    summary: str
    active_since: str
    labels: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "alert": self.name,
            "service": self.service,
            "severity": self.severity,
            "summary": self.summary,
            "active_since": self.active_since,
            "labels": self.labels,
        }


class MonitoringError(CcoasError):
    """The monitoring component is off, absent, or its API refused the request."""


# --- requests --------------------------------------------------------------------------------


def query_command(promql: str) -> list[str]:
    """``curl`` in the monitoring container: an instant query (the query as a form field, so no
    character of it needs escaping)."""
    return ["curl", "-sS", "--max-time", "20", "--data-urlencode", f"query={promql}", f"{PROMETHEUS}/api/v1/query"]


def alerts_command() -> list[str]:
    return ["curl", "-sS", "--max-time", "20", f"{PROMETHEUS}/api/v1/alerts"]


def monitoring_service(plan: Plan) -> Service:
    if not plan.has("monitoring"):
        raise MonitoringError(
            f"stack {plan.stack} has no monitoring component (components.monitoring.enabled: true turns it on; ci stacks leave it off)"
        )
    return plan.service("monitoring")


def _ask(runtime: Exec, plan: Plan, command: list[str]) -> dict[str, Any]:
    service = monitoring_service(plan)
    code, output = runtime.exec(service, command)
    if code == 127 and "does not exist" in output:
        raise MonitoringError(f"{service.container_name} does not exist: run `ccoas up` first")
    if code != 0:
        raise EngineError(f"asking Prometheus in {service.container_name} failed (exit {code}): {output.strip()[-500:]}")
    try:
        return json.loads(output)
    except ValueError:
        raise EngineError(f"Prometheus in {service.container_name} answered something that is not JSON: {output.strip()[:300]}") from None


def instant_query(runtime: Exec, plan: Plan, promql: str) -> list[Sample]:
    return parse_query(_ask(runtime, plan, query_command(promql)))


def firing_alerts(runtime: Exec, plan: Plan) -> list[FiringAlert]:
    return parse_alerts(_ask(runtime, plan, alerts_command()))


# --- parsers (tested from recorded output) ---------------------------------------------------


def parse_query(body: dict[str, Any]) -> list[Sample]:
    """The ``data`` of ``/api/v1/query``: a vector, a scalar or a string; an error names itself."""
    if body.get("status") != "success":
        raise MonitoringError(f"Prometheus refused the query: {body.get('errorType', 'error')}: {body.get('error', body)}")
    data = body["data"]
    kind = data["resultType"]
    if kind == "vector":
        return [Sample(dict(sorted(r["metric"].items())), float(r["value"][1]), float(r["value"][0])) for r in data["result"]]
    if kind == "scalar":
        return [Sample({}, float(data["result"][1]), float(data["result"][0]))]
    if kind == "matrix":
        raise MonitoringError("a range vector is not an instant result: wrap it in a function (rate(…[5m]), max_over_time(…))")
    raise MonitoringError(f"unsupported result type {kind!r}")


def parse_alerts(body: dict[str, Any]) -> list[FiringAlert]:
    """Firing alerts of ``/api/v1/alerts`` (pending ones are not firing yet), sorted."""
    if body.get("status") != "success":
        raise MonitoringError(f"Prometheus refused the alerts request: {body.get('error', body)}")
    firing = []
    for alert in body["data"]["alerts"]:
        if alert.get("state") != "firing":
            continue
        labels = dict(sorted(alert["labels"].items()))
        firing.append(
            FiringAlert(
                name=labels.get("alertname", "?"),
                service=labels.get("service", "-"),
                severity=labels.get("severity", "-"),
                summary=alert.get("annotations", {}).get("summary", ""),
                active_since=alert.get("activeAt", ""),
                labels=labels,
            )
        )
    return sorted(firing, key=lambda a: (a.name, a.service, a.summary))


# --- ccoas's own figures ---------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    name: str
    help: str
    value: float
    labels: dict[str, str] = field(default_factory=dict)


def textfile(figures: list[Figure]) -> str:
    """The Prometheus text format of ``figures``, grouped by name, in a stable order."""
    lines: list[str] = []
    seen: set[str] = set()
    for figure in sorted(figures, key=lambda f: (f.name, sorted(f.labels.items()))):
        if figure.name not in seen:
            seen.add(figure.name)
            lines += [f"# HELP {figure.name} {figure.help}", f"# TYPE {figure.name} gauge"]
        labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(figure.labels.items()))
        lines.append(f"{figure.name}{{{labels}}} {figure.value:g}" if labels else f"{figure.name} {figure.value:g}")
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def write_textfile(directory: Path, figures: list[Figure]) -> Path:
    """Replace ``directory/ccoas.prom`` atomically (the collector never reads half a file).

    ``directory`` is a runtime dir under the engine user's XDG_RUNTIME_DIR, which that user can
    write: :func:`ccoas.host_files.write_file` walks it without following a link the engine
    user could have planted and renames a fresh file into place."""
    host_files.write_file(directory / TEXTFILE, textfile(figures).encode(), 0o644)
    return directory / TEXTFILE


BACKUP_RECORD = "backups.json"
"""In a stack's state dir: when ``ccoas backup`` last wrote a bundle (and where)."""


def record_backup(state: Path, path: Path, when: float) -> None:
    """Remember the newest backup of a stack (the ``BackupOverdue`` alert reads its age)."""
    state.mkdir(parents=True, exist_ok=True)
    scratch = state / f".{BACKUP_RECORD}.{os.getpid()}"
    scratch.write_text(json.dumps({"newest": {"path": str(path), "time": when}}, sort_keys=True) + "\n")
    os.replace(scratch, state / BACKUP_RECORD)


def newest_backup(state: Path, snapshots: Path) -> float | None:
    """The time of the newest backup: ``ccoas backup``'s record, or a snapshot ``up`` took."""
    times = []
    try:
        times.append(float(json.loads((state / BACKUP_RECORD).read_text())["newest"]["time"]))
    except (FileNotFoundError, KeyError, ValueError):
        pass
    if snapshots.is_dir():
        times += [p.stat().st_mtime for p in snapshots.iterdir() if p.is_file() and not p.name.endswith(".unseal")]
    return max(times) if times else None


def stack_figures(statuses: list[Any], restarts: dict[str, int], newest_backup_time: float | None, now: float) -> list[Figure]:
    """ccoas's own figures at the end of an ``up``: each container's health and restarts, and
    the newest backup's time (0 when there is none: the ``BackupOverdue`` alert then fires)."""
    figures = [Figure("ccoas_figures_timestamp_seconds", "when ccoas last wrote these figures (at up)", now)]
    for status in statuses:
        labels = {"service": status.service}
        figures.append(Figure("ccoas_container_running", "1 when the container was running at the last up", float(status.state == "running"), labels))
        figures.append(Figure("ccoas_container_healthy", "1 when the container was healthy at the last up", float(status.health == "healthy"), labels))
        figures.append(Figure("ccoas_container_restarts", "restarts the engine made of the container", float(restarts.get(status.service, 0)), labels))
    figures.append(
        Figure(
            "ccoas_backup_newest_timestamp_seconds",
            "when the newest backup of the stack was written (0: none)",
            newest_backup_time or 0.0,
            {"service": "backup"},
        )
    )
    return figures
