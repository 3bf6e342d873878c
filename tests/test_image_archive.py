"""The image archive's own checks, with no engine (the e2e tier loads a real one)."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from ccoas.image_archive import ImageArchiveError, contents


def test_a_damaged_archive_is_refused(tmp_path):
    path = tmp_path / "bad.tar"
    with tarfile.open(path, "w") as archive:
        for member, data in (("manifest.json", json.dumps([{"Config": f"{'0' * 64}.json", "RepoTags": ["x:y"], "Layers": []}]).encode()), (f"{'0' * 64}.json", b"{}")):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    with pytest.raises(ImageArchiveError, match="damaged"):
        contents(path)

