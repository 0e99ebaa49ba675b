"""Plain-PyTorch block-sparse attention over a :class:`BigBirdLayout`: the CPU fallback and the test oracle.

Gather-based and vectorised: the key/value blocks listed for a chunk of query blocks are gathered into
``(B, H, rows, width * block_size, D)`` tensors, one softmax runs over each row's concatenation (a block
listed twice contributes twice), and global query blocks attend to the whole sequence. Memory is
linear in ``S``: nothing of size ``S x S`` is built. Differentiable through autograd.
"""

from __future__ import annotations

import math

import torch

from .layout import BigBirdLayout

__all__ = ["block_sparse_attention_ref", "block_sparse_attention_probs", "dense_attention_ref"]

# Elements of one chunk's score tensor; bounds peak memory without hurting batched-matmul efficiency.
_CHUNK_SCORE_ELEMENTS = 1 << 22


# Masked logits get this finite value instead of -inf, so that a row without any key stays finite
# (uniform, then zeroed) in the forward and in autograd; exp() of it underflows to exactly 0.
_MASKED = -1e30


def _masked_softmax(s: torch.Tensor, keep: torch.Tensor | None):
    """Softmax of ``s`` over its last dim where ``keep`` is True, statistics in at least fp32.

    ``s`` (..., M, N) scores, ``keep`` (..., 1 or M, N) bool broadcastable to ``s`` (or None: keep
    all). Returns the probabilities, the masked fp32/fp64 scores and ``has_key`` (..., 1 or M, 1)
    (None without ``keep``); rows without a key are uniform here and must be zeroed by the caller.
    """
    s = s.to(torch.float64 if s.dtype == torch.float64 else torch.float32)
    has_key = None
    if keep is not None:
        s = s.masked_fill(~keep, _MASKED)
        has_key = keep.any(dim=-1, keepdim=True)
    return torch.softmax(s, dim=-1), s, has_key


def _masked_softmax_matmul(s: torch.Tensor, keep: torch.Tensor | None, v: torch.Tensor, need_lse: bool):
    """``softmax(s) @ v`` over the keys ``keep`` allows (see :func:`_masked_softmax`); rows with no key
    give 0. Returns ``out (..., M, D)`` in ``v.dtype`` and, with ``need_lse``, ``lse (..., M)``
    (``-inf`` for rows without a key), else None.
    """
    p, s, has_key = _masked_softmax(s, keep)
    out = torch.matmul(p.to(v.dtype), v)
    lse = torch.logsumexp(s, dim=-1) if need_lse else None
    if has_key is not None:
        out = out * has_key.to(out.dtype)
        if lse is not None:
            lse = lse.masked_fill(~has_key[..., 0], float("-inf"))
    return out, lse


def _compute_dtype(dtype: torch.dtype, device: torch.device, upcast: bool | None) -> torch.dtype:
    if dtype in (torch.float16, torch.bfloat16):
        # CPU half-precision matmuls are two orders of magnitude slower than fp32: always upcast there
        if upcast or (upcast is None and device.type == "cpu"):
            return torch.float32
    return dtype


def block_sparse_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: BigBirdLayout,
    attention_mask: torch.Tensor | None = None,
    scale: float | None = None,
    *,
    upcast: bool | None = None,
    need_lse: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Block-sparse attention by gathering the listed key blocks (the kernel contract's oracle).

    Args:
        q, k, v: ``(B, H, S, D)``, ``S == layout.seq_len``, ``H == layout.num_heads``.
        layout: the key blocks of each query block.
        attention_mask: ``(B, S)`` bool, True = real token, or None (no padding).
        scale: multiplies ``q @ k^T``; default ``1 / sqrt(D)``.
        upcast: compute fp16/bf16 inputs in fp32 (default: on CPU only). ``False`` keeps the matmuls
            in the input precision (softmax statistics are fp32 in every case).
        need_lse: compute ``lse`` (otherwise None is returned in its place).

    Returns:
        ``out (B, H, S, D)`` in the dtype of ``q`` (rows of padded queries and rows without any real
        key are 0) and ``lse (B, H, S)`` fp32 (fp64 for fp64 inputs), the log-sum-exp of each row's
        scaled scores, ``-inf`` for padded queries and rows without a key.
    """
    B, H, S, D = q.shape
    bs, nb = layout.block_size, layout.num_blocks
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    cdt = _compute_dtype(q.dtype, q.device, upcast)
    qc, kc, vc = (t.to(cdt) for t in (q, k, v))
    stat_dtype = torch.float64 if cdt == torch.float64 else torch.float32

    qb = qc.reshape(B, H, nb, bs, D)
    kb = kc.reshape(B, H, nb, bs, D)
    vb = vc.reshape(B, H, nb, bs, D)
    key_ok = None if attention_mask is None else attention_mask.reshape(B, nb, bs)

    out_parts, lse_parts, rows_done = [], [], []

    global_rows, other_rows = layout.global_rows, layout.other_rows

    # global query blocks: a dense row over every key
    if layout.global_blocks:
        G = global_rows.numel()
        qg = qb.index_select(2, global_rows).reshape(B, H, G * bs, D)  # (B, H, G*bs, D)
        s = torch.matmul(qg, kc.transpose(-1, -2)) * scale  # (B, H, G*bs, S)
        keep = None if attention_mask is None else attention_mask[:, None, None, :]
        o, lse = _masked_softmax_matmul(s, keep, vc, need_lse)
        out_parts.append(o.reshape(B, H, G, bs, D))
        lse_parts.append(lse.reshape(B, H, G, bs) if need_lse else None)
        rows_done.append(global_rows)

    # non-global query blocks, in chunks of rows: gather the listed key/value blocks
    W = layout.width
    # rows per chunk from the per-example size only (not B: no recompiles per batch size under compile)
    step = max(1, _CHUNK_SCORE_ELEMENTS // (H * bs * W * bs))
    head = torch.arange(H, device=q.device)[:, None, None]
    slot = torch.arange(W, device=q.device)
    for c0 in range(0, other_rows.numel(), step):
        r = other_rows[c0 : c0 + step]
        R = r.numel()
        idx = layout.kv_indices.index_select(1, r).long()  # (H, R, W)
        valid = slot[None, None, :] < layout.kv_num_blocks.index_select(1, r)[..., None]  # (H, R, W)
        kg = kb[:, head, idx].reshape(B, H, R, W * bs, D)  # (B, H, R, W*bs, D)
        vg = vb[:, head, idx].reshape(B, H, R, W * bs, D)
        s = torch.matmul(qb.index_select(2, r), kg.transpose(-1, -2)) * scale  # (B, H, R, bs, W*bs)
        keep = valid[None, :, :, :, None].expand(B, H, R, W, bs)
        if key_ok is not None:
            keep = keep & key_ok[:, idx]  # key_ok[:, idx]: (B, H, R, W, bs)
        keep = keep.reshape(B, H, R, 1, W * bs)
        o, lse = _masked_softmax_matmul(s, keep, vg, need_lse)
        out_parts.append(o)
        lse_parts.append(lse)
        rows_done.append(r)

    order = torch.cat(rows_done)
    inv = torch.empty_like(order)
    inv[order] = torch.arange(nb, device=q.device)
    out = torch.cat(out_parts, dim=2).index_select(2, inv).reshape(B, H, S, D)  # blocks back in order
    lse = None
    if need_lse:
        lse = torch.cat(lse_parts, dim=2).index_select(2, inv).reshape(B, H, S).to(stat_dtype)  # (B, H, S)
    if attention_mask is not None:
        q_ok = attention_mask[:, None, :]  # (B, 1, S)
        out = out * q_ok[..., None].to(out.dtype)
        if lse is not None:
            lse = lse.masked_fill(~q_ok, float("-inf"))
    return out.to(q.dtype), lse


def dense_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: BigBirdLayout,
    attention_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The second oracle: dense attention with the block bias ``log(count)`` (``S x S``; tests only).

    Same arguments and results as :func:`block_sparse_attention_ref`, computed in the input dtype.
    """
    D = q.shape[-1]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    s = torch.matmul(q, k.transpose(-1, -2)) * scale + layout.dense_log_counts(q.dtype)  # (B, H, S, S)
    keep = None if attention_mask is None else attention_mask[:, None, None, :]
    out, lse = _masked_softmax_matmul(s, keep, v, True)
    if attention_mask is not None:
        out = out * attention_mask[:, None, :, None].to(out.dtype)
        lse = lse.masked_fill(~attention_mask[:, None, :], float("-inf"))
    return out, lse


def block_sparse_attention_probs(
    q: torch.Tensor,
    k: torch.Tensor,
    layout: BigBirdLayout,
    attention_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """The true attention probabilities of block-sparse attention, ``(B, H, S, S)`` in ``q``'s dtype.

    A key block listed twice counts twice (its probabilities are summed); 0 outside the layout, for
    padded keys and on rows of padded queries. ``S x S``: only for ``output_attentions``-style use.
    Arguments as :func:`block_sparse_attention_ref`.
    """
    D = q.shape[-1]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    s = torch.matmul(q.to(cdt), k.to(cdt).transpose(-1, -2)) * scale + layout.dense_log_counts(cdt)  # (B, H, S, S)
    keep = None if attention_mask is None else attention_mask[:, None, None, :]
    p, _, has_key = _masked_softmax(s, keep)
    if attention_mask is not None:
        p = p * (has_key & attention_mask[:, None, :, None]).to(p.dtype)  # rows of padded queries: 0
    return p.to(q.dtype)
