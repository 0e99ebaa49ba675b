"""``bigbird.pipeline(task, model=...)``: transformers-style pipelines, with long documents windowed.

>>> from bigbird import pipeline
>>> fill = pipeline("fill-mask", model="google/bigbird-roberta-base")      # or a local folder
>>> fill("Plants create [MASK] through a process known as photosynthesis.")  # [{score, token, token_str, sequence}, ...]

Tasks and what a call returns (the keys and nesting of ``transformers``' pipelines; a list of inputs
gives a list of these):

* ``"fill-mask"``: per ``[MASK]``, the ``top_k`` (5) predictions ``{score, token, token_str, sequence}``;
  one mask gives a list of them, several masks a list per mask.
* ``"text-classification"`` (alias ``"sentiment-analysis"``): ``[{label, score}]`` for the best label;
  with ``top_k=k`` (``None``: all) the ``k`` best, sorted. ``function_to_apply`` "softmax" /
  "sigmoid" / "none" defaults as in transformers (sigmoid for multi-label or one label, none for
  regression).
* ``"token-classification"`` (alias ``"ner"``): the tokens whose label is not in ``ignore_labels``
  (``["O"]``), ``{entity, score, index, word, start, end}``; ``aggregation_strategy="simple"`` groups
  adjacent tokens of one entity (B-/I- tags) into ``{entity_group, score, word, start, end}``.
* ``"question-answering"``: ``qa(question=..., context=...)`` (or ``{"question", "context"}`` dicts) gives
  ``{score, start, end, answer}`` (a list with ``top_k > 1``): character offsets into the context and
  ``score`` = p(start) * p(end), softmax over the context tokens (and ``[CLS]``) of a window, as in
  transformers 4.x (5.x has no such pipeline). Answers are at most ``max_answer_len`` (15) tokens.
* ``"feature-extraction"``: the last hidden states as nested lists of shape ``[1][tokens][hidden]``
  (a ``(1, tokens, hidden)`` tensor with ``return_tensors=True``).

Long documents are windowed as the ``bigbird`` command does (:func:`bigbird.inference.window_spans`):
windows of at most ``max_length`` tokens (default: the model's positions, rounded down to a block
multiple for block-sparse models) overlapping by ``stride`` content tokens (default a quarter of a
window). Fill-mask, token-classification and feature-extraction take each token's result from the
window where it is most central; text-classification averages the window logits; question answering
takes the best spans over all windows (the question is repeated in each). An input that fits one
window gives exactly what ``transformers`` gives. Each input runs on its own (its windows batched by
``batch_size``), so results do not depend on the other inputs.
"""

from __future__ import annotations

import os

import torch

from .inference import position_limit, window_spans

__all__ = ["pipeline", "Pipeline", "SUPPORTED_TASKS", "TASK_ALIASES"]

SUPPORTED_TASKS = ("fill-mask", "text-classification", "token-classification", "question-answering", "feature-extraction")
TASK_ALIASES = {"sentiment-analysis": "text-classification", "ner": "token-classification"}
AGGREGATION_STRATEGIES = ("none", "simple")
_FUNCTIONS = ("softmax", "sigmoid", "none")


def pipeline(task: str, model=None, tokenizer=None, device=None, *, dtype=None, torch_dtype=None,
             revision: str | None = None, max_length: int | None = None, stride: int | None = None,
             batch_size: int = 8, model_kwargs: dict | None = None) -> "Pipeline":
    """A pipeline for ``task`` (see :mod:`bigbird.pipelines`) on a BigBird checkpoint.

    Args:
        task: one of :data:`SUPPORTED_TASKS` (or an alias in :data:`TASK_ALIASES`).
        model: a checkpoint folder or hub id (the task's class is loaded with ``from_pretrained``), or a
            model of the task's class (``BigBirdModel`` for feature-extraction).
        tokenizer: a folder, hub id or :class:`BigBirdTokenizer`; None: the model's folder (needed
            when ``model`` is a model object).
        device: None (the CPU, or where a given model already is), ``-1`` (CPU), a CUDA index, a name
            such as ``"cuda:0"`` or a ``torch.device``.
        dtype, torch_dtype, revision, model_kwargs: passed to ``from_pretrained``.
        max_length, stride: the windows of long documents (defaults above).
        batch_size: windows of one input run per forward pass.

    Raises:
        ValueError: an unknown task (named), a model of another class, no tokenizer for a model object,
            bad window settings.
    """
    from .auto import (AutoModel, AutoModelForMaskedLM, AutoModelForQuestionAnswering,
                       AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer)

    name = TASK_ALIASES.get(task, task)
    autos = {"fill-mask": AutoModelForMaskedLM, "text-classification": AutoModelForSequenceClassification,
             "token-classification": AutoModelForTokenClassification,
             "question-answering": AutoModelForQuestionAnswering, "feature-extraction": AutoModel}
    if name not in autos:
        raise ValueError(f"unknown task {task!r}; bigbird.pipeline supports {', '.join(SUPPORTED_TASKS)} "
                         f"(aliases {', '.join(TASK_ALIASES)})")
    if model is None:
        raise ValueError(f"pipeline({task!r}) needs model=: a checkpoint folder, a hub id or a model "
                         "(no default checkpoint is downloaded)")
    model_class = autos[name]._model_class
    if isinstance(model, (str, os.PathLike)):
        source = model
        model = model_class.from_pretrained(model, dtype=dtype, torch_dtype=torch_dtype, revision=revision,
                                            **(model_kwargs or {}))
        if device is None:
            device = "cpu"
    else:
        source = None
        if not isinstance(model, model_class):
            raise ValueError(f"the {name} pipeline needs a {model_class.__name__}, got {type(model).__name__}")
    if tokenizer is None:
        if source is None:
            raise ValueError("pass tokenizer= (a folder, hub id or BigBirdTokenizer) with a model object")
        tokenizer = source
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer, revision=revision)
    if device is not None:
        model = model.to(_device(device))
    classes = {"fill-mask": FillMaskPipeline, "text-classification": TextClassificationPipeline,
               "token-classification": TokenClassificationPipeline,
               "question-answering": QuestionAnsweringPipeline, "feature-extraction": FeatureExtractionPipeline}
    return classes[name](model.eval(), tokenizer, max_length=max_length, stride=stride, batch_size=batch_size)


def _device(device) -> torch.device:
    if isinstance(device, bool):
        raise ValueError(f"device must be -1, a CUDA index, a name or a torch.device, got {device!r}")
    if isinstance(device, int):
        return torch.device("cpu") if device < 0 else torch.device("cuda", device)
    try:
        return torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {device!r}; expected -1, a CUDA index, 'cpu', 'cuda', 'cuda:N' or a "
                         "torch.device") from None


class Pipeline:
    """A model, its tokenizer and the window settings; call it on a text or a list of texts."""

    task: str = ""

    def __init__(self, model, tokenizer, *, max_length: int | None = None, stride: int | None = None,
                 batch_size: int = 8):
        limit = position_limit(model.config)
        if max_length is None:
            max_length = limit
        if isinstance(max_length, bool) or not isinstance(max_length, int) or not 3 <= max_length <= limit:
            raise ValueError(f"max_length must be an int in [3, {limit}] (the model's positions), got {max_length!r}")
        if stride is not None and (isinstance(stride, bool) or not isinstance(stride, int) or stride < 0):
            raise ValueError(f"stride must be a non-negative int, got {stride!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if tokenizer.vocab_size > model.config.vocab_size:
            raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids but the model only {model.config.vocab_size}")
        self.model, self.tokenizer = model, tokenizer
        self.max_length, self.stride, self.batch_size = max_length, stride, batch_size

    def __call__(self, inputs, **kwargs):
        if isinstance(inputs, str):
            return self._one(inputs, **kwargs)
        if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(t, str) for t in inputs):
            return [self._one(t, **kwargs) for t in inputs]
        raise ValueError(f"the {self.task} pipeline takes a str or a non-empty list of str, got {type(inputs).__name__}")

    def _one(self, text: str, **kwargs):  # pragma: no cover - every task overrides it
        raise NotImplementedError

    # -- windows ------------------------------------------------------------------------------------

    def _windows(self, content: list[int], prefix: list[int] | None = None) -> list[tuple[list[int], int, int, int]]:
        """``(row ids, start, stop, offset)`` per window of ``content``: ``[CLS] (prefix [SEP]) content[start:stop]
        [SEP]``, ``offset`` being the row position of ``content[start]``."""
        tok = self.tokenizer
        head = [tok.cls_token_id] + ([*prefix, tok.sep_token_id] if prefix is not None else [])
        size = self.max_length - len(head) - 1
        if size < 1:
            raise ValueError(f"the question takes {len(prefix or [])} tokens, leaving no room for the context within "
                             f"max_length={self.max_length}")
        stride = self.stride if self.stride is not None else size // 4
        return [(head + content[s:e] + [tok.sep_token_id], s, e, len(head))
                for s, e in window_spans(len(content), size, stride)]

    @staticmethod
    def _central(windows, n: int) -> list[int]:
        """For each content position, the window where it is most central (the first on a tie)."""
        out = []
        for j in range(n):
            out.append(max((w for w, (_, s, e, _) in enumerate(windows) if s <= j < e),
                           key=lambda w: (min(j - windows[w][1], windows[w][2] - 1 - j), -w)))
        return out

    def _run(self, rows: list[list[int]], fn) -> list[torch.Tensor]:
        """``fn(input_ids, attention_mask)`` (a tensor with one entry per row) on batches of ``batch_size``
        rows; returns the per-row entries in row order, on the model's device. The windows of one input
        all have the same length, so no row is padded (padding would change block-sparse layouts)."""
        out = []
        device = next(self.model.parameters()).device
        for i in range(0, len(rows), self.batch_size):
            batch = self.tokenizer.pad({"input_ids": rows[i:i + self.batch_size]}, return_tensors="pt")
            with torch.inference_mode():
                out.extend(fn(batch["input_ids"].to(device), batch["attention_mask"].to(device)).unbind(0))
        return out

    def _content(self, text: str):
        return self.tokenizer.backend.encode(text, add_special_tokens=False)


class FillMaskPipeline(Pipeline):
    task = "fill-mask"

    def _one(self, text: str, top_k: int = 5):
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive int, got {top_k!r}")
        tok = self.tokenizer
        content = list(self._content(text).ids)
        masks = [j for j, t in enumerate(content) if t == tok.mask_token_id]
        if not masks:
            raise ValueError(f"fill-mask input has no {tok.mask_token} token: {text[:60]!r}")
        windows = self._windows(content)
        central = self._central(windows, len(content))
        used = sorted({central[j] for j in masks})
        hidden = dict(zip(used, self._run([windows[w][0] for w in used], lambda ids, mask: self.model.bert(
            input_ids=ids, attention_mask=mask).last_hidden_state)))
        logits = []
        for j in masks:  # the MLM head at the masks only (not rows x length x vocab)
            _, start, _, offset = windows[central[j]]
            with torch.inference_mode():
                logits.append(self.model.cls(hidden[central[j]][offset + j - start]).float().cpu())
        k = min(top_k, self.model.config.vocab_size)
        full = [tok.cls_token_id, *content, tok.sep_token_id]
        single = len(masks) == 1
        result = []
        for j, lg in zip(masks, logits):
            scores, ids = lg.softmax(-1).topk(k)
            row = []
            for score, token_id in zip(scores.tolist(), ids.tolist()):
                filled = list(full)
                filled[j + 1] = token_id
                filled = [t for t in filled if t != tok.pad_token_id]
                row.append({"score": score, "token": token_id, "token_str": tok.decode([token_id]),
                            "sequence": tok.decode(filled, skip_special_tokens=single)})
            result.append(row)
        return result[0] if single else result


class TextClassificationPipeline(Pipeline):
    task = "text-classification"
    _LEGACY = object()

    def __call__(self, inputs, top_k=_LEGACY, function_to_apply: str | None = None):
        results = super().__call__(inputs, top_k=top_k, function_to_apply=function_to_apply)
        if top_k is self._LEGACY and isinstance(inputs, str):
            return [results]  # transformers: a list even for one text
        return results

    def _one(self, text: str, top_k=_LEGACY, function_to_apply: str | None = None):
        config = self.model.config
        if function_to_apply is None:
            if config.problem_type == "regression":
                function_to_apply = "none"
            elif config.problem_type == "multi_label_classification" or config.num_labels == 1:
                function_to_apply = "sigmoid"
            else:
                function_to_apply = "softmax"
        if function_to_apply not in _FUNCTIONS:
            raise ValueError(f"function_to_apply must be one of {_FUNCTIONS}, got {function_to_apply!r}")
        if top_k is not self._LEGACY and top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)
                                                                 or top_k < 1):
            raise ValueError(f"top_k must be a positive int or None (all labels), got {top_k!r}")
        windows = self._windows(list(self._content(text).ids))
        logits = self._run([w[0] for w in windows], lambda ids, mask: self.model(input_ids=ids, attention_mask=mask).logits)
        mean = torch.stack(logits).double().mean(0).float().cpu()  # the windows' mean, as the bigbird command
        scores = {"softmax": mean.softmax(-1), "sigmoid": mean.sigmoid(), "none": mean}[function_to_apply].tolist()
        labels = [{"label": config.id2label[i], "score": s} for i, s in enumerate(scores)]
        if top_k is self._LEGACY:
            return max(labels, key=lambda d: d["score"])
        labels.sort(key=lambda d: d["score"], reverse=True)
        return labels if top_k is None else labels[:top_k]


class TokenClassificationPipeline(Pipeline):
    task = "token-classification"

    def _one(self, text: str, aggregation_strategy: str = "none", ignore_labels=None):
        if aggregation_strategy is None:
            aggregation_strategy = "none"
        if str(aggregation_strategy).lower() not in AGGREGATION_STRATEGIES:
            raise ValueError(f"aggregation_strategy={aggregation_strategy!r} is not supported; expected one of "
                             f"{AGGREGATION_STRATEGIES} (BigBird's SentencePiece pieces carry no word boundaries for "
                             "'first', 'average' or 'max')")
        ignore = ["O"] if ignore_labels is None else list(ignore_labels)
        tok, id2label = self.tokenizer, self.model.config.id2label
        enc = self._content(text)
        content = list(enc.ids)
        if not content:
            return []
        windows = self._windows(content)
        logits = self._run([w[0] for w in windows], lambda ids, mask: self.model(input_ids=ids, attention_mask=mask).logits)
        entities = []
        for j, w in enumerate(self._central(windows, len(content))):
            _, s, _, off = windows[w]
            probs = logits[w][off + j - s].double().softmax(-1).cpu()
            best = int(probs.argmax())
            start, end = enc.offsets[j]
            word = text[start:end] if content[j] == tok.unk_token_id else tok.convert_ids_to_tokens(content[j])
            entities.append({"entity": id2label[best], "score": float(probs[best]), "index": j + 1, "word": word,
                             "start": start, "end": end})
        if str(aggregation_strategy).lower() == "simple":
            entities = self._group(entities)
        return [e for e in entities if e.get("entity", e.get("entity_group")) not in ignore]

    def _group(self, entities: list[dict]) -> list[dict]:
        """Adjacent tokens of one entity joined (a ``B-`` tag starts a new group), as transformers' "simple"."""
        def tag(name):
            return ("B", name[2:]) if name.startswith("B-") else ("I", name[2:] if name.startswith("I-") else name)

        groups: list[list[dict]] = []
        for e in entities:
            bi, t = tag(e["entity"])
            if groups and t == tag(groups[-1][-1]["entity"])[1] and bi != "B":
                groups[-1].append(e)
            else:
                groups.append([e])
        return [{"entity_group": g[0]["entity"].split("-", 1)[-1], "score": sum(e["score"] for e in g) / len(g),
                 "word": self.tokenizer.convert_tokens_to_string([e["word"] for e in g]),
                 "start": g[0]["start"], "end": g[-1]["end"]} for g in groups]


class QuestionAnsweringPipeline(Pipeline):
    task = "question-answering"

    def __call__(self, *args, question=None, context=None, top_k: int = 1, max_answer_len: int = 15):
        if args and (question is not None or context is not None):
            raise ValueError("pass question= and context=, or {'question', 'context'} dicts, not both")
        if not args:
            if not isinstance(question, str) or not isinstance(context, str):
                raise ValueError("question-answering needs question= and context= strings (or {'question', "
                                 "'context'} dicts)")
            return self._one(question, context, top_k, max_answer_len)
        if len(args) != 1:
            raise ValueError("question-answering takes one positional argument: a {'question', 'context'} dict or a "
                             "list of them")
        items = args[0]
        single = isinstance(items, dict)
        items = [items] if single else items
        if not isinstance(items, (list, tuple)) or not items or not all(
                isinstance(d, dict) and isinstance(d.get("question"), str) and isinstance(d.get("context"), str)
                for d in items):
            raise ValueError("question-answering inputs must be {'question': str, 'context': str} dicts")
        out = [self._one(d["question"], d["context"], top_k, max_answer_len) for d in items]
        return out[0] if single else out

    def _one(self, question: str, context: str, top_k: int, max_answer_len: int):
        for name, v in (("top_k", top_k), ("max_answer_len", max_answer_len)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not question.strip():
            raise ValueError("question is empty")
        enc = self._content(context)
        content = list(enc.ids)
        if not content:
            raise ValueError("context is empty")
        windows = self._windows(content, list(self._content(question).ids))

        def start_end(ids, mask):
            out = self.model(input_ids=ids, attention_mask=mask)
            return torch.stack([out.start_logits, out.end_logits], dim=1)  # (B, 2, L)

        candidates = []  # (score, first token, last token)
        for (_, s, e, off), logits in zip(windows, self._run([w[0] for w in windows], start_end)):
            n = e - s
            # softmax over [CLS] and the context tokens of the window (transformers 4.x), [CLS] then dropped
            allowed = torch.cat([logits[:, :1], logits[:, off:off + n]], dim=1).double().cpu()
            p_start, p_end = allowed.softmax(-1)[:, 1:].unbind(0)
            for d in range(min(max_answer_len, n)):
                scores = p_start[: n - d] * p_end[d:]
                best = scores.topk(min(top_k, scores.numel()))
                candidates += [(float(v), s + i, s + i + d) for v, i in zip(best.values.tolist(), best.indices.tolist())]
        candidates.sort(key=lambda c: -c[0])
        answers, seen = [], set()
        for score, i, j in candidates:
            if (i, j) in seen:
                continue
            seen.add((i, j))
            start, end = enc.offsets[i][0], enc.offsets[j][1]
            while start < end and context[start].isspace():  # a piece's offsets include the space before it
                start += 1
            answers.append({"score": score, "start": start, "end": end, "answer": context[start:end]})
            if len(answers) == top_k:
                break
        return answers[0] if top_k == 1 else answers


class FeatureExtractionPipeline(Pipeline):
    task = "feature-extraction"

    def _one(self, text: str, return_tensors: bool = False):
        content = list(self._content(text).ids)
        windows = self._windows(content)
        hidden = self._run([w[0] for w in windows],
                           lambda ids, mask: self.model(input_ids=ids, attention_mask=mask).last_hidden_state)
        rows = [hidden[0][0]]  # [CLS] of the first window
        for j, w in enumerate(self._central(windows, len(content))):
            _, s, _, off = windows[w]
            rows.append(hidden[w][off + j - s])
        _, last_start, last_stop, last_off = windows[-1]
        rows.append(hidden[-1][last_off + last_stop - last_start])  # [SEP] of the last window
        out = torch.stack(rows)[None].float().cpu()  # (1, tokens, hidden)
        return out if return_tensors else out.tolist()

