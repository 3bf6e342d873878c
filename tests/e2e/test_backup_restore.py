"""Backup and restore of the ci stack, end to end, through the CLI.

Rows written through Directus, an object put straight into MinIO (random bytes, a content
type and user metadata) and one uploaded through Directus, a secret rotated; ``ccoas backup``
(encrypted and authenticated); ``down --purge``; a bundle with one byte flipped and the same
bundle rewritten as an unauthenticated (format 1) one are refused before anything is created;
``ccoas restore``; everything is back, the admin password from before the backup still logs
in, every service is healthy.

The backup → restore round trip is always taken and asserted: the known Directus ↔ MinIO
defect (issue #15) may only turn the test into an xfail at its very end, after every other
check has passed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import shlex
import signal
import threading
import time
import ssl
import stat
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from ccoas.backup import MAGIC, load_key, open_bundle
from ccoas.engine.local import LocalEngine
from ccoas.planner import build_plan, load_stack

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
STACK = REPO / "stacks" / "ci.yaml"
NAME = f"e2e-h15-br-{uuid.uuid4().hex[:4]}"


@pytest.fixture(scope="module")
def engine():
    engine = LocalEngine.connect(build_plan(load_stack(STACK), name=NAME))
    try:
        engine.up()
        yield engine
    finally:
        engine.down(purge=True)


def ccoas(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ccoas.cli", *args], capture_output=True, text=True, timeout=1800, cwd=REPO)


class Directus:
    def __init__(self, engine: LocalEngine):
        rows = {r.service: r for r in engine.status()}
        self.url = [e for e in rows["nginx"].endpoints if e.startswith("https://")][0] + "/directus"
        self.context = ssl.create_default_context(cafile=str(engine.paths.secret_file("nginx", "nginx_tls_cert")))
        self.context.check_hostname = False
        self.host = engine.plan.domain  # Nginx answers only for the stack's domain (others: 421)
        self.token = ""

    def call(self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json") -> bytes:
        headers = {"Content-Type": content_type, "Host": self.host}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(f"{self.url}{path}", data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=60) as response:
                return response.read()
        except urllib.error.HTTPError as exc:  # say what Directus said, not only its status
            raise AssertionError(f"{method} {path}: HTTP {exc.code}: {exc.read()[:2000]!r}") from None

    def login(self, email: str, password: str) -> None:
        self.token = ""
        answer = self.call("POST", "/auth/login", json.dumps({"email": email, "password": password}).encode())
        self.token = json.loads(answer)["data"]["access_token"]


def test_backup_purge_restore_brings_everything_back(engine, tmp_path):
    engine.rotate("postgres")
    versions = {s.name: s.version for s in engine.secrets().list()}
    assert versions["postgres/directus_password"] >= 2
    admin_password = engine.paths.secret_file("directus", "directus_admin_password").read_text()

    directus = Directus(engine)
    directus.login("admin@example.com", admin_password)
    folders = [f"h15-folder-{i}-{uuid.uuid4().hex[:6]}" for i in range(3)]
    for folder in folders:
        directus.call("POST", "/folders", json.dumps({"name": folder}).encode())
    direct = mc(engine, "head -c 300000 /dev/urandom > /tmp/blob && mc --quiet cp --attr 'Content-Type=application/x-h15;X-Amz-Meta-Owner=h15' /tmp/blob " + shlex.quote(f"s3/uploads/{DIRECT_KEY}") + " >/dev/null && sha256sum < /tmp/blob")
    direct_sha = direct.split()[0]
    payload = os.urandom(200_000)
    stored, refused_upload = upload(directus, payload)
    postgres = engine.client.containers.get(engine.plan.service("postgres").container_name)
    insert = postgres.exec_run(
        ["psql", "-X", "-qAt", "-v", "ON_ERROR_STOP=1", "-h", "/tmp", "-U", "postgres", "-d", "app", "-c",
         "INSERT INTO app.notes (owner_id, body) VALUES (gen_random_uuid(), 'h15 row') RETURNING id"],
        user="999:999",
    )
    assert insert.exit_code == 0, insert.output
    note_id = insert.output.decode().strip()

    bundle, key = tmp_path / "stack.ccoas", tmp_path / "backup.key"
    unseal_key = json.loads(engine.paths.vault_init.read_text())["keys_base64"][0]
    ccoas_token = engine.paths.ccoas_token.read_text().strip()
    taken = ccoas("backup", str(STACK), "--name", NAME, "--out", str(bundle), "--key-file", str(key))
    assert taken.returncode == 0, taken.stderr + taken.stdout
    for path in (bundle, key):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert not Path(f"{bundle}.unseal").exists()  # the unseal key travels inside, authenticated
    data = bundle.read_bytes()
    assert payload[:64] not in data and unseal_key.encode() not in data  # encrypted
    members = open_bundle(bundle, key).members
    assert json.loads(members["vault/unseal.json"]) == {"keys_base64": [unseal_key]}
    assert not any(ccoas_token.encode() in content for content in members.values())  # ccoas's token does not travel

    engine.down(purge=True)

    # The same bundle as an older ccoas wrote it (format 1: no authentication, unseal file
    # beside): someone who can write bundles but lacks the key can make that. Refused, exit 2.
    legacy = tmp_path / "legacy.ccoas"
    legacy.write_bytes(unauthenticated_copy(members))
    Path(f"{legacy}.unseal").write_text(json.dumps({"keys_base64": [unseal_key], "snapshot_sha256": hashlib.sha256(members["vault/raft.snap"]).hexdigest()}))
    refused = ccoas("restore", str(legacy), str(STACK), "--name", NAME)
    assert refused.returncode == 2, refused.stderr
    assert "not authenticated" in refused.stderr and "--insecure-unauthenticated" in refused.stderr
    assert engine._owned("containers") == [] and engine._owned("volumes") == []

    damaged = tmp_path / "damaged.ccoas"
    data = bytearray(bundle.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    refused = ccoas("restore", str(damaged), str(STACK), "--name", NAME, "--key-file", str(key))
    assert refused.returncode == 2, refused.stderr
    assert "checksum mismatch" in refused.stderr
    assert engine._owned("containers") == [] and engine._owned("volumes") == []
    load_key(tmp_path / "another.key", create=True)
    refused = ccoas("restore", str(bundle), str(STACK), "--name", NAME, "--key-file", str(tmp_path / "another.key"))
    assert refused.returncode == 2 and "does not authenticate" in refused.stderr, refused.stderr
    assert engine._owned("containers") == [] and engine._owned("volumes") == []
    assert not engine.paths.vault_init.exists()

    restored = ccoas("restore", str(bundle), str(STACK), "--name", NAME, "--key-file", str(key))
    assert restored.returncode == 0, restored.stderr[-4000:] + restored.stdout

    assert {r.service: r.health for r in engine.status()} == {s.name: "healthy" for s in engine.plan.services}
    assert {s.name: s.version for s in engine.secrets().list()} == versions
    directus = Directus(engine)
    directus.login("admin@example.com", admin_password)
    names = {f["name"] for f in json.loads(directus.call("GET", "/folders?limit=-1"))["data"]}
    assert set(folders) <= names
    assert mc(engine, "mc --quiet cat " + shlex.quote(f"s3/uploads/{DIRECT_KEY}") + " | sha256sum").split()[0] == direct_sha
    metadata = json.loads(mc(engine, "mc --json stat " + shlex.quote(f"s3/uploads/{DIRECT_KEY}")))["metadata"]
    assert metadata.get("Content-Type") == "application/x-h15" and metadata.get("X-Amz-Meta-Owner") == "h15", metadata
    postgres = engine.client.containers.get(engine.plan.service("postgres").container_name)
    row = postgres.exec_run(
        ["psql", "-X", "-qAt", "-h", "/tmp", "-U", "postgres", "-d", "app", "-c", f"SELECT body FROM app.notes WHERE id = '{note_id}'"],
        user="999:999",
    )
    assert row.output.decode().strip() == "h15 row"
    # Every check above is strict. Only the Directus ↔ MinIO defect may make this an xfail, now.
    if stored is None:
        pytest.xfail(f"{KNOWN_DEFECT}: the round trip passed, but Directus could not store the upload before the backup ({refused_upload})")
    meta = json.loads(directus.call("GET", f"/files/{stored['id']}"))["data"]
    assert meta["title"] == "h15 object"
    try:
        asset = directus.call("GET", f"/assets/{stored['id']}")
    except AssertionError as exc:
        diagnosis = asset_diagnosis(engine, stored["filename_disk"])
        time.sleep(5)
        try:
            again = "answered" if directus.call("GET", f"/assets/{stored['id']}") == payload else "answered other bytes"
        except AssertionError as second:
            again = str(second)
        # Only this symptom is a known defect; every other check above is strict.
        pytest.xfail(f"{KNOWN_DEFECT}: after restore Directus refused the restored upload's asset ({exc}); 5 s later: {again}; {diagnosis}")
    assert asset == payload


KNOWN_DEFECT = "known intermittent defect (issue #15, open): Directus and MinIO"
DIRECT_KEY = "h15/direct object.bin"


def mc(engine: LocalEngine, script: str) -> str:
    """``script`` in MinIO's container with ``mc``'s alias ``s3`` for its root user."""
    minio = engine.client.containers.get(engine.plan.service("minio").container_name)
    setup = 'export MC_CONFIG_DIR=/tmp/.mc-h15 MC_HOST_s3="http://$(cat /run/secrets/minio_root_user):$(cat /run/secrets/minio_root_password)@127.0.0.1:9000"; '
    result = minio.exec_run(["sh", "-c", setup + script], user=engine.plan.service("minio").user)
    assert result.exit_code == 0, result.output.decode(errors="replace")
    return result.output.decode()


def upload(directus: Directus, payload: bytes) -> tuple[dict | None, str]:
    """A file uploaded through Directus (to MinIO), tried three times: the known defect refuses
    some first uploads of a fresh stack. ``(None, why)`` when every try was refused."""
    boundary = "h15-boundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="title"\r\n\r\nh15 object\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="blob.bin"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + payload + f"\r\n--{boundary}--\r\n".encode()
    refusals = []
    for _ in range(3):
        try:
            stored = json.loads(directus.call("POST", "/files", body, f"multipart/form-data; boundary={boundary}"))["data"]
        except AssertionError as exc:
            refusals.append(str(exc))
            time.sleep(5)
            continue
        assert stored["storage"] == "s3"
        return stored, ""
    return None, "; ".join(refusals)


def unauthenticated_copy(members: dict[str, bytes]) -> bytes:
    """``members`` as a format-1 bundle: plain tar, its own checksums, nothing a key proves."""
    members = {name: content for name, content in members.items() if name != "vault/unseal.json"}
    manifest = {"files": {name: hashlib.sha256(content).hexdigest() for name, content in members.items()}}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, content in {"manifest.json": json.dumps(manifest).encode(), **members}.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    payload = buffer.getvalue()
    header = {"format": "ccoas-backup", "version": 1, "encrypted": False, "sha256": hashlib.sha256(payload).hexdigest()}
    return MAGIC + json.dumps(header).encode() + b"\n" + payload


def asset_diagnosis(engine: LocalEngine, key: str | None) -> str:
    """Why Directus may not reach an object: is it in MinIO, does Directus resolve and reach
    MinIO (its resolver order: it is on db and edge, MinIO on edge only), what Directus logged."""
    said = []
    if key is not None:
        minio = engine.client.containers.get(engine.plan.service("minio").container_name)
        stat = minio.exec_run(
            ["sh", "-c", 'MC_CONFIG_DIR=/tmp/.mc MC_HOST_s3="http://$(cat /run/secrets/minio_root_user):$(cat /run/secrets/minio_root_password)@127.0.0.1:9000" mc stat "s3/uploads/$0"', key],
            user=engine.plan.service("minio").user,
        )
        said.append(f"mc stat: {stat.output.decode(errors='replace')[-600:]}")
    directus = engine.client.containers.get(engine.plan.service("directus").container_name)
    for command in (
        ["cat", "/etc/resolv.conf"],
        ["getent", "hosts", "minio"],
        ["node", "-e", "fetch('http://minio:9000/minio/health/ready').then(r=>console.log('minio from directus:', r.status)).catch(e=>console.log('minio from directus:', e.cause||e))"],
    ):
        result = directus.exec_run(command, user=engine.plan.service("directus").user)
        said.append(f"{' '.join(command[:2])} (exit {result.exit_code}): {result.output.decode(errors='replace')[-400:]}")
    said.append(f"directus log: {directus.logs(tail=30).decode(errors='replace')[-1200:]}")
    return "\n".join(said)


def test_restore_refuses_a_stack_that_is_not_empty(engine, tmp_path):
    bundle = tmp_path / "again.ccoas"
    assert ccoas("backup", str(STACK), "--name", NAME, "--out", str(bundle)).returncode == 0
    refused = ccoas("restore", str(bundle), str(STACK), "--name", NAME)
    assert refused.returncode == 2
    assert "not empty" in refused.stderr and "down --purge" in refused.stderr
    assert {r.service: r.health for r in engine.status()}["postgres"] == "healthy"


def redis_cli(engine: LocalEngine, *args: str) -> str:
    container = engine.client.containers.get(engine.plan.service("redis").container_name)
    command = 'exec redis-cli --no-auth-warning -h 127.0.0.1 --user directus --pass "$(cat /run/secrets/redis_directus_password)" "$@"'
    result = container.exec_run(["sh", "-c", command, "redis-cli", *args], user="999:999")
    assert result.exit_code == 0, result.output.decode()
    return result.output.decode().strip()


def test_a_redis_key_written_just_before_down_is_there_after_up(engine):
    """Redis stops on SIGTERM with shutdown-on-sigterm save: nothing written before ``down`` is lost."""
    value = uuid.uuid4().hex
    assert redis_cli(engine, "SET", "h15-before-down", value) == "OK"
    assert "killed" not in engine.down()
    engine.up()
    assert redis_cli(engine, "GET", "h15-before-down") == value


def test_directus_answers_a_request_that_waited_while_its_event_loop_was_held_up(engine):
    """A starved host holds Directus's event loop up (the container is not scheduled, or is
    busy); the requests that waited must be answered once it runs again, not refused with
    503 "Under pressure" by Directus's pressure limiter, which reads the loop's delay and
    refused the restored upload's asset in whole e2e runs. Here the hold is made on purpose:
    Directus's process is stopped for 15 s while a request waits in Nginx."""
    directus = Directus(engine)
    directus.login("admin@example.com", engine.paths.secret_file("directus", "directus_admin_password").read_text())
    pid = engine.client.containers.get(engine.plan.service("directus").container_name).attrs["State"]["Pid"]
    answers: list[object] = []

    def ask() -> None:
        try:
            answers.append(directus.call("GET", "/users/me"))
        except AssertionError as exc:
            answers.append(exc)

    os.kill(pid, signal.SIGSTOP)
    try:
        waiting = threading.Thread(target=ask)
        waiting.start()
        time.sleep(15)
    finally:
        os.kill(pid, signal.SIGCONT)
    waiting.join(60)
    assert len(answers) == 1 and isinstance(answers[0], bytes), answers
    assert json.loads(answers[0])["data"]["email"] == "admin@example.com"
