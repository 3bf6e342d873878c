"""What the engine holds for a stack, read once per ``up``: the input of :mod:`ccoas.engine.diff`.

Plain dataclasses that round-trip through JSON (:meth:`ObservedState.to_json`,
:meth:`ObservedState.from_json`), so the diff is unit-tested from recorded states with no
engine (``tests/fixtures/observed/``), the way pyinfra tests operations from facts.
:meth:`ccoas.engine.local.LocalEngine.observe` fills them in.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


def port_bindings(attrs: dict[str, Any]) -> dict[str, list[tuple[str, int]]]:
    """An inspected container's published ports: ``"8443/tcp"`` → ``[(host ip, host port)]``
    (host ip empty when the engine says none)."""
    ports = (attrs.get("NetworkSettings") or {}).get("Ports") or {}
    return {
        port: [(b.get("HostIp") or "", int(b["HostPort"])) for b in bindings or [] if b.get("HostPort")]
        for port, bindings in sorted(ports.items())
    }


@dataclass(frozen=True)
class ObservedContainer:
    name: str
    service: str
    """The ``io.ccoas.service`` label: which plan service it was created for."""
    id: str
    state: str
    """``running``, ``exited``, ``created``, ``paused``, ``dead``…"""
    health: str = ""
    """The engine's last health result (``healthy``, ``unhealthy``, ``starting``), or empty."""
    spec: str = ""
    """The ``io.ccoas.spec`` label: the hash of the desired state it was created from."""
    parts: dict[str, str] = field(default_factory=dict)
    """Hashes of the parts of that state (``body``, ``image``, ``config``, ``secrets``), to name a cause."""
    published: dict[str, list[str]] = field(default_factory=dict)
    """``"8443/tcp"`` → ``["127.0.0.1:8443"]``: the host addresses bound."""


@dataclass(frozen=True)
class ObservedNetwork:
    name: str
    internal: bool
    isolate: bool = True
    """Whether the engine holds it with Podman's ``isolate`` option now (what netavark gets at
    the next container start), not what its file on disk says."""
    enforced: bool = True
    """Whether its bridge, if up, has netavark's isolation rule (false: containers on it were
    started while the engine held it without ``isolate``, and run unisolated until restarted)."""


@dataclass(frozen=True)
class ObservedVault:
    sealed: bool | None
    """``None`` when Vault does not answer on its socket."""
    token_valid: bool
    """ccoas's own token works (it reads versions; the bootstrap re-mints it otherwise)."""
    versions: dict[str, int | None]
    """Secret name → its current version in Vault (``None``: not written yet)."""
    stack_ca_missing: bool = False
    """The stack generates its certificate but Vault holds no stack CA (a stack from before it)."""
    certificate_renewal: str | None = None
    """Why the edge certificate ccoas generated must be issued again (under 30 days left, or
    not the stack CA's), read from the file Nginx was given; ``None`` when it need not be."""


@dataclass(frozen=True)
class ObservedState:
    stack: str
    containers: dict[str, ObservedContainer]
    """By container name: every container labelled with the stack, planned or not."""
    networks: dict[str, ObservedNetwork]
    """By engine name."""
    volumes: tuple[str, ...]
    images: dict[str, str]
    """Image ref → image id, for the plan's images present on the host."""
    vault: ObservedVault | None = None
    secret_files: dict[str, bool] = field(default_factory=dict)
    """Service → every secret file it mounts exists on the host."""
    steps: dict[str, str] = field(default_factory=dict)
    """Step → hash of the inputs of its last successful run (hooks, the Vault bootstrap)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "ObservedState":
        data: dict[str, Any] = json.loads(text)
        vault = data.get("vault")
        return cls(
            stack=data["stack"],
            containers={k: ObservedContainer(**v) for k, v in data.get("containers", {}).items()},
            networks={k: ObservedNetwork(**v) for k, v in data.get("networks", {}).items()},
            volumes=tuple(data.get("volumes", ())),
            images=dict(data.get("images", {})),
            vault=ObservedVault(**vault) if vault else None,
            secret_files=dict(data.get("secret_files", {})),
            steps=dict(data.get("steps", {})),
        )
