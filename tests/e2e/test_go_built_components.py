"""MinIO and Ollama from their Go modules: built locally, run hardened, pass every control."""

from __future__ import annotations

import uuid

import pytest

from ccoas.compliance import run_checks
from ccoas.engine.local import LocalEngine
from ccoas.planner import build_plan, load_stack

pytestmark = pytest.mark.e2e


def test_minio_and_ollama_come_up_hardened(small_stack):
    stack = small_stack("gobuilt", "vault", "minio", "ollama")
    name = f"go-{uuid.uuid4().hex[:6]}"
    engine = LocalEngine.connect(build_plan(load_stack(stack), name=name))
    try:
        result = engine.up()
        assert {r.service: r.health for r in result.status} == {"vault": "healthy", "minio": "healthy", "ollama": "healthy"}
        ollama = engine.client.containers.get(engine.plan.service("ollama").container_name)
        version = ollama.exec_run(["ollama", "--version"], user="1000:1000").output.decode()
        assert "0.11.4" in version  # stamped at build time (release mode, real version)
        minio = engine.client.containers.get(engine.plan.service("minio").container_name)
        assert minio.exec_run(["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:9000/minio/health/cluster"], user="1000:1000").exit_code == 0
        # MinIO silently falls back to minioadmin when a *_FILE is missing, and then warns: it must not
        assert "default credentials" not in minio.logs().decode().lower()
        assert minio.exec_run(["sh", "-c", "test -s /run/secrets/minio_root_user && test -s /run/secrets/minio_root_password"], user="1000:1000").exit_code == 0
        assert run_checks(stack, name) == 0
    finally:
        engine.down(purge=True)
