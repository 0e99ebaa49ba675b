"""Saving files so that a failed or interrupted save never destroys what was there before.

Used by every ``save_pretrained`` (model, config, tokenizer): each file is first written in full to a
hidden temporary file in the target folder and flushed to disk (``fsync``); only when *all* of them
are written are they moved over the old files with ``os.replace`` (atomic on POSIX and Windows, as the
temporary file lies on the same file system), and the folder entry is flushed. A save that fails
(disk full, permission, a bug in a writer) or is interrupted (``KeyboardInterrupt``) while writing
removes its temporary files and leaves every old file untouched. Files that the new save makes stale
(e.g. the shards of an older sharded checkpoint) are removed only after the new files are in place.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable, Iterable

__all__ = ["write_files_atomically"]


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Flush the folder's entries (the renames); not possible on Windows, where it is skipped."""
    if os.name != "posix":
        return
    _fsync_file(folder)


def write_files_atomically(folder, writers: dict[str, Callable[[Path], None]], stale: Iterable[str] = ()) -> list[Path]:
    """Write the files ``writers`` names into ``folder``, all or none; then remove the ``stale`` ones.

    Args:
        folder: target directory (created if needed).
        writers: ``{file name: writer}``; ``writer(tmp_path)`` writes the whole file at ``tmp_path``
            (a temporary name in ``folder``), which is then renamed to ``folder / name``.
        stale: names of files in ``folder`` to delete once the new files are in place (names also
            written are kept).

    Returns:
        The final paths, in the order of ``writers``.

    Raises:
        OSError: a writer failed (disk full, no permission, ...), or ``IsADirectoryError`` when a
            target name is a folder; names the file. The old files are untouched and no temporary
            file is left.
        KeyboardInterrupt (and other ``BaseException``): re-raised unchanged, after the same cleanup.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in writers:  # os.replace cannot put a file over a folder: refuse before anything is written
        if (folder / name).is_dir():
            raise IsADirectoryError(f"cannot write {folder / name}: it is a directory")
    tag = uuid.uuid4().hex[:12]
    temps: dict[str, Path] = {}
    try:
        for name, write in writers.items():
            tmp = folder / f".{name}.{tag}.tmp"
            temps[name] = tmp
            try:
                write(tmp)
                _fsync_file(tmp)
            except Exception as e:
                raise OSError(f"cannot write {folder / name}: {type(e).__name__}: {e}") from e
        for name, tmp in temps.items():
            os.replace(tmp, folder / name)
    finally:
        for tmp in temps.values():  # only those not moved into place still exist
            if tmp.exists():
                tmp.unlink()
    for name in stale:
        if name not in writers and (folder / name).is_file():
            (folder / name).unlink()
    _fsync_dir(folder)
    return [folder / name for name in writers]
