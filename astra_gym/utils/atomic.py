"""Atomic writes: every file (:func:`atomic_write`) and folder (:func:`atomic_folder`) astra-gym writes.

A folder is written into a hidden ``.{name}.tmp-*`` sibling, fsynced, and renamed into place by
:func:`swap_in`; an existing folder is first moved aside to ``.{name}.old-*`` and deleted only once
the new one is in place. :func:`remove_stale_temps` deletes the temp folders of crashed writes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = [
    "TEMP_TAG",
    "BACKUP_TAG",
    "fsync_path",
    "swap_in",
    "remove_stale_temps",
    "atomic_write",
    "atomic_write_text",
    "atomic_folder",
]

logger = logging.getLogger(__name__)

TEMP_TAG, BACKUP_TAG = ".tmp-", ".old-"


def fsync_path(path: Path) -> None:
    """Flushes a file or a directory entry to disk (directories only where the OS allows it)."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # directories cannot be opened on Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def swap_in(tmp: Path, folder: Path) -> None:
    """Renames ``tmp`` to ``folder``; an existing ``folder`` is moved aside first and restored on failure."""
    if not folder.exists():
        os.replace(tmp, folder)
        fsync_path(folder.parent)
        return
    backup = Path(tempfile.mkdtemp(prefix=f".{folder.name}{BACKUP_TAG}", dir=folder.parent))
    os.rmdir(backup)  # only the unique name is wanted
    os.replace(folder, backup)
    try:
        os.replace(tmp, folder)
    except BaseException:
        os.replace(backup, folder)
        raise
    fsync_path(folder.parent)
    shutil.rmtree(backup, ignore_errors=True)


def remove_stale_temps(folder: Path, log: logging.Logger = logger) -> None:
    """Deletes temp folders left behind by an earlier, crashed write of the same ``folder``."""
    for stale in folder.parent.glob(f".{folder.name}{TEMP_TAG}*"):
        log.warning("removing %s left by an interrupted save", stale)
        shutil.rmtree(stale, ignore_errors=True)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Writes a file atomically: ``write(tmp)`` fills a temporary sibling, which is fsynced and renamed.

    Readers see the old file or the new one, never a partial write; a failed ``write`` leaves the
    old file and no temporary behind.

    Args:
        path: The file to (re)place; its folder is created.
        write: Writes the whole content to the path it is given (e.g. ``lambda p: fig.savefig(p, format="png")``).

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}{TEMP_TAG}{uuid.uuid4().hex[:8]}"
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # the mode open() gives (umask), not 0600
    try:
        write(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Writes ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        fsync_path(path)
    fsync_path(root)


@contextlib.contextmanager
def atomic_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Yields a hidden temp folder next to ``folder``; on success it replaces ``folder`` as a whole.

    Everything written into the temp folder is fsynced before the rename. An existing ``folder`` is
    moved aside first and deleted only after the new one is in place; on any error the temp folder
    is removed and the old ``folder`` is untouched. Stale temp folders of earlier crashed writes of
    the same target are removed first.
    """
    folder = Path(folder).absolute()
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(folder, logger)
    tmp = folder.parent / f".{folder.name}{TEMP_TAG}{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        swap_in(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
