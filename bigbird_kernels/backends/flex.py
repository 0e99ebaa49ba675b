"""The ``flex`` baseline: PyTorch FlexAttention with the same block structure as the layout.

A ``BlockMask`` lists, for every query block, the distinct key blocks its row reads (every key block
for global rows), all as "full" blocks, with a ``mask_mod`` saying the same thing for the eager path;
a ``score_mod`` adds ``log(count)`` to the logits of key blocks a row lists more than
once and ``-inf`` for padded keys. Padded positions of q, k and v are zeroed by a select first (NaN
or Inf there cannot leak); padded query rows are zeroed afterwards (lse ``-inf``).

It is a benchmark peer chosen only by name, never by ``auto``. Like every FlexAttention block mask,
it holds ``(H, num_blocks, num_blocks)`` tables (here the block indices and the log-count bias), so
its memory is quadratic in the number of blocks. On CUDA the op is ``torch.compile`` d once per
process (the way FlexAttention is meant to run); elsewhere it runs eagerly (PyTorch's reference
implementation, for tests).
"""

from __future__ import annotations

import math
import weakref

import torch

from .sdpa import zero_padding

try:
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    _IMPORT_ERROR = None
except Exception as e:  # older torch
    BlockMask = flex_attention = None
    _IMPORT_ERROR = f"torch.nn.attention.flex_attention is unavailable ({type(e).__name__}: {e})"

try:
    from torch.nn.attention.flex_attention import AuxRequest
except Exception:  # torch < 2.9: return_lse
    AuxRequest = None

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_compiled = None
_cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _flex_fn(device: torch.device):
    global _compiled
    if device.type != "cuda":
        return flex_attention
    if _compiled is None:
        _compiled = torch.compile(flex_attention, dynamic=False)
    return _compiled


def _block_structure(layout):
    """(BlockMask, log-count bias (H, nb, nb) fp32), cached per layout."""
    hit = _cache.get(layout)
    if hit is not None:
        return hit
    H, nb, bs = layout.num_heads, layout.num_blocks, layout.block_size
    counts = layout.to_dense()  # (H, nb, nb), global rows all 1
    present = counts > 0
    num = present.sum(-1, dtype=torch.int32)  # (H, nb)
    idx = torch.sort(present.to(torch.int8), dim=-1, descending=True, stable=True).indices.to(torch.int32)
    S = nb * bs

    def listed(b, h, q_idx, kv_idx):
        # compiled kernels skip "full" blocks' mask_mod (every listed block is full here); the eager
        # implementation ignores the block lists and applies mask_mod everywhere
        return present[h, q_idx // bs, kv_idx // bs]

    block_mask = BlockMask.from_kv_blocks(
        torch.zeros_like(num)[None],  # no partial blocks
        idx[None].contiguous(),
        num[None].contiguous(),
        idx[None].contiguous(),
        BLOCK_SIZE=bs,
        mask_mod=listed,
        seq_lengths=(S, S),
    )
    bias = torch.log(counts.to(torch.float32)).masked_fill(~present, 0.0)  # unlisted blocks are skipped anyway
    _cache[layout] = (block_mask, bias)
    return block_mask, bias


class FlexBackend:
    name = "flex"

    def not_supported_reasons(self, inputs) -> list[str]:
        reasons = []
        if _IMPORT_ERROR:
            reasons.append(_IMPORT_ERROR)
        if inputs.dtype not in _DTYPES:
            reasons.append(f"dtype {inputs.dtype} not supported (float16, bfloat16, float32)")
        if inputs.device.type == "cpu" and inputs.requires_grad:
            reasons.append("FlexAttention has no backward on CPU")
        if inputs.device.type == "cuda":
            D = inputs.head_dim
            if D < 16 or D & (D - 1):
                reasons.append(f"head_dim {D} not supported by the compiled FlexAttention kernels (power of 2 >= 16)")
            if inputs.block_size < 16 or inputs.block_size & (inputs.block_size - 1):
                reasons.append(f"block_size {inputs.block_size} not supported (power of 2 >= 16)")
        return reasons

    def forward(self, q, k, v, layout, attention_mask, scale, *, need_lse, deterministic):
        B, H, S, D = q.shape
        bs = layout.block_size
        scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
        block_mask, bias = _block_structure(layout)
        q, k, v = zero_padding(attention_mask, q, k, v)  # padded NaN/Inf cannot reach real rows

        if attention_mask is None:
            def score_mod(score, b, h, q_idx, kv_idx):
                return score + bias[h, q_idx // bs, kv_idx // bs]
        else:
            key_ok = attention_mask

            def score_mod(score, b, h, q_idx, kv_idx):
                s = score + bias[h, q_idx // bs, kv_idx // bs]
                return torch.where(key_ok[b, kv_idx], s, float("-inf"))

        kwargs = {}
        if q.device.type == "cuda" and bs < 128:
            kwargs["kernel_options"] = {"BLOCK_M": bs, "BLOCK_N": bs}
        fn = _flex_fn(q.device)
        if AuxRequest is not None:
            out, aux = fn(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale,
                          return_aux=AuxRequest(lse=True), **kwargs)
            lse = aux.lse
        else:  # pragma: no cover - older torch
            out, lse = fn(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale, return_lse=True, **kwargs)
        lse = lse.float()
        if attention_mask is not None:
            # rows with no valid key: 0 and -inf (whatever the kernel did); padded query rows likewise
            has_key = torch.isfinite(lse)
            q_ok = attention_mask[:, None, :] & has_key
            out = torch.where(q_ok[..., None], out, torch.zeros((), dtype=out.dtype, device=out.device))
            lse = lse.masked_fill(~q_ok, float("-inf"))
        return out, (lse if need_lse else None)


BACKEND = FlexBackend()
