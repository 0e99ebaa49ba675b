"""Plain-PyTorch block-sparse attention over a :class:`BigBirdLayout`: the CPU fallback and the test oracle.

Gather-based and vectorised. Each non-global query block reads its *distinct* key blocks once, with
the additive bias ``log(count)`` for a block listed ``count`` times (``exp(s + log c) = c exp(s)``:
the same softmax as listing it ``count`` times, at the cost of one copy). Scale, that bias and the
key padding mask go into one ``baddbmm``; the softmax runs in place on the score buffer, which is
reused across chunks of query blocks when no gradient is needed. Global query blocks attend to the
whole sequence. Memory is linear in ``S``: nothing of size ``S x S`` is built. Differentiable through
autograd.

Padding never leaks: padded keys and values are replaced by 0 with a select (not a multiply, so NaN
or Inf stored there cannot reach a real row), and padded query rows are selected to exactly 0.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch

from .layout import BigBirdLayout

__all__ = ["block_sparse_attention_ref", "block_sparse_attention_probs", "dense_attention_ref", "cpu_has_native_bf16"]

# Elements of one chunk's score tensor: small enough that the scores stay in cache between the
# baddbmm that writes them, the softmax and the matmul that read them (measured on a 2-core Xeon).
_CHUNK_SCORE_ELEMENTS = 1 << 19

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


def _read_native_bf16() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = {f for line in text.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}
    return bool(flags & {"avx512_bf16", "amx_bf16"})


_NATIVE_BF16 = _read_native_bf16()  # read once at import: torch.compile cannot trace file reads


def cpu_has_native_bf16() -> bool:
    """True when this CPU multiplies bf16 natively (AVX512-BF16 or AMX-BF16, from /proc/cpuinfo).

    There, bf16 matmuls run 2-7x faster than fp32 (measured on a Sapphire Rapids Xeon); elsewhere
    they are emulated and slower, so the reference computes bf16 inputs in fp32.
    """
    return _NATIVE_BF16


def _compute_dtypes(dtype: torch.dtype, device: torch.device, upcast: bool | None) -> tuple[torch.dtype, torch.dtype]:
    """``(score dtype, value dtype)``: the precision of ``q @ k^T`` (and the softmax input) and of ``p @ v``.

    bf16 stays bf16 on CUDA and on CPUs with native bf16, else fp32. fp16 scores are always fp32
    (``|q . k|`` beyond 65504 would overflow to inf and give NaN); fp16 values stay fp16 on CUDA and
    are fp32 on CPU, whose fp16 matmuls are slow. ``upcast`` True/False forces fp32/the input dtype.
    """
    if dtype == torch.bfloat16:
        low = (device.type != "cpu" or cpu_has_native_bf16()) if upcast is None else not upcast
        return (dtype, dtype) if low else (torch.float32, torch.float32)
    if dtype == torch.float16:
        low = device.type != "cpu" if upcast is None else not upcast
        return torch.float32, (dtype if low else torch.float32)
    return dtype, dtype


def _distinct_key_blocks(layout: BigBirdLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's distinct key blocks and the log of how often the row lists each.

    Returns ``blocks (H, num_blocks, Wd)`` int64 and ``log_count (H, num_blocks, Wd)`` fp64, where
    ``Wd`` is the largest number of distinct blocks of a row; slots past a row's distinct blocks (and
    rows of global blocks) hold block 0 with ``log_count = _MASKED``. Built once per layout (one host
    read of ``Wd``) and cached on it. Under torch.compile, the rows as listed (each entry its own
    slot, count 1): the same attention, without a data-dependent width in the graph.
    """
    H, nb, W = layout.kv_indices.shape
    listed = torch.arange(W, device=layout.device) < layout.kv_num_blocks[..., None]  # (H, nb, W)
    if torch.compiler.is_compiling():  # before the cache is read: no guard on it, no recompile when it fills
        zero = torch.zeros((), dtype=torch.float64, device=layout.device)
        return layout.kv_indices.long(), torch.where(listed, zero, _MASKED)
    hit = layout._cache.get("reference_distinct_blocks")
    if hit is not None:
        return hit
    with torch.inference_mode(False):  # the cached tensors must serve autograd later
        ids = torch.where(listed, layout.kv_indices.long(), nb).sort(dim=-1).values  # unlisted (nb) last
        first = torch.ones_like(listed)
        first[..., 1:] = ids[..., 1:] != ids[..., :-1]
        first &= ids < nb
        Wd = max(int(first.sum(-1).max()), 1)
        slot = torch.where(ids < nb, first.cumsum(-1) - 1, Wd)  # distinct slot of each entry; Wd: dropped
        blocks = torch.zeros(H, nb, Wd + 1, dtype=torch.long, device=layout.device).scatter_(-1, slot, ids)
        counts = torch.zeros(H, nb, Wd + 1, dtype=torch.float64, device=layout.device)
        counts.scatter_add_(-1, slot, torch.ones(slot.shape, dtype=torch.float64, device=layout.device))
        blocks, counts = blocks[..., :Wd].contiguous(), counts[..., :Wd]
        log_count = torch.where(counts > 0, counts.log(), _MASKED)
    layout._cache["reference_distinct_blocks"] = (blocks, log_count)
    return blocks, log_count


class _Scratch:
    """Scratch tensors reused across chunks; ``None`` (allocate) when autograd must keep each chunk's."""

    def __init__(self, reuse: bool, device: torch.device):
        self.reuse, self.device, self.store = reuse, device, {}

    def __call__(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor | None:
        if not self.reuse:
            return None
        n = math.prod(shape)
        t = self.store.get((name, dtype))
        if t is None or t.numel() < n:
            t = self.store[(name, dtype)] = torch.empty(n, dtype=dtype, device=self.device)
        return t[:n].view(shape)


def _attend(q, k, v, bias, scale, need_lse, in_place, scratch, out=None):
    """``softmax(scale * q @ k^T + bias) @ v`` for a batch of rows.

    ``q (N, M, D)``, ``k (N, L, D)`` and ``bias (N, 1, L)`` in the score dtype, ``v (N, L, Dv)``.
    Returns ``out (N, M, Dv)`` in ``v.dtype`` and ``lse (N, M)`` fp32/fp64 (or None). With
    ``in_place`` the softmax overwrites the scores, which live in ``scratch``; ``out`` receives the result.
    """
    N, M, L = q.shape[0], q.shape[1], k.shape[1]
    s = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=scale, out=scratch("s", (N, M, L), q.dtype))
    lse = torch.logsumexp(s.to(torch.float64 if s.dtype == torch.float64 else torch.float32), dim=-1) if need_lse else None
    # torch's softmax keeps its statistics in fp32 for bf16/fp16 inputs
    p = torch.ops.aten._softmax.out(s, -1, False, out=s) if in_place else torch.softmax(s, dim=-1)
    return torch.bmm(p.to(v.dtype), v, out=out), lse


def _place(out, lse, pieces, a, o, m):
    """Results ``o (N, R, bs, D)`` and ``m (N, R, bs)`` (or None) of query blocks ``a .. a + R - 1``: into
    ``out (N, nb, bs, D)`` and ``lse``, or appended to ``pieces`` when ``out`` is None (autograd)."""
    if out is None:
        pieces.append((a, o, m))
        return
    out[:, a : a + o.shape[1]] = o
    if m is not None:
        lse[:, a : a + o.shape[1]] = m


def _runs(num_blocks: int, global_blocks: tuple[int, ...], step: int) -> list[tuple[int, int]]:
    """Ranges ``[a, b)`` of consecutive non-global blocks, each at most ``step`` blocks long."""
    runs, a = [], 0
    for g in (*global_blocks, num_blocks):
        runs += [(c, min(c + step, g)) for c in range(a, g, step)]
        a = g + 1
    return runs


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
        upcast: compute fp16/bf16 inputs in fp32. Default: bf16 in bf16 on CUDA and on CPUs with
            native bf16 (:func:`cpu_has_native_bf16`), else fp32; fp16 scores in fp32 everywhere,
            ``p @ v`` in fp16 on CUDA, fp32 on CPU. ``False`` keeps the matmuls in the input
            precision (fp16 scores stay fp32); softmax statistics are fp32 in every case.
        need_lse: compute ``lse`` (otherwise None is returned in its place).

    Returns:
        ``out (B, H, S, D)`` in the dtype of ``q`` (rows of padded queries are exactly 0, whatever
        ``q``, ``k`` and ``v`` hold at padded positions) and ``lse (B, H, S)`` fp32 (fp64 for fp64
        inputs), the log-sum-exp of each row's scaled scores, ``-inf`` for padded queries.
    """
    B, H, S, D = q.shape
    bs, nb = layout.block_size, layout.num_blocks
    N = B * H
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    sdt, vdt = _compute_dtypes(q.dtype, q.device, upcast)
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    in_place = not grad and q.device.type == "cpu"
    scratch = _Scratch(not grad, q.device)

    if attention_mask is not None and q.device.type == "cpu" and not torch.compiler.is_compiling():
        if bool(attention_mask.all()):  # no padding (a free check on the CPU): skip the selects below
            attention_mask = None
    key_bias = torch.zeros(B, S, dtype=sdt, device=q.device)  # (B, S): 0, or _MASKED on padded keys
    if attention_mask is not None:
        real = attention_mask[:, None, :, None]  # (B, 1, S, 1)
        zero = torch.zeros((), dtype=q.dtype, device=q.device)  # a tensor: 3x faster than a Python 0 on CPU
        # a select, not a multiply: NaN/Inf stored in padded keys or values cannot reach a real row
        k, v = torch.where(real, k, zero), torch.where(real, v, zero)
        if grad:  # padded query rows are discarded below, but their scores must be finite for autograd
            q = torch.where(real, q, zero)
        key_bias.masked_fill_(~attention_mask, _MASKED)
    qb = q.to(sdt).reshape(N, nb, bs, D)
    ks = k.to(sdt).contiguous().view(N, S, D)  # contiguous: key/value blocks are gathered as rows of (N * nb)
    vs = v.to(vdt).contiguous().view(N, S, D)

    stat_dtype = torch.float64 if sdt == torch.float64 else torch.float32
    # each chunk's result goes straight to its place, or (under autograd) is kept and joined at the end
    out = lse = None
    if not grad:
        out = torch.empty(N, nb, bs, D, dtype=vdt, device=q.device)
        lse = torch.empty(N, nb, bs, dtype=stat_dtype, device=q.device) if need_lse else None
    pieces = []
    place = functools.partial(_place, out, lse, pieces)

    # global query blocks: a dense row over every key, in chunks of heads
    G = len(layout.global_blocks)
    if G:
        qg = qb.index_select(1, layout.global_rows).reshape(N, G * bs, D)
        bias = key_bias[:, None, None, :].expand(B, H, 1, S).reshape(N, 1, S)
        step = max(1, _CHUNK_SCORE_ELEMENTS // (G * bs * S))
        parts = [_attend(qg[n0 : n0 + step], ks[n0 : n0 + step], vs[n0 : n0 + step], bias[n0 : n0 + step],
                         scale, need_lse, in_place, scratch) for n0 in range(0, N, step)]
        o = torch.cat([p[0] for p in parts]).view(N, G, bs, D)
        m = torch.cat([p[1] for p in parts]).view(N, G, bs) if need_lse else None
        for j, g in enumerate(layout.global_blocks):
            place(g, o[:, j : j + 1], m[:, j : j + 1] if need_lse else None)

    # non-global query blocks, in runs of consecutive blocks: gather each row's distinct key/value blocks
    blocks, log_count = _distinct_key_blocks(layout)  # (H, nb, Wd)
    Wd = blocks.shape[-1]
    flat = (torch.arange(N, device=q.device).view(B, H, 1, 1) * nb + blocks).view(N, nb, Wd)  # rows of kblk/vblk
    bias = log_count.to(sdt)[None, :, :, :, None] + key_bias.view(B, nb, bs)[:, blocks]  # (B, H, nb, Wd, bs)
    bias = bias.view(N, nb, 1, Wd * bs)
    kblk, vblk = ks.view(N * nb, bs, D), vs.view(N * nb, bs, D)
    # rows per chunk from the per-example size only (not B: no recompiles per batch size under compile)
    step = max(1, _CHUNK_SCORE_ELEMENTS // (H * bs * Wd * bs))
    for a, b in _runs(nb, layout.global_blocks, step):
        R = b - a
        idx = flat[:, a:b].reshape(-1)
        kg = torch.index_select(kblk, 0, idx, out=scratch("k", (N * R * Wd, bs, D), sdt)).view(N * R, Wd * bs, D)
        vg = torch.index_select(vblk, 0, idx, out=scratch("v", (N * R * Wd, bs, D), vdt)).view(N * R, Wd * bs, D)
        o, m = _attend(qb[:, a:b].reshape(N * R, bs, D), kg, vg, bias[:, a:b].reshape(N * R, 1, Wd * bs), scale,
                       need_lse, in_place, scratch, out=scratch("o", (N * R, bs, D), vdt))
        place(a, o.view(N, R, bs, D), m.view(N, R, bs) if need_lse else None)

    if out is None:  # autograd kept every chunk: join them in block order
        pieces.sort(key=lambda p: p[0])
        out = torch.cat([p[1] for p in pieces], dim=1)
        lse = torch.cat([p[2] for p in pieces], dim=1) if need_lse else None
    out = out.view(B, H, S, D)
    lse = lse.view(B, H, S) if need_lse else None
    if attention_mask is not None:
        pad = ~attention_mask[:, None, :]  # (B, 1, S)
        out = out.masked_fill_(pad[..., None], 0) if in_place else out.masked_fill(pad[..., None], 0)
        if need_lse:
            lse = lse.masked_fill(pad, float("-inf"))
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
