"""Text generation with the key/value cache: greedy decoding and sampling (temperature, top-k, top-p).

>>> model = BigBirdForCausalLM.from_pretrained(path)
>>> out = model.generate(input_ids, attention_mask=mask, max_new_tokens=20)                  # greedy
>>> out = model.generate(input_ids, attention_mask=mask, max_new_tokens=20, do_sample=True,
...                      temperature=0.8, top_k=50, top_p=0.95, seed=0)                    # reproducible

Semantics follow ``transformers``' ``generate``: batched prompts are **left**-padded (the mask says
where), the position ids of a prompt come from its mask (``cumsum(mask) - 1``, pads at 0) and
continue by one per new token; a row that produced an end-of-sequence token is finished and gets
``pad_token_id`` from then on; generation stops when every row is finished or after
``max_new_tokens`` tokens. The result is the prompt followed by the new tokens, ``(B, n + k)``.
Sampling applies temperature, then top-k, then top-p (nucleus: the smallest set of most probable
tokens whose probability reaches ``top_p``), then draws from the softmax with ``generator`` (or a
fresh generator seeded with ``seed``), so a seed reproduces a run on the same device.
"""

from __future__ import annotations

import torch

__all__ = ["GenerationMixin", "next_tokens", "UNSET"]

UNSET = object()  # default of eos_token_id / pad_token_id: the checkpoint's value (None means "none")


def next_tokens(logits: torch.Tensor, *, do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick one token per row from next-token ``logits (B, V)``; returns ``(B,)`` int64.

    Greedy (``do_sample=False``): the argmax. Sampling: ``logits / temperature``, keep the ``top_k``
    largest (ties at the k-th value kept), keep the nucleus of probability ``top_p``, draw.
    """
    if not do_sample:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # probability of the strictly more probable tokens
        drop = torch.zeros_like(before, dtype=torch.bool).scatter(-1, order, before >= top_p)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def _eos_list(eos_token_id) -> list[int]:
    if eos_token_id is None:
        return []
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ValueError(f"eos_token_id must be an int or a list of ints, got {eos_token_id!r}")
    return ids


class GenerationMixin:
    """``generate()`` for a model with ``_generation_step(ids, mask, position_ids, cache, model_kwargs)``
    returning ``(next-token logits (B, V), cache)`` and a ``config`` with ``max_position_embeddings``,
    ``vocab_size``, ``eos_token_id`` and ``pad_token_id``."""

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                 max_new_tokens: int = 20, do_sample: bool = False, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, eos_token_id=UNSET, pad_token_id=UNSET,
                 generator: torch.Generator | None = None, seed: int | None = None, **model_kwargs) -> torch.Tensor:
        """Continue ``input_ids (B, n)`` (left-padded as ``attention_mask (B, n)`` says) by up to ``max_new_tokens``.

        Args:
            eos_token_id: an id or a list of ids that finish a row (default ``config.eos_token_id``;
                None or ``[]``: never finish early).
            pad_token_id: written after a row finished (default ``config.pad_token_id``, else the first eos).
            generator / seed: the random source of sampling (``seed`` makes a fresh ``torch.Generator``
                on the model's device); unused when greedy.
            **model_kwargs: passed to every forward (e.g. ``encoder_hidden_states`` and
                ``encoder_attention_mask`` for a decoder with cross-attention).

        Returns:
            ``(B, n + k)`` int64: the prompts and ``k <= max_new_tokens`` new tokens.

        Raises:
            ValueError: bad sampling settings, right-padded prompts, or ``n + max_new_tokens`` beyond
                ``max_position_embeddings``.
        """
        c = self.config
        eos = _eos_list(c.eos_token_id if eos_token_id is UNSET else eos_token_id)
        pad = c.pad_token_id if pad_token_id is UNSET else pad_token_id
        if pad is None:
            pad = eos[0] if eos else 0
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be a non-empty (batch, seq_len) tensor, got "
                             f"{tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__}")
        B, n = input_ids.shape
        _check_settings(max_new_tokens, do_sample, temperature, top_k, top_p)
        if n + max_new_tokens > c.max_position_embeddings:
            raise ValueError(f"generation past max_position_embeddings={c.max_position_embeddings}: prompt length {n} "
                             f"+ max_new_tokens {max_new_tokens} = {n + max_new_tokens}")
        device = input_ids.device
        if attention_mask is None:
            attention_mask = torch.ones(B, n, dtype=torch.long, device=device)
        elif not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != (B, n):
            raise ValueError(f"attention_mask must have the shape of input_ids {(B, n)}")
        attention_mask = (attention_mask != 0).long()
        if not bool(attention_mask[:, -1].all()):
            raise ValueError("generate needs left-padded prompts: some attention_mask row ends with padding")
        if do_sample and generator is None and seed is not None:
            generator = torch.Generator(device=device).manual_seed(seed)

        position_ids = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
        eos_t = torch.tensor(eos, dtype=torch.long, device=device)
        unfinished = torch.ones(B, dtype=torch.bool, device=device)
        sequences, step_ids, cache = input_ids, input_ids, None
        for _ in range(max_new_tokens):
            logits, cache = self._generation_step(step_ids, attention_mask, position_ids, cache, model_kwargs)
            tokens = next_tokens(logits, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
                                 generator=generator)
            tokens = torch.where(unfinished, tokens, torch.full_like(tokens, pad))
            sequences = torch.cat([sequences, tokens[:, None]], dim=1)
            if eos:
                unfinished &= ~torch.isin(tokens, eos_t)
                if not bool(unfinished.any()):
                    break
            step_ids = tokens[:, None]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(B, 1)], dim=1)
            position_ids = position_ids[:, -1:] + 1
        return sequences


def _check_settings(max_new_tokens, do_sample, temperature, top_k, top_p) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if not do_sample:
        return
    if not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {top_k!r}")
    if top_p is not None and (not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise ValueError(f"top_p must lie in (0, 1], got {top_p!r}")
