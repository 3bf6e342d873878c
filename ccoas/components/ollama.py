"""Ollama: local model server for embeddings and completions. On the db network only.

No credentials (it is unreachable from the edge); models live on a volume. Locally its
image is built from the Go module (cgo, CPU only).
"""

from __future__ import annotations

from ccoas.components.base import Component, Context, Recipe, check
from ccoas.plan import Artifact, Secret, Service, VolumeMount

PORT = 11434
# v0.11.4 is the newest Ollama whose Go module builds from the module proxy alone: later
# versions keep llama.cpp headers under vendor/, which module downloads leave out.
VERSION = "v0.11.4"


def secrets(ctx: Context) -> list[Secret]:
    return []


def service(ctx: Context) -> Service:
    return ctx.service(
        COMPONENT,
        command=("ollama", "serve"),
        environment={
            "HOME": "/var/lib/ollama",
            "OLLAMA_HOST": f"0.0.0.0:{PORT}",
            "OLLAMA_MODELS": "/var/lib/ollama/models",
            "OLLAMA_NOPRUNE": "1",
            "OLLAMA_NO_CLOUD": "1",
        },
        volumes=(VolumeMount(volume="ollama-models", target="/var/lib/ollama"),),
        healthcheck=check("CMD", "ollama", "list", interval=5),
        liveness=check("CMD", "ollama", "list", interval=10),
    )


COMPONENT = Component(
    name="ollama",
    summary="Ollama: model server (CPU) for embeddings and completions",
    uid=1000,
    gid=1000,
    ports=(PORT,),
    networks=("db",),
    registry_image="docker.io/ollama/ollama:0.12.6@sha256:352e045b937ac29d3d9550c22fb85525f60a89e064df34c26579bee5a93b3a16",
    recipe=Recipe(
        containerfile="ollama/Containerfile.j2",
        artifacts=(
            Artifact(
                kind="go",
                spec=f"github.com/ollama/ollama@{VERSION}",
                binary="ollama",
                cgo=True,
                # without these the server reports version 0.0.0 and runs its web framework in debug mode
                ldflags=(f"-X=github.com/ollama/ollama/version.Version={VERSION[1:]}", "-X=github.com/ollama/ollama/server.mode=release"),
            ),
        ),
    ),
    default_limits={"memory": "4Gi", "cpus": 2.0, "pids": 512},
    declare_secrets=secrets,
    declare_service=service,
)
