"""The backup bundle format, with no host: authentication, integrity and every member name are
checked before a restore reads or writes anything (the e2e tier restores real stacks). The
attacker's bundles here are real tar archives built byte by byte, as someone who can write a
bundle (or the snapshots directory) but does not hold the key would build them."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest

from ccoas.backup import (
    INSECURE_FLAG,
    MAGIC,
    BackupError,
    Bundle,
    _object_metadata,
    _write_private,
    host_bundle_key,
    incompatibilities,
    load_key,
    member_parts,
    open_bundle,
    pack,
    read_regular_files,
    stage_objects,
    unpack,
    unseal_path,
)

MEMBERS = {
    "plan.json": b'{"stack": "x"}\n',
    "postgres/app.dump": bytes(range(256)) * 3,
    "minio/objects/uploads/a/b.txt": b"hello\n",
}


@pytest.fixture
def key(tmp_path) -> bytes:
    return load_key(tmp_path / "operator.key", create=True)


@pytest.fixture
def host_key(tmp_path, monkeypatch) -> Path:
    """This host's bundle key, in a private directory of the test's own."""
    path = tmp_path / "etc" / "keys" / "bundle.key"
    monkeypatch.setenv("CCOAS_BUNDLE_KEY", str(path))
    return path


def manifest_of(members: dict[str, bytes]) -> bytes:
    return json.dumps({"files": {name: hashlib.sha256(data).hexdigest() for name, data in members.items()}}).encode()


def bundle(key: bytes, members: dict[str, bytes] = MEMBERS) -> bytes:
    return pack({**members, "manifest.json": manifest_of(members)}, key)


def crafted(members: dict[str, bytes], key: bytes | None, version: int = 2, extra: list[tarfile.TarInfo] = ()) -> bytes:
    """A bundle built by hand (not by :func:`pack`, which refuses bad names): a manifest that lists
    every member, ``extra`` members (links, devices) added as they are, sealed with ``key``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in {"manifest.json": manifest_of(members), **members}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for info in extra:
            archive.addfile(info)
    payload = buffer.getvalue()
    if key is not None:
        from cryptography.fernet import Fernet

        payload = Fernet(key).encrypt(payload)
    header = {"format": "ccoas-backup", "version": version, "encrypted": key is not None, "sha256": hashlib.sha256(payload).hexdigest()}
    return MAGIC + json.dumps(header).encode() + b"\n" + payload


def test_a_bundle_reads_back_every_member(key):
    opened = unpack(bundle(key), key)
    assert opened.members == MEMBERS and opened.authenticated


def test_every_single_flipped_byte_is_refused(key):
    """One byte flipped anywhere (magic, header, ciphertext, authentication tag) is refused."""
    data = bundle(key)
    for index in range(len(data)):
        damaged = bytearray(data)
        damaged[index] ^= 0x01
        with pytest.raises(BackupError):
            unpack(bytes(damaged), key)


def test_a_tampered_payload_with_a_recomputed_checksum_is_refused(key):
    """The header's SHA-256 is the bundle's own: an attacker recomputes it. The key's tag is what refuses."""
    data = bundle(key)
    head, _, payload = data[len(MAGIC):].partition(b"\n")
    damaged = bytearray(payload)
    damaged[len(damaged) // 2] = ord("A") if damaged[len(damaged) // 2] != ord("A") else ord("B")
    header = {**json.loads(head), "sha256": hashlib.sha256(bytes(damaged)).hexdigest()}
    with pytest.raises(BackupError, match="does not authenticate"):
        unpack(MAGIC + json.dumps(header).encode() + b"\n" + bytes(damaged), key)


def test_a_truncated_bundle_is_refused(key):
    with pytest.raises(BackupError, match="checksum mismatch"):
        unpack(bundle(key)[:-100], key)


def test_a_bundle_needs_the_key_it_was_made_with(key, tmp_path):
    assert stat.S_IMODE((tmp_path / "operator.key").stat().st_mode) == 0o600
    data = bundle(key)
    assert b"hello" not in data and b"postgres/app.dump" not in data
    with pytest.raises(BackupError, match="give the key"):
        unpack(data, None)
    other = load_key(tmp_path / "other", create=True)
    with pytest.raises(BackupError, match="does not authenticate"):
        unpack(data, other)


def test_a_bundle_sealed_with_the_attackers_own_key_is_refused(key):
    """Well formed, encrypted, internally consistent, but made without the operator's key."""
    from cryptography.fernet import Fernet

    with pytest.raises(BackupError, match="does not authenticate"):
        unpack(bundle(Fernet.generate_key()), key)


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_an_unauthenticated_bundle_is_refused_unless_the_operator_says_so(key, encrypted):
    """Format 1 (an older ccoas): its checksums are its own and its unseal file is not covered."""
    data = crafted(MEMBERS, key if encrypted else None, version=1)
    with pytest.raises(BackupError, match=f"not authenticated.*{INSECURE_FLAG}"):
        unpack(data, key)
    opened = unpack(data, key if encrypted else None, allow_unauthenticated=True)
    assert opened.members == MEMBERS and not opened.authenticated


def test_a_version_2_header_claiming_no_encryption_is_refused(key):
    with pytest.raises(BackupError, match="header is damaged"):
        unpack(crafted(MEMBERS, None, version=2), key)


def link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return info


@pytest.mark.parametrize(
    ("members", "extra", "refusal"),
    [
        ({"minio/objects/uploads//etc/cron.d/x": b"* * * * * root id > /tmp/pwned\n"}, [], "empty segment"),
        ({"minio/objects/uploads/../../../../etc/cron.d/x": b"x"}, [], r"\.\. segment"),
        ({"/etc/cron.d/x": b"x"}, [], "absolute path"),
        ({"minio/objects/uploads/./x": b"x"}, [], r"\. or \.\. segment"),
        ({"minio/objects/uploads/x/": b"x"}, [], "empty segment"),
        ({}, [link("minio/objects/uploads/x", "/etc/shadow", tarfile.SYMTYPE)], "not a regular file"),
        ({}, [link("minio/objects/uploads/x", "plan.json", tarfile.LNKTYPE)], "not a regular file"),
        ({}, [device("minio/objects/uploads/x")], "not a regular file"),
    ],
    ids=["double-slash-key", "dotdot", "absolute", "dot", "trailing-slash", "symlink", "hardlink", "device"],
)
def test_a_member_that_could_leave_its_directory_is_refused_even_when_authenticated(key, members, extra, refusal):
    """Even a bundle the key authenticates (a compromised backup host, a bug) cannot name a
    place outside the directory its members are written under."""
    with pytest.raises(BackupError, match=refusal):
        unpack(crafted({**MEMBERS, **members}, key, extra=list(extra)), key)


def test_a_member_twice_is_refused(key):
    data = crafted(MEMBERS, key, extra=[])
    from cryptography.fernet import Fernet

    head, _, token = data[len(MAGIC):].partition(b"\n")
    archive = io.BytesIO(Fernet(key).decrypt(token))
    with tarfile.open(fileobj=archive, mode="a") as tar:
        info = tarfile.TarInfo("plan.json")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"{}\n"))
    payload = Fernet(key).encrypt(archive.getvalue())
    header = {**json.loads(head), "sha256": hashlib.sha256(payload).hexdigest()}
    with pytest.raises(BackupError, match="appears twice"):
        unpack(MAGIC + json.dumps(header).encode() + b"\n" + payload, key)


@pytest.mark.parametrize("name", ["", "a\0b", "/x", "a//b", "a/", ".", "..", "a/../b", "a/./b"])
def test_member_names_that_do_not_stay_put_are_refused(name):
    with pytest.raises(BackupError, match="refused member name"):
        member_parts(name)


def test_pack_refuses_to_write_a_bad_name(key):
    with pytest.raises(BackupError, match="empty segment"):
        pack({"minio/objects/b//x": b""}, key)


def test_restoring_crafted_objects_writes_nothing_outside_staging(tmp_path):
    """:func:`stage_objects` on bundles that got past :func:`unpack` (built directly): the MinIO
    key ``/etc/...`` of ``minio/objects/<bucket>//etc/...``, an unknown bucket, and a symlink
    planted in the staging directory are refused, and nothing appears outside it."""
    staging, outside = tmp_path / "staging", tmp_path / "outside"
    staging.mkdir()
    outside.mkdir()
    for members, refusal in (
        ({f"minio/objects/uploads/{outside}/cron": b"x"}, "absolute path"),
        ({"minio/objects/uploads/../../outside/cron": b"x"}, r"\.\. segment"),
        ({"minio/objects/other/cron": b"x"}, "not one of the plan's buckets"),
    ):
        with pytest.raises(BackupError, match=refusal):
            stage_objects(staging, Bundle(manifest={}, members={"plan.json": b"{}", **members}), ["uploads"])
    (staging / "objects").mkdir()
    (staging / "objects" / "uploads").symlink_to(outside)
    with pytest.raises(BackupError, match="refusing to write"):
        stage_objects(staging, Bundle(manifest={}, members={"minio/objects/uploads/cron": b"x"}), ["uploads"])
    (staging / "objects" / "uploads").unlink()
    (staging / "objects" / "uploads").mkdir()
    (staging / "objects" / "uploads" / "cron").symlink_to(outside / "cron")
    with pytest.raises(BackupError, match="refusing to write"):
        stage_objects(staging, Bundle(manifest={}, members={"minio/objects/uploads/cron": b"x"}), ["uploads"])
    assert list(outside.iterdir()) == []


def test_objects_are_staged_with_their_upload_script(tmp_path):
    metadata = {"uploads": {"a b/c.txt": {"Content-Type": "text/plain"}}}
    members = {"minio/objects/uploads/a b/c.txt": b"hi", "minio/metadata.json": json.dumps(metadata).encode()}
    assert stage_objects(tmp_path, Bundle(manifest={}, members=members), ["uploads"]) == 1
    assert (tmp_path / "objects" / "uploads" / "a b" / "c.txt").read_bytes() == b"hi"
    assert stat.S_IMODE((tmp_path / "objects" / "uploads" / "a b" / "c.txt").stat().st_mode) == 0o600
    script = (tmp_path / "restore-objects.sh").read_text()
    assert "mc --quiet cp --attr Content-Type=text/plain '/backup/objects/uploads/a b/c.txt' 's3/uploads/a b/c.txt'" in script


def test_the_backup_side_reads_no_link_a_job_container_planted(tmp_path):
    """The MinIO job writes its staging directory as MinIO's user: a symlink there to a file of
    root's must not be read into the bundle (and restored where that user can read it)."""
    secret = tmp_path / "root-only"
    secret.write_text("root's secret")
    (tmp_path / "staging" / "objects" / "uploads" / "d").mkdir(parents=True)
    (tmp_path / "staging" / "objects" / "uploads" / "d" / "real").write_bytes(b"ok")
    (tmp_path / "staging" / "objects" / "uploads" / "leak").symlink_to(secret)
    (tmp_path / "staging" / "objects" / "uploads" / "dirlink").symlink_to(tmp_path)
    assert read_regular_files(tmp_path / "staging") == {"objects/uploads/d/real": b"ok"}


def test_the_unseal_key_travels_inside_the_authenticated_bundle(key, tmp_path):
    """A ``.unseal`` file planted beside a bundle is not read; only the unseal key is taken
    from the bundle (a token it carries is never used)."""
    inside = {"vault/raft.snap": b"snapshot", "vault/unseal.json": json.dumps({"keys_base64": ["real"], "ccoas_token": "t"}).encode()}
    path = tmp_path / "b.ccoas"
    path.write_bytes(bundle(key, {**MEMBERS, **inside}))
    unseal_path(path).write_text(json.dumps({"keys_base64": ["attacker"], "snapshot_sha256": hashlib.sha256(b"snapshot").hexdigest()}))
    (tmp_path / "k").write_bytes(key)
    assert open_bundle(path, tmp_path / "k").unseal() == {"keys_base64": ["real"]}


def test_a_swapped_unseal_file_of_an_unauthenticated_bundle_is_refused(tmp_path):
    path = tmp_path / "old.ccoas"
    path.write_bytes(crafted({**MEMBERS, "vault/raft.snap": b"snapshot"}, None, version=1))
    unseal_path(path).write_text(json.dumps({"keys_base64": ["k"], "snapshot_sha256": hashlib.sha256(b"another").hexdigest()}))
    with pytest.raises(BackupError, match="not authenticated"):
        open_bundle(path)
    with pytest.raises(BackupError, match="belongs to another bundle"):
        open_bundle(path, allow_unauthenticated=True).unseal()


def test_the_host_bundle_key_is_made_once_root_only_and_checked(host_key):
    assert host_bundle_key(create=False) is None
    key = host_bundle_key(create=True)
    assert host_bundle_key(create=True) == key == host_key.read_bytes()
    assert stat.S_IMODE(host_key.stat().st_mode) == 0o600 and host_key.stat().st_uid == os.geteuid()
    assert stat.S_IMODE(host_key.parent.stat().st_mode) == 0o700
    host_key.chmod(0o644)
    with pytest.raises(BackupError, match="closed to everyone else"):
        host_bundle_key(create=False)
    host_key.chmod(0o600)
    host_key.parent.chmod(0o770)
    with pytest.raises(BackupError, match="closed to everyone else"):
        host_bundle_key(create=False)


def test_a_symlinked_host_bundle_key_is_refused(host_key, tmp_path):
    host_key.parent.mkdir(parents=True, mode=0o700)
    elsewhere = tmp_path / "planted.key"
    elsewhere.write_bytes(b"x" * 44)
    host_key.symlink_to(elsewhere)
    with pytest.raises(BackupError, match="a symlink"):
        host_bundle_key(create=True)
    host_key.unlink()
    host_key.parent.rmdir()
    host_key.parent.symlink_to(tmp_path)
    with pytest.raises(BackupError, match="a symlink"):
        host_bundle_key(create=True)


def test_a_missing_or_foreign_key_file_is_refused(tmp_path):
    with pytest.raises(BackupError, match="not found"):
        load_key(tmp_path / "absent")
    (tmp_path / "bad").write_text("not a key")
    with pytest.raises(BackupError, match="not a key"):
        load_key(tmp_path / "bad")


def test_bundle_files_are_private(tmp_path):
    _write_private(tmp_path / "b", b"x")
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o600


def test_a_link_at_the_temporary_path_is_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "b.tmp").symlink_to(victim)
    _write_private(tmp_path / "b", b"x")
    assert victim.read_text() == "keep" and (tmp_path / "b").read_bytes() == b"x"


def test_a_member_outside_the_manifest_is_refused(key):
    data = pack({**MEMBERS, "manifest.json": json.dumps({"files": {}}).encode()}, key)
    with pytest.raises(BackupError, match="differ from its manifest"):
        unpack(data, key)


@pytest.mark.parametrize(
    "attack",
    ["double-slash-key", "unauthenticated", "foreign-key", "tampered"],
)
def test_the_restore_command_refuses_a_crafted_bundle_before_any_engine_call(attack, runner, host_key, tmp_path, monkeypatch):
    """``ccoas restore`` authenticates and checks the bundle before it connects to the engine:
    exit 2, a message naming the bundle, no traceback, nothing written."""
    from cryptography.fernet import Fernet

    from ccoas.cli import app

    key = host_bundle_key(create=True)
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv("CCOAS_STATE_DIR", str(state))
    target = tmp_path / "cron.d" / "x"
    members = {**MEMBERS, f"minio/objects/uploads/{target}": b"* * * * * root id\n"}
    data = {
        "double-slash-key": lambda: crafted(members, key),
        "unauthenticated": lambda: crafted(MEMBERS, None, version=1),
        "foreign-key": lambda: bundle(Fernet.generate_key()),
        "tampered": lambda: bundle(key)[:-60] + bytes(60),
    }[attack]()
    path = tmp_path / "crafted.ccoas"
    path.write_bytes(data)
    result = runner.invoke(app, ["restore", str(path), "stacks/ci.yaml", "--name", "tb-crafted"])
    assert result.exit_code == 2, result.output
    assert str(path) in result.output and "Traceback" not in result.output
    assert not target.exists() and list(state.iterdir()) == []


def test_a_compatible_plan_has_no_problems(load_plan):
    plan = load_plan("ci", name="h15-a")
    assert incompatibilities(json.loads(plan.to_json()), plan) == []


def test_incompatible_plans_are_named(load_plan):
    saved = json.loads(load_plan("ci", name="h15-a").to_json())
    problems = incompatibilities(saved, load_plan("ci", name="h15-b"))
    assert any("restore with --name h15-a" in p for p in problems)
    saved["schema_version"] = 99
    saved["services"] = [s for s in saved["services"] if s["name"] != "minio"]
    problems = incompatibilities(saved, load_plan("ci", name="h15-a"))
    assert any("schema_version 99" in p for p in problems)
    assert any(p.startswith("minio: in the stack but not in the bundle") for p in problems)


def test_object_metadata_keeps_content_headers_and_user_metadata():
    lines = "\n".join(
        json.dumps(entry)
        for entry in (
            {"status": "success", "name": "up/a/b.txt", "metadata": {"Content-Type": "text/plain", "X-Amz-Meta-Owner": "u1", "Etag": "x"}},
            {"status": "success", "name": "up/c", "type": "folder"},
        )
    )
    assert _object_metadata(lines, "up") == {"a/b.txt": {"Content-Type": "text/plain", "X-Amz-Meta-Owner": "u1"}}


def test_no_snapshot_but_a_note_when_the_data_services_are_stopped():
    """After a reboot the stack is stopped: `up` must still bring it back (replacing what
    changed, volumes kept) rather than refuse because nothing can be dumped; the user is told."""
    from types import SimpleNamespace

    from ccoas.backup import snapshot_before_up
    from ccoas.engine.diff import Operation

    replace = Operation(kind="container", action="recreate", resource="postgres", cause="image changed")
    rows = [SimpleNamespace(service="postgres", state="created"), SimpleNamespace(service="vault", state="running")]
    engine = SimpleNamespace(
        prepare_images=lambda build: None,
        plan_operations=lambda: (None, None, [replace]),
        status=lambda probe=True: rows,
        notes=[],
    )

    assert snapshot_before_up(engine) is None
    assert engine.notes == [
        "no snapshot before replacing postgres: postgres not running, so nothing could be dumped (the volumes are kept); "
        "take `ccoas backup` of the running stack before risky changes"
    ]


@pytest.mark.parametrize("member", ["plan.json", "vault/unseal.json"])
def test_a_damaged_json_member_is_a_clear_refusal(member, key, tmp_path):
    members = {**MEMBERS, "vault/raft.snap": b"s", "vault/unseal.json": b'{"keys_base64": ["k"]}', member: b"[not json"}
    path = tmp_path / "b.ccoas"
    path.write_bytes(bundle(key, members))
    (tmp_path / "k").write_bytes(key)
    opened = open_bundle(path, tmp_path / "k")
    with pytest.raises(BackupError, match=f"{member}: damaged"):
        opened.plan if member == "plan.json" else opened.unseal()
