"""The reachability matrix: which service may open a TCP connection to which port of which
other service, as the plan declares it, and as measured from inside the running stack.

Declared: a service reaches another's exposed ports exactly when they share a network.
Measured: for each source service, one probe container joins the source's network
namespace (``--network container:<source>``: the same interfaces, routes and firewall as
the service itself) and tries every port of every other service at every address that
service has, on any network. A probe that cannot run (its tool missing) fails; a probe
whose own proof connection fails (the source's own port on loopback, or a declared peer)
proved nothing and fails too, so "unreachable" is never vacuous.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Callable

from ccoas.plan import Plan

PROBE_TIMEOUT_S = 2
PROBE_SERVICES = ("nginx", "vault", "postgres")
"""Whose image runs the probe (the first enabled): each has bash and coreutils' timeout."""


Edge = tuple[str, str, int]
"""(source service, target service, target port)."""


def declared(plan: Plan) -> dict[Edge, bool]:
    """Every (source, target, port) of the stack → whether the plan lets it connect."""
    matrix = {}
    for source in plan.services:
        for target in plan.services:
            if target.name == source.name:
                continue
            shared = bool(set(source.networks) & set(target.networks))
            for port in target.expose:
                matrix[(source.name, target.name, port)] = shared
    return matrix


class ProbeError(AssertionError):
    """A probe could not run, or could not prove that it would have seen a connection."""


@dataclass
class Measured:
    matrix: dict[Edge, bool] = field(default_factory=dict)
    proofs: dict[str, str] = field(default_factory=dict)
    """Source service → the connection that proved its probe works (``self:8200``, ``directus:8055``)."""


def probe_script(own_port: int | None, targets: list[tuple[str, int, str]]) -> str:
    """Bash: one line ``<target> <port> <address> open|closed`` per attempt, in parallel.
    ``own_port`` None: the source listens on nothing (a worker), so only a declared peer can
    prove the probe works."""
    lines = [
        "set -u",
        "command -v timeout >/dev/null || { echo 'probe: timeout (coreutils) is missing' >&2; exit 127; }",
        f'probe() {{ if timeout {PROBE_TIMEOUT_S} bash -c "exec 3<>/dev/tcp/$3/$2" 2>/dev/null; then echo "$1 $2 $3 open"; else echo "$1 $2 $3 closed"; fi; }}',
        *([f"probe self {own_port} 127.0.0.1 &"] if own_port is not None else []),
    ]
    lines += [f"probe {shlex.quote(t)} {port} {shlex.quote(address)} &" for t, port, address in targets]
    lines.append("wait")
    return "\n".join(lines) + "\n"


Runner = Callable[[str, str, str], tuple[int, str, str]]
"""(source container, probe image, bash script) → (exit code, stdout, stderr)."""


def measure(plan: Plan, addresses: dict[str, list[str]], run: Runner) -> Measured:
    """Probe from every service; ``addresses`` maps each service to its IPs on every network."""
    probe_image = next((plan.service(s).image.ref for s in PROBE_SERVICES if plan.has(s)), None)
    if probe_image is None:
        raise ProbeError(f"no probe image: the stack enables none of {', '.join(PROBE_SERVICES)}")
    wanted = declared(plan)
    result = Measured()
    for source in plan.services:
        targets = [(t.name, port, ip) for t in plan.services if t.name != source.name for port in t.expose for ip in addresses[t.name]]
        own_port = source.expose[0] if source.expose else None
        code, out, err = run(source.container_name, probe_image, probe_script(own_port, targets))
        if code != 0:
            raise ProbeError(f"{source.name}: the probe could not run (exit {code}): {err.strip() or out.strip()}")
        seen = {}
        for line in out.splitlines():
            target, port, address, state = line.split()
            key = (target, int(port))
            seen[key] = seen.get(key, False) or state == "open"
        expected = len({(t, p) for t, p, _ in targets}) + (own_port is not None)
        if len(seen) != expected:
            raise ProbeError(f"{source.name}: the probe answered {len(seen)} of {expected} attempts:\n{out}{err}")
        proof = [f"{t}:{p}" for (t, p), open_ in sorted(seen.items()) if open_ and (t == "self" or wanted.get((source.name, t, p)))]
        if not proof:
            raise ProbeError(f"{source.name}: the probe reached neither its own port nor any declared peer: it proves nothing")
        result.proofs[source.name] = proof[0]
        for (target, port), open_ in seen.items():
            if target != "self":
                result.matrix[(source.name, target, port)] = open_
    return result


def differences(plan: Plan, measured: Measured) -> list[str]:
    wanted = declared(plan)
    return [
        f"{s} → {t}:{p}: declared {'reachable' if wanted[(s, t, p)] else 'unreachable'}, measured {'reachable' if measured.matrix.get((s, t, p)) else 'unreachable'}"
        for s, t, p in sorted(wanted)
        if wanted[(s, t, p)] != measured.matrix.get((s, t, p))
    ]


def matrix_rows(plan: Plan, matrix: dict[Edge, bool]) -> list[list[str]]:
    """Rows of a source × target table: each cell lists the reachable ports (``-`` for none)."""
    names = [s.name for s in plan.services]
    rows = [["from \\ to", *names]]
    for source in names:
        row = [source]
        for target in names:
            if target == source:
                row.append("·")
                continue
            ports = sorted(p for (s, t, p), ok in matrix.items() if s == source and t == target and ok)
            row.append(",".join(map(str, ports)) or "-")
        rows.append(row)
    return rows
