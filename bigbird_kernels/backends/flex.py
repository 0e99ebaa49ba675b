"""The ``flex`` baseline: PyTorch FlexAttention with the same block structure as the layout.

The layout's own ``BlockMask`` (:meth:`~bigbird_kernels.layout.BigBirdLayout.to_block_mask`: the
distinct key blocks of every row, all "full" blocks) and ``score_mod``
(:meth:`~bigbird_kernels.layout.BigBirdLayout.flex_score_mod`: ``log(count)`` for key blocks a row
lists more than once, ``-inf`` for padded keys). Grouped-query attention is native
(``enable_gqa``). Padded positions of q, k and v are zeroed by a select first (NaN
or Inf there cannot leak); padded query rows are zeroed afterwards (lse ``-inf``).

It is a benchmark peer chosen only by name, never by ``auto``. Like every FlexAttention block mask,
it holds ``(H, num_blocks, num_blocks)`` tables (here the block indices and the log-count bias), so
its memory is quadratic in the number of blocks. On CUDA the op is ``torch.compile`` d once per
process (the way FlexAttention is meant to run); elsewhere it runs eagerly (PyTorch's reference
implementation, for tests).
"""

from __future__ import annotations

import math

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


def _flex_fn(device: torch.device):
    global _compiled
    if device.type != "cuda":
        return flex_attention
    if _compiled is None:
        _compiled = torch.compile(flex_attention, dynamic=False)
    return _compiled


class FlexBackend:
    name = "flex"
    capabilities = {"dtypes": _DTYPES, "head_dims": "any on CPU; powers of 2 >= 16 on CUDA",
                    "block_sizes": "any on CPU; powers of 2 >= 16 on CUDA"}  # for `bigbird info`
    supports_gqa = True  # k, v with fewer heads than q: FlexAttention's enable_gqa

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
        block_mask = layout.to_block_mask()
        score_mod = layout.flex_score_mod(attention_mask)
        q, k, v = zero_padding(attention_mask, q, k, v)  # padded NaN/Inf cannot reach real rows

        kwargs = {"enable_gqa": True} if k.shape[1] != H else {}
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
