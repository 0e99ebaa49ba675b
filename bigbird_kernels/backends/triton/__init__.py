"""The ``triton`` backend: fused block-sparse attention kernels written in Triton.

CUDA tensors (or CPU tensors under ``TRITON_INTERPRET=1``, the interpreter the tests use); fp16, bf16,
fp32; head dims 32/64/128; block sizes 16/32/64/128. The forward and backward go through the
registered op ``bigbird_kernels::triton_attn_fwd`` (see :mod:`.ops`), so autograd and
``torch.compile(fullgraph=True)`` see one op. Results are deterministic run to run whatever
``deterministic`` says (no atomics; split reductions are summed in a fixed order).
"""

from __future__ import annotations

import os

import torch

from . import ops as _ops  # registers bigbird_kernels::triton_attn_fwd/bwd; needs no triton

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
SUPPORTED_HEAD_DIMS = (32, 64, 128)
SUPPORTED_BLOCK_SIZES = (16, 32, 64, 128)

__all__ = ["BACKEND", "TritonBackend"]


def _triton_error() -> str | None:
    try:
        from . import launch  # noqa: F401  (imports triton and compiles nothing)
    except Exception as e:  # pragma: no cover - triton is a dependency, but be explicit
        return f"triton is not importable ({type(e).__name__}: {e})"
    return None


_TRITON_ERROR = _triton_error()


class TritonBackend:
    name = "triton"
    capabilities = {"dtypes": SUPPORTED_DTYPES, "head_dims": SUPPORTED_HEAD_DIMS,  # for `bigbird info`
                    "block_sizes": SUPPORTED_BLOCK_SIZES}

    def not_supported_reasons(self, inputs) -> list[str]:
        reasons = []
        if _TRITON_ERROR:
            reasons.append(_TRITON_ERROR)
        interpret = os.environ.get("TRITON_INTERPRET", "") == "1"
        if inputs.device.type != "cuda" and not interpret:
            reasons.append(f"needs a CUDA device, got {inputs.device.type} (CPU only under TRITON_INTERPRET=1)")
        if inputs.dtype not in SUPPORTED_DTYPES:
            reasons.append(f"dtype {inputs.dtype} not supported (float16, bfloat16, float32)")
        if inputs.head_dim not in SUPPORTED_HEAD_DIMS:
            reasons.append(f"head_dim {inputs.head_dim} not supported ({', '.join(map(str, SUPPORTED_HEAD_DIMS))})")
        if inputs.block_size not in SUPPORTED_BLOCK_SIZES:
            reasons.append(
                f"block_size {inputs.block_size} not supported ({', '.join(map(str, SUPPORTED_BLOCK_SIZES))})"
            )
        return reasons

    def forward(self, q, k, v, layout, attention_mask, scale, *, need_lse, deterministic):
        out, lse = _ops.triton_attention(q, k, v, layout, attention_mask, scale)
        return out, (lse if need_lse else None)


BACKEND = TritonBackend()
