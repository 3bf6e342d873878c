"""Hasura's metadata, applied by ccoas through Hasura's own metadata API (the plain image has no
CLI). Hasura cannot run here (no registry): what is proven without it is the request exactly as
the rendered hook sends it, to a local HTTP listener standing where Hasura's loopback port is.
The body is golden (tests/golden/prod/hasura/replace_metadata.json, through test_render.py);
tests/e2e/test_hasura_metadata_api.py posts it to a real Hasura where a registry is reachable.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import threading
from pathlib import Path

import pytest

from ccoas.planner import build_plan
from ccoas.render import rendered_files
from ccoas.stack import validate_document

SECRET = "hasura-admin-secret-0123456789-abcdefghijklmnopqrstuv"


class Listener(http.server.BaseHTTPRequestHandler):
    """Records each request; answers with the class's ``status`` and ``answer``."""

    received: list[dict] = []
    status = 200
    answer = b'{"message":"success"}'

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append({"path": self.path, "headers": dict(self.headers), "body": body})
        self.send_response(type(self).status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(type(self).answer)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def listener():
    Listener.received, Listener.status, Listener.answer = [], 200, b'{"message":"success"}'
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Listener)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def hook_script(load_plan, tmp_path: Path, port: int) -> tuple[Path, bytes]:
    """The rendered hook with its three container paths moved into ``tmp_path``: the secret
    file, the rendered body and Hasura's loopback address."""
    plan = load_plan("prod")
    files = rendered_files(plan)
    service = plan.service("hasura")
    [hook] = service.hooks
    assert hook.command == ("sh", "/etc/ccoas/hasura/apply-metadata.sh") and hook.stage == "alive"
    body = files["hasura/replace_metadata.json"].encode()
    (tmp_path / "replace_metadata.json").write_bytes(body)
    (tmp_path / "secret").write_text(SECRET)
    script = (
        files["hasura/apply-metadata.sh"]
        .replace("/run/secrets/hasura_admin_secret", str(tmp_path / "secret"))
        .replace("/etc/ccoas/hasura/replace_metadata.json", str(tmp_path / "replace_metadata.json"))
        .replace(f"http://127.0.0.1:{service.expose[0]}/", f"http://127.0.0.1:{port}/")
    )
    (tmp_path / "apply-metadata.sh").write_text(script)
    return tmp_path / "apply-metadata.sh", body


def test_the_hook_posts_the_rendered_metadata_with_the_admin_secret(load_plan, tmp_path, listener):
    script, body = hook_script(load_plan, tmp_path, listener.server_port)

    run = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=60)

    assert run.returncode == 0, run.stderr
    [request] = Listener.received
    assert request["path"] == "/v1/metadata"
    assert request["headers"]["X-Hasura-Admin-Secret"] == SECRET
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["body"] == body
    sent = json.loads(request["body"])
    assert sent["type"] == "replace_metadata" and sent["args"]["allow_inconsistent_metadata"] is False
    tables = sent["args"]["metadata"]["sources"][0]["tables"]
    assert [t["table"]["name"] for t in tables] == ["notes", "documents"]
    assert SECRET not in script.read_text() and SECRET not in run.stdout + run.stderr


def test_inconsistent_metadata_fails_the_hook_with_hasuras_reason(load_plan, tmp_path, listener):
    Listener.status = 400
    Listener.answer = b'{"code":"unexpected","error":"cannot continue due to inconsistent metadata","path":"$.args"}'
    script, _ = hook_script(load_plan, tmp_path, listener.server_port)

    run = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=60)

    assert run.returncode == 1
    assert "HTTP 400" in run.stderr and "inconsistent metadata" in run.stderr


def test_a_missing_admin_secret_fails_before_any_request(load_plan, tmp_path, listener):
    script, _ = hook_script(load_plan, tmp_path, listener.server_port)
    (tmp_path / "secret").write_text("")

    run = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=60)

    assert run.returncode == 1 and "missing or empty" in run.stderr
    assert Listener.received == []


def test_names_that_read_as_yaml_scalars_stay_strings_in_the_request(stack_document):
    """Defence in depth behind the planner's rule (which refuses them): the body is JSON built
    as data, so even a column named ``null`` or ``true`` stays a string (schema-only validation
    here, to get past the rule)."""
    doc = stack_document("prod")
    doc["schema"]["tables"][0]["columns"][2]["name"] = "null"
    doc["schema"]["tables"][1]["columns"][2]["name"] = "true"
    body = json.loads(rendered_files(build_plan(validate_document(doc, "hostile.yaml")))["hasura/replace_metadata.json"])
    [notes, documents] = body["args"]["metadata"]["sources"][0]["tables"]
    assert "null" in notes["select_permissions"][0]["permission"]["columns"]
    assert "true" in documents["insert_permissions"][0]["permission"]["columns"]


def test_the_entrypoint_execs_the_engine_itself(load_plan):
    """No hand-over to the cli-migrations image's docker-entrypoint.sh: the plain image serves."""
    entrypoint = rendered_files(load_plan("prod"))["hasura/entrypoint.sh"]
    assert entrypoint.rstrip().endswith('exec "$@"')
    assert "docker-entrypoint.sh" not in entrypoint.replace("# ", "")
