"""The per-task logic of batch inference: :class:`Predictor` loads a checkpoint for one task and turns
documents into records (fill-mask, embed, classify, qa, tokens), merging the results of a document's
windows."""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Sequence

from .batching import Progress, plan_batches
from .documents import Document, Window, _display, position_limit, window_spans
from .environment import check_backend, load_tokenizer, resolve_device, resolve_dtype, resolve_model_dir
from .errors import InputError

__all__ = ["TASKS", "POOLINGS", "Predictor"]

TASKS = ("fill-mask", "embed", "classify", "qa", "tokens")
POOLINGS = ("pooled", "mean")


def _model_class(task: str):
    if task == "embed":
        from ..modeling import BigBirdModel

        return BigBirdModel
    from .. import heads

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
        from ..config import BigBirdConfig

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
        """The longest row (special tokens included) the model can take (:func:`position_limit`)."""
        return 1 << 62 if self.config is None else position_limit(self.config)

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
