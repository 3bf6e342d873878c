"""The backup bundle format, with no host: integrity, encryption and compatibility are
checked before a restore touches anything (the e2e tier restores real stacks)."""

from __future__ import annotations

import json
import stat

import pytest

from ccoas.backup import BackupError, _object_metadata, _write_private, incompatibilities, load_key, pack, unpack

MEMBERS = {
    "plan.json": b'{"stack": "x"}\n',
    "postgres/app.dump": bytes(range(256)) * 3,
    "minio/objects/uploads/a/b.txt": b"hello\n",
}


def bundle(key: bytes | None = None) -> bytes:
    import hashlib

    manifest = {"files": {name: hashlib.sha256(data).hexdigest() for name, data in MEMBERS.items()}}
    return pack({**MEMBERS, "manifest.json": json.dumps(manifest).encode()}, key)


def test_a_bundle_reads_back_every_member():
    assert unpack(bundle(), None).members == MEMBERS


def test_every_single_flipped_byte_is_refused():
    """One byte flipped anywhere (magic, header, archive headers, padding, data) is refused."""
    data = bundle()
    for index in range(len(data)):
        damaged = bytearray(data)
        damaged[index] ^= 0x01
        with pytest.raises(BackupError):
            unpack(bytes(damaged), None)


def test_a_truncated_bundle_is_refused():
    with pytest.raises(BackupError, match="checksum mismatch"):
        unpack(bundle()[:-100], None)


def test_an_encrypted_bundle_needs_its_key(tmp_path):
    key = load_key(tmp_path / "key", create=True)
    assert stat.S_IMODE((tmp_path / "key").stat().st_mode) == 0o600
    data = bundle(key)
    assert b"hello" not in data and b"postgres/app.dump" not in data
    assert unpack(data, key).members == MEMBERS
    with pytest.raises(BackupError, match="encrypted"):
        unpack(data, None)
    other = load_key(tmp_path / "other", create=True)
    with pytest.raises(BackupError, match="does not open"):
        unpack(data, other)


def test_a_missing_or_foreign_key_file_is_refused(tmp_path):
    with pytest.raises(BackupError, match="not found"):
        load_key(tmp_path / "absent")
    (tmp_path / "bad").write_text("not a key")
    with pytest.raises(BackupError, match="not a key"):
        load_key(tmp_path / "bad")


def test_bundle_files_are_private(tmp_path):
    _write_private(tmp_path / "b", b"x")
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o600


def test_a_member_outside_the_manifest_is_refused():
    data = pack({**MEMBERS, "manifest.json": json.dumps({"files": {}}).encode()}, None)
    with pytest.raises(BackupError, match="differ from its manifest"):
        unpack(data, None)


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
