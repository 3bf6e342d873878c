"""Backup and restore of a stack's data: one versioned, checksummed bundle file.

A bundle holds what a stack cannot regenerate: Postgres's application database
(``pg_dump`` custom format, with its grants and row-level security), the MinIO buckets of
the plan (every object, byte for byte, with its content type and user metadata), and a
raft snapshot of Vault (every secret, every version, the tokens and policies), plus the
plan and rendered config it was taken with and a manifest with a SHA-256 per member.

The file is ``MAGIC`` + one JSON header line (format version, whether the payload is
encrypted, the payload's SHA-256) + the payload, a tar archive, encrypted with Fernet
(AES-128-CBC + HMAC-SHA256, from ``cryptography``) when the operator gives a key file. A
raft snapshot opens only with the unseal key of the Vault it came from: that key (and
ccoas's token, stored in the snapshot) goes into ``FILE.unseal`` beside the bundle, 0600,
for the operator to keep apart.

:func:`restore` reads and verifies everything first (header, payload checksum or
authentication tag, every member's checksum, the plan's compatibility, the unseal file's
match with the snapshot) and refuses before touching the engine. It restores only onto an
empty stack, and if any step fails it purges what it created: a restore is whole or absent.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import shutil
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ccoas import __version__, host_files
from ccoas.errors import CcoasError
from ccoas.plan import LABEL_PREFIX, PLAN_SCHEMA_VERSION, Plan, Service

if TYPE_CHECKING:
    from ccoas.engine.local import LocalEngine

MAGIC = b"CCOAS-BACKUP\n"
FORMAT_VERSION = 1
DATA_SERVICES = ("postgres", "minio", "vault")
"""Services whose data a bundle carries. Redis is a cache (rebuilt by its clients); Directus keeps
uploads in MinIO; Ollama's models are re-imported from their package."""
RESTORE_DIR = ".ccoas-restore"
"""Under Postgres's data volume mount (not PGDATA): where the dump is put for pg_restore."""


class BackupError(CcoasError):
    """A backup could not be taken, or a bundle is refused (corrupt, incompatible, wrong key)."""


@dataclass
class Bundle:
    manifest: dict[str, Any]
    members: dict[str, bytes]
    """Archive member name → content; every checksum already verified."""

    @property
    def plan(self) -> dict[str, Any]:
        return json.loads(self.members["plan.json"])


@dataclass
class BackupResult:
    path: Path
    unseal_path: Path | None
    size: int
    contents: dict[str, str] = field(default_factory=dict)
    """Per service: what was saved (e.g. ``3 objects in 1 bucket``)."""


# -- the bundle file ----------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_key(key_file: Path, create: bool = False) -> bytes:
    """A Fernet key from ``key_file``; with ``create``, a new one is written there (0600) if absent."""
    from cryptography.fernet import Fernet

    if not key_file.exists():
        if not create:
            raise BackupError(f"{key_file}: key file not found")
        _write_private(key_file, Fernet.generate_key())
    key = key_file.read_bytes().strip()
    try:
        Fernet(key)
    except ValueError:
        raise BackupError(f"{key_file}: not a key ccoas made (expected 32 url-safe base64-encoded bytes)") from None
    return key


def pack(members: dict[str, bytes], key: bytes | None) -> bytes:
    """The bundle file's bytes: members archived (manifest first), sealed, headed."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name in sorted(members, key=lambda n: (n != "manifest.json", n)):
            info = tarfile.TarInfo(name)
            info.size = len(members[name])
            info.mode = 0o600
            archive.addfile(info, io.BytesIO(members[name]))
    payload = buffer.getvalue()
    if key is not None:
        from cryptography.fernet import Fernet

        payload = Fernet(key).encrypt(payload)
    header = {"format": "ccoas-backup", "version": FORMAT_VERSION, "encrypted": key is not None, "sha256": _sha256(payload)}
    return MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + payload


def unpack(data: bytes, key: bytes | None, source: str = "bundle") -> Bundle:
    """Verify and open a bundle; any damage (one flipped byte anywhere) raises :class:`BackupError`."""
    if not data.startswith(MAGIC):
        raise BackupError(f"{source}: not a ccoas backup bundle (its first line is not {MAGIC.strip().decode()})")
    line, _, payload = data[len(MAGIC):].partition(b"\n")
    try:
        header = json.loads(line)
    except ValueError:
        raise BackupError(f"{source}: the bundle header is damaged") from None
    if not isinstance(header, dict) or header.get("format") != "ccoas-backup" or header.get("version") != FORMAT_VERSION:
        raise BackupError(f"{source}: unsupported bundle header {line[:200].decode(errors='replace')!r} (this ccoas reads version {FORMAT_VERSION})")
    if header.get("sha256") != _sha256(payload):
        raise BackupError(f"{source}: checksum mismatch: the bundle is damaged or truncated; nothing was restored")
    if header.get("encrypted") is True:
        if key is None:
            raise BackupError(f"{source}: the bundle is encrypted: give the key file it was made with (--key-file)")
        from cryptography.fernet import Fernet, InvalidToken

        try:
            payload = Fernet(key).decrypt(payload)
        except InvalidToken:
            raise BackupError(f"{source}: the key file does not open this bundle (wrong key, or the bundle is damaged)") from None
    elif header.get("encrypted") is not False:
        raise BackupError(f"{source}: the bundle header is damaged")
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(payload), mode="r:") as archive:
            for info in archive:
                if not info.isfile() or info.name.startswith("/") or ".." in Path(info.name).parts:
                    raise BackupError(f"{source}: unexpected archive member {info.name!r}")
                handle = archive.extractfile(info)
                assert handle is not None
                members[info.name] = handle.read()
    except tarfile.TarError as exc:
        raise BackupError(f"{source}: the archive is damaged: {exc}") from None
    try:
        manifest = json.loads(members.pop("manifest.json"))
    except (KeyError, ValueError):
        raise BackupError(f"{source}: the manifest is missing or damaged") from None
    listed = manifest.get("files", {})
    if set(listed) != set(members):
        raise BackupError(f"{source}: the archive's members differ from its manifest")
    for name, content in members.items():
        if listed[name] != _sha256(content):
            raise BackupError(f"{source}: {name}: checksum mismatch")
    return Bundle(manifest=manifest, members=members)


def read_bundle(path: Path, key_file: Path | None = None) -> Bundle:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BackupError(f"{path}: cannot read the bundle: {exc.strerror}") from None
    return unpack(data, load_key(key_file) if key_file else None, source=str(path))


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` as a new 0600 file, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def unseal_path(bundle: Path) -> Path:
    return bundle.with_name(bundle.name + ".unseal")


# -- compatibility ------------------------------------------------------------------------------


def incompatibilities(saved: dict[str, Any], plan: Plan) -> list[str]:
    """Why a bundle taken with plan ``saved`` cannot be restored into ``plan`` (empty: it can)."""
    problems = []
    if saved.get("schema_version") != PLAN_SCHEMA_VERSION:
        problems.append(f"the bundle's plan has schema_version {saved.get('schema_version')}, this ccoas reads {PLAN_SCHEMA_VERSION}")
    if saved.get("stack") != plan.stack:
        problems.append(
            f"the bundle is of stack {saved.get('stack')!r}, not {plan.stack!r}: its Vault secrets and policies are named "
            f"after it (restore with --name {saved.get('stack')})"
        )
    saved_services = {s["name"] for s in saved.get("services", [])}
    for name in DATA_SERVICES:
        if (name in saved_services) != plan.has(name):
            problems.append(f"{name}: {'in the bundle but not in the stack' if name in saved_services else 'in the stack but not in the bundle'}")
    if saved.get("app_schema") != plan.app_schema.model_dump(mode="json"):
        problems.append("the application schema (tables) differs from the bundle's: restore with the stack file the bundle was taken with")
    return problems


# -- backup -------------------------------------------------------------------------------------


def backup(engine: LocalEngine, out: Path, key_file: Path | None = None) -> BackupResult:
    """Take a bundle of ``engine``'s running stack into ``out`` (0600), and ``out.unseal`` beside it."""
    from ccoas.render import rendered_files

    plan = engine.plan
    down = [r.service for r in engine.status() if r.service in DATA_SERVICES and r.health != "healthy"]
    if down:
        raise BackupError(f"stack {plan.stack}: {', '.join(down)} not healthy: a backup needs the data services running (`ccoas up` first)")
    key = load_key(key_file, create=True) if key_file else None
    # The render on disk is what the containers run with (a snapshot before `up` is taken before
    # that `up` renders the new plan); its plan.json is the plan they were made from.
    rendered = {p.relative_to(engine.paths.render).as_posix(): p.read_bytes() for p in sorted(engine.paths.render.rglob("*")) if p.is_file()}
    if not rendered:
        rendered = {path: text.encode() for path, text in rendered_files(plan).items()}
    members: dict[str, bytes] = {"plan.json": rendered.get("plan.json", plan.to_json().encode())}
    members.update({f"render/{path}": content for path, content in rendered.items()})
    contents: dict[str, str] = {}
    unseal: dict[str, Any] | None = None
    if plan.has("postgres"):
        members["postgres/app.dump"] = _pg_dump(engine)
        members["postgres/roles.sql"] = _pg_exec(engine, ["pg_dumpall", "-h", "/tmp", "-U", "postgres", "--roles-only", "--no-role-passwords"])
        contents["postgres"] = f"database dump of {len(members['postgres/app.dump'])} bytes"
    if plan.has("minio"):
        objects = _minio_backup(engine)
        members.update(objects)
        contents["minio"] = f"{sum(1 for n in objects if n.startswith('minio/objects/'))} objects"
    if plan.has("vault"):
        snapshot, unseal = _vault_snapshot(engine)
        members["vault/raft.snap"] = snapshot
        unseal["snapshot_sha256"] = _sha256(snapshot)
        contents["vault"] = f"raft snapshot of {len(snapshot)} bytes"
    manifest = {
        "format_version": FORMAT_VERSION,
        "ccoas_version": __version__,
        "stack": plan.stack,
        "plan_schema_version": plan.schema_version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "services": sorted(contents),
        "encrypted": key is not None,
        "files": {name: _sha256(content) for name, content in sorted(members.items())},
    }
    members["manifest.json"] = json.dumps(manifest, indent=2, sort_keys=True).encode()
    data = pack(members, key)
    out = Path(out)
    secret_path = None
    if unseal is not None:
        secret_path = unseal_path(out)
        _write_private(secret_path, json.dumps(unseal, indent=2, sort_keys=True).encode())
    _write_private(out, data)
    return BackupResult(path=out, unseal_path=secret_path, size=len(data), contents=contents)


def _pg_exec(engine: LocalEngine, command: list[str]) -> bytes:
    service = engine.plan.service("postgres")
    container = engine.client.containers.get(service.container_name)
    result = container.exec_run(command, user=service.user, demux=True)
    stdout, stderr = result.output
    if result.exit_code != 0:
        raise BackupError(f"postgres: {command[0]} failed: {(stderr or b'').decode(errors='replace')[-2000:]}")
    return stdout or b""


def _pg_dump(engine: LocalEngine) -> bytes:
    from ccoas.components.postgres import DATABASE, SOCKET_DIR, SUPERUSER

    return _pg_exec(engine, ["pg_dump", "-h", SOCKET_DIR, "-U", SUPERUSER, "-d", DATABASE, "--format=custom", "--compress=6"])


def _vault_snapshot(engine: LocalEngine) -> tuple[bytes, dict[str, Any]]:
    """Vault's raft snapshot (taken with a one-off root token, revoked after) and its unseal material."""
    bootstrap = engine.steps.vault()
    material = json.loads(engine.paths.vault_init.read_text())
    with bootstrap.root_client() as root:
        response = root.sys.take_raft_snapshot()
    if response.status_code != 200 or not response.content:
        raise BackupError(f"vault: the raft snapshot was refused: HTTP {response.status_code} {response.text[:300]}")
    unseal = {
        "stack": engine.plan.stack,
        "keys_base64": material["keys_base64"],
        "ccoas_token": engine.paths.ccoas_token.read_text().strip(),
    }
    return response.content, unseal


# -- MinIO: a one-off job container on one of MinIO's networks --------------------------------


def _minio_script(action: str, buckets: list[str]) -> str:
    lines = [
        "set -eu",
        "umask 077",
        "export MC_CONFIG_DIR=/tmp/.mc",
        'MC_HOST_s3="http://$(cat /run/secrets/minio_root_user):$(cat /run/secrets/minio_root_password)@minio:9000"',
        "export MC_HOST_s3",
    ]
    if action == "backup":
        for bucket in buckets:
            q = shlex.quote(bucket)
            lines += [
                f"mkdir -p /backup/objects/{q}",
                f"mc --quiet mirror s3/{q} /backup/objects/{q} >/dev/null",
                # `mc stat` of an empty bucket fails ("object does not exist"): no objects, no metadata
                f"if mc --quiet ls --recursive s3/{q} | grep -q .; then mc --json stat --recursive s3/{q} > /backup/stat-{q}.json; "
                f"else : > /backup/stat-{q}.json; fi",
            ]
    else:
        lines.append("sh /backup/restore-objects.sh")
    return "\n".join(lines) + "\n"


def _minio_job(engine: LocalEngine, action: str, staging: Path, buckets: list[str], timeout: int = 900) -> None:
    """Run ``mc`` in a container of the MinIO image, on a network of MinIO's, with ``staging`` at /backup."""
    service = engine.plan.service("minio")
    root_mounts = [m for m in service.secrets if m.secret in ("minio_root_user", "minio_root_password")]
    body = {
        "Image": service.image.ref,
        "User": service.user,
        "Entrypoint": ["sh", "-c", _minio_script(action, buckets)],
        "Labels": {**engine.plan.labels, f"{LABEL_PREFIX}.job": f"minio-{action}"},
        "HostConfig": {
            "ReadonlyRootfs": True,
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges:true"],
            "Tmpfs": {"/tmp": "rw,nosuid,nodev,size=64m,mode=1777"},
            "NetworkMode": engine.plan.network(sorted(service.networks)[0]).engine_name,
            "Mounts": [
                {"Type": "bind", "Source": str(staging), "Target": "/backup", "ReadOnly": action == "restore"},
                *(
                    {"Type": "bind", "Source": str(engine.paths.secret_file("minio", m.secret)), "Target": m.target, "ReadOnly": True}
                    for m in root_mounts
                ),
            ],
        },
    }
    name = f"{engine.plan.stack}-minio-{action}"
    _remove_if_present(engine, name)
    created = engine.client.api.create_container_from_config(body, name=name)
    container = engine.client.containers.get(created["Id"])
    try:
        container.start()
        status = container.wait(timeout=timeout)
        if status.get("StatusCode") != 0:
            logs = container.logs().decode(errors="replace")[-2000:]
            raise BackupError(f"minio: the {action} job failed (exit {status.get('StatusCode')}):\n{logs}")
    finally:
        container.remove(force=True)


def _remove_if_present(engine: LocalEngine, name: str) -> None:
    import docker.errors

    try:
        engine.client.containers.get(name).remove(force=True)
    except docker.errors.NotFound:
        pass


def _staging(engine: LocalEngine, service: Service, give: bool = True) -> Path:
    """A fresh job dir in the stack's root-owned ``jobs`` dir, the one leaf handed to the job's
    container uid (``give=False``: root's until root has written what the job reads, see
    :func:`_give_staging`)."""
    staging = engine.paths.jobs / service.name
    host_files.make_dir(engine.paths.jobs, 0o755, host_files.ROOT)
    host_files.remove_tree(staging)
    host_files.make_dir(staging, 0o700, host_files.ROOT)
    if give:
        engine.runtime.give(staging, service.uid, service.gid)
    return staging


def _give_staging(engine: LocalEngine, service: Service, staging: Path) -> None:
    """Hand ``staging`` and all root wrote in it to the job's uid, deepest first (the directory
    stays root's until its contents are given; each is given on an fd, never through a link)."""
    for path in [*sorted(staging.rglob("*"), reverse=True), staging]:
        engine.runtime.give(path, service.uid, service.gid)


def _minio_buckets(plan: Plan) -> list[str]:
    return sorted(bucket.name for bucket in plan.buckets)


def _minio_backup(engine: LocalEngine) -> dict[str, bytes]:
    service = engine.plan.service("minio")
    buckets = _minio_buckets(engine.plan)
    staging = _staging(engine, service)
    try:
        _minio_job(engine, "backup", staging, buckets)
        members: dict[str, bytes] = {}
        metadata: dict[str, dict[str, dict[str, str]]] = {}
        for bucket in buckets:
            root = staging / "objects" / bucket
            for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
                members[f"minio/objects/{bucket}/{path.relative_to(root).as_posix()}"] = host_files.read_file(path)
            metadata[bucket] = _object_metadata(host_files.read_file(staging / f"stat-{bucket}.json").decode(), bucket)
        members["minio/metadata.json"] = json.dumps(metadata, indent=2, sort_keys=True).encode()
        return members
    finally:
        shutil.rmtree(staging, ignore_errors=True)


KEPT_METADATA = ("content-type", "cache-control", "content-disposition", "content-encoding", "content-language")


def _object_metadata(stat_lines: str, bucket: str) -> dict[str, dict[str, str]]:
    """Object key → the metadata a restore must set again: content headers and ``X-Amz-Meta-*``
    (``mc stat --recursive`` names objects ``<bucket>/<key>``)."""
    result: dict[str, dict[str, str]] = {}
    for line in stat_lines.splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        if entry.get("status") != "success" or entry.get("type") == "folder":
            continue
        key = str(entry.get("name") or entry.get("key")).removeprefix(f"{bucket}/")
        kept = {
            name: value
            for name, value in (entry.get("metadata") or {}).items()
            if name.lower() in KEPT_METADATA or name.lower().startswith("x-amz-meta-")
        }
        result[key] = kept
    return result


def _minio_restore(engine: LocalEngine, bundle: Bundle) -> int:
    service = engine.plan.service("minio")
    metadata = json.loads(bundle.members.get("minio/metadata.json", b"{}"))
    staging = _staging(engine, service, give=False)
    try:
        commands = ["set -eu"]
        count = 0
        for name, content in sorted(bundle.members.items()):
            if not name.startswith("minio/objects/"):
                continue
            bucket, key = name[len("minio/objects/"):].split("/", 1)
            path = staging / "objects" / bucket / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            attributes = ";".join(f"{k}={v}" for k, v in sorted(metadata.get(bucket, {}).get(key, {}).items()))
            attr = ["--attr", attributes] if attributes else []
            commands.append(shlex.join(["mc", "--quiet", "cp", *attr, f"/backup/objects/{bucket}/{key}", f"s3/{bucket}/{key}"]) + " >/dev/null")
            count += 1
        (staging / "restore-objects.sh").write_text("\n".join(commands) + "\n")
        _give_staging(engine, service, staging)
        _minio_job(engine, "restore", staging, _minio_buckets(engine.plan))
        return count
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# -- restore ------------------------------------------------------------------------------------


@dataclass
class RestoreResult:
    restored: dict[str, str]
    status: list[Any]


def verify(engine: LocalEngine, bundle_path: Path, key_file: Path | None = None) -> tuple[Bundle, dict[str, Any] | None]:
    """Everything a restore checks before it touches anything; returns the bundle and unseal material."""
    bundle = read_bundle(bundle_path, key_file)
    problems = incompatibilities(bundle.plan, engine.plan)
    if problems:
        raise BackupError(f"{bundle_path}: cannot be restored into stack {engine.plan.stack}:\n  " + "\n  ".join(problems))
    unseal = None
    if "vault/raft.snap" in bundle.members:
        path = unseal_path(bundle_path)
        try:
            unseal = json.loads(path.read_text())
        except FileNotFoundError:
            raise BackupError(f"{path}: missing: Vault's snapshot opens only with the unseal material saved beside the bundle") from None
        except ValueError:
            raise BackupError(f"{path}: damaged (not JSON)") from None
        if unseal.get("snapshot_sha256") != _sha256(bundle.members["vault/raft.snap"]):
            raise BackupError(f"{path}: belongs to another bundle (its snapshot checksum differs)")
    leftovers = [c.name for c in engine._owned("containers")] + [v.name for v in engine._owned("volumes")]
    if leftovers or engine.paths.vault_init.exists():
        what = ", ".join(leftovers) or str(engine.paths.vault_init)
        raise BackupError(f"stack {engine.plan.stack} is not empty ({what}): restore goes onto an empty stack; run `ccoas down --purge` first")
    return bundle, unseal


def restore(engine: LocalEngine, bundle_path: Path, key_file: Path | None = None, build: bool = True, timeout: int = 300) -> RestoreResult:
    """Restore a bundle onto ``engine``'s empty stack; on any failure the stack is purged again."""
    bundle, unseal = verify(engine, bundle_path, key_file)
    restored: dict[str, str] = {}

    def after_ready(service: Service) -> int:
        if service.name == "postgres" and "postgres/app.dump" in bundle.members:
            _pg_restore(engine, bundle.members["postgres/app.dump"])
            restored["postgres"] = "application database"
            return 1
        if service.name == "minio":
            restored["minio"] = f"{_minio_restore(engine, bundle)} objects"
            return 1
        return 0

    try:
        if unseal is not None:
            _vault_restore(engine, bundle.members["vault/raft.snap"], unseal, build, timeout)
            restored["vault"] = "raft snapshot (secrets, versions, policies, tokens)"
        result = engine.up(build=build, timeout=timeout, after_ready=after_ready)
    except BaseException as exc:
        engine.down(purge=True)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise BackupError(f"restore failed, the stack was purged again (nothing half-applied): {exc}") from None
    return RestoreResult(restored=restored, status=result.status)


def _vault_restore(engine: LocalEngine, snapshot: bytes, unseal: dict[str, Any], build: bool, timeout: int) -> None:
    """Start Vault alone, initialise it with throwaway keys, force-install the snapshot, then
    hand ccoas the snapshot's own unseal key and token: the next ``up`` unseals with them."""
    from ccoas.secrets import vault_client

    engine.start_alone("vault", build=build, timeout=timeout)
    socket = engine.steps.vault().socket
    client = vault_client(socket)
    init = client.sys.initialize(secret_shares=1, secret_threshold=1)
    for key in init["keys_base64"]:
        client.sys.submit_unseal_key(key)
    engine.steps.vault().wait_active(client)
    client.token = init["root_token"]
    response = client.sys.force_restore_raft_snapshot(snapshot)
    if response.status_code not in (200, 204):
        raise BackupError(f"vault: the snapshot was refused: HTTP {response.status_code} {response.text[:300]}")
    _write_private(engine.paths.vault_init, json.dumps({"keys_base64": unseal["keys_base64"]}).encode())
    _write_private(engine.paths.ccoas_token, unseal["ccoas_token"].encode())


def _pg_restore(engine: LocalEngine, dump: bytes) -> None:
    """Replace the application database's objects with the dump's (after the bootstrap, before its clients start)."""
    from ccoas.components.postgres import DATABASE, SOCKET_DIR, SUPERUSER

    service = engine.plan.service("postgres")
    container = engine.client.containers.get(service.container_name)
    mount = service.volumes[0].target
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        directory = tarfile.TarInfo(RESTORE_DIR)
        directory.type, directory.mode, directory.uid, directory.gid = tarfile.DIRTYPE, 0o700, service.uid, service.gid
        archive.addfile(directory)
        info = tarfile.TarInfo(f"{RESTORE_DIR}/app.dump")
        info.size, info.mode, info.uid, info.gid = len(dump), 0o600, service.uid, service.gid
        archive.addfile(info, io.BytesIO(dump))
    if not container.put_archive(mount, buffer.getvalue()):
        raise BackupError("postgres: the engine refused to copy the dump into the container")
    target = f"{mount}/{RESTORE_DIR}/app.dump"
    try:
        result = container.exec_run(
            ["pg_restore", "-h", SOCKET_DIR, "-U", SUPERUSER, "-d", DATABASE, "--clean", "--if-exists", "--exit-on-error", "--single-transaction", target],
            user=service.user,
            demux=True,
        )
        if result.exit_code != 0:
            raise BackupError(f"postgres: pg_restore failed: {(result.output[1] or b'').decode(errors='replace')[-2000:]}")
    finally:
        container.exec_run(["rm", "-rf", f"{mount}/{RESTORE_DIR}"], user=service.user)


# -- a snapshot before every risky change -------------------------------------------------------

DEFAULT_KEEP = 3


def risky_replacements(engine: LocalEngine) -> dict[str, str]:
    """Data services the next ``up`` would recreate because their image or rendered config
    changed, with the diff's cause. Call it after the images are present (their ids are compared)."""
    _, _, operations = engine.plan_operations()
    return {
        op.resource: op.cause
        for op in operations
        if op.kind == "container" and op.action == "recreate" and op.resource in DATA_SERVICES
        and any(cause in op.cause for cause in ("image changed", "config changed"))
    }


def snapshot_dir(engine: LocalEngine) -> Path:
    """Beside the stack's state, not in it: ``down --purge`` keeps snapshots."""
    return engine.layout.state_root / "snapshots" / engine.plan.stack


def snapshot_before_up(engine: LocalEngine, keep: int = DEFAULT_KEEP, build: bool = True) -> tuple[BackupResult, dict[str, str]] | None:
    """A bundle of the running stack if the next ``up`` would replace a data service; keeps the newest ``keep``."""
    engine.prepare_images(build)
    risky = risky_replacements(engine)
    if not risky:
        return None
    stopped = [r.service for r in engine.status(probe=False) if r.service in DATA_SERVICES and r.state != "running"]
    if stopped:
        # After a reboot or `down` the data services are stopped: nothing can be dumped, and
        # refusing would leave the stack down. Their volumes are kept by the replacement.
        engine.notes.append(
            f"no snapshot before replacing {', '.join(sorted(risky))}: {', '.join(stopped)} not running, so nothing "
            "could be dumped (the volumes are kept); take `ccoas backup` of the running stack before risky changes"
        )
        return None
    directory = snapshot_dir(engine)
    for level in (directory.parent, directory):  # root's alone: root restores what is in it
        host_files.make_dir(level, 0o700, host_files.ROOT)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    result = backup(engine, directory / f"{stamp}-before-{'-'.join(sorted(risky))}.ccoas")
    bundles = sorted(directory.glob("*.ccoas"))
    for old in bundles[: max(0, len(bundles) - keep)]:
        old.unlink()
        unseal_path(old).unlink(missing_ok=True)
    return result, risky
