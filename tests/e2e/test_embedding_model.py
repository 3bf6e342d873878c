"""The embedding model from a package, in the Ollama image built from its Go module.

The local Ollama image of the dev stack runs hardened as the plan says (uid 1000, read-only
root, no capabilities, no-new-privileges, /tmp on tmpfs, models on a volume) with no network
at all, so nothing can come from a model hub: its readiness check fails, the import hook
creates all-MiniLM-L6-v2 from the wheel's files in the image, ``ollama list`` shows it, and
``/api/embed`` answers 384 dimensions that rank a paraphrase above an unrelated sentence.
Deleting the model makes it unready again; the hook brings it back from the blobs it kept, and
a second run leaves it alone.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from ccoas.engine.runtime import Runtime
from ccoas.images import build_images
from ccoas.planner import load_plan
from ccoas.render import render

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
MODEL = "all-minilm-l6-v2"


@pytest.fixture(scope="module")
def ollama():
    plan = load_plan(REPO / "stacks" / "dev.yaml", name=f"e2e-h13-{uuid.uuid4().hex[:6]}")
    runtime = Runtime.connect()
    service = plan.service("ollama")
    build_images([service], runtime.layout, runtime.client)
    config = Path(tempfile.mkdtemp(prefix="ccoas-h13-"))  # the engine user must reach it: not under pytest's 0700 root
    config.chmod(0o755)
    render(plan, config)
    volume = f"{plan.stack}-ollama-models"
    # create + start, never the SDK's run(): run() pulls an image it does not find
    container = runtime.client.containers.create(
        service.image.ref,
        name=f"{plan.stack}-ollama",
        user=service.user,
        read_only=service.read_only,
        tmpfs={m.target: "" for m in service.tmpfs},
        cap_drop=list(service.cap_drop),
        security_opt=list(service.security_opt),
        environment=service.environment,
        command=list(service.command),
        network_mode="none",
        volumes={volume: {"bind": service.volumes[0].target, "mode": "rw"}, str(config / "ollama"): {"bind": service.config.target, "mode": "ro"}},
    )
    container.start()
    try:
        deadline = time.monotonic() + 60
        while not runtime.exec_check(service, service.liveness, container)[0]:
            assert time.monotonic() < deadline, container.logs().decode()[-2000:]
            time.sleep(1)
        yield plan, runtime, service, container
    finally:
        container.remove(force=True)
        runtime.client.volumes.get(volume).remove()
        shutil.rmtree(config, ignore_errors=True)


def run(container, service, *cmd: str) -> tuple[int, str]:
    result = container.exec_run(list(cmd), user=service.user)
    return result.exit_code, result.output.decode(errors="replace")


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_unready_until_the_hook_imports_the_packaged_model(ollama):
    plan, runtime, service, container = ollama
    tag = plan.embedding_model(MODEL).tag
    assert not runtime.exec_check(service, service.healthcheck, container)[0]
    (hook,) = service.hooks
    code, out = run(container, service, *hook.command)
    assert code == 0 and f"created {tag}" in out, out
    assert runtime.exec_check(service, service.healthcheck, container)[0]
    code, listing = run(container, service, "ollama", "list")
    assert code == 0 and tag in listing


def test_the_model_answers_384_dimensions_that_rank_a_paraphrase_above_an_unrelated_text(ollama):
    plan, runtime, service, container = ollama
    body = json.dumps({"model": plan.embedding_model(MODEL).tag, "input": ["How do I reset my password?", "Steps to change a forgotten password", "The tide comes in twice a day"]})
    code, out = run(container, service, "curl", "-fsS", "-d", body, "http://127.0.0.1:11434/api/embed")
    assert code == 0, out
    query, paraphrase, unrelated = json.loads(out)["embeddings"]
    assert len(query) == 384
    assert cosine(query, paraphrase) > 0.5 > 0.2 > cosine(query, unrelated)


def test_a_deleted_model_is_unready_and_comes_back_from_the_kept_blobs(ollama):
    plan, runtime, service, container = ollama
    tag = plan.embedding_model(MODEL).tag
    code, out = run(container, service, "curl", "-fsS", "-X", "DELETE", "-d", json.dumps({"model": tag}), "http://127.0.0.1:11434/api/delete")
    assert code == 0, out
    assert not runtime.exec_check(service, service.healthcheck, container)[0]
    (hook,) = service.hooks
    code, out = run(container, service, *hook.command)
    assert code == 0 and f"created {tag}" in out, out
    assert runtime.exec_check(service, service.healthcheck, container)[0]
    code, out = run(container, service, *hook.command)
    assert code == 0 and f"{tag} is present" in out, out
