"""Inputs of batch inference: documents read from texts, files and JSONL, and windows over them.

:func:`read_documents` turns inline texts, files (one document each) and JSONL files (one document per
line, text in a named field) into :class:`Document` objects, in that order, and rejects missing,
unreadable, empty, non-UTF-8 and malformed inputs with an :class:`InputError`. :func:`window_spans`
splits a document's content tokens into overlapping windows; a :class:`Window` is one model input row.
"""

from __future__ import annotations

import codecs
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .errors import InputError

__all__ = ["Document", "Window", "read_documents", "window_spans", "position_limit"]


@dataclass
class Document:
    """One input document.

    index: position in the whole input (records are written in this order).
    text: the document's text.
    source: where it came from: ``text[i]``, a file path, or ``path:line`` for JSONL.
    question: the QA question for this document (JSONL field or ``--question``), if any.
    extra: fields copied to the output record (``id`` of a JSONL line).
    """

    index: int
    text: str
    source: str
    question: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _check_text(text: str, where: str, *, argv: bool = False) -> str:
    """``text`` if it is valid Unicode (encodable as UTF-8); else an :class:`InputError` naming ``where``.

    A Python ``str`` can hold lone surrogates: from a JSON ``\\ud800`` escape, or (``argv``: a
    command-line argument) from bytes that are not UTF-8, decoded to U+DC80..U+DCFF. Neither can be
    tokenized nor written out.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        code = ord(text[e.start])
        what = (f"byte 0x{code - 0xDC00:02x}, which is not UTF-8," if argv and 0xDC80 <= code <= 0xDCFF
                else f"a lone surrogate U+{code:04X}")
        raise InputError(f"{where} holds {what} at character {e.start}; give valid UTF-8 text") from None
    return text


def _display(path: str) -> str:
    """A path as printable text: the bytes of a file name that are not UTF-8 are shown as ``\\xNN``."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _read_text(path: str, what: str) -> str:
    """The UTF-8 text of file ``path`` (``-``: standard input), without a leading byte-order mark."""
    name = "<stdin>" if path == "-" else _display(path)
    if path == "-":
        if not hasattr(sys.stdin, "buffer"):  # replaced by a text stream (in Python)
            return _check_text(sys.stdin.read(), name)
        data = sys.stdin.buffer.read()
    else:
        p = Path(path).expanduser()
        if not p.exists():
            raise InputError(f"{what} {name!r} does not exist")
        if p.is_dir():
            raise InputError(f"{what} {name!r} is a directory, expected a file")
        try:
            data = p.read_bytes()
        except OSError as e:
            raise InputError(f"cannot read {what} {name!r}: {e.strerror or e}") from None
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{what} {name!r} is not UTF-8 text ({e.reason} at byte {e.start + skip})") from None


def _jsonl_lines(content: str):
    """``(line_number, line)`` of the non-blank lines of JSONL ``content``.

    Lines end at ``\\n`` only (a ``\\r`` before it is dropped): U+2028, U+2029 and U+0085, which
    ``str.splitlines`` would also split at, are legal inside JSON strings. Blank lines (JSON whitespace
    only) are skipped but counted.
    """
    for line_no, line in enumerate(content.split("\n"), start=1):
        if line.strip(" \t\r"):
            yield line_no, line.removesuffix("\r")


def _parse_jsonl_line(line: str, where: str, field: str, question_field: str | None):
    """``(text, question, extra)`` of one JSONL line (see :func:`read_documents`)."""
    def refuse(constant: str):
        raise InputError(f"{where}: {constant} is not valid JSON")

    try:
        obj = json.loads(line, parse_constant=refuse)
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: not valid JSON ({e.msg}, column {e.colno})") from None
    except RecursionError:
        raise InputError(f"{where}: JSON nested too deeply") from None
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if field not in obj:
        raise InputError(f"{where}: no field {field!r} (choose another with --field)")
    text = obj[field]
    if not isinstance(text, str):
        raise InputError(f"{where}: field {field!r} must be a string, got {type(text).__name__}")
    _check_text(text, f"{where}: field {field!r}")
    q = obj.get(question_field) if question_field else None
    if q is not None:
        if not isinstance(q, str):
            raise InputError(f"{where}: field {question_field!r} must be a string, got {type(q).__name__}")
        _check_text(q, f"{where}: field {question_field!r}")
    extra = {}
    if "id" in obj:  # copied to the output record
        try:
            id_json = json.dumps(obj["id"], ensure_ascii=False, allow_nan=False)
        except ValueError:
            raise InputError(f"{where}: field 'id' holds a number out of range (1e999 reads as infinity)") from None
        _check_text(id_json, f"{where}: field 'id'")
        extra["id"] = obj["id"]
    return text, q, extra


def read_documents(
    texts: Sequence[str] = (),
    files: Sequence[str] = (),
    jsonl: Sequence[str] = (),
    *,
    field: str = "text",
    question: str | None = None,
    question_field: str | None = "question",
) -> list[Document]:
    """Collect the documents: inline ``texts``, then each of ``files`` (one document per file), then
    every non-blank line of each ``jsonl`` file (a JSON object whose ``field`` holds the text; its
    ``id`` is copied to the output, and its ``question_field`` overrides ``question``).

    Files are UTF-8 (a leading byte-order mark is dropped); JSONL lines end at ``\\n`` (``\\r\\n``
    too) and are numbered from 1, blank lines included. ``"-"`` as a file or JSONL path reads
    standard input. Raises :class:`InputError` when nothing is given, a file is missing, unreadable or
    not UTF-8, a text holds lone surrogates, a document is empty, or a JSONL line is not a JSON object
    with a string ``field``.
    """
    docs: list[Document] = []

    def add(text: str, source: str, q: str | None = None, extra: dict | None = None) -> None:
        if not text.strip():
            raise InputError(f"{source} is empty: nothing to process")
        docs.append(Document(len(docs), text, source, q if q is not None else question, extra or {}))

    if question is not None:
        _check_text(question, "--question", argv=True)
    for i, t in enumerate(texts):
        add(_check_text(t, f"text[{i}]", argv=True), f"text[{i}]")
    for path in files:
        text = _read_text(path, "file").replace("\r\n", "\n").replace("\r", "\n")  # universal newlines
        add(text, "<stdin>" if path == "-" else _display(path))
    for path in jsonl:
        content = _read_text(path, "JSONL file")
        name = "<stdin>" if path == "-" else _display(path)
        n_before = len(docs)
        for line_no, line in _jsonl_lines(content):
            where = f"{name}:{line_no}"
            text, q, extra = _parse_jsonl_line(line, where, field, question_field)
            add(text, where, q, extra)
        if len(docs) == n_before:
            raise InputError(f"JSONL file {name!r} is empty: no documents in it")
    if not docs:
        raise InputError("no input: give --text, --file or --jsonl")
    return docs


# ------------------------------------------------------------------------------------------------
# windows
# ------------------------------------------------------------------------------------------------


def position_limit(config) -> int:
    """The longest row (special tokens included) a model of ``config`` takes: ``max_position_embeddings``,
    rounded down to a block multiple for block-sparse models (rows are padded to one)."""
    if config.attention_type == "block_sparse":
        return config.max_position_embeddings - config.max_position_embeddings % config.block_size
    return config.max_position_embeddings


def window_spans(n: int, size: int, stride: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of the windows covering ``n`` content tokens, ``size`` tokens each.

    One window when ``n <= size``. Otherwise windows start every ``size - stride`` tokens (so
    consecutive windows share ``stride`` tokens) and the last one is moved back to end at ``n``
    (sharing at least ``stride``), so every window is full. Needs ``0 <= stride < size``.
    """
    if size < 1:
        raise InputError(f"windows need room for at least one content token, got {size}")
    if not 0 <= stride < size:
        raise InputError(f"stride {stride} must be >= 0 and smaller than the {size} content tokens of a window")
    if n <= size:
        return [(0, n)]
    step = size - stride
    spans = []
    start = 0
    while start + size < n:
        spans.append((start, start + size))
        start += step
    spans.append((n - size, n))
    return spans


@dataclass
class Window:
    """One model input row: a window of a document's content tokens with special tokens around it.

    doc: index into the local document list. number: the window's number within its document.
    input_ids: the row (``[CLS] content[start:stop] [SEP]`` or ``[CLS] q [SEP] content[start:stop] [SEP]``).
    start, stop: the windowed content tokens. offset: row position of ``content[start]``.
    """

    doc: int
    number: int
    input_ids: list[int]
    start: int
    stop: int
    offset: int
