"""Batch inference with a BigBird checkpoint: the logic behind the ``bigbird`` command, usable from Python.

``bigbird.cli`` only parses arguments and prints; this package does the work, one module per concern
(every public name is importable from ``bigbird.inference`` itself):

* **Inputs** (:mod:`.documents`) -- :func:`read_documents` turns inline texts, files (one document
  each) and JSONL files (one document per line, text in a named field) into :class:`Document` objects,
  in that order, and rejects missing, unreadable, empty, non-UTF-8 and malformed inputs with an
  :class:`InputError` (:mod:`.errors`).
* **Windows** (:mod:`.documents`, merged in :mod:`.tasks`) -- a document longer than ``max_length``
  tokens (special tokens included) is split into windows of content tokens that overlap by at least
  ``stride`` tokens (:func:`window_spans`; the last window is moved back so that it is full length and
  ends at the document's end). Results are merged per task: fill-mask predicts each ``[MASK]`` in the
  window where it is most central (and runs only the windows that are needed), embed takes the mean of
  the window vectors weighted by the number of tokens, classify the mean of the window logits, QA the
  best span over all windows, mapped back to document token positions.
* **Batching by length** (:mod:`.batching`) -- all windows of all documents are sorted by length, cut
  into batches of ``batch_size`` rows and the results put back in input order (:func:`plan_batches`),
  so padding stays small. Rows that run block-sparse attention are only batched with rows of the same
  number of blocks: the padded length -- and with it the layout, whose last block is global -- is then
  the one the row would get alone, so a document's result does not depend on which other documents
  share its batch (nor on the number of processes in a distributed run). :class:`Progress` shows the
  batches as they run.
* **Environment** (:mod:`.environment`) -- device, dtype and attention backend from their names, the
  model folder (a local directory or a hub id) and its tokenizer.
* **Tasks** (:mod:`.tasks`) -- :class:`Predictor` loads a checkpoint once for one of :data:`TASKS` and
  turns documents into one record each.
* **Distribution** (:mod:`.distributed`) -- under ``torchrun`` (``WORLD_SIZE > 1``),
  :class:`Distributed` initialises ``torch.distributed`` (gloo on CPU, nccl on CUDA); each rank takes
  every ``world_size``-th document and rank 0 gathers the records (``all_gather_object``) and returns
  them in input order.
* **Output** (:mod:`.output`) -- :class:`JsonlOutput` writes the records as JSON lines (never bare
  ``NaN``: a non-finite result is an :class:`InputError` naming its document) to stdout, or to a file
  through ``FILE.partial``: checked before any work, appended to as records finish, renamed over
  ``FILE`` at the end, kept after a failure for a resumed run to continue.

Positions ("document token positions") index the ids the ``tokens`` task returns for the document:
``[CLS] content [SEP]``, so the first content token is at position 1.

Example::

    from bigbird.inference import Predictor, read_documents
    predictor = Predictor.load("path/to/checkpoint", task="fill-mask")
    records = predictor.run(read_documents(texts=["Paris is the [MASK] of France."]), top_k=3)
"""

from __future__ import annotations

from .batching import Progress, plan_batches
from .distributed import Distributed
from .documents import Document, Window, position_limit, read_documents, window_spans
from .environment import check_backend, load_tokenizer, resolve_device, resolve_dtype, resolve_model_dir
from .errors import InputError
from .output import JsonlOutput
from .tasks import TASKS, Predictor

__all__ = [
    "InputError",
    "Document",
    "Window",
    "TASKS",
    "read_documents",
    "window_spans",
    "position_limit",
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
