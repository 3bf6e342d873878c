"""Upgrades: what an ``up`` by this ccoas does to a stack's state written by an earlier one.

A stack's state dir (:class:`~ccoas.state.StackPaths`) says which ccoas last wrote it, in
``<state>/ccoas-state.json``::

    {"ccoas_version": "0.1.0", "plan_schema_version": 1, "state_schema_version": 2}

``state_schema_version`` is what migrations key off: :data:`STATE_SCHEMA_VERSION` is the one
this ccoas writes. A state dir without the file was written before ccoas recorded it: schema
:data:`FIRST_SCHEMA` (every stack made before this change). ``plan_schema_version`` is the
plan's JSON schema (:data:`ccoas.plan.PLAN_SCHEMA_VERSION`) of the ccoas that wrote it.

``up`` (:func:`migrate`) then

- refuses, with exit code 2 and before touching anything, a state written with a NEWER state or
  plan schema than this ccoas reads (:func:`check`): an older ccoas must not guess at a newer
  layout;
- runs, in order, every migration of :data:`MIGRATIONS` whose ``to_version`` is above the
  state's, records the state's new schema after each version's migrations, and returns one
  note per migration (``up`` prints them);
- records this ccoas's versions (:func:`record`).

Each migration is a small function of the state dir with a docstring saying what changed;
each is idempotent (running it twice, or on a state that needs nothing, changes nothing
more), so an ``up`` interrupted halfway simply runs it again.

Schema history:

1. No marker. Directus 12.4 kept its tables in ``public``; some stacks have no step record.
2. The marker (this module). Directus's tables live in the schema ``directus``, Directus is
   11.17.4 (README, "Why Directus 11").
3. Root owns the state: the state root, ``stacks/``, the state dir and everything root keeps
   in it are root's; the engine user holds only leaf directories (README, "Host layout").
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ccoas import __version__, host_files
from ccoas.errors import CcoasError
from ccoas.plan import PLAN_SCHEMA_VERSION
from ccoas.state import StackPaths
from ccoas.steps import StepRecord

FIRST_SCHEMA = 1
"""The schema of a state dir without a marker: written before ccoas recorded one."""
STATE_SCHEMA_VERSION = 3
"""The state schema this ccoas writes (see the module's schema history)."""
STATE_FILE = "ccoas-state.json"


class NewerStateError(CcoasError):
    """The stack's state was written by a newer ccoas than this one: nothing is touched (exit 2)."""


@dataclass(frozen=True)
class StateVersion:
    """What a stack's state dir says about the ccoas that wrote it."""

    state_schema_version: int
    plan_schema_version: int | None
    ccoas_version: str | None
    """``None`` for both: no marker (schema :data:`FIRST_SCHEMA`)."""

    @property
    def recorded(self) -> bool:
        return self.ccoas_version is not None

    def describe(self) -> str:
        if not self.recorded:
            return f"state schema {self.state_schema_version} (no marker: written before ccoas recorded one)"
        return (
            f"state schema {self.state_schema_version}, plan schema {self.plan_schema_version}, "
            f"written by ccoas {self.ccoas_version}"
        )


@dataclass(frozen=True)
class Migration:
    """One named, idempotent change to a state dir, bringing it to ``to_version``."""

    to_version: int
    name: str
    apply: Callable[[StackPaths], str]
    """Does the change; returns one sentence saying what it did (for ``up``'s notes)."""

    @property
    def summary(self) -> str:
        """The first line of the function's docstring: what changed in that schema."""
        return (self.apply.__doc__ or self.name).strip().splitlines()[0]


def read(state: Path) -> StateVersion | None:
    """The versions of the state dir ``state`` (:attr:`StackPaths.state`); ``None`` when the stack
    has no state on this host (a new stack)."""
    marker = state / STATE_FILE
    try:
        data = json.loads(marker.read_text())
    except FileNotFoundError:
        return StateVersion(FIRST_SCHEMA, None, None) if state.is_dir() else None
    except ValueError as exc:
        raise CcoasError(f"{marker}: not JSON ({exc}): it records which ccoas wrote the stack's state; fix or remove it") from None
    try:
        return StateVersion(int(data["state_schema_version"]), int(data["plan_schema_version"]), str(data["ccoas_version"]))
    except (KeyError, TypeError, ValueError):
        raise CcoasError(
            f"{marker}: expected state_schema_version and plan_schema_version (integers) and ccoas_version, got {data!r}"
        ) from None


def check(state: Path, state_schema: int = STATE_SCHEMA_VERSION, plan_schema: int = PLAN_SCHEMA_VERSION) -> StateVersion | None:
    """The versions of the state dir ``state``, or :class:`NewerStateError` when a newer ccoas wrote it."""
    found = read(state)
    if found is None:
        return None
    newer = []
    if found.state_schema_version > state_schema:
        newer.append(f"state schema {found.state_schema_version} (this ccoas reads up to {state_schema})")
    if found.plan_schema_version is not None and found.plan_schema_version > plan_schema:
        newer.append(f"plan schema {found.plan_schema_version} (this ccoas reads up to {plan_schema})")
    if newer:
        raise NewerStateError(
            f"the state of stack {state.name} ({state / STATE_FILE}) was written by ccoas {found.ccoas_version} "
            f"with {' and '.join(newer)}: this is ccoas {__version__}, which cannot know what that ccoas changed. "
            f"Run the newer ccoas (nothing was changed)"
        )
    return found


def pending(found: StateVersion | None, migrations: tuple[Migration, ...] = (), state_schema: int = STATE_SCHEMA_VERSION) -> list[Migration]:
    """The migrations an ``up`` would run on a state at ``found``, in order (none for a new stack)."""
    if found is None:
        return []
    return sorted(
        (m for m in migrations if found.state_schema_version < m.to_version <= state_schema),
        key=lambda m: m.to_version,  # stable: a version's migrations keep their listed order
    )


def migrate(
    paths: StackPaths,
    migrations: tuple[Migration, ...] | None = None,
    state_schema: int = STATE_SCHEMA_VERSION,
    plan_schema: int = PLAN_SCHEMA_VERSION,
) -> list[str]:
    """Bring the state dir to ``state_schema`` and record this ccoas; one note per migration run."""
    migrations = MIGRATIONS if migrations is None else migrations
    found = check(paths.state, state_schema, plan_schema)
    notes = []
    todo = pending(found, migrations, state_schema)
    for index, migration in enumerate(todo):
        said = migration.apply(paths)
        notes.append(f"state of {paths.state.name} migrated to schema {migration.to_version}, {migration.name}: {said}")
        last_of_version = index + 1 == len(todo) or todo[index + 1].to_version != migration.to_version
        if last_of_version and migration.to_version < state_schema:
            record(paths.state, migration.to_version, plan_schema)  # an interrupted up resumes after it
    record(paths.state, state_schema, plan_schema)
    return notes


def describe(state: Path, migrations: tuple[Migration, ...] | None = None) -> str:
    """One line for ``status`` and ``plan``: the state's schema and what ``up`` would migrate."""
    found = read(state)
    if found is None:
        return f"no state on this host yet (up writes state schema {STATE_SCHEMA_VERSION})"
    todo = pending(found, MIGRATIONS if migrations is None else migrations)
    if found.state_schema_version > STATE_SCHEMA_VERSION or (found.plan_schema_version or 0) > PLAN_SCHEMA_VERSION:
        return f"{found.describe()}: NEWER than this ccoas {__version__} reads; up refuses it"
    if todo:
        return f"{found.describe()}: up migrates it to schema {STATE_SCHEMA_VERSION} ({', '.join(m.name for m in todo)})"
    if found.state_schema_version < STATE_SCHEMA_VERSION:
        return f"{found.describe()}: up records schema {STATE_SCHEMA_VERSION} (nothing to migrate)"
    return found.describe()


def record(state: Path, state_schema: int = STATE_SCHEMA_VERSION, plan_schema: int = PLAN_SCHEMA_VERSION) -> None:
    """Write the marker into the state dir ``state`` (atomically; sorted keys, so an unchanged
    one is byte-identical)."""
    text = json.dumps(
        {"ccoas_version": __version__, "plan_schema_version": plan_schema, "state_schema_version": state_schema},
        indent=2,
        sort_keys=True,
    ) + "\n"
    host_files.write_file(state / STATE_FILE, text.encode(), 0o600, keep_if_same=True, parents_mode=0o755)


# -- the migrations, oldest first ------------------------------------------------------------


def directus_tables_leave_public(paths: StackPaths) -> str:
    """Directus's tables move from public to the schema directus, and CREATE on public closes.

    The move itself is SQL, in the Postgres bootstrap (``templates/postgres/bootstrap.sql.j2``,
    "Directus's own tables": ``ALTER TABLE public.directus_* SET SCHEMA directus``, idempotent).
    Here the step record forgets Postgres's hooks, so that bootstrap runs on this ``up``
    whatever the record held (its inputs changed anyway when the SQL did).
    """
    record = StepRecord.load(paths)
    forgotten = record.forget(lambda key: key.startswith("hook:postgres:"))
    if forgotten:
        return f"the Postgres bootstrap runs again ({', '.join(forgotten)} forgotten) and moves any directus_* table out of public"
    return "the Postgres bootstrap runs on this up (no run of it recorded) and moves any directus_* table out of public"


def state_owned_by_root(paths: StackPaths) -> str:
    """The state root, stacks/, the state dir and all in it become root's; what the engine user planted goes.

    Before this schema the state root (``/var/lib/ccoas``) was the engine user's: it could
    rename ``stacks/`` or a stack's dir and put its own in their place, with symlinks, a
    ``boot.json`` or a bundle in ``snapshots/`` root would act on. From now on root owns every
    directory above the leaves it hands over (:meth:`StackPaths.own_state_dirs`). In the
    stack's state dir and its snapshots dir, entries root did not write (symlinks, anything
    not owned by root; a job's staging dir left by an interrupted job) are removed: root
    cannot tell them from a plant. The rendered config is written again by this ``up``.
    """
    paths.own_state_dirs()
    root = paths.state.parent.parent
    snapshots = root / "snapshots" / paths.state.name
    removed = []
    for link in (root / "podman-service.log", snapshots.parent, snapshots):
        if link.is_symlink():
            host_files.remove(link)
            removed.append(str(link))
    for top in (paths.state, snapshots):
        removed += _remove_untrusted(top)
    for directory in (snapshots.parent, snapshots):
        if directory.is_dir():
            host_files.make_dir(directory, 0o700, host_files.ROOT)
    if not removed:
        return "the state root and the stack's state dir are root's (nothing planted was found)"
    return f"the state root and the stack's state dir are root's; removed what root did not write: {', '.join(removed)}"


def _remove_untrusted(top: Path) -> list[str]:
    """Remove (without following links) every entry under ``top`` that is a symlink or not
    root's, and the jobs dir's leftovers; the paths removed."""
    import shutil
    import stat

    if not top.is_dir() or top.is_symlink():
        return []
    removed = []
    for directory, subdirs, files, dir_fd in os.fwalk(top, follow_symlinks=False):
        for name in [*subdirs, *files]:
            status = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            leftover_job = Path(directory) == top / "jobs"
            if stat.S_ISLNK(status.st_mode) or status.st_uid != 0 or leftover_job:
                if stat.S_ISDIR(status.st_mode):
                    shutil.rmtree(name, dir_fd=dir_fd)
                    subdirs.remove(name)
                else:
                    os.unlink(name, dir_fd=dir_fd)
                removed.append(str(Path(directory) / name))
    return removed


MIGRATIONS: tuple[Migration, ...] = (
    Migration(2, "directus-tables-leave-public", directus_tables_leave_public),
    Migration(3, "state-owned-by-root", state_owned_by_root),
)
"""Every migration, oldest first; a version may have several (run in this order)."""
