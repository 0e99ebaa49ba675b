"""``torch.library`` registrations of the Triton backend's ops, so ``torch.compile`` sees one op each.

* ``bigbird_kernels::triton_attn_fwd(q, k, v, attention_mask, <plan tables>, scale, block_size,
  fwd_splits, bwd_splits) -> (out, lse)``
* ``bigbird_kernels::triton_attn_bwd(dout, grad_lse, q, k, v, out, lse, attention_mask, <plan tables>,
  scale, block_size, fwd_splits, bwd_splits) -> (dq, dk, dv)``

Both are ``torch.library.custom_op`` s with fake (meta) implementations; the forward op has autograd
registered (``register_autograd``) that calls the backward op. The plan tables come from
:func:`bigbird_kernels.backends.triton.launch.build_plan`; :func:`triton_attention` does that for a
layout and calls the op. The kernels are imported lazily, so importing this module needs no Triton.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

__all__ = ["triton_attention", "triton_attn_fwd", "triton_attn_bwd"]


@torch.library.custom_op("bigbird_kernels::triton_attn_fwd", mutates_args=())
def triton_attn_fwd(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attention_mask: Optional[Tensor],
    fwd_items: Tensor,
    fwd_idx: Tensor,
    fwd_cnt: Tensor,
    bwd_items: Tensor,
    bwd_idx: Tensor,
    bwd_cnt: Tensor,
    glob: Tensor,
    scale: float,
    block_size: int,
    fwd_splits: int,
    bwd_splits: int,
) -> tuple[Tensor, Tensor]:
    from .launch import _bigbird_attn_fwd

    return _bigbird_attn_fwd(q, k, v, attention_mask, fwd_items, fwd_idx, fwd_cnt, glob, scale, block_size, fwd_splits)


@triton_attn_fwd.register_fake
def _(q, k, v, attention_mask, fwd_items, fwd_idx, fwd_cnt, bwd_items, bwd_idx, bwd_cnt, glob, scale, block_size,
      fwd_splits, bwd_splits):
    B, H, S, D = q.shape
    return q.new_empty((B, H, S, D)), q.new_empty((B, H, S), dtype=torch.float32)


@torch.library.custom_op("bigbird_kernels::triton_attn_bwd", mutates_args=())
def triton_attn_bwd(
    dout: Tensor,
    grad_lse: Optional[Tensor],
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    attention_mask: Optional[Tensor],
    fwd_items: Tensor,
    fwd_idx: Tensor,
    fwd_cnt: Tensor,
    bwd_items: Tensor,
    bwd_idx: Tensor,
    bwd_cnt: Tensor,
    glob: Tensor,
    scale: float,
    block_size: int,
    fwd_splits: int,
    bwd_splits: int,
) -> tuple[Tensor, Tensor, Tensor]:
    from .launch import _bigbird_attn_bwd

    return _bigbird_attn_bwd(dout, grad_lse, q, k, v, out, lse, attention_mask, fwd_items, fwd_idx, fwd_cnt,
                             bwd_items, bwd_idx, bwd_cnt, glob, scale, block_size, fwd_splits, bwd_splits)


@triton_attn_bwd.register_fake
def _(dout, grad_lse, q, k, v, out, lse, attention_mask, fwd_items, fwd_idx, fwd_cnt, bwd_items, bwd_idx, bwd_cnt,
      glob, scale, block_size, fwd_splits, bwd_splits):
    B, H, S, D = q.shape
    return q.new_empty((B, H, S, D)), q.new_empty((B, H, S, D)), q.new_empty((B, H, S, D))


_N_TABLES = 7  # fwd_items, fwd_idx, fwd_cnt, bwd_items, bwd_idx, bwd_cnt, glob


def _setup_context(ctx, inputs, output):
    q, k, v, attention_mask = inputs[:4]
    tables = inputs[4 : 4 + _N_TABLES]
    scale, block_size, fwd_splits, bwd_splits = inputs[4 + _N_TABLES :]
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, attention_mask, *tables)
    ctx.args = (scale, block_size, fwd_splits, bwd_splits)


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, attention_mask, *tables = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv = torch.ops.bigbird_kernels.triton_attn_bwd(
        grad_out, grad_lse, q, k, v, out, lse, attention_mask, *tables, *ctx.args
    )
    return (dq, dk, dv) + (None,) * (1 + _N_TABLES + 4)


triton_attn_fwd.register_autograd(_backward, setup_context=_setup_context)


def triton_attention(q, k, v, layout, attention_mask=None, scale=None):
    """``(out, lse)`` of the Triton kernels for ``layout``, through the registered op (differentiable)."""
    from .launch import get_plan

    plan = get_plan(layout)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return torch.ops.bigbird_kernels.triton_attn_fwd(
        q, k, v, attention_mask, *plan.tensors(), scale, layout.block_size, plan.fwd_splits, plan.bwd_splits
    )
