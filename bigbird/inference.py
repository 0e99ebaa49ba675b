"""Batch inference with a BigBird checkpoint: the logic behind the ``bigbird`` command, usable from Python.

What lives here (``bigbird.cli`` only parses arguments and prints):

* **Inputs** -- :func:`read_documents` turns inline texts, files (one document each) and JSONL files
  (one document per line, text in a named field) into :class:`Document` objects, in that order, and
  rejects missing, unreadable, empty, non-UTF-8 and malformed inputs with an :class:`InputError`.
* **Windows** -- a document longer than ``max_length`` tokens (special tokens included) is split into
  windows of content tokens that overlap by at least ``stride`` tokens (:func:`window_spans`; the last
  window is moved back so that it is full length and ends at the document's end). Results are merged
  per task: fill-mask predicts each ``[MASK]`` in the window where it is most central (and runs only
  the windows that are needed), embed takes the mean of the window vectors weighted by the number of
  tokens, classify the mean of the window logits, QA the best span over all windows, mapped back to
  document token positions.
* **Batching by length** -- all windows of all documents are sorted by length, cut into batches of
  ``batch_size`` rows and the results put back in input order (:func:`plan_batches`), so padding stays
  small. Rows that run block-sparse attention are only batched with rows of the same number of blocks:
  the padded length -- and with it the layout, whose last block is global -- is then the one the row
  would get alone, so a document's result does not depend on which other documents share its batch
  (nor on the number of processes in a distributed run).
* **Distribution** -- under ``torchrun`` (``WORLD_SIZE > 1``), :class:`Distributed` initialises
  ``torch.distributed`` (gloo on CPU, nccl on CUDA); each rank takes every ``world_size``-th document
  and rank 0 gathers the records (``all_gather_object``) and returns them in input order.
* **Output** -- :class:`JsonlOutput` writes the records as JSON lines (never bare ``NaN``: a
  non-finite result is an :class:`InputError` naming its document) to stdout, or to a file through
  ``FILE.partial``: checked before any work, appended to as records finish, renamed over ``FILE`` at
  the end, kept after a failure for a resumed run to continue.

Positions ("document token positions") index the ids the ``tokens`` task returns for the document:
``[CLS] content [SEP]``, so the first content token is at position 1.

Example::

    from bigbird.inference import Predictor, read_documents
    predictor = Predictor.load("path/to/checkpoint", task="fill-mask")
    records = predictor.run(read_documents(texts=["Paris is the [MASK] of France."]), top_k=3)
"""

from __future__ import annotations

import codecs
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

__all__ = [
    "InputError",
    "Document",
    "Window",
    "TASKS",
    "read_documents",
    "window_spans",
    "plan_batches",
    "resolve_device",
    "resolve_dtype",
    "resolve_model_dir",
    "check_backend",
    "load_tokenizer",
    "Distributed",
    "Progress",
    "Predictor",
    "JsonlOutput",
]

TASKS = ("fill-mask", "embed", "classify", "qa", "tokens")
POOLINGS = ("pooled", "mean")
RECORD_KEYS = {"fill-mask": "masks", "embed": "embedding", "classify": "logits", "qa": "answer", "tokens": "ids",
               "generate": "ids"}
PARTIAL_SUFFIX = ".partial"
_TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer_config.json")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


class InputError(ValueError):
    """A problem with what the user asked for (a missing file, a bad option value, ...).

    The command prints its message as a single line and exits non-zero, without a traceback.
    """


# ------------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------------


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
# windows and batches
# ------------------------------------------------------------------------------------------------


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


def plan_batches(lengths: Sequence[int], batch_size: int, key: Callable[[int], Any] | None = None) -> list[list[int]]:
    """Group row indices into batches of at most ``batch_size`` rows of similar length.

    Rows are sorted by length (longest first, stable); a batch never mixes rows whose ``key(length)``
    differ. Returns lists of row indices; callers scatter the results back by index.
    """
    if batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {batch_size}")
    key = key or (lambda _n: 0)
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    current_key = None
    for i in order:
        k = key(lengths[i])
        if current and (len(current) == batch_size or k != current_key):
            batches.append(current)
            current = []
        current.append(i)
        current_key = k
    if current:
        batches.append(current)
    return batches


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


# ------------------------------------------------------------------------------------------------
# environment: device, dtype, backend, model folder, tokenizer
# ------------------------------------------------------------------------------------------------


def resolve_device(name: str = "auto", local_rank: int | None = None):
    """A ``torch.device`` from ``auto``/``cpu``/``cuda``/``cuda:N`` (``cuda`` under torchrun: the
    local rank's GPU)."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise InputError(f"unknown device {name!r}; expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {name!r} asked for, but torch sees no CUDA device")
        if device.index is None:
            device = torch.device("cuda", local_rank or 0)
        if device.index >= torch.cuda.device_count():
            raise InputError(f"device {str(device)!r} does not exist ({torch.cuda.device_count()} CUDA devices)")
    elif device.type != "cpu":
        raise InputError(f"device type {device.type!r} is not supported; expected cpu or cuda")
    return device


def resolve_dtype(name: str, device):
    """``float32``/``float16``/``bfloat16`` (also ``fp32``/``fp16``/``bf16``); ``auto`` is bfloat16
    on a GPU that supports it and float32 otherwise."""
    import torch

    aliases = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16", "float": "float32"}
    name = aliases.get(name, name)
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name not in ("float32", "float16", "bfloat16"):
        raise InputError(f"unknown dtype {name!r}; expected auto, float32, float16 or bfloat16")
    return getattr(torch, name)


def check_backend(name: str, device, dtype, head_dim: int = 64, block_size: int = 64, num_random_blocks: int = 3) -> str:
    """Validate an attention backend name (``auto`` or a known backend able to run on ``device``
    and ``dtype``); returns the name."""
    from bigbird_kernels.dispatch import BACKEND_NAMES, AttentionInputs, not_supported_reasons

    if name == "auto":
        return name
    if name not in BACKEND_NAMES:
        raise InputError(f"unknown backend {name!r}; expected auto, {', '.join(BACKEND_NAMES)}")
    probe = AttentionInputs(device=device, dtype=dtype, batch=1, num_heads=1, seq_len=16 * block_size,
                            head_dim=head_dim, block_size=block_size, num_random_blocks=num_random_blocks,
                            requires_grad=False, has_mask=True, deterministic=False)
    reasons = not_supported_reasons(name, probe)
    if reasons:
        raise InputError(f"backend {name!r} cannot run here ({device.type}, {str(dtype).replace('torch.', '')}): "
                         + "; ".join(reasons))
    return name


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def resolve_model_dir(name: str, *, need_weights: bool = True, revision: str | None = None) -> tuple[Path, Path]:
    """The local folders ``(checkpoint, tokenizer)`` of ``--model``: an existing directory holding a
    checkpoint and its tokenizer (the same folder twice), or a hub id whose files are fetched into --
    or, offline, found in -- the Hugging Face cache.

    Raises :class:`InputError` for a missing path, a folder without a checkpoint, or a hub id that
    cannot be fetched (e.g. not cached while ``HF_HUB_OFFLINE=1``).
    """
    p = Path(name).expanduser()
    if p.exists():
        if not p.is_dir():
            raise InputError(f"--model {name!r} is a file; expected a checkpoint directory or a hub id")
        if need_weights:
            if not (p / "config.json").is_file():
                raise InputError(f"directory {name!r} holds no checkpoint (no config.json)")
            if not any((p / w).is_file() for w in _WEIGHT_FILES):
                raise InputError(f"directory {name!r} holds no checkpoint weights (no model.safetensors or "
                                 "pytorch_model.bin)")
        elif not any((p / t).is_file() for t in _TOKENIZER_FILES[:2]):
            raise InputError(f"directory {name!r} holds no tokenizer (no tokenizer.json or spiece.model)")
        return p, p
    from .checkpoint import looks_like_local_path

    if looks_like_local_path(name):  # never looked up on the hub
        raise InputError(f"model directory {name!r} does not exist")
    return _fetch_from_hub(name, need_weights=need_weights, revision=revision)


def _fetch_from_hub(name: str, *, need_weights: bool, revision: str | None) -> tuple[Path, Path]:
    """Tokenizer files (and config + weights) of hub model ``name``; returns their snapshot folders."""
    from .checkpoint import resolve_checkpoint_dir, resolve_hub_files

    offline = _offline()

    def fail(e: Exception) -> InputError:
        if offline:
            return InputError(f"model {name!r} is not a local directory and not in the Hugging Face cache "
                              "(HF_HUB_OFFLINE is set, so it cannot be downloaded)")
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return InputError(f"cannot fetch model {name!r} from the Hugging Face hub: {first}")

    try:
        folder = resolve_hub_files(name, _TOKENIZER_FILES[:2], _TOKENIZER_FILES[2:], revision=revision,
                                   local_files_only=offline)
        if not need_weights:
            return folder, folder
        return resolve_checkpoint_dir(name, revision=revision, local_files_only=offline), folder
    except (OSError, ValueError) as e:
        raise fail(e) from None


def load_tokenizer(folder: Path):
    """``BigBirdTokenizer.from_pretrained(folder)``, with missing files reported as :class:`InputError`."""
    from .tokenizer import BigBirdTokenizer

    if not any((folder / t).is_file() for t in _TOKENIZER_FILES[:2]):
        raise InputError(f"{str(folder)!r} holds no tokenizer (no tokenizer.json or spiece.model)")
    return BigBirdTokenizer.from_pretrained(folder)


# ------------------------------------------------------------------------------------------------
# distribution and progress
# ------------------------------------------------------------------------------------------------


class Distributed:
    """``torch.distributed`` when launched by ``torchrun`` with ``WORLD_SIZE > 1``, else a single process.

    ``rank``/``world_size``/``local_rank``; :meth:`shard` takes this rank's items (strided by rank);
    :meth:`gather` returns every rank's items on rank 0 (None elsewhere).
    """

    def __init__(self, device_name: str = "auto"):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
        self.rank = int(os.environ.get("RANK", "0") or 0)
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
        self.initialised_here = False
        if self.world_size > 1:
            import datetime

            import torch
            import torch.distributed as dist

            want_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
            backend = "nccl" if want_cuda else "gloo"
            if want_cuda:
                torch.cuda.set_device(self.local_rank)
            if not dist.is_initialized():
                timeout = datetime.timedelta(seconds=float(os.environ.get("BIGBIRD_DIST_TIMEOUT", "1800")))
                dist.init_process_group(backend=backend, timeout=timeout)
                self.initialised_here = True
            self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence) -> list:
        return list(items[self.rank :: self.world_size])

    def gather(self, items: list) -> list | None:
        if self.world_size == 1:
            return list(items)
        import torch.distributed as dist

        parts: list = [None] * self.world_size
        dist.all_gather_object(parts, items)
        if not self.is_main:
            return None
        return [x for part in parts for x in part]

    def run_and_gather(self, fn: Callable[[], list]) -> list | None:
        """Run ``fn`` on every rank and gather its items on rank 0 (None elsewhere).

        If ``fn`` raises on any rank, every rank raises (no rank is left waiting in the collective): the
        failing rank re-raises its own exception, the others an :class:`InputError` (for input errors)
        or ``RuntimeError`` naming the failing rank and its message.
        """
        if self.world_size == 1:
            return list(fn())
        import torch.distributed as dist

        items, error = _attempt(lambda: list(fn()))
        parts: list = [None] * self.world_size
        dist.all_gather_object(parts, (items, _describe(error)))
        if error is not None:
            raise error
        for rank, (_, failure) in enumerate(parts):
            _raise_failure(rank, failure)
        if not self.is_main:
            return None
        return [x for part, _ in parts for x in part]

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on rank 0 only and return its (picklable) result on every rank. If it raises,
        every rank raises: rank 0 its own exception, the others one naming rank 0 (as
        :meth:`run_and_gather`)."""
        if self.world_size == 1:
            return fn()
        import torch.distributed as dist

        value, error = _attempt(fn) if self.is_main else (None, None)
        box = [(value, _describe(error))]
        dist.broadcast_object_list(box, src=0)
        if error is not None:
            raise error
        value, failure = box[0]
        _raise_failure(0, failure)
        return value

    def close(self) -> None:
        if self.initialised_here:
            import torch.distributed as dist

            if dist.is_initialized():
                # every rank reaches close() after the last collective; the barrier keeps one rank from
                # tearing the group down while another still uses it (gloo aborts the process otherwise)
                try:
                    dist.barrier()
                finally:
                    dist.destroy_process_group()
            self.initialised_here = False


def _attempt(fn: Callable[[], Any]) -> tuple[Any, Exception | None]:
    """``(fn(), None)``, or ``(None, exception)`` when ``fn`` raises an ``Exception``."""
    try:
        return fn(), None
    except Exception as e:  # noqa: BLE001 - reported to every rank by the caller
        return None, e


def _describe(error: Exception | None) -> tuple[bool, str] | None:
    """A picklable summary of a rank's failure: (is an input error, "Type: message")."""
    if error is None:
        return None
    return isinstance(error, InputError), f"{type(error).__name__}: {' '.join(str(error).split())}"


def _raise_failure(rank: int, failure: tuple[bool, str] | None) -> None:
    if failure is not None:
        is_input, message = failure
        raise (InputError if is_input else RuntimeError)(f"rank {rank} failed: {message}")


class Progress:
    """A progress bar on stderr over ``total`` steps: tqdm when installed, else a one-line counter.
    Silent when ``enabled`` is False or there is at most one step."""

    def __init__(self, total: int, desc: str, enabled: bool = True, stream=None):
        self.total, self.desc, self.count = total, desc, 0
        self.stream = stream or sys.stderr
        self.enabled = enabled and total > 1
        self._bar = None
        if self.enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, desc=desc, unit="batch", file=self.stream, leave=False)
            except ImportError:
                self._draw()

    def _draw(self) -> None:
        width = 30
        done = int(width * self.count / max(self.total, 1))
        self.stream.write(f"\r{self.desc}: [{'#' * done}{'.' * (width - done)}] {self.count}/{self.total} batches")
        self.stream.flush()

    def update(self, n: int = 1) -> None:
        self.count += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
        else:
            self._draw()

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        else:
            self.stream.write("\n")
            self.stream.flush()
        self.enabled = False


# ------------------------------------------------------------------------------------------------
# the predictor
# ------------------------------------------------------------------------------------------------


def _model_class(task: str):
    if task == "embed":
        from .modeling import BigBirdModel

        return BigBirdModel
    from . import heads

    return {
        "fill-mask": heads.BigBirdForMaskedLM,
        "classify": heads.BigBirdForSequenceClassification,
        "qa": heads.BigBirdForQuestionAnswering,
    }[task]


_TASK_HEADS = {"fill-mask": "cls", "embed": "pooler", "classify": "classifier", "qa": "qa_classifier"}
_UNUSED_WEIGHTS = {"classify": ("bert.pooler.*",)}  # weights a task's model has but never uses
_PYTHON_HINT = re.compile(r"\b(allow_missing|ignore_unexpected)=")


def _missing_head_message(model: str, task: str, keys: list[str]) -> str:
    """Why ``bigbird TASK`` cannot use checkpoint ``model``, whose ``keys`` (of the task's head) are missing
    or mis-shaped, and what to do instead -- in terms of the command line."""
    if task == "embed":
        return (f"--model {_display(model)!r} has no pooler weights ({keys[0]}, ...): use --pooling mean, which "
                "needs none")
    what = f"--model {_display(model)!r} has no weights for the {task} head ({keys[0]}, ...)"
    if task == "fill-mask":
        return f"{what}: fill-mask needs a pretrained (masked-LM) checkpoint"
    return (f"{what}: `bigbird {task}` needs a checkpoint fine-tuned for {task}, and the command line cannot "
            "start a new head (its outputs would be random); fine-tune one in Python and save it, or use "
            "`bigbird embed` for features from this checkpoint")


class Predictor:
    """A tokenizer, optionally a model for one task, and the settings of a run.

    Build with :meth:`load`; :meth:`run` turns documents into one JSON-ready record per document.
    """

    def __init__(self, task: str, tokenizer, model=None, *, device=None, dtype=None, max_length: int | None = None,
                 stride: int | None = None, batch_size: int = 8, progress: bool = True):
        if task not in TASKS:
            raise InputError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
        import torch

        self.task = task
        self.tokenizer = tokenizer
        self.model = model
        self.device = device or torch.device("cpu")
        self.dtype = dtype or torch.float32
        self.batch_size = batch_size
        self.progress = progress
        self.config = getattr(model, "config", None)
        if batch_size < 1:
            raise InputError(f"--batch-size must be >= 1, got {batch_size}")
        if task != "tokens":
            limit = self.position_limit()
            if max_length is None:
                max_length = limit
            elif max_length > limit:
                raise InputError(f"--max-length {max_length} exceeds the model's {limit} positions")
            if max_length < 3:
                raise InputError(f"--max-length must be >= 3 (room for [CLS], [SEP] and a token), got {max_length}")
            if stride is not None and stride < 0:
                raise InputError(f"--stride must be >= 0, got {stride}")
        self.max_length = max_length
        self.stride = stride

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def load(cls, model: str, task: str, *, device: str = "auto", dtype: str = "auto", backend: str | None = None,
             max_length: int | None = None, stride: int | None = None, batch_size: int = 8, progress: bool = True,
             local_rank: int | None = None, revision: str | None = None, pooling: str | None = None) -> "Predictor":
        """Resolve ``model`` (folder or hub id), load its tokenizer and -- unless ``task`` is ``tokens``
        -- the task's model class once, on ``device`` in ``dtype``, in eval mode. ``backend`` (an
        attention backend name or ``auto``) replaces the checkpoint's ``attention_backend``. With
        ``task="embed"`` and ``pooling="mean"`` a checkpoint without pooler weights (question answering)
        loads too (the pooler, unused, is initialised)."""
        from .config import BigBirdConfig

        folder, tokenizer_folder = resolve_model_dir(model, need_weights=task != "tokens", revision=revision)
        tokenizer = load_tokenizer(tokenizer_folder)
        if task == "tokens":
            return cls(task, tokenizer, None, batch_size=batch_size, progress=progress)
        dev = resolve_device(device, local_rank)
        dt = resolve_dtype(dtype, dev)
        cfg = BigBirdConfig.from_pretrained(folder)
        overrides = {}
        if backend is not None:
            check_backend(backend, dev, dt, cfg.hidden_size // cfg.num_attention_heads, cfg.block_size,
                          cfg.num_random_blocks)
            overrides["attention_backend"] = backend
        if cfg.vocab_size < tokenizer.vocab_size:
            raise InputError(f"the tokenizer in {str(tokenizer_folder)!r} has {tokenizer.vocab_size} ids but the model "
                             f"only {cfg.vocab_size}")
        head = _TASK_HEADS[task]
        try:
            net, info = _model_class(task).from_pretrained(
                folder, dtype=dt, device=dev, allow_missing=(f"{head}.*", *_UNUSED_WEIGHTS.get(task, ())),
                output_loading_info=True, **overrides)
        except ValueError as e:  # keys that do not fit: drop the loader's hints, which name Python arguments
            lines = [line.strip() for line in str(e).splitlines() if not _PYTHON_HINT.search(line)]
            if len(lines) == len(str(e).splitlines()):
                raise
            raise InputError(" ".join(lines) + f"; the command line cannot adapt this checkpoint to `bigbird {task}`"
                             ) from e
        fresh = [k for k in info["missing_keys"] if k.startswith(f"{head}.")]
        if fresh and not (task == "embed" and pooling == "mean"):  # mean pooling never uses the pooler
            raise InputError(_missing_head_message(model, task, fresh))
        net.eval()
        return cls(task, tokenizer, net, device=dev, dtype=dt, max_length=max_length, stride=stride,
                   batch_size=batch_size, progress=progress)

    def position_limit(self) -> int:
        """The longest row (special tokens included) the model can take: ``max_position_embeddings``,
        rounded down to a block multiple for block-sparse models (rows are padded to one)."""
        c = self.config
        if c is None:
            return 1 << 62
        if c.attention_type == "block_sparse":
            return c.max_position_embeddings - c.max_position_embeddings % c.block_size
        return c.max_position_embeddings

    def _bucket(self, length: int):
        """Batch key: rows running block-sparse attention only batch with rows of as many blocks."""
        c = self.config
        if c is None or c.attention_type != "block_sparse" or length <= c.short_input_threshold:
            return -1
        return -(-length // c.block_size)

    # -- tokenization and windows ------------------------------------------------------------------

    def _encode(self, texts: list[str]):
        return self.tokenizer.backend.encode_batch(texts, add_special_tokens=False)

    def _windows(self, doc_i: int, content: list[int], prefix: list[int] | None = None) -> list[Window]:
        tok = self.tokenizer
        head = [tok.cls_token_id] + ([*prefix, tok.sep_token_id] if prefix is not None else [])
        size = self.max_length - len(head) - 1
        if size < 1:
            raise InputError(f"the question takes {len(prefix or [])} tokens, leaving no room for the document "
                             f"within --max-length {self.max_length}")
        stride = self.stride if self.stride is not None else size // 4
        if stride >= size:
            raise InputError(f"--stride {stride} must be smaller than the {size} document tokens a window holds "
                             f"(--max-length {self.max_length})")
        return [
            Window(doc_i, w, head + content[s:e] + [tok.sep_token_id], s, e, len(head))
            for w, (s, e) in enumerate(window_spans(len(content), size, stride))
        ]

    # -- running rows ----------------------------------------------------------------------------

    def _run_rows(self, rows: list[Window], fn: Callable, desc: str) -> list:
        """``fn(input_ids, attention_mask, row_indices)`` on length-sorted batches, returning one result
        per row of the batch; the results come back in row order."""
        import torch

        out: list = [None] * len(rows)
        batches = plan_batches([len(r.input_ids) for r in rows], self.batch_size, self._bucket)
        bar = Progress(len(batches), desc, enabled=self.progress)
        try:
            for batch in batches:
                width = max(len(rows[i].input_ids) for i in batch)
                ids = torch.full((len(batch), width), self.tokenizer.pad_token_id, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for j, i in enumerate(batch):
                    n = len(rows[i].input_ids)
                    ids[j, :n] = torch.tensor(rows[i].input_ids)
                    mask[j, :n] = 1
                with torch.inference_mode():
                    results = fn(ids.to(self.device), mask.to(self.device), batch)
                for i, r in zip(batch, results):
                    out[i] = r
                bar.update()
        finally:
            bar.close()
        return out

    # -- tasks -------------------------------------------------------------------------------------

    def run(self, docs: Sequence[Document], *, top_k: int = 5, pooling: str = "pooled",
            max_answer_length: int = 30, desc: str | None = None) -> list[dict]:
        """One record per document, in the order of ``docs``. ``desc`` labels the progress bar
        (default: the task)."""
        if not docs:
            return []
        desc = desc or self.task
        if self.task == "tokens":
            records = self._tokens(docs)
        elif self.task == "fill-mask":
            if top_k < 1:
                raise InputError(f"--top-k must be >= 1, got {top_k}")
            records = self._fill_mask(docs, top_k, desc)
        elif self.task == "embed":
            if pooling not in POOLINGS:
                raise InputError(f"unknown pooling {pooling!r}; expected one of {', '.join(POOLINGS)}")
            records = self._embed(docs, pooling, desc)
        elif self.task == "classify":
            records = self._classify(docs, desc)
        else:
            if max_answer_length < 1:
                raise InputError(f"--max-answer-length must be >= 1, got {max_answer_length}")
            records = self._qa(docs, max_answer_length, desc)
        return [{"index": d.index, **d.extra, "source": d.source, **r} for d, r in zip(docs, records)]

    def _tokens(self, docs):
        tok = self.tokenizer
        out = []
        for enc in self._encode([d.text for d in docs]):
            ids = [tok.cls_token_id, *enc.ids, tok.sep_token_id]
            out.append({"num_tokens": len(ids), "ids": ids, "tokens": tok.convert_ids_to_tokens(ids)})
        return out

    def _fill_mask(self, docs, top_k, desc):
        import torch

        tok = self.tokenizer
        mask_id = tok.mask_token_id
        encs = self._encode([d.text for d in docs])
        rows: list[Window] = []
        wanted: list[list[int]] = []  # per row: content positions of the masks predicted there
        per_doc: list[dict] = []
        for i, (d, enc) in enumerate(zip(docs, encs)):
            content = list(enc.ids)
            masks = [j for j, t in enumerate(content) if t == mask_id]
            if not masks:
                raise InputError(f"{d.source} has no {tok.special_tokens['mask_token']} token to fill")
            windows = self._windows(i, content)
            choice: dict[int, list[int]] = {}
            for j in masks:
                best = max(range(len(windows)),
                           key=lambda w: (min(j - windows[w].start, windows[w].stop - 1 - j), -w)
                           if windows[w].start <= j < windows[w].stop else (-1, -w))
                choice.setdefault(best, []).append(j)
            for w, js in sorted(choice.items()):
                rows.append(windows[w])
                wanted.append(js)
            per_doc.append({"num_tokens": len(content) + 2, "num_windows": len(windows), "masks": {}})
        k = min(top_k, self.config.vocab_size)

        def fn(ids, mask, batch):
            b_idx, p_idx = [], []
            for b, i in enumerate(batch):
                for j in wanted[i]:
                    b_idx.append(b)
                    p_idx.append(rows[i].offset + j - rows[i].start)
            logits = _mlm_logits_at(self.model, ids, mask, b_idx, p_idx).float()
            probs = torch.softmax(logits, dim=-1)
            scores, top = probs.topk(k, dim=-1)  # (num_masks, k) each
            scores, top = scores.tolist(), top.tolist()  # one device-to-host copy each, not one per mask
            res = [[] for _ in batch]
            for n, b in enumerate(b_idx):
                res[b].append((scores[n], top[n]))
            return res

        results = self._run_rows(rows, fn, desc)
        for r, js, res in zip(rows, wanted, results):
            for j, (scores, ids) in zip(js, res):
                per_doc[r.doc]["masks"][j] = {
                    "position": j + 1,
                    "window": r.number,
                    "predictions": [
                        {"token_id": t, "token": tok.convert_ids_to_tokens(t), "text": tok.decode([t]).strip(), "score": s}
                        for t, s in zip(ids, scores)
                    ],
                }
        for rec in per_doc:
            rec["masks"] = [rec["masks"][j] for j in sorted(rec["masks"])]
        return per_doc

    def _embed(self, docs, pooling, desc):
        encs = self._encode([d.text for d in docs])
        rows = [w for i, enc in enumerate(encs) for w in self._windows(i, list(enc.ids))]
        if pooling == "pooled" and getattr(self.model, "pooler", None) is None:
            raise InputError("this checkpoint has no pooler: use --pooling mean")

        def fn(ids, mask, _rows):
            out = self.model(input_ids=ids, attention_mask=mask)
            if pooling == "pooled":
                vec = out.pooler_output.float()
            else:
                m = mask[:, :, None].float()
                vec = (out.last_hidden_state.float() * m).sum(1) / m.sum(1)
            return list(vec.cpu())

        vecs = self._run_rows(rows, fn, desc)
        sums: dict[int, Any] = {}
        weights: dict[int, int] = {}
        counts: dict[int, int] = {}
        for r, v in zip(rows, vecs):
            n = len(r.input_ids)
            sums[r.doc] = sums.get(r.doc, 0) + v.double() * n
            weights[r.doc] = weights.get(r.doc, 0) + n
            counts[r.doc] = counts.get(r.doc, 0) + 1
        out = []
        for i, enc in enumerate(encs):
            vec = (sums[i] / weights[i]).float()
            out.append({"num_tokens": len(enc.ids) + 2, "num_windows": counts[i], "pooling": pooling,
                        "dim": int(vec.numel()), "embedding": vec.tolist()})
        return out

    def _classify(self, docs, desc):
        import torch

        encs = self._encode([d.text for d in docs])
        rows = [w for i, enc in enumerate(encs) for w in self._windows(i, list(enc.ids))]

        def fn(ids, mask, _rows):
            return list(self.model(input_ids=ids, attention_mask=mask).logits.float().cpu())

        logits = self._run_rows(rows, fn, desc)
        per_doc: dict[int, list] = {}
        for r, lg in zip(rows, logits):
            per_doc.setdefault(r.doc, []).append(lg)
        c = self.config
        id2label = getattr(c, "id2label", None) or {}
        out = []
        for i, enc in enumerate(encs):
            mean = torch.stack(per_doc[i]).double().mean(0).float()
            rec = {"num_tokens": len(enc.ids) + 2, "num_windows": len(per_doc[i]), "logits": mean.tolist()}
            if getattr(c, "problem_type", None) == "regression":
                out.append(rec)
                continue
            if getattr(c, "problem_type", None) == "multi_label_classification":
                probs = torch.sigmoid(mean)
                rec["labels"] = [id2label.get(j, str(j)) for j in range(mean.numel()) if probs[j] > 0.5]
            else:
                probs = torch.softmax(mean, dim=-1)
            best = int(mean.argmax())
            rec.update(probabilities=probs.tolist(), label_id=best, label=id2label.get(best, str(best)),
                       score=float(probs[best]))
            out.append(rec)
        return out

    def _qa(self, docs, max_answer_length, desc):
        for d in docs:
            if d.question is None or not d.question.strip():
                raise InputError(f"{d.source} has no question: give --question (or a 'question' field in JSONL)")
        encs = self._encode([d.text for d in docs])
        qencs = self._encode([d.question for d in docs])
        rows = [w for i, (enc, q) in enumerate(zip(encs, qencs)) for w in self._windows(i, list(enc.ids), list(q.ids))]

        def fn(ids, mask, batch):
            out = self.model(input_ids=ids, attention_mask=mask)
            start, end = out.start_logits.float().cpu(), out.end_logits.float().cpu()  # (B, L) each, one copy per batch
            res = []
            for b, r in enumerate(rows[i] for i in batch):
                n = r.stop - r.start
                res.append(_best_span(start[b, r.offset : r.offset + n], end[b, r.offset : r.offset + n], max_answer_length))
            return res

        spans = self._run_rows(rows, fn, desc)
        best: dict[int, tuple] = {}
        counts: dict[int, int] = {}
        for r, (score, i, j) in zip(rows, spans):
            counts[r.doc] = counts.get(r.doc, 0) + 1
            cand = (score, r.start + i, r.start + j, r.number)
            if r.doc not in best or score > best[r.doc][0]:
                best[r.doc] = cand
        out = []
        for i, (d, enc) in enumerate(zip(docs, encs)):
            score, s, e, w = best[i]
            start_char, end_char = enc.offsets[s][0], enc.offsets[e][1]
            out.append({
                "question": d.question,
                "num_tokens": len(enc.ids) + 2,
                "num_windows": counts[i],
                "answer": d.text[start_char:end_char].strip(),
                "start": s + 1,
                "end": e + 1,
                "start_char": start_char,
                "end_char": end_char,
                "score": score,
                "window": w,
            })
        return out


def _best_span(start_logits, end_logits, max_len: int) -> tuple[float, int, int]:
    """``(score, i, j)`` maximising ``start[i] + end[j]`` with ``i <= j < i + max_len``."""
    import torch

    n = start_logits.numel()
    best = (-math.inf, 0, 0)
    for d in range(min(max_len, n)):
        scores = start_logits[: n - d] + end_logits[d:]
        i = int(torch.argmax(scores))
        if float(scores[i]) > best[0]:
            best = (float(scores[i]), i, i + d)
    return best


def _mlm_logits_at(model, ids, mask, b_idx: list[int], p_idx: list[int]):
    """MLM logits at the given (row, position) pairs only: the vocabulary projection of every
    position would be ``B x L x vocab`` (825 MB per 4096-token row of the base model)."""
    import torch

    b = torch.tensor(b_idx, device=ids.device, dtype=torch.long)
    p = torch.tensor(p_idx, device=ids.device, dtype=torch.long)
    encoder, head = getattr(model, "bert", None), getattr(model, "cls", None)
    if encoder is not None and head is not None:
        try:
            hidden = encoder(input_ids=ids, attention_mask=mask, compute_pooler=False).last_hidden_state
        except TypeError:
            hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return head(hidden[b, p])
    return model(input_ids=ids, attention_mask=mask).logits[b, p]


# ------------------------------------------------------------------------------------------------
# output
# ------------------------------------------------------------------------------------------------


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
