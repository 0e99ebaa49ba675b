"""Where the records go: :class:`JsonlOutput` writes JSON lines to stdout or safely to a file
(through ``FILE.partial``), and continues a partial file on resume."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Iterable, Sequence

from .documents import Document, _display
from .errors import InputError

__all__ = ["JsonlOutput", "RECORD_KEYS", "PARTIAL_SUFFIX"]

RECORD_KEYS = {"fill-mask": "masks", "embed": "embedding", "classify": "logits", "qa": "answer", "tokens": "ids",
               "generate": "ids"}
PARTIAL_SUFFIX = ".partial"


def _non_finite_at(value, path: str = "") -> str | None:
    """The path (``masks[0].predictions[2].score``) of the first NaN or infinity in a record, or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _non_finite_at(item, f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]")
        if found is not None:
            return found.lstrip(".")
    return None


def _json_line(record: dict) -> str:
    """One JSON line; a record holding NaN or infinity (not JSON) is an :class:`InputError` naming its
    document and the value."""
    try:
        return json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n"
    except ValueError:
        raise InputError(f"{record['source']}: the model gave a non-finite value (NaN or infinity) in "
                         f"{_non_finite_at(record)}, which JSON cannot hold; the document's record is not written "
                         "(a float16 overflow? try --dtype float32)") from None


class JsonlOutput:
    """Where the records go, one JSON line each: standard output, or a file written safely.

    A file ``PATH`` is written as ``PATH.partial`` in the same folder, finished records appended and
    flushed as they come (:meth:`write`), and renamed over ``PATH`` at the end (:meth:`finish`), so an
    existing ``PATH`` stays untouched until the run has succeeded. After a failed or interrupted run
    :meth:`abort` keeps the partial file if it holds records (and says how to resume); opened with
    ``resume=True``, an existing partial file is checked against the documents and continued
    (:meth:`resume_point`).

    Opening checks the destination before any work: its folder exists and is writable (the partial
    file is created there), it is not a directory or another non-regular file, and no partial file of
    an earlier run is in the way. ``task`` names the subcommand (its records' key is checked on resume).
    """

    def __init__(self, path: str | None = None, *, resume: bool = False, task: str | None = None):
        self.count = 0  # records in the output so far, those of a resumed run included
        self.task = task
        self.path = self.partial = self._file = None
        self._created = False
        if path in (None, "-"):
            if resume:
                raise InputError("--resume needs --output FILE (a run written to standard output cannot be resumed)")
            return
        name = _display(str(path))
        self.path = Path(path).expanduser()
        if self.path.is_symlink():  # replace the file it points to, not the link
            self.path = self.path.resolve()
        folder = self.path.parent
        if self.path.is_dir():
            raise InputError(f"--output {name!r} is a directory")
        if not folder.exists():
            raise InputError(f"--output folder {_display(str(folder))!r} does not exist")
        if not folder.is_dir():
            raise InputError(f"--output folder {_display(str(folder))!r} is not a directory")
        if self.path.exists() and not self.path.is_file():
            raise InputError(f"--output {name!r} is not a regular file (leave --output out for standard output)")
        if self.path.exists() and not os.access(self.path, os.W_OK):
            raise InputError(f"--output {name!r} is read-only")
        self.partial = self.path.with_name(self.path.name + PARTIAL_SUFFIX)
        shown = _display(str(self.partial))
        resuming = resume and self.partial.is_file()
        if self.partial.exists() and not resuming:
            raise InputError(f"{shown!r} holds the records of an unfinished (or still running) run: add --resume to "
                             "continue it, or delete it to start over")
        try:
            self._file = open(self.partial, "r+b" if resuming else "xb")  # noqa: SIM115 - closed by finish/abort
        except OSError as e:
            raise InputError(f"cannot write --output {name!r}: cannot create {shown!r}: {e.strerror or e}") from None
        self._created = not resuming

    def resume_point(self, docs: Sequence[Document]) -> int:
        """How many leading ``docs`` the resumed partial file already holds records of (0 when not
        resuming); later records are appended after them. An incomplete last line (a write cut short)
        is dropped. Raises :class:`InputError` when a record does not belong to the document at its
        position (another input or another subcommand)."""
        if self._file is None or self._created:
            return 0
        shown = _display(str(self.partial))
        data = self._file.read()
        end = data.rfind(b"\n") + 1
        lines = data[:end].split(b"\n")[:-1]
        key = RECORD_KEYS.get(self.task)
        if len(lines) > len(docs):
            raise InputError(f"--resume: {shown!r} holds {len(lines)} records but this input only {len(docs)} "
                             "documents; resume with the same inputs, or delete it to start over")
        for k, (line, doc) in enumerate(zip(lines, docs)):
            try:
                rec = json.loads(line)
            except (ValueError, RecursionError):
                rec = None
            if (not isinstance(rec, dict) or rec.get("index") != doc.index or rec.get("source") != doc.source
                    or rec.get("id") != doc.extra.get("id") or (key is not None and key not in rec)):
                raise InputError(f"--resume: line {k + 1} of {shown!r} is not the {self.task} record of document "
                                 f"{doc.index} ({doc.source}); resume with the same inputs and subcommand, or delete "
                                 "it to start over")
        self._file.seek(end)
        self._file.truncate()
        self.count = len(lines)
        return len(lines)

    def write(self, records: Iterable[dict]) -> None:
        """Append ``records`` (flushed). A record holding NaN or infinity raises :class:`InputError`
        after the records before it are written."""
        lines, error = [], None
        for rec in records:
            try:
                lines.append(_json_line(rec))
            except InputError as e:
                error = e
                break
        text = "".join(lines)
        if self.path is None:
            try:
                sys.stdout.write(text)
                sys.stdout.flush()
            except BrokenPipeError:  # e.g. `bigbird ... | head`
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
                raise InputError("standard output was closed before every record was written") from None
        else:
            try:
                self._file.write(text.encode("utf-8"))
                self._file.flush()
            except OSError as e:
                raise InputError(f"cannot write {_display(str(self.partial))!r}: {e.strerror or e}") from None
        self.count += len(lines)
        if error is not None:
            raise error

    def finish(self) -> None:
        """Rename the complete partial file over the output file (nothing to do for standard output)."""
        if self._file is None:
            return
        try:
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            os.replace(self.partial, self.path)
        except OSError as e:
            raise InputError(f"cannot write --output {_display(str(self.path))!r}: {e.strerror or e}") from None

    def abort(self) -> str | None:
        """Close after a failed or interrupted run. Returns a note for the error message when the partial
        file is kept (it holds finished records); a partial file this run created empty is removed."""
        if self.partial is None:
            return None
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass  # the run has failed already; that error is the one to report
            self._file = None
        if self.count == 0 and self._created:
            self.partial.unlink(missing_ok=True)
        if self.count == 0 or not self.partial.exists():
            return None
        kept = "1 finished record is" if self.count == 1 else f"{self.count} finished records are"
        return (f"{kept} kept in {_display(str(self.partial))!r}: run the same command with --resume to continue "
                "after them")
