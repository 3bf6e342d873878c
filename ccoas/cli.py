"""The ``ccoas`` command line: parses arguments, calls the library, prints results.

Every :class:`~ccoas.errors.CcoasError` becomes a one-line-per-problem message on
stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Callable, Optional, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from ccoas.errors import CcoasError, StackError

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
app.add_typer(images_app, name="images")
app.add_typer(host_app, name="host")
app.add_typer(secrets_app, name="secrets")

out = Console()
err = Console(stderr=True)

DEFAULT_STACK = Path("stacks/dev.yaml")
StackArg = Annotated[Path, typer.Argument(help="Stack file (YAML).", show_default=True)]
NameOpt = Annotated[Optional[str], typer.Option("--name", help="Override the stack name (ephemeral stacks: --name pr-42).")]

F = TypeVar("F", bound=Callable[..., object])


def reports_errors(func: F) -> F:
    """Turn ccoas errors into a message and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return func(*args, **kwargs)
        except StackError as exc:
            for problem in exc.problems:
                err.print(f"[red]error:[/red] {escape(str(problem))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except CcoasError as exc:
            err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("interrupted: the next `ccoas up` converges whatever was left", highlight=False)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _plan(stack: Path, name: str | None):
    from ccoas.planner import build_plan
    from ccoas.planner import load_stack

    return build_plan(load_stack(stack), name=name)


def _engine(plan: Plan, progress: ProgressReporter | None = None) -> LocalEngine:
    """``plan`` on the local engine (the rootless API socket, its service started if need be)."""
    from ccoas.engine.local import LocalEngine

    return LocalEngine.connect(plan, progress=progress)


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
    from ccoas.report import plan_tables

    for table in plan_tables(resolved):
        out.print(table)


@app.command()
@reports_errors
def render(
    stack: StackArg = DEFAULT_STACK,
    out_dir: Annotated[Path, typer.Option("--out", help="Directory to write the rendered files to.")] = Path("out"),
    name: NameOpt = None,
) -> None:
    """Render every config file of the plan (byte-identical on every run)."""
    from ccoas.render import render as render_plan

    written = render_plan(_plan(stack, name), out_dir)
    out.print(f"rendered {len(written)} files into {out_dir}")


@app.command()
@reports_errors
def up(
    stack: StackArg = DEFAULT_STACK,
    name: NameOpt = None,
    engine: Annotated[str, typer.Option(help="local (Docker Engine API on the rootless socket) or pulumi.")] = "local",
    build: Annotated[bool, typer.Option(help="Build missing local images first.")] = True,
    timeout: Annotated[int, typer.Option(help="Seconds to wait for each service to become healthy.")] = 300,
) -> None:
    """Provision the stack in rootless containers and wait until everything is healthy."""
    resolved = _plan(stack, name)
    if engine == "pulumi":
        from ccoas import pulumi_engine

        pulumi_engine.up_from_cli(resolved, stack)
        return
    if engine != "local":
        raise CcoasError(f"--engine: expected local or pulumi, got {engine!r}")
    from ccoas.report import ProgressReporter, status_table

    with ProgressReporter(err) as progress:
        result = _engine(resolved, progress).up(build=build, timeout=timeout)
    out.print(status_table(result.status))
    for note in result.notes:
        out.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    out.print(f"{result.changes} changes", highlight=False)


@app.command()
@reports_errors
def preview(stack: StackArg = DEFAULT_STACK, name: NameOpt = None) -> None:
    """Show what `ccoas up --engine pulumi` would change (Pulumi Automation API)."""
    from ccoas import pulumi_engine

    pulumi_engine.preview_from_cli(_plan(stack, name), stack)


@app.command()
@reports_errors
def down(
    stack: StackArg = DEFAULT_STACK,
    name: NameOpt = None,
    purge: Annotated[bool, typer.Option("--purge", help="Also remove volumes, secrets and state: everything the stack owns.")] = False,
) -> None:
    """Remove the stack's containers and networks; volumes are kept unless --purge."""
    removed = _engine(_plan(stack, name)).down(purge=purge)
    out.print(f"removed {removed}", highlight=False)


@app.command()
@reports_errors
def status(
    stack: StackArg = DEFAULT_STACK,
    name: NameOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable status.")] = False,
) -> None:
    """Show each service's state, health and endpoints."""
    from ccoas.report import status_table

    local = _engine(_plan(stack, name))
    rows = local.status()
    if as_json:
        sys.stdout.write(json.dumps([r.as_dict() for r in rows], indent=2, sort_keys=True) + "\n")
    else:
        out.print(status_table(rows))
    for note in local.host_notes():
        err.print(f"[yellow]note:[/yellow] {note}", highlight=False)


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


@images_app.command("build")
@reports_errors
def images_build(stack: StackArg = DEFAULT_STACK, name: NameOpt = None) -> None:
    """Build every local image of the stack (cached by content: unchanged inputs are not rebuilt)."""
    from ccoas.report import ProgressReporter

    with ProgressReporter(err) as progress:
        results = _engine(_plan(stack, name), progress).build_images()
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


@host_app.command("prepare")
@reports_errors
def host_prepare(
    target: Annotated[str, typer.Option(help="pyinfra target: @local or an SSH host name.")] = "@local",
    ssh_user: Annotated[Optional[str], typer.Option(help="SSH user for a remote target.")] = None,
) -> None:
    """Install and configure rootless Podman for the engine user (idempotent)."""
    from ccoas.host import prepare

    result = prepare(target=target, ssh_user=ssh_user)
    out.print(f"host prepared: {result.changed} changes", highlight=False)


@secrets_app.command("list")
@reports_errors
def secrets_list(stack: StackArg = DEFAULT_STACK, name: NameOpt = None) -> None:
    """List the stack's secrets: Vault paths, versions and readers (never values)."""
    from ccoas.report import secrets_table

    out.print(secrets_table(_engine(_plan(stack, name)).secrets().list()))


@secrets_app.command("export")
@reports_errors
def secrets_export(
    stack: StackArg = DEFAULT_STACK,
    name: NameOpt = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the files (0400); point CCOAS_SECRETS_DIR at it.")] = Path("secrets"),
) -> None:
    """Write the secret files that the rendered compose.yaml mounts (for docker compose users)."""
    written = _engine(_plan(stack, name)).secrets().export(out_dir)
    out.print(f"wrote {len(written)} secret files into {out_dir} (values not shown); export CCOAS_SECRETS_DIR={out_dir.resolve()}", highlight=False)


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
