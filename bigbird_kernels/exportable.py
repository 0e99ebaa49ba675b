"""Block-sparse attention of the ``hf`` eval layout with the layout computed from the length: traceable.

In eval, Hugging Face's layout draws no random block: every random slot reads block 0 again. A row's
key blocks are then arithmetic in the number of blocks ``nb`` (the global blocks, the window clipped
to ``[0, nb)`` minus the global blocks, and ``r`` copies of block 0), so this function builds them
from ``q.shape[2]`` with tensor ops only. Under ``torch.export`` the length stays symbolic and one
program serves every length; :class:`~bigbird_kernels.layout.BigBirdLayout`, whose structure is host
ints and tuples, cannot.

Same results as :func:`bigbird_kernels.block_sparse_attention` on the layout
``get_layout("hf", training=False, ...)`` up to rounding: as in the reference, each distinct key block
is gathered once, with the bias ``log c`` when the layout lists it ``c`` times. Memory is linear in the
length.
"""

from __future__ import annotations

import math

import torch

from .layout import check_window, global_block_ids

__all__ = ["hf_eval_block_sparse_attention"]

_MASKED = -1e30  # as the reference: finite, so a row without any key stays finite before it is zeroed


def hf_eval_block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    block_size: int,
    num_random_blocks: int,
    window: int = 3,
    global_blocks=(0, -1),
    scale: float | None = None,
) -> torch.Tensor:
    """Attention over the ``hf`` eval layout of ``S // block_size`` blocks.

    Args:
        q, k, v: ``(B, H, S, D)``, ``S`` a multiple of ``block_size`` (symbolic under export).
        attention_mask: ``(B, S)`` bool, True = real token, or None.
        block_size, num_random_blocks, window, global_blocks: the layout's parameters (as
            :func:`~bigbird_kernels.layout.hf_layout`); the global blocks, negative ids counted from
            the end, must be distinct blocks at every length traced.
        scale: multiplies ``q @ k^T``, default ``1 / sqrt(D)``.

    Returns:
        ``out (B, H, S, D)`` in ``q.dtype``; rows of padded queries are 0. Scores and softmax run in
        fp32 (fp64 for fp64 inputs).
    """
    B, H, S, D = q.shape
    in_dtype = q.dtype
    bs, r, half = block_size, num_random_blocks, check_window(window) // 2
    nb = S // bs
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    dt = torch.float64 if q.dtype == torch.float64 else torch.float32
    gids = [g + nb if g < 0 else g for g in global_block_ids(global_blocks)]

    key_bias = torch.zeros(B, 1, S, dtype=dt, device=q.device)  # 0, or _MASKED on padded keys
    if attention_mask is not None:
        real = attention_mask[:, None, :, None]
        zero = torch.zeros((), dtype=q.dtype, device=q.device)
        # a select: NaN/Inf stored at padded positions cannot reach a real row
        k, v = torch.where(real, k, zero), torch.where(real, v, zero)
        key_bias = key_bias.masked_fill(~attention_mask[:, None, :], _MASKED)
    q, k, v = q.to(dt), k.to(dt), v.to(dt)

    # non-global rows: key slots (global blocks, window offsets, block 0 for the random slots), (nb, W)
    blk = torch.arange(nb, device=q.device)
    is_global = torch.zeros(nb, dtype=torch.bool, device=q.device)
    for g in gids:
        is_global = is_global | (blk == g)
    # The r copies of block 0 are one slot of bias log(r) (exp(s + log r) = r exp(s)), or log(1 + r)
    # more on block 0's global slot when block 0 is global: each distinct block is gathered once.
    zero_slot = next((i for i, g in enumerate(gids) if type(g) is int and g == 0), None)  # a SymInt is never 0
    ids = [torch.full_like(blk, g) for g in gids]
    valid = [torch.ones_like(is_global) for _ in gids]
    log_count = [math.log(1 + r) if i == zero_slot else 0.0 for i in range(len(gids))]
    for o in range(-half, half + 1):
        j = blk + o
        inside = (j >= 0) & (j < nb)
        ids.append(j.clamp(0, nb - 1))
        valid.append(inside & ~is_global[j.clamp(0, nb - 1)])
        log_count.append(0.0)
    if r and zero_slot is None:
        ids.append(torch.zeros_like(blk))
        valid.append(torch.ones_like(is_global))
        log_count.append(math.log(r))
    idx = torch.stack(ids, dim=1)  # (nb, W)
    W = idx.shape[1]
    counts = torch.tensor(log_count, dtype=dt, device=q.device)
    slot_bias = torch.where(torch.stack(valid, dim=1), counts, _MASKED)  # (nb, W)
    bias = slot_bias[None, None, :, :, None] + key_bias.view(B, 1, nb, bs)[:, :, idx]  # (B, 1, nb, W, bs)
    bias = bias.reshape(B, 1, nb, 1, W * bs)
    kg = k.view(B, H, nb, bs, D)[:, :, idx].reshape(B, H, nb, W * bs, D)
    vg = v.view(B, H, nb, bs, D)[:, :, idx].reshape(B, H, nb, W * bs, D)
    s = torch.matmul(q.view(B, H, nb, bs, D), kg.transpose(-1, -2)) * scale + bias  # (B, H, nb, bs, W * bs)
    has_key = (bias > _MASKED / 2).any(dim=-1, keepdim=True)  # (B, 1, nb, 1, 1)
    out = torch.matmul(torch.softmax(s, dim=-1), vg) * has_key  # (B, H, nb, bs, D)

    # global rows: every key, once
    kb_has = (key_bias > _MASKED / 2).any(dim=-1)[:, :, None, None]  # (B, 1, 1, 1)
    for g in gids:
        qg = q.narrow(2, g * bs, bs)  # (B, H, bs, D)
        sg = torch.matmul(qg, k.transpose(-1, -2)) * scale + key_bias[:, :, None, :]
        og = torch.matmul(torch.softmax(sg, dim=-1), v) * kb_has
        out = torch.where((blk == g)[:, None, None], og[:, :, None], out)

    # through 1-D: merging the symbolic block count with the block size directly adds a guard export cannot prove
    out = out.reshape(-1).view(B, H, S, D)
    if attention_mask is not None:
        out = out.masked_fill(~attention_mask[:, None, :, None], 0)
    return out.to(in_dtype)
