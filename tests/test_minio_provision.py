"""The rendered MinIO provision script hands credentials to ``mc`` only through its config
file or stdin: never on a command line (``ps``, /proc/<pid>/cmdline) nor in its environment.

``mc`` here is a recorder on PATH that logs what each invocation received (its arguments,
its environment, its stdin, the config file it would read); the live run of the same
script against MinIO is in the e2e tier."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from ccoas.render import rendered_files

RECORDER = """#!/bin/sh
log={log}
{{
	printf 'ARGV'; for a in "$@"; do printf ' %s' "$a"; done; printf '\\n'
	env | sed 's/^/ENV /'
	case "$*" in *"user add"*) sed 's/^/STDIN /' ;; esac
	if [ -f "$MC_CONFIG_DIR/config.json" ]; then
		printf 'CONFIG %s ' "$(stat -c %a "$MC_CONFIG_DIR/config.json")"; cat "$MC_CONFIG_DIR/config.json"
	fi
}} >>"$log"
"""


def test_provision_passes_no_secret_on_argv_or_env(load_plan, tmp_path):
    plan = load_plan("dev")
    script = rendered_files(plan)["minio/provision.sh"]
    values = {}
    (tmp_path / "secrets").mkdir()
    for mount in plan.service("minio").secrets:
        values[mount.secret] = f"v{os.urandom(8).hex()}"
        (tmp_path / "secrets" / mount.secret).write_text(values[mount.secret])
    (tmp_path / "bin").mkdir()
    log = tmp_path / "mc.log"
    mc = tmp_path / "bin" / "mc"
    mc.write_text(RECORDER.format(log=log))
    mc.chmod(0o755)
    (tmp_path / "tmp").mkdir()
    relocated = script.replace("/tmp/", f"{tmp_path}/tmp/").replace("/run/secrets/", f"{tmp_path}/secrets/")
    (tmp_path / "provision.sh").write_text(relocated)
    env = {"PATH": f"{tmp_path}/bin:/usr/bin:/bin"}
    result = subprocess.run(["sh", str(tmp_path / "provision.sh")], capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 0, result.stderr
    lines = log.read_text().splitlines()
    exposed = [line for line in lines if line.startswith(("ARGV", "ENV"))]
    secret_values = [values["minio_root_user"], values["minio_root_password"], values["minio_directus_secret_key"]]
    for value in secret_values:
        assert not [line for line in exposed if value in line], f"a secret reached mc's argv or env: {value}"
    assert not [line for line in exposed if line.startswith("ENV MC_HOST")]
    # what mc does get: the root credentials in a 0600 config file, the new user's keys on stdin
    configs = [line.split(" ", 2) for line in lines if line.startswith("CONFIG")]
    assert configs and all(mode == "600" for _, mode, _ in configs)
    alias = json.loads(configs[0][2])["aliases"]["local"]
    assert (alias["accessKey"], alias["secretKey"]) == (values["minio_root_user"], values["minio_root_password"])
    stdin = [line.removeprefix("STDIN ") for line in lines if line.startswith("STDIN")]
    assert stdin == [values["minio_directus_access_key"], values["minio_directus_secret_key"]]
    assert not (tmp_path / "tmp" / ".mc").exists(), "the config file outlives the script"
