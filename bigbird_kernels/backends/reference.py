"""The ``reference`` backend: plain PyTorch on any device (:mod:`bigbird_kernels.reference`)."""

from __future__ import annotations

import torch

from ..reference import block_sparse_attention_ref

_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class ReferenceBackend:
    name = "reference"
    capabilities = {"dtypes": _DTYPES, "head_dims": "any", "block_sizes": "any"}  # for `bigbird info`

    def not_supported_reasons(self, inputs) -> list[str]:
        if inputs.dtype not in _DTYPES:
            return [f"dtype {inputs.dtype} not supported (float32, float16, bfloat16, float64)"]
        return []

    def forward(self, q, k, v, layout, attention_mask, scale, *, need_lse, deterministic):
        out, lse = block_sparse_attention_ref(q, k, v, layout, attention_mask, scale, need_lse=need_lse)
        return out, (lse if need_lse else None)


BACKEND = ReferenceBackend()
