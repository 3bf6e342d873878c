"""The ``ccoas`` command line: parses arguments, calls the library, prints results.

Every :class:`~ccoas.errors.CcoasError` becomes a one-line-per-problem message on
stderr and its exit code (2 bad input or failed preflight, 1 failed apply), never a traceback;
so does any engine failure that reaches the command line unnamed.
"""

from __future__ import annotations

import enum
import functools
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Callable, Optional, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from ccoas.errors import (
    EXIT_APPLY_FAILED,
    EXIT_NOT_HEALTHY,
    CcoasError,
    PreflightError,
    StackError,
    engine_step,
    engine_words,
    is_engine_failure,
)

if TYPE_CHECKING:
    from ccoas.engine.local import LocalEngine
    from ccoas.plan import Plan
    from ccoas.report import ProgressReporter

app = typer.Typer(
    help="Deploy the CC-OAS open stack: validate a stack into a plan, render it, run it rootless, check it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
images_app = typer.Typer(help="Local images, built from Debian, PyPI, npm and Go packages (no registry).", no_args_is_help=True)
host_app = typer.Typer(help="Prepare a host for rootless containers (pyinfra).", no_args_is_help=True)
secrets_app = typer.Typer(help="Secrets kept in Vault: paths and versions, never values.", no_args_is_help=True)
tls_app = typer.Typer(help="The stack CA (in Vault) that signs the certificates ccoas generates.", no_args_is_help=True)
app.add_typer(images_app, name="images")
app.add_typer(host_app, name="host")
app.add_typer(secrets_app, name="secrets")
app.add_typer(tls_app, name="tls")

out = Console()
err = Console(stderr=True)

DEFAULT_STACK = Path("stacks/dev.yaml")
StackArg = Annotated[Path, typer.Argument(help="Stack file (YAML).", show_default=True)]
NameOpt = Annotated[Optional[str], typer.Option("--name", help="Override the stack name (ephemeral stacks: --name pr-42).")]

F = TypeVar("F", bound=Callable[..., object])


class Engine(str, enum.Enum):
    """Which engine provisions the plan: the Docker Engine API on the rootless socket, or Pulumi."""

    local = "local"
    pulumi = "pulumi"


EngineOpt = Annotated[Engine, typer.Option("--engine", help="local (Docker Engine API on the rootless socket) or pulumi.")]


def reports_errors(func: F) -> F:
    """Turn ccoas errors into a message and their exit code; engine failures into exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return func(*args, **kwargs)
        except StackError as exc:
            for problem in exc.problems:
                err.print(f"[red]error:[/red] {escape(str(problem))}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except PreflightError as exc:
            for failure in exc.failures:
                err.print(f"[red]preflight:[/red] {escape(failure)}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except CcoasError as exc:
            err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except Exception as exc:
            if not is_engine_failure(exc):
                raise
            err.print(f"[red]error:[/red] the container engine failed: {escape(engine_words(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_APPLY_FAILED) from None
        except KeyboardInterrupt:
            err.print("interrupted: the next `ccoas up` converges whatever was left", highlight=False)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _plan(stack: Path, name: str | None):
    from ccoas.planner import build_plan, load_stack

    return build_plan(load_stack(stack), name=name)


def _engine(plan: Plan, progress: ProgressReporter | None = None) -> LocalEngine:
    """``plan`` on the local engine (the rootless API socket, its service started if need be)."""
    from ccoas.engine.local import LocalEngine

    return LocalEngine.connect(plan, progress=progress)


def _preflight(
    plan: Plan | None, stack: Path | None, progress: ProgressReporter | None = None
) -> LocalEngine | None:
    """Every preflight rule; raises :class:`PreflightError` (exit 2) listing each failure.
    Returns the connected engine when there is a plan."""
    from ccoas.host import host_layout
    from ccoas.preflight import check_engine, check_host

    layout = host_layout()
    failures = check_host(plan, layout, str(stack) if stack else None)
    if failures:
        raise PreflightError(failures)
    if plan is None:
        return None
    engine = _engine(plan, progress)
    with engine_step(f"stack {plan.stack}", "preflight"):
        failures = check_engine(plan, layout, engine.client)
    if failures:
        raise PreflightError(failures)
    return engine


def _version(value: bool) -> None:
    if value:
        from ccoas import __version__

        out.print(f"ccoas {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Exit codes: 0 done; 1 an apply failed (the engine's words are shown); 2 bad input or a
    failed preflight (nothing built or created); 3 `status` saw a service not running and healthy."""


@app.command()
@reports_errors
def plan(
    stack: StackArg = DEFAULT_STACK,
    name: NameOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole plan as JSON (stable schema).")] = False,
) -> None:
    """Validate a stack file and show the resolved plan."""
    resolved = _plan(stack, name)
    if as_json:
        sys.stdout.write(resolved.to_json())
        return
    from ccoas.report import plan_tables, print_table

    for table in plan_tables(resolved):
        print_table(out, table)
    out.print(f"state on this host: {_state_line(resolved)}", highlight=False, soft_wrap=True)


def _state_line(plan: Plan) -> str:
    """What the stack's state dir on this host says about the ccoas that wrote it (no engine needed)."""
    from ccoas.host import host_layout
    from ccoas.migrations import describe
    from ccoas.state import state_dir

    return describe(state_dir(host_layout().state_root, plan.stack))


@app.command()
@reports_errors
def render(
    stack: StackArg = DEFAULT_STACK,
    out_dir: Annotated[Path, typer.Option("--out", help="Directory to write the rendered files to.")] = Path("out"),
    name: NameOpt = None,
    target: Annotated[
        str, typer.Option("--target", help="local (config files, compose.yaml, plan.json) or kubernetes (manifests, kustomization.yaml).")
    ] = "local",
) -> None:
    """Render every config file of the plan, or its Kubernetes manifests (byte-identical on every run)."""
    if target == "kubernetes":
        from ccoas.kubernetes import render as render_plan
    elif target == "local":
        from ccoas.render import render as render_plan
    else:
        raise CcoasError(f"--target: expected local or kubernetes, got {target!r}")
    written = render_plan(_plan(stack, name), out_dir)
    out.print(f"rendered {len(written)} files into {out_dir}")


@app.command()
@reports_errors
def up(
    stack: StackArg = DEFAULT_STACK,
    name: NameOpt = None,
    engine: EngineOpt = Engine.local,
    build: Annotated[bool, typer.Option(help="Build missing local images first.")] = True,
    timeout: Annotated[int, typer.Option(help="Seconds to wait for each service to become healthy.")] = 300,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the operations `up` would apply, one per line; change nothing.")] = False,
    snapshot: Annotated[bool, typer.Option("--snapshot/--no-snapshot", help="Back up first when a data service (postgres, minio, vault) would be replaced.")] = True,
    keep_snapshots: Annotated[int, typer.Option("--keep-snapshots", min=1, help="How many such snapshots to keep per stack.")] = 3,
) -> None:
    """Provision the stack in rootless containers and wait until everything is healthy.

    A stack whose state an older ccoas wrote is migrated first (the notes say how); one whose
    state a newer ccoas wrote is refused (exit 2) before anything is touched."""
    from ccoas.host import host_layout
    from ccoas.migrations import check as check_state
    from ccoas.state import state_dir

    resolved = _plan(stack, name)
    check_state(state_dir(host_layout().state_root, resolved.stack))
    if engine is Engine.pulumi:
        from ccoas import pulumi_engine

        if dry_run:
            pulumi_engine.preview_from_cli(resolved, stack)
        else:
            pulumi_engine.up_from_cli(resolved, stack)
        return
    if dry_run:
        _print_operations(_engine(resolved).up(dry_run=True).operations)
        return
    from ccoas.report import ProgressReporter, login_hints, print_table, status_table

    from ccoas.backup import snapshot_before_up

    with ProgressReporter(err) as progress:
        engine_ = _preflight(resolved, stack, progress=progress)
        taken = snapshot_before_up(engine_, keep=keep_snapshots, build=build) if snapshot else None
        if taken is not None:
            progress.done(f"snapshot before replacing {', '.join(f'{s} ({why})' for s, why in sorted(taken[1].items()))}: {taken[0].path}")
        result = engine_.up(build=build, timeout=timeout)
    if taken is not None:
        out.print(f"snapshot taken first: {taken[0].path} (restore: ccoas restore {taken[0].path} after `ccoas down --purge`)", highlight=False)
    print_table(out, status_table(result.status))
    for note in result.notes:
        out.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    for hint in login_hints(resolved, result.status, stack, name):
        out.print(hint, highlight=False, soft_wrap=True)
    out.print(f"{result.changes} changes", highlight=False)


def _print_operations(operations: list) -> None:
    for operation in operations:
        out.print(str(operation), highlight=False, soft_wrap=True)
    out.print(f"{len(operations)} operations", highlight=False)


@app.command()
@reports_errors
def preview(
    stack: StackArg = DEFAULT_STACK,
    name: NameOpt = None,
    engine: Annotated[Engine, typer.Option("--engine", help="pulumi (the default here) or local (same as `up --dry-run`).")] = Engine.pulumi,
) -> None:
    """Show what `ccoas up --engine ENGINE` would change; changes nothing."""
    resolved = _plan(stack, name)
    if engine is Engine.local:
        _print_operations(_engine(resolved).up(dry_run=True).operations)
        return
    from ccoas import pulumi_engine

    pulumi_engine.preview_from_cli(resolved, stack)


@app.command()
@reports_errors
def down(
    stack: StackArg = DEFAULT_STACK,
    name: NameOpt = None,
    purge: Annotated[bool, typer.Option("--purge", help="Also remove volumes, secrets and state: everything the stack owns.")] = False,
    engine: EngineOpt = Engine.local,
) -> None:
    """Remove the stack's containers and networks; volumes are kept unless --purge."""
    resolved = _plan(stack, name)
    if engine is Engine.pulumi:
        from ccoas import pulumi_engine

        pulumi_engine.down_from_cli(resolved, stack, purge=purge)
        return
    with engine_step(f"stack {resolved.stack}", "remove"):
        removed = _engine(resolved).down(purge=purge)
    out.print(f"removed {removed}", highlight=False)


@app.command()
@reports_errors
def backup(
    stack: StackArg = DEFAULT_STACK,
    name: NameOpt = None,
    out_file: Annotated[Path, typer.Option("--out", help="The bundle file to write (0600), Vault's unseal key inside, encrypted.")] = ...,
    key_file: Annotated[
        Optional[Path],
        typer.Option("--key-file", help="Encrypt and authenticate with this key (created, 0600, if absent); default: this host's bundle key. Keep it apart from the bundles."),
    ] = None,
) -> None:
    """Back up the running stack: Postgres, MinIO objects, Vault, plan and config, in one bundle."""
    from ccoas.backup import backup as take_backup

    from ccoas.metrics import record_backup

    engine = _engine(_plan(stack, name))
    result = take_backup(engine, out_file, key_file=key_file)
    record_backup(engine.paths.state, result.path, time.time())
    for service, what in sorted(result.contents.items()):
        out.print(f"{service:9} {what}", highlight=False)
    out.print(f"wrote {result.path} ({result.size} bytes, encrypted and authenticated with {result.key_path}: keep that key apart from the bundle)", highlight=False)


@app.command()
@reports_errors
def restore(
    bundle: Annotated[Path, typer.Argument(help="A bundle written by `ccoas backup` (or an automatic snapshot).")],
    stack: StackArg = DEFAULT_STACK,
    name: NameOpt = None,
    key_file: Annotated[Optional[Path], typer.Option("--key-file", help="The key the bundle was made with; default: this host's bundle key.")] = None,
    insecure_unauthenticated: Annotated[
        bool,
        typer.Option("--insecure-unauthenticated", help="Also restore a bundle no key authenticates (format 1, from an older ccoas): only one whose origin you know."),
    ] = False,
    build: Annotated[bool, typer.Option(help="Build missing local images first.")] = True,
    timeout: Annotated[int, typer.Option(help="Seconds to wait for each service to become healthy.")] = 300,
) -> None:
    """Restore a bundle onto an empty (or purged) stack; authenticated and verified first, never half-applied."""
    from ccoas.backup import open_bundle
    from ccoas.backup import restore as restore_bundle
    from ccoas.report import ProgressReporter, print_table, status_table

    resolved = _plan(stack, name)
    opened = open_bundle(bundle, key_file=key_file, allow_unauthenticated=insecure_unauthenticated)  # before any engine call
    if not opened.authenticated:
        err.print(
            f"[red]warning:[/red] {escape(str(bundle))} is NOT authenticated: restoring it installs whatever its author chose "
            "(Vault's secrets and unseal key, SQL run as the Postgres superuser); take a new backup once restored",
            highlight=False,
            soft_wrap=True,
        )
    with ProgressReporter(err) as progress:
        result = restore_bundle(_engine(resolved, progress), opened, build=build, timeout=timeout)
    print_table(out, status_table(result.status))
    for service, what in sorted(result.restored.items()):
        out.print(f"restored {service}: {what}", highlight=False)


@app.command()
@reports_errors
def diagnose(
    stack: StackArg = DEFAULT_STACK,
    name: NameOpt = None,
    out_file: Annotated[Path, typer.Option("--out", help="The tarball to write (0600).")] = ...,
    lines: Annotated[int, typer.Option("--lines", min=1, help="Log lines kept per service.")] = 200,
) -> None:
    """Gather plan, status, health history, logs, events, host facts and reachability into a tarball
    with a postmortem skeleton; every secret value scrubbed."""
    from ccoas.diagnose import diagnose as gather

    result = gather(_engine(_plan(stack, name)), out_file, log_lines=lines)
    for service, health in sorted(result.unhealthy.items()):
        out.print(f"[yellow]not healthy:[/yellow] {service} ({health})", highlight=False)
    out.print(f"wrote {result.path} (postmortem.md inside; {result.scrubbed} secret occurrences scrubbed)", highlight=False)


@app.command()
@reports_errors
def status(
    stack: StackArg = DEFAULT_STACK,
    name: NameOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable status.")] = False,
    engine: EngineOpt = Engine.local,
) -> None:
    """Show each service's state, health and endpoints (observes only; changes nothing; the
    containers are read from the engine whichever engine made them).

    Exit code 3 when a service is not running and healthy, so a CI job can gate on it."""
    from ccoas.report import print_table, status_table

    resolved = _plan(stack, name)
    if engine is Engine.pulumi:
        from ccoas import pulumi_engine

        pulumi_engine.require_tools()  # the stack is Pulumi's: without its tools, say so first
    local = _engine(resolved)
    with engine_step(f"stack {resolved.stack}", "status"):
        rows = local.status()
        notes = local.host_notes()
    firing = _firing_alerts_for_status(local, resolved, rows)
    if as_json:
        sys.stdout.write(json.dumps([r.as_dict() for r in rows], indent=2, sort_keys=True) + "\n")
    else:
        print_table(out, status_table(rows))
        if firing:
            from ccoas.report import alerts_table

            print_table(out, alerts_table(firing))
    for note in notes:
        err.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    err.print(f"state: {_state_line(resolved)}", highlight=False, soft_wrap=True)
    unwell = [r.service for r in rows if (r.state, r.health) != ("running", "healthy")]
    if unwell:
        err.print(f"not running and healthy: {', '.join(unwell)}", highlight=False)
        raise typer.Exit(EXIT_NOT_HEALTHY)


def _firing_alerts_for_status(local: LocalEngine, plan: Plan, rows: list) -> list:
    """The firing alerts `status` shows under its table; none when the stack has no monitoring,
    when its container is not running (its own row says so) or it does not answer (then a note
    says so: status's own exit code stays its own)."""
    from ccoas.metrics import firing_alerts

    if not plan.has("monitoring"):
        return []
    if not any(r.service == "monitoring" and r.state == "running" for r in rows):
        return []
    try:
        return firing_alerts(local.runtime, plan)
    except CcoasError as exc:
        err.print(f"[yellow]note:[/yellow] alerts not read: {exc}", highlight=False)
        return []


@app.command()
@reports_errors
def metrics(
    promql: Annotated[str, typer.Argument(help="A PromQL expression, e.g. 'up' or 'sum by (service) (up)'.")],
    stack: StackArg = DEFAULT_STACK,
    name: NameOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="The samples as JSON (labels, value, timestamp).")] = False,
) -> None:
    """Print an instant query's result, asked of the stack's Prometheus (inside its container:
    nothing is published)."""
    from ccoas.metrics import instant_query
    from ccoas.report import print_table, samples_table

    resolved = _plan(stack, name)
    samples = instant_query(_engine(resolved).runtime, resolved, promql)
    if as_json:
        sys.stdout.write(json.dumps([s.as_dict() for s in samples], indent=2, sort_keys=True) + "\n")
    else:
        print_table(out, samples_table(samples))


@app.command()
@reports_errors
def alerts(
    stack: StackArg = DEFAULT_STACK,
    name: NameOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="The firing alerts as JSON.")] = False,
) -> None:
    """List the firing alerts. Exit code 3 when any fires, so a job can gate on it."""
    from ccoas.metrics import firing_alerts
    from ccoas.report import alerts_table, print_table

    resolved = _plan(stack, name)
    firing = firing_alerts(_engine(resolved).runtime, resolved)
    if as_json:
        sys.stdout.write(json.dumps([a.as_dict() for a in firing], indent=2, sort_keys=True) + "\n")
    elif firing:
        print_table(out, alerts_table(firing))
    else:
        out.print(f"no alert fires in stack {resolved.stack}", highlight=False)
    if firing:
        raise typer.Exit(EXIT_NOT_HEALTHY)


@app.command()
@reports_errors
def check(
    stack: StackArg = DEFAULT_STACK,
    name: NameOpt = None,
    junit: Annotated[Optional[Path], typer.Option(help="Also write a JUnit XML report.")] = None,
) -> None:
    """Run the compliance checks (testinfra) against the running stack."""
    from ccoas.compliance import run_checks

    _plan(stack, name)  # a bad stack is reported here, before any control runs
    code = run_checks(stack, name, junit=junit)
    raise typer.Exit(code)


@app.command()
@reports_errors
def query(
    table: Annotated[str, typer.Argument(help="An embedded table of the stack (documents).")],
    text: Annotated[str, typer.Argument(help="The text to search for.")],
    stack: StackArg = DEFAULT_STACK,
    name: NameOpt = None,
    user: Annotated[str, typer.Option("--user", help="ccoas.user_id for row-level security (owner-only, public-read).")] = "",
    tenant: Annotated[str, typer.Option("--tenant", help="ccoas.tenant_id for row-level security (tenant).")] = "",
    k: Annotated[str, typer.Option("--k", help="How many rows: a number, or auto (up to 10, cut at the first large distance gap).")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable rows.")] = False,
) -> None:
    """Embed TEXT through the stack's Ollama and show TABLE's nearest rows, as USER/TENANT sees them."""
    from ccoas.retrieval import embedded_table, parse_k, query as nearest_rows

    plan = _plan(stack, name)
    embedded_table(plan, table), parse_k(k)  # reported before anything runs
    matches = nearest_rows(_engine(plan).client, plan, table, text, user=user, tenant=tenant, k=k)
    if as_json:
        sys.stdout.write(json.dumps([{"row": m.row, "distance": m.distance} for m in matches], indent=2, sort_keys=True) + "\n")
        return
    for m in matches:
        out.print(f"{m.distance:.4f}  " + "  ".join(f"{key}={value}" for key, value in m.row.items()), highlight=False, soft_wrap=True)
    if not matches:
        err.print("no rows (none embedded yet, or none this user/tenant may read)", highlight=False)


@images_app.command("list")
@reports_errors
def images_list(
    stack: StackArg = DEFAULT_STACK,
    name: NameOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="The rows as JSON.")] = False,
) -> None:
    """The stack's image pins, one row per component: what its local recipe builds, the registry
    image it pins by digest, and where that digest was seen. Contacts no engine and no registry."""
    from ccoas.image_pins import image_pins

    rows = image_pins(_plan(stack, name))
    if as_json:
        sys.stdout.write(json.dumps([row.to_dict() for row in rows], indent=2, sort_keys=True) + "\n")
        return
    for row in rows:
        out.print(f"{row.component} (this stack: {row.source})", highlight=False)
        out.print(f"  local recipe   {row.local_upstream}", highlight=False)
        out.print(f"  registry       {row.registry_upstream}", highlight=False)
        out.print(f"                 {row.registry_ref}", highlight=False, soft_wrap=True)
        out.print(f"  digest seen    {row.digest_source}", highlight=False, soft_wrap=True)
        if row.note:
            out.print(f"  note           {row.note}", highlight=False, soft_wrap=True)


@images_app.command("build")
@reports_errors
def images_build(stack: StackArg = DEFAULT_STACK, name: NameOpt = None) -> None:
    """Build every local image of the stack (cached by content: unchanged inputs are not rebuilt)."""
    from ccoas.report import ProgressReporter

    resolved = _plan(stack, name)
    with ProgressReporter(err) as progress, engine_step(f"stack {resolved.stack} images", "build"):
        results = _engine(resolved, progress).build_images()
    for result in results:
        out.print(f"{result.name:10} {result.ref}  {'built in %.0fs' % result.seconds if result.built else 'cached'}", highlight=False)


@images_app.command("pull")
@reports_errors
def images_pull(stack: StackArg = DEFAULT_STACK, name: NameOpt = None) -> None:
    """Pull the stack's registry images (pinned by digest) that this host lacks: the only command
    that contacts a registry; `up` never pulls."""
    from ccoas.report import ProgressReporter

    with ProgressReporter(err) as progress:
        pulled = _engine(_plan(stack, name), progress).pull_images()
    out.print(f"{len(pulled)} images pulled" if pulled else "every registry image is on this host", highlight=False)


@images_app.command("save")
@reports_errors
def images_save(
    stack: StackArg = DEFAULT_STACK,
    name: NameOpt = None,
    out_file: Annotated[Path, typer.Option("--out", help="The archive to write (docker-archive: ids and HEALTHCHECKs kept).")] = ...,
) -> None:
    """Write every image of the stack into one archive, for `ccoas images load` on another host."""
    from ccoas.image_archive import save

    resolved = _plan(stack, name)
    saved = save(_engine(resolved).client, resolved, out_file)
    for image in saved:
        out.print(f"{image.tag}  {image.id[:19]}", highlight=False)
    out.print(f"wrote {len(saved)} images into {out_file}", highlight=False)


@images_app.command("load")
@reports_errors
def images_load(
    archive: Annotated[Path, typer.Argument(help="An archive written by `ccoas images save`.")],
) -> None:
    """Load an image archive into this host's engine, verified (every tag names the archived id);
    then `up` a stack with `images.source: bundle`."""
    from ccoas.engine.runtime import Runtime
    from ccoas.image_archive import load

    loaded = load(Runtime.connect().client, archive)
    for image in loaded:
        out.print(f"{image.tag}  {image.id[:19]}  verified", highlight=False)
    out.print(f"loaded {len(loaded)} images", highlight=False)


@host_app.command("prepare")
@reports_errors
def host_prepare(
    stack: Annotated[Optional[Path], typer.Argument(help="Stack file: ports below 1024 it publishes become bindable rootless.")] = None,
    name: NameOpt = None,
    target: Annotated[str, typer.Option(help="pyinfra target: @local or an SSH host name.")] = "@local",
    ssh_user: Annotated[Optional[str], typer.Option(help="SSH user for a remote target.")] = None,
) -> None:
    """Install and configure rootless Podman, its runtime programs and the build toolchains (idempotent)."""
    from ccoas.host import prepare
    from ccoas.preflight import lowest_published_port

    port = lowest_published_port(_plan(stack, name)) if stack else None
    result = prepare(target=target, ssh_user=ssh_user, unprivileged_port_start=port)
    for change in result.changes:
        out.print(f"changed: {change}", highlight=False)
    changed = result.changed
    if target == "@local":
        from ccoas.boot import install_unit
        from ccoas.host import host_layout

        unit = install_unit(host_layout())
        changed += unit.changed
        out.print(f"{'changed' if unit.changed else 'boot unit' if unit.installed else 'skipped'}: {unit.reason}", highlight=False, soft_wrap=True)
    else:
        out.print(f"skipped: the boot unit is installed by `ccoas host prepare` on the host itself (@local), not on {target}", highlight=False)
    out.print(f"host prepared: {changed} changes", highlight=False)


@host_app.command("enable-boot")
@reports_errors
def host_enable_boot(stack: StackArg = DEFAULT_STACK, name: NameOpt = None) -> None:
    """Bring this stack up at every boot (`ccoas host boot`, run by the boot unit where systemd is PID 1)."""
    from ccoas.boot import enable, systemd_is_pid1
    from ccoas.host import host_layout

    resolved = _plan(stack, name)
    path = enable(host_layout().state_root, resolved.stack, stack, name)
    out.print(f"stack {resolved.stack} enabled for boot ({path})", highlight=False)
    on_systemd, seen = systemd_is_pid1()
    if not on_systemd:
        out.print(f"note: {seen}: no unit runs at boot here; after a reboot run `ccoas host boot`", highlight=False)


@host_app.command("disable-boot")
@reports_errors
def host_disable_boot(stack: StackArg = DEFAULT_STACK, name: NameOpt = None) -> None:
    """Stop bringing this stack up at boot (the stack itself is left as it is)."""
    from ccoas.boot import disable
    from ccoas.host import host_layout

    resolved = _plan(stack, name)
    was = disable(host_layout().state_root, resolved.stack)
    out.print(f"stack {resolved.stack} {'no longer' if was else 'was not'} enabled for boot", highlight=False)


@host_app.command("boot")
@reports_errors
def host_boot(
    list_only: Annotated[bool, typer.Option("--list", help="Only list the stacks enabled for boot.")] = False,
) -> None:
    """Bring up every stack enabled for boot, one `ccoas up --no-build` each (what the boot unit runs
    after a reboot). Exit 1 if any of them failed; the others are still brought up."""
    from ccoas.boot import boot, boot_records, ccoas_command
    from ccoas.host import host_layout

    state_root = host_layout().state_root
    stacks, refused = boot_records(state_root)
    for item in refused:
        err.print(f"error: {item.describe()}", highlight=False, soft_wrap=True)
    if list_only:
        for item in stacks:
            out.print(" ".join(item.up_command(["ccoas"])), highlight=False, soft_wrap=True)
        out.print(f"{len(stacks)} stacks enabled for boot" + (f", {len(refused)} records refused" if refused else ""), highlight=False)
        return
    results = boot(state_root, ccoas_command())
    failed = [item.stack for item, code in results if code != 0]
    out.print(f"{len(results) - len(failed)} of {len(results)} stacks up" + (f"; failed: {', '.join(failed)}" if failed else ""), highlight=False)
    if failed or refused:
        raise typer.Exit(EXIT_APPLY_FAILED)


@host_app.command("check")
@reports_errors
def host_check(
    stack: Annotated[Optional[Path], typer.Argument(help="Stack file: also check the ports it publishes and disk for its builds.")] = None,
    name: NameOpt = None,
) -> None:
    """The preflight `up` runs: every binary, package and toolchain, subordinate ids, /dev/net/tun,
    the runtime dir and API socket, the stack's ports, free disk. Exit 2 on any failure."""
    _preflight(_plan(stack, name) if stack else None, stack)
    out.print("host check passed", highlight=False)


@secrets_app.command("list")
@reports_errors
def secrets_list(
    stack: StackArg = DEFAULT_STACK,
    name: NameOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Names, paths, versions and readers as JSON.")] = False,
) -> None:
    """List the stack's secrets: OWNER/NAME, Vault paths, versions and readers (never values)."""
    from ccoas.report import print_table, secrets_table

    rows = _engine(_plan(stack, name)).secrets().list()
    if as_json:
        sys.stdout.write(json.dumps([r.as_dict() for r in rows], indent=2, sort_keys=True) + "\n")
        return
    print_table(out, secrets_table(rows))


@tls_app.command("trust")
@reports_errors
def tls_trust(stack: StackArg = DEFAULT_STACK, name: NameOpt = None) -> None:
    """Print the stack CA's certificate (PEM, on stdout) and, on stderr, how to trust it in a
    browser and in curl. It stays the same across certificate renewals."""
    from ccoas.secrets import generates_tls
    from ccoas.tls import trust_instructions

    resolved = _plan(stack, name)
    if not generates_tls(resolved):
        raise CcoasError(f"stack {resolved.stack} has no stack CA: its certificate is supplied (tls.mode: supplied); trust its issuer")
    pem = _engine(resolved).secrets().ca_certificate()
    sys.stdout.write(pem)
    listener = resolved.edge.listener if resolved.edge is not None else None
    https = [p for p in (listener.ports if listener is not None else ()) if p.scheme == "https"]
    port = https[0].host_port if https else None
    for line in trust_instructions(f"{resolved.stack}-ca.pem", resolved.domain, port):
        err.print(line, highlight=False, markup=False, soft_wrap=True)


@secrets_app.command("get")
@reports_errors
def secrets_get(
    secret: Annotated[str, typer.Argument(help="OWNER/NAME as `secrets list` shows it, e.g. directus/admin_password.")],
    stack: StackArg = DEFAULT_STACK,
    name: NameOpt = None,
) -> None:
    """Print ONE secret's value, asked for by name: the one command that shows a value."""
    value = _engine(_plan(stack, name)).secrets().get(secret)
    sys.stdout.write(value + "\n")


@secrets_app.command("set")
@reports_errors
def secrets_set(
    secret: Annotated[str, typer.Argument(help="OWNER/NAME of a secret the operator supplies, e.g. monitoring/webhook_url.")],
    stack: StackArg = DEFAULT_STACK,
    name: NameOpt = None,
) -> None:
    """Store a value the operator supplies (read from stdin, never from the command line); the
    next `up` delivers it to its readers."""
    value = sys.stdin.read().strip()
    stored = _engine(_plan(stack, name)).secrets().set(secret, value)
    out.print(f"stored {stored.vault_path} (value not shown); run `ccoas up` to deliver it", highlight=False)


@secrets_app.command("export")
@reports_errors
def secrets_export(
    stack: StackArg = DEFAULT_STACK,
    name: NameOpt = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the files (one per reader, 0400, owned by its mapped uid); point CCOAS_SECRETS_DIR at it.")] = Path("secrets"),
) -> None:
    """Write the secret files that the rendered compose.yaml mounts, from the stack's Vault."""
    written = _engine(_plan(stack, name)).secrets().export(out_dir)
    out.print(f"wrote {len(written)} secret files into {out_dir} (values not shown); export CCOAS_SECRETS_DIR={out_dir.resolve()}", highlight=False)


@secrets_app.command("init")
@reports_errors
def secrets_init(
    stack: StackArg = DEFAULT_STACK,
    name: NameOpt = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the files (one per reader, 0400, owned by its mapped uid); point CCOAS_SECRETS_DIR at it.")] = Path("secrets"),
) -> None:
    """Compose mode (no Vault): generate every secret of the stack as files the rendered compose.yaml mounts."""
    from ccoas.host import host_layout
    from ccoas.secrets import init_secret_files

    layout = host_layout()
    written = init_secret_files(_plan(stack, name), out_dir, layout, layout.uid)
    what = f"wrote {len(written)} secret files" if written else "every secret file is already there, nothing written"
    out.print(f"{what} in {out_dir} (values not shown); export CCOAS_SECRETS_DIR={out_dir.resolve()}", highlight=False)


@secrets_app.command("rotate")
@reports_errors
def secrets_rotate(
    service: Annotated[str, typer.Argument(help="The service whose credentials to rotate, e.g. postgres.")],
    stack: StackArg = DEFAULT_STACK,
    name: NameOpt = None,
) -> None:
    """Rotate a service's credentials: new version in Vault, consumers restarted, old value refused."""
    rotated = _engine(_plan(stack, name)).rotate(service)
    for line in rotated:
        out.print(line, highlight=False)


def main() -> None:  # pragma: no cover - console script entry
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
