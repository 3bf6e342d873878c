"""Backup and restore of a stack's data: one versioned, authenticated bundle file.

A bundle holds what a stack cannot regenerate: Postgres's application database
(``pg_dump`` custom format, with its grants and row-level security), the MinIO buckets of
the plan (every object, byte for byte, with its content type and user metadata), and a
raft snapshot of Vault (every secret, every version, the tokens and policies) with the
unseal key it opens with, plus the plan and rendered config it was taken with and a
manifest with a SHA-256 per member.

The file is ``MAGIC`` + one JSON header line (format version, the payload's SHA-256) + the
payload: the tar archive encrypted and authenticated with Fernet (AES-128-CBC +
HMAC-SHA256, from ``cryptography``) under a key kept apart from the bundle: the operator's
``--key-file``, or this host's bundle key (:func:`bundle_key_path`, root-only, outside the
state directory), which automatic snapshots use. Whoever can write a bundle but does not
hold the key cannot make one that restores.

:func:`open_bundle` authenticates the whole payload before it reads a byte of the archive,
then checks every member (a regular file, a name that stays inside any directory it is
written under, its checksum in the manifest). :func:`restore` then checks the plan's
compatibility and that the stack is empty, and refuses before touching the engine. It
restores only onto an empty stack, and if any step fails it purges what it created: a
restore is whole or absent. Bundles of format 1 (unauthenticated, with the unseal key in a
``FILE.unseal`` beside them) are read only when the operator says so.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import shutil
import stat
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
FORMAT_VERSION = 2
"""2: always encrypted and authenticated, the unseal key inside. 1: optionally encrypted, the
unseal key and ccoas's token in ``FILE.unseal`` beside it, unauthenticated (read only with
``allow_unauthenticated``)."""
UNAUTHENTICATED_FORMAT = 1
DATA_SERVICES = ("postgres", "minio", "vault")
"""Services whose data a bundle carries. Redis is a cache (rebuilt by its clients); Directus keeps
uploads in MinIO; Ollama's models are re-imported from their package."""
RESTORE_DIR = ".ccoas-restore"
"""Under Postgres's data volume mount (not PGDATA): where the dump is put for pg_restore."""
UNSEAL_MEMBER = "vault/unseal.json"
DEFAULT_BUNDLE_KEY = Path("/etc/ccoas/keys/bundle.key")
INSECURE_FLAG = "--insecure-unauthenticated"


class BackupError(CcoasError):
    """A backup could not be taken, or a bundle is refused (corrupt, incompatible, wrong key)."""


@dataclass
class Bundle:
    manifest: dict[str, Any]
    members: dict[str, bytes]
    """Archive member name → content; every name and checksum already verified."""
    authenticated: bool = True
    """False only for a format-1 bundle read with ``allow_unauthenticated``."""
    path: Path | None = None

    @property
    def plan(self) -> dict[str, Any]:
        return _json_object(self.members["plan.json"], f"{self.path or 'bundle'}: plan.json")

    def unseal(self) -> dict[str, Any] | None:
        """The unseal material of the bundle's Vault snapshot (None: no snapshot)."""
        if "vault/raft.snap" not in self.members:
            return None
        if self.authenticated:
            if UNSEAL_MEMBER not in self.members:
                raise BackupError(f"{self.path}: the bundle holds a Vault snapshot but no unseal material")
            source = f"{self.path or 'bundle'}: {UNSEAL_MEMBER}"
            return _unseal_keys(_json_object(self.members[UNSEAL_MEMBER], source), source)
        beside = unseal_path(self.path) if self.path else None
        try:
            material = json.loads(beside.read_text()) if beside else None
        except FileNotFoundError:
            material = None
        except ValueError:
            raise BackupError(f"{beside}: damaged (not JSON)") from None
        if material is None:
            raise BackupError(f"{beside}: missing: a format-1 bundle's Vault snapshot opens only with the unseal file saved beside it")
        if material.get("snapshot_sha256") != _sha256(self.members["vault/raft.snap"]):
            raise BackupError(f"{beside}: belongs to another bundle (its snapshot checksum differs)")
        return _unseal_keys(material, str(beside))


def _json_object(data: bytes, source: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise BackupError(f"{source}: damaged (not a JSON object)")
    return value


def _unseal_keys(material: Any, source: str) -> dict[str, Any]:
    """Only the unseal keys are taken from a bundle (a token it may carry is never used)."""
    keys = material.get("keys_base64") if isinstance(material, dict) else None
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) and k for k in keys):
        raise BackupError(f"{source}: no unseal key (expected keys_base64: a list of base64 strings)")
    return {"keys_base64": keys}


@dataclass
class BackupResult:
    path: Path
    key_path: Path
    """The key that encrypts and authenticates the bundle (keep it apart from the bundle)."""
    size: int
    contents: dict[str, str] = field(default_factory=dict)
    """Per service: what was saved (e.g. ``3 objects in 1 bucket``)."""


# -- keys ---------------------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_fernet_key(key: bytes, source: Path) -> bytes:
    from cryptography.fernet import Fernet

    try:
        Fernet(key)
    except ValueError:
        raise BackupError(f"{source}: not a key ccoas made (expected 32 url-safe base64-encoded bytes)") from None
    return key


def load_key(key_file: Path, create: bool = False) -> bytes:
    """A Fernet key from ``key_file``; with ``create``, a new one is written there (0600) if absent."""
    from cryptography.fernet import Fernet

    key_file = Path(key_file)
    if not key_file.exists():
        if not create:
            raise BackupError(f"{key_file}: key file not found")
        _write_private(key_file, Fernet.generate_key())
    return _check_fernet_key(key_file.read_bytes().strip(), key_file)


def bundle_key_path() -> Path:
    """This host's bundle key: ``CCOAS_BUNDLE_KEY``, else ``/etc/ccoas/keys/bundle.key``.

    Root-only (0600 in a 0700 directory, both root's) and outside ``/var/lib/ccoas``, where the
    engine user owns directories and where the bundles themselves lie: a key beside the bundles
    it authenticates would authenticate nothing."""
    return Path(os.environ.get("CCOAS_BUNDLE_KEY") or DEFAULT_BUNDLE_KEY)


def _require_private(st: os.stat_result, path: Path, what: str) -> None:
    if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
        raise BackupError(
            f"{path}: the {what} must be owned by uid {os.geteuid()} and closed to everyone else "
            f"(it is uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}); refusing to use it"
        )


def host_bundle_key(create: bool) -> bytes | None:
    """This host's bundle key; with ``create`` it is made on first need (None: absent).

    Its directory is made 0700 and checked (owned by us, closed to others, not a symlink);
    the key is opened and created relative to that directory with ``O_NOFOLLOW`` (and
    ``O_EXCL`` when created), so no link planted anywhere redirects it."""
    from cryptography.fernet import Fernet

    path = bundle_key_path()
    directory = path.parent
    if create:
        directory.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BackupError(f"{directory}: cannot open the bundle key's directory (a symlink, or not a directory): {exc.strerror}") from None
    try:
        _require_private(os.fstat(dir_fd), directory, "bundle key's directory")
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path.name, flags, dir_fd=dir_fd)
        except FileNotFoundError:
            if not create:
                return None
            key = Fernet.generate_key()
            try:
                fd = os.open(path.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
            except FileExistsError:  # made meanwhile by another ccoas: use that one
                fd = os.open(path.name, flags, dir_fd=dir_fd)
            else:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(key)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.fsync(dir_fd)
                return key
        except OSError as exc:
            raise BackupError(f"{path}: cannot open the bundle key (a symlink?): {exc.strerror}") from None
        with os.fdopen(fd, "rb") as handle:
            st = os.fstat(handle.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise BackupError(f"{path}: the bundle key is not a regular file")
            _require_private(st, path, "bundle key")
            return _check_fernet_key(handle.read().strip(), path)
    finally:
        os.close(dir_fd)


# -- member names: nothing a bundle names may leave the directory it is written under ----------


def member_parts(name: str, source: str = "bundle") -> tuple[str, ...]:
    """The segments of a relative member name or object key; refuses anything that could name a
    place outside the directory it is joined to, or a different file than it says."""
    parts = tuple(name.split("/"))
    problem = None
    if not name:
        problem = "an empty name"
    elif "\0" in name:
        problem = "a NUL byte"
    elif name.startswith("/"):
        problem = "an absolute path"
    elif any(part == "" for part in parts):
        problem = "an empty segment (//, or a trailing /)"
    elif any(part in (".", "..") for part in parts):
        problem = "a . or .. segment"
    if problem:
        raise BackupError(f"{source}: refused member name {name!r}: {problem}")
    return parts


def _contained(root: Path, parts: tuple[str, ...]) -> Path:
    """``root`` joined with ``parts``, checked to resolve inside ``root``."""
    target = root.joinpath(*parts)
    real_root = os.path.realpath(root)
    if os.path.commonpath([real_root, os.path.realpath(target)]) != real_root:
        raise BackupError(f"{target}: resolves outside {root}; refusing to write it")
    return target


def write_contained(root: Path, name: str, content: bytes) -> Path:
    """Write ``content`` to the new file ``root/name`` (0600), never outside ``root``.

    The name is checked segment by segment, the resolved path checked to stay in ``root``, and
    the file is reached from ``root`` one directory at a time with ``O_NOFOLLOW`` and created
    with ``O_EXCL``: a symlink already there (planted, or a second member of the same name) is
    refused rather than followed or overwritten."""
    parts = member_parts(name, str(root))
    target = _contained(root, parts)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            try:
                os.mkdir(part, 0o700, dir_fd=fd)
            except FileExistsError:
                pass
            next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        try:
            out = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=fd)
        except OSError as exc:
            raise BackupError(f"{target}: refusing to write it: {exc.strerror}") from None
        with os.fdopen(out, "wb") as handle:
            handle.write(content)
    except NotADirectoryError:
        raise BackupError(f"{target}: refusing to write it: a segment of its path is a file or a symlink") from None
    finally:
        os.close(fd)
    return target


def read_regular_files(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` by its relative path, read without following a link
    (a symlink, device or FIFO there is skipped: a job container cannot make root read a file
    outside its staging directory)."""
    files: dict[str, bytes] = {}
    if not root.is_dir() or root.is_symlink():
        return files
    for directory, _, names, dir_fd in os.fwalk(root, follow_symlinks=False):
        relative = Path(directory).relative_to(root)
        for name in names:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
            except OSError:  # a symlink (ELOOP) or gone
                continue
            with os.fdopen(fd, "rb") as handle:
                if stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                    files[(relative / name).as_posix()] = handle.read()
    return files


# -- the bundle file ----------------------------------------------------------------------------


def pack(members: dict[str, bytes], key: bytes) -> bytes:
    """The bundle file's bytes: members archived (manifest first), encrypted and authenticated, headed."""
    from cryptography.fernet import Fernet

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name in sorted(members, key=lambda n: (n != "manifest.json", n)):
            member_parts(name)
            info = tarfile.TarInfo(name)
            info.size = len(members[name])
            info.mode = 0o600
            archive.addfile(info, io.BytesIO(members[name]))
    payload = Fernet(key).encrypt(buffer.getvalue())
    header = {"format": "ccoas-backup", "version": FORMAT_VERSION, "encrypted": True, "sha256": _sha256(payload)}
    return MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + payload


def _unauthenticated(source: str, why: str) -> BackupError:
    return BackupError(
        f"{source}: refused: {why}. Anyone who could write the bundle (or the file beside it) chose what a restore "
        f"would install: Vault's snapshot and unseal key, the SQL pg_restore runs as the superuser. If you know where "
        f"this bundle came from, restore it with {INSECURE_FLAG}, then take a new backup"
    )


def unpack(data: bytes, key: bytes | None, source: str = "bundle", allow_unauthenticated: bool = False) -> Bundle:
    """Authenticate and open a bundle; any damage (one flipped byte anywhere), a wrong key, an
    unauthenticated bundle (unless allowed) or a member that is not a plain relative file raises
    :class:`BackupError` before anything is read from the archive."""
    if not data.startswith(MAGIC):
        raise BackupError(f"{source}: not a ccoas backup bundle (its first line is not {MAGIC.strip().decode()})")
    line, _, payload = data[len(MAGIC):].partition(b"\n")
    try:
        header = json.loads(line)
    except ValueError:
        raise BackupError(f"{source}: the bundle header is damaged") from None
    version = header.get("version") if isinstance(header, dict) else None
    if not isinstance(header, dict) or header.get("format") != "ccoas-backup" or version not in (FORMAT_VERSION, UNAUTHENTICATED_FORMAT):
        raise BackupError(f"{source}: unsupported bundle header {line[:200].decode(errors='replace')!r} (this ccoas reads version {FORMAT_VERSION})")
    if header.get("encrypted") not in (True, False) or (version == FORMAT_VERSION and header["encrypted"] is not True):
        raise BackupError(f"{source}: the bundle header is damaged")
    if version == UNAUTHENTICATED_FORMAT and not allow_unauthenticated:
        raise _unauthenticated(source, f"a format-{UNAUTHENTICATED_FORMAT} bundle (an older ccoas) is not authenticated: its checksums are its own and its unseal file is not covered")
    if header.get("sha256") != _sha256(payload):
        raise BackupError(f"{source}: checksum mismatch: the bundle is damaged or truncated; nothing was restored")
    if header["encrypted"]:
        if key is None:
            raise BackupError(f"{source}: the bundle is encrypted and authenticated: give the key it was made with (--key-file; this host's bundle key {bundle_key_path()} is absent)")
        from cryptography.fernet import Fernet, InvalidToken

        try:
            payload = Fernet(key).decrypt(payload)
        except InvalidToken:
            raise BackupError(f"{source}: the key does not authenticate this bundle (another key, or the bundle was altered); nothing was restored") from None
    return _members(payload, source, authenticated=version == FORMAT_VERSION)


def _members(payload: bytes, source: str, authenticated: bool) -> Bundle:
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(payload), mode="r:") as archive:
            for info in archive:
                if not info.isreg():
                    raise BackupError(f"{source}: refused archive member {info.name!r}: not a regular file (a link, device or directory)")
                member_parts(info.name, source)
                if info.name in members:
                    raise BackupError(f"{source}: refused archive member {info.name!r}: it appears twice")
                handle = archive.extractfile(info)
                assert handle is not None
                members[info.name] = handle.read()
    except tarfile.TarError as exc:
        raise BackupError(f"{source}: the archive is damaged: {exc}") from None
    try:
        manifest = json.loads(members.pop("manifest.json"))
    except (KeyError, ValueError):
        raise BackupError(f"{source}: the manifest is missing or damaged") from None
    listed = manifest.get("files", {}) if isinstance(manifest, dict) else None
    if not isinstance(listed, dict) or set(listed) != set(members):
        raise BackupError(f"{source}: the archive's members differ from its manifest")
    for name, content in members.items():
        if listed[name] != _sha256(content):
            raise BackupError(f"{source}: {name}: checksum mismatch")
    if "plan.json" not in members:
        raise BackupError(f"{source}: the bundle has no plan.json")
    return Bundle(manifest=manifest, members=members, authenticated=authenticated)


def open_bundle(path: Path, key_file: Path | None = None, allow_unauthenticated: bool = False) -> Bundle:
    """Read and authenticate the bundle at ``path`` with ``key_file`` (default: this host's
    bundle key), before anything of it is used. Touches no engine."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BackupError(f"{path}: cannot read the bundle: {exc.strerror}") from None
    key = load_key(key_file) if key_file else host_bundle_key(create=False)
    bundle = unpack(data, key, source=str(path), allow_unauthenticated=allow_unauthenticated)
    bundle.path = path
    return bundle


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` as a new 0600 file, atomically (the temporary file is created
    with ``O_EXCL | O_NOFOLLOW``; the rename replaces a link at ``path``, never follows it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def unseal_path(bundle: Path) -> Path:
    """Where a format-1 bundle kept its unseal material."""
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
    """Take a bundle of ``engine``'s running stack into ``out`` (0600), encrypted and
    authenticated with ``key_file`` (created if absent) or, without one, this host's bundle key."""
    from ccoas.render import rendered_files

    plan = engine.plan
    down = [r.service for r in engine.status() if r.service in DATA_SERVICES and r.health != "healthy"]
    if down:
        raise BackupError(f"stack {plan.stack}: {', '.join(down)} not healthy: a backup needs the data services running (`ccoas up` first)")
    key = load_key(key_file, create=True) if key_file else host_bundle_key(create=True)
    assert key is not None
    # The render on disk is what the containers run with (a snapshot before `up` is taken before
    # that `up` renders the new plan); its plan.json is the plan they were made from.
    rendered = {p.relative_to(engine.paths.render).as_posix(): p.read_bytes() for p in sorted(engine.paths.render.rglob("*")) if p.is_file()}
    if not rendered:
        rendered = {path: text.encode() for path, text in rendered_files(plan).items()}
    members: dict[str, bytes] = {"plan.json": rendered.get("plan.json", plan.to_json().encode())}
    members.update({f"render/{path}": content for path, content in rendered.items()})
    contents: dict[str, str] = {}
    if plan.has("postgres"):
        members["postgres/app.dump"] = _pg_dump(engine)
        members["postgres/roles.sql"] = _pg_exec(engine, ["pg_dumpall", "-h", "/tmp", "-U", "postgres", "--roles-only", "--no-role-passwords"])
        contents["postgres"] = f"database dump of {len(members['postgres/app.dump'])} bytes"
    if plan.has("minio"):
        objects = _minio_backup(engine)
        members.update(objects)
        contents["minio"] = f"{sum(1 for n in objects if n.startswith('minio/objects/'))} objects"
    if plan.has("vault"):
        members["vault/raft.snap"] = _vault_snapshot(engine)
        # Only the unseal key, inside the authenticated payload: ccoas's token is not needed (the
        # `up` after a restore mints a new one from the unseal key) and must not travel.
        members[UNSEAL_MEMBER] = json.dumps({"keys_base64": json.loads(engine.paths.vault_init.read_text())["keys_base64"]}).encode()
        snapshot = members["vault/raft.snap"]
        contents["vault"] = f"raft snapshot of {len(snapshot)} bytes"
    manifest = {
        "format_version": FORMAT_VERSION,
        "ccoas_version": __version__,
        "stack": plan.stack,
        "plan_schema_version": plan.schema_version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "services": sorted(contents),
        "encrypted": True,
        "files": {name: _sha256(content) for name, content in sorted(members.items())},
    }
    members["manifest.json"] = json.dumps(manifest, indent=2, sort_keys=True).encode()
    data = pack(members, key)
    out = Path(out)
    _write_private(out, data)
    return BackupResult(path=out, key_path=Path(key_file) if key_file else bundle_key_path(), size=len(data), contents=contents)


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


def _vault_snapshot(engine: LocalEngine) -> bytes:
    """Vault's raft snapshot, taken with a one-off root token (revoked after)."""
    with engine.steps.vault().root_client() as root:
        response = root.sys.take_raft_snapshot()
    if response.status_code != 200 or not response.content:
        raise BackupError(f"vault: the raft snapshot was refused: HTTP {response.status_code} {response.text[:300]}")
    return response.content


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
        # The job wrote these as MinIO's user: read without following any link it may have made.
        written = read_regular_files(staging)
        members: dict[str, bytes] = {}
        metadata: dict[str, dict[str, dict[str, str]]] = {}
        for bucket in buckets:
            prefix = f"objects/{bucket}/"
            for name in sorted(n for n in written if n.startswith(prefix)):
                members[f"minio/{name}"] = written[name]
            metadata[bucket] = _object_metadata(written.get(f"stat-{bucket}.json", b"").decode(), bucket)
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


def bundle_objects(bundle: Bundle, buckets: list[str]) -> list[tuple[str, str, bytes]]:
    """``(bucket, key, content)`` of every MinIO object in ``bundle``; refuses a bucket the plan
    does not have and a key that is empty, absolute or holds an empty, ``.`` or ``..`` segment
    (``minio/objects/b//etc/cron.d/x`` would make the key ``/etc/cron.d/x``)."""
    objects = []
    source = str(bundle.path or "bundle")
    for name, content in sorted(bundle.members.items()):
        if not name.startswith("minio/objects/"):
            continue
        bucket, _, key = name[len("minio/objects/"):].partition("/")
        if bucket not in buckets:
            raise BackupError(f"{source}: {name}: bucket {bucket!r} is not one of the plan's buckets ({', '.join(buckets) or 'none'})")
        member_parts(key, f"{source}: {name}: object key")
        objects.append((bucket, key, content))
    return objects


def stage_objects(staging: Path, bundle: Bundle, buckets: list[str]) -> int:
    """Write ``bundle``'s objects under ``staging/objects`` (never outside it, see
    :func:`write_contained`) and the ``mc`` script that uploads them; returns their count."""
    metadata = json.loads(bundle.members.get("minio/metadata.json", b"{}"))
    commands = ["set -eu"]
    objects = bundle_objects(bundle, buckets)
    for bucket, key, content in objects:
        write_contained(staging, f"objects/{bucket}/{key}", content)
        attributes = ";".join(f"{k}={v}" for k, v in sorted(metadata.get(bucket, {}).get(key, {}).items()))
        attr = ["--attr", attributes] if attributes else []
        commands.append(shlex.join(["mc", "--quiet", "cp", *attr, f"/backup/objects/{bucket}/{key}", f"s3/{bucket}/{key}"]) + " >/dev/null")
    write_contained(staging, "restore-objects.sh", ("\n".join(commands) + "\n").encode())
    return len(objects)


def _minio_restore(engine: LocalEngine, bundle: Bundle) -> int:
    service = engine.plan.service("minio")
    # Root writes into its own 0700 directory first, and hands it over only once it is complete.
    staging = _staging(engine, service, give=False)
    try:
        count = stage_objects(staging, bundle, _minio_buckets(engine.plan))
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


def verify(engine: LocalEngine, bundle: Bundle) -> dict[str, Any] | None:
    """Everything a restore checks before it touches anything, on an authenticated (or
    knowingly unauthenticated) bundle; returns the unseal material of its Vault snapshot."""
    problems = incompatibilities(bundle.plan, engine.plan)
    if problems:
        raise BackupError(f"{bundle.path}: cannot be restored into stack {engine.plan.stack}:\n  " + "\n  ".join(problems))
    bundle_objects(bundle, _minio_buckets(engine.plan))
    unseal = bundle.unseal()
    leftovers = [c.name for c in engine._owned("containers")] + [v.name for v in engine._owned("volumes")]
    if leftovers or engine.paths.vault_init.exists():
        what = ", ".join(leftovers) or str(engine.paths.vault_init)
        raise BackupError(f"stack {engine.plan.stack} is not empty ({what}): restore goes onto an empty stack; run `ccoas down --purge` first")
    return unseal


def restore(
    engine: LocalEngine,
    bundle: Bundle | Path,
    key_file: Path | None = None,
    build: bool = True,
    timeout: int = 300,
    allow_unauthenticated: bool = False,
) -> RestoreResult:
    """Restore a bundle (opened with :func:`open_bundle`, or its path) onto ``engine``'s empty
    stack; on any failure the stack is purged again."""
    if not isinstance(bundle, Bundle):
        bundle = open_bundle(bundle, key_file, allow_unauthenticated)
    unseal = verify(engine, bundle)
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
    hand ccoas the snapshot's own unseal key: the next ``up`` unseals with it and, finding no
    token of ccoas's, mints a new one from that key (a token is never taken from a bundle)."""
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
    engine.paths.ccoas_token.unlink(missing_ok=True)


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
    """A bundle of the running stack if the next ``up`` would replace a data service; keeps the newest ``keep``.

    It is encrypted and authenticated with this host's bundle key (:func:`bundle_key_path`, made
    on first need, root-only, outside the state directory): a bundle swapped into the snapshots
    directory by anyone without that key does not restore."""
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
