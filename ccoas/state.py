"""Where a stack keeps its state on a host: rendered config, secret files, runtime dirs.

Who owns what (README, "Host layout"): the state root, ``stacks/``, each stack's state dir and
its ``render`` dir are root's (0755: the engine reads the rendered config it mounts), and so is
every file root keeps there (step record, boot record, markers, Vault material). The engine
user gets only leaf directories: its runtime dir's stack dirs, each runtime mount, a job's
staging dir. Root makes and changes all of them through :mod:`ccoas.host_files`.

Paths are the host's business, not the plan's: the plan says "mount the rendered
``nginx`` directory at /etc/ccoas/nginx"; :class:`StackPaths` says where that
directory is on this host. Every engine (local, Pulumi) resolves mounts through it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ccoas.plan import VaultPlan


@dataclass(frozen=True)
class StackPaths:
    state: Path
    """Persistent per-stack state (rendered files, Vault init material, Pulumi backend)."""
    runtime: Path
    """Per-stack runtime dir (the engine user's XDG_RUNTIME_DIR: tmpfs on systemd hosts)."""

    def own_state_dirs(self) -> None:
        """Make the state root, ``stacks/``, the state dir and its ``render`` dir root's (0755),
        whoever held them before (the engine user owned the state root before state schema 3)."""
        from ccoas import host_files

        owner = host_files.ROOT if os.geteuid() == 0 else None  # ccoas run as the engine user keeps its own
        for directory in (self.state.parent.parent, self.state.parent, self.state, self.render):
            host_files.make_dir(directory, 0o755, owner)

    @property
    def jobs(self) -> Path:
        """Root's (0755); each job's staging dir in it is handed to the container that runs the job."""
        return self.state / "jobs"

    @property
    def render(self) -> Path:
        return self.state / "render"

    @property
    def vault_init(self) -> Path:
        """Unseal keys and the initial root token (0600): see the README on auto-unseal."""
        return self.state / "vault-init.json"

    @property
    def ccoas_token(self) -> Path:
        return self.state / "vault-ccoas-token"

    @property
    def pulumi(self) -> Path:
        return self.state / "pulumi"

    @property
    def secrets(self) -> Path:
        """Secret files materialised from Vault, one per secret, 0400, owned by the reader's uid."""
        return self.runtime / "secrets"

    def secret_file(self, service: str, secret: str) -> Path:
        return secret_file_in(self.secrets, service, secret)

    def runtime_mount(self, name: str) -> Path:
        return self.runtime / name

    def config_dir(self, source: str) -> Path:
        return self.render / source

    def vault_socket(self, vault: VaultPlan) -> Path:
        """Where Vault's unix socket is on this host (the plan says which runtime mount holds it)."""
        return self.runtime_mount(vault.socket_mount) / vault.socket_file


def secret_file_in(root: Path, service: str, secret: str) -> Path:
    """Where ``service``'s copy of ``secret`` lives under a secrets directory: one file per
    reader, owned by that reader's uid (the engine's files and ``ccoas secrets init``'s alike)."""
    return root / service / secret


def state_dir(state_root: Path, stack: str) -> Path:
    """A stack's persistent state dir under the host's state root (``/var/lib/ccoas``)."""
    return state_root / "stacks" / stack


def stack_paths(state_root: Path, runtime_root: Path, stack: str) -> StackPaths:
    return StackPaths(state=state_dir(state_root, stack), runtime=runtime_root / "ccoas" / stack)
