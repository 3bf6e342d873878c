"""File operations root makes on the host without following links another user planted.

ccoas runs as root and hands the engine user (and the container uids it maps) directories:
its runtime dir ``/run/user/<uid>/ccoas/<stack>`` and the leaf directories containers write.
A path-based call there (``os.chown(path)``, ``open(path, "w")``, ``os.chmod(path)``) follows
whatever symlink the engine user put in its place, and root then acts on a file of its
choosing. Every file operation root makes on the host goes through this module instead:

- a path is walked from ``/`` one component at a time with ``O_NOFOLLOW | O_DIRECTORY``
  (:func:`open_dir`); a symlink is followed only where nobody but root could have made it
  (its directory is root's and writable by nobody else), otherwise :class:`UnsafePathError`;
- everything after the walk is relative to the directory's fd (``dir_fd``): files are created
  with ``O_CREAT | O_EXCL | O_NOFOLLOW`` under a temporary name, given their mode and owner
  with ``fchmod``/``fchown`` on that fd, and renamed into place (a rename replaces a symlink,
  it never writes through one);
- ownership and modes of existing entries are changed on an fd opened with ``O_NOFOLLOW``
  (:func:`set_owner`, :func:`set_mode`): a symlink or a device there is refused;
- :func:`check_root_only` says whether a file (and every directory above it) is one only root
  could have written: what root may act on without further checks (the boot records).
"""

from __future__ import annotations

import errno
import os
import secrets as random_names
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from ccoas.errors import EXIT_APPLY_FAILED, HostError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
LEAF_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
"""An existing entry opened to change it: never through a link; O_NONBLOCK so a FIFO planted
in its place cannot hang root (it is refused after ``fstat``)."""

Owner = tuple[int, int]
"""A host uid and gid."""
ROOT: Owner = (0, 0)


class UnsafePathError(HostError):
    """A path crosses a symlink, or names something, that another user could have planted:
    root stops there (an apply that meets one fails, exit code 1)."""

    exit_code = EXIT_APPLY_FAILED


def writable_by_others(status: os.stat_result) -> bool:
    """Someone besides the owner may create or rename entries in this directory."""
    return bool(status.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def only_root_can_change(status: os.stat_result) -> bool:
    """A directory whose entries only root can create, rename or remove: root's, and either
    writable by nobody else or sticky (``/tmp``: others' new entries, never root's, change)."""
    return status.st_uid == 0 and (not writable_by_others(status) or bool(status.st_mode & stat.S_ISVTX))


def _components(path: Path) -> list[str]:
    path = Path(os.path.abspath(path)) if not Path(path).is_absolute() else Path(path)
    parts = list(path.parts[1:])
    if ".." in parts:
        raise UnsafePathError(f"{path}: '..' in a path root walks")
    return [p for p in parts if p not in ("", ".")]


def _open_child(parent: int, name: str, shown: str, create_mode: int | None) -> int:
    """Open the directory ``name`` in ``parent`` without following a link another user made;
    create it (``create_mode``) when it is missing."""
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        if create_mode is None:
            raise
        try:
            os.mkdir(name, create_mode, dir_fd=parent)
        except FileExistsError:
            pass  # made at the same moment by someone else: opened (and checked) below
        return _open_child(parent, name, shown, None)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        entry = os.lstat(name, dir_fd=parent)
        if not stat.S_ISLNK(entry.st_mode):
            raise UnsafePathError(f"{shown}: not a directory") from None
        holder = os.fstat(parent)
        if not (holder.st_uid == 0 and not writable_by_others(holder) and entry.st_uid == 0):
            raise UnsafePathError(
                f"{shown} is a symbolic link in a directory uid {holder.st_uid} (mode {holder.st_mode & 0o7777:o}) "
                "lets others write: root does not follow it"
            ) from None
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=parent)  # root's own link


def open_dir(path: Path, create_mode: int | None = None) -> int:
    """An fd of the directory ``path``, walked from ``/`` without following links others could
    plant (see the module). ``create_mode``: make missing directories with that mode (root's,
    before umask; callers that care set mode and owner on the last one with :func:`make_dir`)."""
    fd = os.open("/", DIR_FLAGS)
    walked = Path("/")
    try:
        for name in _components(path):
            walked = walked / name
            child = _open_child(fd, name, str(walked), create_mode)
            os.close(fd)
            fd = child
    except FileNotFoundError:
        os.close(fd)
        raise FileNotFoundError(errno.ENOENT, "no such directory", str(walked)) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def directory(path: Path, create_mode: int | None = None) -> Iterator[int]:
    """:func:`open_dir` as a context manager: the fd is closed on leaving."""
    fd = open_dir(path, create_mode)
    try:
        yield fd
    finally:
        os.close(fd)


def make_dir(path: Path, mode: int, owner: Owner | None = None) -> None:
    """Make ``path`` (and missing parents, 0755 root's) and give the last one ``mode`` and
    ``owner``, on its fd. An existing directory is brought to them; a link in its place is refused."""
    path = Path(path)
    with directory(path.parent, create_mode=0o755) as parent:
        fd = _open_child(parent, path.name, str(path), create_mode=0o700)
        try:
            _fix(fd, mode, owner)
        finally:
            os.close(fd)


def _fix(fd: int, mode: int | None, owner: Owner | None) -> None:
    status = os.fstat(fd)
    if owner is not None and (status.st_uid, status.st_gid) != owner:
        os.fchown(fd, *owner)
    if mode is not None and stat.S_IMODE(os.fstat(fd).st_mode) != mode:
        os.fchmod(fd, mode)  # after fchown, which clears set-id bits


def _open_leaf(parent: int, name: str, shown: str) -> int:
    try:
        fd = os.open(name, LEAF_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePathError(f"{shown} is a symbolic link: root does not follow it") from None
        raise
    kind = stat.S_IFMT(os.fstat(fd).st_mode)
    if kind not in (stat.S_IFREG, stat.S_IFDIR):
        os.close(fd)
        raise UnsafePathError(f"{shown}: not a regular file or directory")
    return fd


def set_owner(path: Path, owner: Owner) -> None:
    """``fchown`` the file or directory at ``path`` (never a link in its place)."""
    _change(path, None, owner)


def set_mode(path: Path, mode: int) -> None:
    """``fchmod`` the file or directory at ``path`` (never a link in its place)."""
    _change(path, mode, None)


def _change(path: Path, mode: int | None, owner: Owner | None) -> None:
    path = Path(path)
    with directory(path.parent) as parent:
        fd = _open_leaf(parent, path.name, str(path))
        try:
            _fix(fd, mode, owner)
        finally:
            os.close(fd)


def read_file(path: Path) -> bytes:
    """The bytes of the regular file ``path`` (``FileNotFoundError`` when absent; a link refused)."""
    path = Path(path)
    with directory(path.parent) as parent:
        fd = _open_leaf(parent, path.name, str(path))
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UnsafePathError(f"{path}: not a regular file")
            return handle.read()


def write_file(
    path: Path, data: bytes, mode: int, owner: Owner | None = None, keep_if_same: bool = False, parents_mode: int | None = None
) -> bool:
    """Write ``data`` to ``path`` atomically: a new file made with ``O_EXCL | O_NOFOLLOW`` in the
    parent's fd, its mode and owner set on its fd, renamed over ``path`` (whatever is there, a
    planted link included, is replaced, never written through). ``keep_if_same``: an existing
    regular file with the same bytes stays (its mode and owner are still brought to these).
    ``parents_mode``: make missing parent directories with that mode. Returns whether a file was written."""
    path = Path(path)
    with directory(path.parent, create_mode=parents_mode) as parent:
        if keep_if_same:
            try:
                fd = _open_leaf(parent, path.name, str(path))
            except (FileNotFoundError, UnsafePathError):
                fd = None
            if fd is not None:
                with os.fdopen(fd, "rb") as handle:
                    if stat.S_ISREG(os.fstat(fd).st_mode) and handle.read() == data:
                        _fix(fd, mode, owner)
                        return False
        tmp = f".{path.name}.{random_names.token_hex(6)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(fd)
                _fix(fd, mode, owner)
            os.replace(tmp, path.name, src_dir_fd=parent, dst_dir_fd=parent)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=parent)
            except FileNotFoundError:
                pass
            raise
    return True


def remove(path: Path) -> bool:
    """Remove the file (or link) ``path`` itself; ``False`` when nothing was there."""
    path = Path(path)
    try:
        with directory(path.parent) as parent:
            os.unlink(path.name, dir_fd=parent)
    except FileNotFoundError:
        return False
    return True


def remove_tree(path: Path) -> bool:
    """Remove the directory tree ``path`` (a link in its place: the link alone), reached without
    following links and removed fd-relative (``shutil.rmtree`` with ``dir_fd``); ``False`` when
    nothing was there."""
    import shutil

    path = Path(path)
    try:
        with directory(path.parent) as parent:
            try:
                status = os.stat(path.name, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                return False
            if stat.S_ISDIR(status.st_mode):
                shutil.rmtree(path.name, dir_fd=parent)
            else:
                os.unlink(path.name, dir_fd=parent)
    except FileNotFoundError:
        return False
    return True


def open_append(path: Path, mode: int = 0o640) -> BinaryIO:
    """``path`` opened to append (made ``mode`` when missing), never through a link; for logs
    root keeps and hands to processes it starts."""
    path = Path(path)
    with directory(path.parent) as parent:
        try:
            fd = os.open(path.name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode, dir_fd=parent)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafePathError(f"{path} is a symbolic link: root does not append through it") from None
            if exc.errno == errno.ENXIO:  # a FIFO nobody reads
                raise UnsafePathError(f"{path}: not a regular file") from None
            raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafePathError(f"{path}: not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "ab")


def check_root_only(path: Path) -> None:
    """Raise :class:`UnsafePathError`, saying why, unless ``path`` is a regular file only root
    could have written: root's, writable by nobody else, in directories (up to ``/``) whose
    entries only root can change (:func:`only_root_can_change`), reached without a link."""
    path = Path(path)
    walked = Path("/")
    fd = os.open("/", DIR_FLAGS)
    try:
        for name in _components(path.parent):
            walked = walked / name
            child = _open_child(fd, name, str(walked), None)
            os.close(fd)
            fd = child
            held = os.fstat(fd)
            if not only_root_can_change(held):
                raise UnsafePathError(
                    f"{walked} belongs to uid {held.st_uid} (mode {held.st_mode & 0o7777:o}): another user can change what is in it"
                )
        leaf = _open_leaf(fd, path.name, str(path))
        try:
            status = os.fstat(leaf)
        finally:
            os.close(leaf)
    finally:
        os.close(fd)
    if not stat.S_ISREG(status.st_mode):
        raise UnsafePathError(f"{path}: not a regular file")
    if status.st_uid != 0 or writable_by_others(status):
        raise UnsafePathError(f"{path} belongs to uid {status.st_uid} (mode {status.st_mode & 0o7777:o}), not to root alone")
