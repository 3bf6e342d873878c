"""The same images from dev to prod: a stack's images in one archive, loaded elsewhere verified.

``ccoas images save`` asks the engine for a *docker-archive* of every image of the plan
(``GET /images/get``): that format carries each image's config blob byte for byte, so its
id (the SHA-256 of that config), its labels and its HEALTHCHECK survive; converting to OCI
would re-marshal the config and change the id. ``ccoas images load`` on another host (no
registry, no build tools) checks each config blob against the id it is named by, loads the
archive (the engine checks every layer against the config's ``diff_ids``), and checks that
each tag now names exactly that id. A stack with ``images.source: bundle`` then runs those
images and never builds or pulls.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccoas.errors import CcoasError
from ccoas.plan import Plan


class ImageArchiveError(CcoasError):
    """An image archive cannot be written, is damaged, or did not load as it says."""


@dataclass(frozen=True)
class ArchivedImage:
    tag: str
    id: str
    """``sha256:<hex>``: the SHA-256 of the image's config blob."""


def save(client: Any, plan: Plan, out: Path) -> list[ArchivedImage]:
    """Write every image of ``plan`` (each must be on this engine) into one docker-archive at ``out``."""
    from ccoas.images import image_present

    refs = sorted({s.image.ref for s in plan.services})
    missing = [ref for ref in refs if not image_present(client, ref)]
    if missing:
        raise ImageArchiveError(f"not on this engine, cannot be saved: {', '.join(missing)} (build or pull them first)")
    response = client.api._get(client.api._url("/images/get"), params={"names": refs}, stream=True)
    if response.status_code != 200:
        raise ImageArchiveError(f"the engine refused to export the images: HTTP {response.status_code} {response.text[:300]}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as handle:
        for chunk in response.iter_content(chunk_size=1 << 20):
            handle.write(chunk)
    archived = contents(tmp)
    wanted = {ref: client.images.get(ref).id for ref in refs}
    got = {image.tag: image.id for image in archived}
    if any(got.get(ref) != image_id for ref, image_id in wanted.items()):
        tmp.unlink()
        raise ImageArchiveError(f"the engine's archive does not hold the images as they are here: wanted {wanted}, got {got}")
    os.replace(tmp, out)
    return [ArchivedImage(ref, wanted[ref]) for ref in refs]


def contents(path: Path) -> list[ArchivedImage]:
    """The images of a docker-archive, each config blob checked against the id it is named by."""
    try:
        with tarfile.open(path, mode="r:") as archive:
            manifest = json.loads(_member(archive, "manifest.json"))
            images = []
            for entry in manifest:
                config = _member(archive, entry["Config"])
                digest = hashlib.sha256(config).hexdigest()
                named = Path(entry["Config"]).name.removesuffix(".json").removeprefix("sha256:")
                if digest != named:
                    raise ImageArchiveError(f"{path}: the config of {entry.get('RepoTags')} is damaged (sha256 {digest}, named {named})")
                images += [ArchivedImage(tag, f"sha256:{digest}") for tag in entry.get("RepoTags") or []]
            return images
    except (tarfile.TarError, KeyError, ValueError, TypeError) as exc:
        raise ImageArchiveError(f"{path}: not a docker-archive of images, or damaged: {exc}") from None


def load(client: Any, path: Path) -> list[ArchivedImage]:
    """Load a docker-archive into this engine and prove every tag names the archived id."""
    images = contents(path)
    if not images:
        raise ImageArchiveError(f"{path}: holds no tagged image")
    with open(path, "rb") as handle:
        try:
            client.api.load_image(handle)
        except Exception as exc:  # noqa: BLE001 - the engine's refusal, in its words
            raise ImageArchiveError(f"{path}: the engine refused to load it: {exc}") from None
    wrong = []
    for image in images:
        try:
            loaded = client.images.get(image.tag).id
        except Exception:  # noqa: BLE001
            loaded = None
        if loaded != image.id:
            wrong.append(f"{image.tag}: archived {image.id[:19]}, engine has {str(loaded)[:19]}")
    if wrong:
        raise ImageArchiveError("loaded images differ from the archive: " + "; ".join(wrong))
    return images


def _member(archive: tarfile.TarFile, name: str) -> bytes:
    handle = archive.extractfile(name)
    if handle is None:
        raise KeyError(name)
    return handle.read()

