"""The ``sdpa`` baseline: dense ``scaled_dot_product_attention`` with the additive bias ``log(count)``.

Builds a ``(B, H, S, S)`` bias, so it is a baseline for benchmarks and a second oracle, never an
``auto`` choice.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def dense_bias(layout, attention_mask, dtype) -> torch.Tensor:
    """``(B or 1, H, S, S)`` additive bias: ``log(count)`` per block pair, ``-inf`` for padded keys.

    Rows of padded queries get a zero bias so no row is empty (their outputs are zeroed afterwards).
    """
    bias = layout.dense_log_counts(dtype)[None]  # (1, H, S, S)
    if attention_mask is not None:
        bias = bias.masked_fill(~attention_mask[:, None, None, :], float("-inf"))  # (B, H, S, S)
        bias = bias.masked_fill(~attention_mask[:, None, :, None], 0.0)
    return bias


def zero_padding(attention_mask, *tensors):
    """``tensors (B, H, S, D)`` with every padded position (mask False) set to 0 by a select.

    A select, unlike a multiply by 0, also clears NaN and Inf: whatever padded queries, keys and
    values hold cannot reach real rows, padded rows or any gradient. ``attention_mask`` None: unchanged.
    """
    if attention_mask is None:
        return tensors
    real = attention_mask[:, None, :, None]  # (B, 1, S, 1)
    return tuple(torch.where(real, t, torch.zeros((), dtype=t.dtype, device=t.device)) for t in tensors)


class SdpaBackend:
    name = "sdpa"
    capabilities = {"dtypes": _DTYPES, "head_dims": "any", "block_sizes": "any"}  # for `bigbird info`
    supports_gqa = True  # k, v with fewer heads than q: SDPA's enable_gqa

    def not_supported_reasons(self, inputs) -> list[str]:
        if inputs.dtype not in _DTYPES:
            return [f"dtype {inputs.dtype} not supported"]
        return []

    def forward(self, q, k, v, layout, attention_mask, scale, *, need_lse, deterministic):
        D = q.shape[-1]
        scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
        q, k, v = zero_padding(attention_mask, q, k, v)
        bias = dense_bias(layout, attention_mask, q.dtype)
        B, H, S, _ = q.shape
        Hkv = k.shape[1]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale, enable_gqa=Hkv != H)
        lse = None
        if need_lse:
            # query heads grouped per key head: (B, Hkv, H/Hkv * S, D) @ (B, Hkv, D, S)
            qg = q.float().reshape(B, Hkv, (H // Hkv) * S, D)
            s = torch.matmul(qg, k.float().transpose(-1, -2)).reshape(B, H, S, S) * scale + bias.float()
            lse = torch.logsumexp(s, dim=-1)  # (B, H, S)
        if attention_mask is not None:
            (out,) = zero_padding(attention_mask, out)
            if lse is not None:
                lse = lse.masked_fill(~attention_mask[:, None, :], float("-inf"))
        return out, lse


BACKEND = SdpaBackend()
