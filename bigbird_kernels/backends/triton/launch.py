"""Launchers of the Triton kernels: work plans, pointers, strides and meta-parameters.

* :func:`build_plan` turns a :class:`~bigbird_kernels.layout.BigBirdLayout` into the int32 tables the
  kernels read (deduplicated key lists with multiplicities, the transposed lists with the global
  query rows included, and the per-program item tables with the split-KV slices of global rows and
  global columns). Built on the layout's device with torch ops (no host synchronisation), cached per
  layout.
* :func:`_bigbird_attn_fwd` / :func:`_bigbird_attn_bwd` launch the kernels for one call.
* :func:`launch_configs` lists every kernel configuration the launchers can use (for the compile check).

Debugging: ``BIGBIRD_TRITON_POISON=1`` allocates every output and scratch buffer filled with NaN, so an
element a kernel forgets to write fails the tests.
"""

from __future__ import annotations

import contextlib
import math
import os
import weakref
from dataclasses import dataclass

import torch

import triton

from . import kernels as K

__all__ = [
    "KernelConfig",
    "Plan",
    "SUPPORTED_DTYPES",
    "SUPPORTED_HEAD_DIMS",
    "SUPPORTED_BLOCK_SIZES",
    "build_plan",
    "get_plan",
    "split_override",
    "fwd_config",
    "bwd_dq_config",
    "bwd_dkdv_config",
    "launch_configs",
    "arch_of",
    "_bigbird_attn_fwd",
    "_bigbird_attn_bwd",
]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
SUPPORTED_HEAD_DIMS = (32, 64, 128)
SUPPORTED_BLOCK_SIZES = (16, 32, 64, 128)

_TL_DTYPE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


# --------------------------------------------------------------------------------------------------
# Configurations
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelConfig:
    block_m: int  # query rows per tile
    block_n: int  # key rows per tile
    num_warps: int
    num_stages: int


def _warps(tile_m: int, tile_n: int) -> int:
    if tile_m * tile_n >= 128 * 64:
        return 8
    if tile_m * tile_n >= 64 * 64:
        return 4
    if tile_m * tile_n >= 32 * 32:
        return 2
    return 1


def _bwd_warps(tile_m: int, tile_n: int, head_dim: int) -> int:
    """Backward kernels hold two fp32 accumulators (dk, dv) or dq plus recomputed tiles: on sm_80, head
    dim 128 with 64 x 64 tiles needs 8 warps to stay clear of register spills (ptxas -v: 255 regs +
    spills with 4 warps). Hopper uses :func:`_hopper_bwd` for 64-row tiles instead."""
    w = _warps(tile_m, tile_n)
    return min(8, 2 * w) if head_dim >= 128 else w


def _hopper_bwd(head_dim: int, block_size: int) -> bool:
    """On sm_90 the backward's chained dots get an MMAv3 layout with all warps on the rows: 8 warps on a
    64-row tile make both warp groups compute the same wgmma. 64-row tiles at head dim 128 therefore
    run on one warp group (4 warps); dk/dv then walks 32-row query sub-tiles to stay clear of spills."""
    return head_dim >= 128 and block_size >= 64


def arch_of(device) -> int:
    """``10 * major + minor`` of a CUDA device (cached by torch, no synchronisation); 80 elsewhere (the
    interpreter), so CPU runs use the sm_80 configurations."""
    if device.type != "cuda":
        return 80
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def _stages(head_dim: int) -> int:
    """K/V (or Q/dO) tiles in flight. The list entry is prefetched one step ahead in the kernels, so
    with 3 stages the tile loads run 2 steps ahead; head dim 128 keeps 2 stages so that two programs
    fit one SM's shared memory (about 80 KB each instead of 130 KB on sm_90)."""
    return 2 if head_dim >= 128 else 3


def _fp32_config(head_dim: int, block_size: int, max_dim_for_32: int = 64) -> KernelConfig:
    """fp32 runs in full fp32 (FMA, not tensor cores): small tiles keep registers, shared memory and
    compile time in check. fp32 is the accurate fallback, not the fast path."""
    t = min(block_size, 32 if head_dim <= max_dim_for_32 else 16)
    return KernelConfig(t, t, 4, 1)


def fwd_config(dtype: torch.dtype, head_dim: int, block_size: int) -> KernelConfig:
    """Forward tiles: the whole key block is the key tile (sub-tiles of 64 for block 128)."""
    if dtype == torch.float32:
        return _fp32_config(head_dim, block_size)
    bm = bn = min(block_size, 64)
    if block_size == 128:
        bm = 128  # FA2's 128 x 64 tile, two warpgroups
    w = _warps(bm, bn)
    if head_dim >= 128 and bm * bn < 64 * 64:
        w *= 2  # small tiles with a 128-wide accumulator: one warp spills
    return KernelConfig(bm, bn, w, _stages(head_dim))


def bwd_dq_config(dtype: torch.dtype, head_dim: int, block_size: int, arch: int = 80) -> KernelConfig:
    if dtype == torch.float32:
        return _fp32_config(head_dim, block_size)
    bm = bn = min(block_size, 64)
    if arch >= 90 and _hopper_bwd(head_dim, block_size):
        return KernelConfig(bm, bn, 4, _stages(head_dim))
    return KernelConfig(bm, bn, _bwd_warps(bm, bn, head_dim), _stages(head_dim))


def bwd_dkdv_config(dtype: torch.dtype, head_dim: int, block_size: int, arch: int = 80) -> KernelConfig:
    """``block_n`` key rows per program, ``block_m`` query rows per step."""
    if dtype == torch.float32:
        return _fp32_config(head_dim, block_size, max_dim_for_32=32)  # two accumulators: spills at 32 x 64
    bm = bn = min(block_size, 64)
    if arch >= 90 and _hopper_bwd(head_dim, block_size):
        return KernelConfig(32, bn, 4, _stages(head_dim))
    return KernelConfig(bm, bn, _bwd_warps(bm, bn, head_dim), _stages(head_dim))


def _small_config(block_size: int, head_dim: int) -> KernelConfig:
    """Merge / reduce / preprocess kernels: memory bound, one tile of rows."""
    bm = min(block_size, 64)
    return KernelConfig(bm, 0, 4 if bm * head_dim >= 64 * 64 else 2, 1)


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs are computed in full fp32 (TF32 would miss the fp32 tolerance); ignored for fp16/bf16
    return "ieee" if dtype == torch.float32 else "tf32"


# --------------------------------------------------------------------------------------------------
# Work plans
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Tables of one layout, as the kernels read them (all int32, on the layout's device)."""

    fwd_items: torch.Tensor  # (H, n_items_f, 4): (query block, lo, hi, slot) into fwd_idx/fwd_cnt
    fwd_idx: torch.Tensor  # (H, nb * W + nb + 1): deduplicated key lists of rows, 0..nb-1 for global rows, pad
    fwd_cnt: torch.Tensor  # (H, nb * W + nb + 1): multiplicity of each listed key block
    bwd_items: torch.Tensor  # (H, n_items_b, 4): (key block, lo, hi, slot) into bwd_idx/bwd_cnt
    bwd_idx: torch.Tensor  # (H, nb * W + G * nb + 1): query blocks reading each key block (CSR by key block), pad
    bwd_cnt: torch.Tensor
    glob: torch.Tensor  # (G,) global block ids
    fwd_splits: int  # split-KV programs per global query row (1: no split)
    bwd_splits: int  # programs per global key column in dk/dv (1: no split)

    def tensors(self):
        return (self.fwd_items, self.fwd_idx, self.fwd_cnt, self.bwd_items, self.bwd_idx, self.bwd_cnt, self.glob)


_SPLIT_OVERRIDE: dict[str, int] = {}


@contextlib.contextmanager
def split_override(fwd: int | None = None, bwd: int | None = None):
    """Force the number of key blocks per split-KV program (tests use it to exercise the split path)."""
    old = dict(_SPLIT_OVERRIDE)
    if fwd is not None:
        _SPLIT_OVERRIDE["fwd"] = int(fwd)
    if bwd is not None:
        _SPLIT_OVERRIDE["bwd"] = int(bwd)
    try:
        yield
    finally:
        _SPLIT_OVERRIDE.clear()
        _SPLIT_OVERRIDE.update(old)


def _num_splits(nb: int, width: int, which: str) -> tuple[int, int]:
    """(number of splits, blocks per split) of a list of ``nb`` key blocks."""
    per = _SPLIT_OVERRIDE.get(which)
    if per is None:
        # a split does a few rows' worth of work; at most 32 splits to bound the fp32 scratch
        per = max(16, 2 * width, -(-nb // 32))
    per = max(1, min(per, nb))
    n = -(-nb // per)
    per = -(-nb // n)  # balance: no split is empty
    return n, per


@dataclass(frozen=True)
class _Static:
    """The layout-independent parts of a plan (the only ones built from host lists)."""

    glob_items: torch.Tensor  # (G * fwd_splits, 4) int64: forward items of the global query rows
    rows: torch.Tensor  # (nb - G,) int64: the non-global blocks
    gcols: torch.Tensor  # (G,) int64: the global blocks
    g_slot: torch.Tensor  # (G, bwd_splits) int64: scratch slot of each dk/dv split (-1: no split)
    glob: torch.Tensor  # (G,) int32


_STATIC: dict = {}


def _static_tables(nb: int, width: int, gb: tuple, nsf: int, perf: int, nsb: int, device) -> _Static:
    """:class:`_Static` for these sizes, cached per (nb, W, global blocks, splits, device): layouts that
    differ only in their random blocks (``resample`` makes one per call) copy nothing from the host.
    Cached tables are built outside inference mode, so that a later training call can save them."""
    key = (nb, width, gb, nsf, perf, nsb, torch.device(device))
    if torch.compiler.is_compiling():
        return _build_static(nb, width, gb, nsf, perf, nsb, device)
    if key not in _STATIC:
        with torch.inference_mode(False):
            _STATIC[key] = _build_static(nb, width, gb, nsf, perf, nsb, device)
    return _STATIC[key]


def _build_static(nb: int, width: int, gb: tuple, nsf: int, perf: int, nsb: int, device) -> _Static:
    i64 = dict(dtype=torch.int64, device=device)
    G = len(gb)
    items = []
    for g, row in enumerate(gb):
        for s in range(nsf):
            lo = nb * width + s * perf
            items.append((row, lo, min(lo + perf, nb * width + nb), g * nsf + s if nsf > 1 else -1))
    g_slot = [[g * nsb + s if nsb > 1 else -1 for s in range(nsb)] for g in range(G)]
    return _Static(
        glob_items=torch.tensor(items, **i64).reshape(len(items), 4),
        rows=torch.tensor([i for i in range(nb) if i not in set(gb)], **i64),
        gcols=torch.tensor(gb, **i64).reshape(G),
        g_slot=torch.tensor(g_slot, **i64).reshape(G, nsb),
        glob=torch.tensor(gb, dtype=torch.int32, device=device).reshape(G),
    )


def build_plan(layout) -> Plan:
    """Tables of ``layout`` for the kernels: torch ops on the layout's device, with no host sync, and
    no host-to-device copy once :func:`_static_tables` holds this layout's sizes."""
    kv = layout.kv_indices.long()
    H, nb, W = kv.shape
    dev = kv.device
    gb = tuple(layout.global_blocks)
    G = len(gb)
    i64 = dict(dtype=torch.int64, device=dev)
    nsf, perf = _num_splits(nb, W, "fwd")
    nsb, perb = _num_splits(nb, W, "bwd")
    st = _static_tables(nb, W, gb, nsf, perf, nsb, dev)

    # deduplicate each row's list: ascending unique blocks with their multiplicities
    n = layout.kv_num_blocks.long()
    slot = torch.arange(W, device=dev)
    valid = slot[None, None, :] < n[..., None]
    srt = torch.where(valid, kv, torch.full_like(kv, nb)).sort(dim=-1).values
    prev = torch.cat([torch.full((H, nb, 1), -1, **i64), srt[..., :-1]], dim=-1)
    real = srt < nb
    first = (srt != prev) & real
    pos = torch.where(real, first.long().cumsum(-1) - 1, torch.full_like(srt, W))  # W: dump column
    idx = torch.zeros(H, nb, W + 1, **i64).scatter_(2, pos, srt)[..., :W]
    cnt = torch.zeros(H, nb, W + 1, **i64).scatter_add_(2, pos, real.long())[..., :W]
    num = first.sum(-1)  # (H, nb), 0 for global rows

    # forward / dq lists and items
    fwd_idx = torch.cat([idx.reshape(H, nb * W), torch.arange(nb, **i64).expand(H, nb)], dim=1)
    fwd_cnt = torch.cat([cnt.reshape(H, nb * W), torch.ones(H, nb, **i64)], dim=1)
    glob_items = st.glob_items[None].expand(H, -1, -1)
    rows = st.rows
    lo = rows * W
    row_items = torch.stack(
        [rows.expand(H, -1), lo.expand(H, -1), lo[None, :] + num[:, rows], torch.full((H, nb - G), -1, **i64)],
        dim=-1,
    )
    fwd_items = torch.cat([glob_items, row_items], dim=1)

    # transposed lists (CSR by key block) with the global query rows included, and dk/dv items
    ent_rows = torch.arange(nb, **i64)[None, :, None].expand(H, nb, W)
    ent_valid = slot[None, None, :] < num[..., None]
    ent_cols = torch.where(ent_valid, idx, torch.full_like(idx, nb))
    g_rows = st.gcols.repeat_interleave(nb)  # (G * nb,)
    g_cols = torch.arange(nb, **i64).repeat(G)
    rows_all = torch.cat([ent_rows.reshape(H, -1), g_rows.expand(H, -1)], dim=1)
    cols_all = torch.cat([ent_cols.reshape(H, -1), g_cols.expand(H, -1)], dim=1)
    cnt_all = torch.cat([cnt.reshape(H, -1), torch.ones(H, G * nb, **i64)], dim=1)
    order = torch.argsort(cols_all * (nb + 1) + rows_all, dim=1)  # keys are unique among valid entries
    bwd_idx = torch.gather(rows_all, 1, order)
    bwd_cnt = torch.gather(cnt_all, 1, order)
    per_col = torch.zeros(H, nb + 1, **i64).scatter_add_(1, cols_all, torch.ones_like(cols_all))[:, :nb]
    off = torch.cat([torch.zeros(H, 1, **i64), per_col.cumsum(1)], dim=1)  # (H, nb + 1)

    # a global column is read by each non-global row at most once (lists are deduplicated) and by
    # each global row once: its list has at most nb entries
    parts = []
    if G:
        gcols = st.gcols
        s_idx = torch.arange(nsb, **i64)
        g_lo = off[:, gcols][:, :, None] + s_idx[None, None, :] * perb  # (H, G, nsb)
        g_end = off[:, gcols + 1][:, :, None].expand_as(g_lo)
        g_hi = torch.minimum(g_lo + perb, g_end) if nsb > 1 else g_end
        g_slot = st.g_slot
        g_col = gcols[:, None].expand(G, nsb)
        parts.append(
            torch.stack([g_col.expand(H, G, nsb), g_lo, g_hi, g_slot.expand(H, G, nsb)], dim=-1).reshape(H, G * nsb, 4)
        )
    cols = st.rows
    parts.append(
        torch.stack([cols.expand(H, -1), off[:, cols], off[:, cols + 1], torch.full((H, nb - G), -1, **i64)], dim=-1)
    )
    bwd_items = torch.cat(parts, dim=1)

    as32 = lambda t: t.to(torch.int32).contiguous()  # noqa: E731
    # one padding entry per list: the kernels read the entry after the last one (prefetch)
    pad1 = lambda t: torch.cat([t, torch.zeros_like(t[:, :1])], dim=1)  # noqa: E731
    fwd_idx, fwd_cnt, bwd_idx, bwd_cnt = (pad1(t) for t in (fwd_idx, fwd_cnt, bwd_idx, bwd_cnt))
    return Plan(
        fwd_items=as32(fwd_items),
        fwd_idx=as32(fwd_idx),
        fwd_cnt=as32(fwd_cnt),
        bwd_items=as32(bwd_items),
        bwd_idx=as32(bwd_idx),
        bwd_cnt=as32(bwd_cnt),
        glob=st.glob,
        fwd_splits=nsf,
        bwd_splits=nsb,
    )


_PLANS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def get_plan(layout) -> Plan:
    """:func:`build_plan`, cached per layout object (and split override) outside of tracing. Cached
    plans are built outside inference mode, so that a later training call can save them."""
    if torch.compiler.is_compiling():
        return build_plan(layout)
    key = (_SPLIT_OVERRIDE.get("fwd"), _SPLIT_OVERRIDE.get("bwd"))
    per_layout = _PLANS.get(layout)
    if per_layout is None:
        per_layout = {}
        _PLANS[layout] = per_layout
    plan = per_layout.get(key)
    if plan is None:
        with torch.inference_mode(False):
            plan = per_layout[key] = build_plan(layout)
    return plan


# --------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------


def _poison() -> bool:
    return os.environ.get("BIGBIRD_TRITON_POISON", "") == "1"


def _alloc(shape, dtype, device):
    if _poison():
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _mask_u8(attention_mask, q):
    if attention_mask is None:
        return torch.ones(1, dtype=torch.uint8, device=q.device), False
    return attention_mask.to(torch.bool).contiguous().view(torch.uint8), True


def _tileable(*ts, block=128):
    """Tile offsets are int32 in the kernels: ``block * stride`` of the S and D dims must stay below 2**31
    (batch and head offsets, and the row of each tile, are int64)."""
    return tuple(t if max(t.stride(2), t.stride(3)) * block < 2**31 else t.contiguous() for t in ts)


def _prep_scale(q, scale: float):
    """The kernels need scale >= 0 (max(qk) * scale is the row max): fold a negative sign into q."""
    if scale < 0:
        return -q, -scale, True
    return q, scale, False


def _bigbird_attn_fwd(q, k, v, attention_mask, fwd_items, fwd_idx, fwd_cnt, glob, scale: float,
                      block_size: int, fwd_splits: int):
    """Forward of the triton backend: ``(out (B, H, S, D) in q.dtype, lse (B, H, S) fp32)``."""
    B, H, S, D = q.shape
    q, scale, _ = _prep_scale(q, float(scale))
    q, k, v = _tileable(q, k, v)
    dev = q.device
    out = _alloc((B, H, S, D), q.dtype, dev)
    lse = _alloc((B, H, S), torch.float32, dev)
    if B * H == 0 or S == 0:
        return out, lse
    G = glob.numel()
    n_slots = G * fwd_splits if fwd_splits > 1 else 0
    part_o = _alloc((max(1, B * H * n_slots * block_size), D), torch.float32, dev)
    part_lse = _alloc((max(1, B * H * n_slots * block_size),), torch.float32, dev)
    mask, has_mask = _mask_u8(attention_mask, q)
    cfg = fwd_config(q.dtype, D, block_size)
    n_items = fwd_items.shape[1]
    grid = (n_items * (block_size // cfg.block_m) * B * H,)
    K._bigbird_attn_fwd_kernel[grid](
        q, k, v, out, lse, part_o, part_lse, mask,
        fwd_items, fwd_idx, fwd_cnt,
        scale * K.LOG2E,
        *q.stride(), *k.stride(), *v.stride(),
        H, S, n_items, fwd_idx.shape[1], n_slots,
        BLOCK_SIZE=block_size, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, HEAD_DIM=D,
        HAS_MASK=has_mask, DOT_PRECISION=_dot_precision(q.dtype),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    if n_slots:
        sc = _small_config(block_size, D)
        K._bigbird_attn_fwd_merge_kernel[(G * (block_size // sc.block_m) * B * H,)](
            out, lse, part_o, part_lse, mask, glob,
            H, S, n_slots, fwd_splits,
            BLOCK_SIZE=block_size, BLOCK_M=sc.block_m, HEAD_DIM=D, HAS_MASK=has_mask,
            num_warps=sc.num_warps, num_stages=sc.num_stages,
        )
    return out, lse


def _bigbird_attn_bwd(dout, grad_lse, q, k, v, out, lse, attention_mask, fwd_items, fwd_idx, fwd_cnt,
                      bwd_items, bwd_idx, bwd_cnt, glob, scale: float, block_size: int, fwd_splits: int,
                      bwd_splits: int):
    """Backward of the triton backend: ``(dq, dk, dv)`` in the input dtype.

    No atomics anywhere: dq of global rows and dk/dv of global columns are split into fp32 partials
    and summed in a fixed order, so results are bit-reproducible run to run.
    """
    B, H, S, D = q.shape
    q, scale, flipped = _prep_scale(q, float(scale))
    dev = q.device
    dq = _alloc((B, H, S, D), q.dtype, dev)
    dk = _alloc((B, H, S, D), q.dtype, dev)
    dv = _alloc((B, H, S, D), q.dtype, dev)
    if B * H == 0 or S == 0:
        return dq, dk, dv
    if dout is None:
        dout = torch.zeros_like(out)
    if dout.dtype != q.dtype:
        dout = dout.to(q.dtype)
    q, k, v, dout = _tileable(q, k, v, dout)
    out = out.contiguous()
    G = glob.numel()
    mask, has_mask = _mask_u8(attention_mask, q)
    dot_prec = _dot_precision(q.dtype)

    sc = _small_config(block_size, D)
    delta = _alloc((B, H, S), torch.float32, dev)
    K._bigbird_attn_bwd_preprocess_kernel[(S // sc.block_m * B * H,)](
        out, dout, delta, *dout.stride(), H, S,
        BLOCK_M=sc.block_m, HEAD_DIM=D, num_warps=sc.num_warps, num_stages=1,
    )
    if grad_lse is not None:
        # d lse_i / d s_ij = p_ij: folds into ds = p * (dp - delta + dlse)
        delta = delta - torch.where(torch.isfinite(lse), grad_lse.float(), torch.zeros_like(lse))
    lse = lse.contiguous()

    # dq
    n_slots_f = G * fwd_splits if fwd_splits > 1 else 0
    part_dq = _alloc((max(1, B * H * n_slots_f * block_size), D), torch.float32, dev)
    arch = arch_of(dev)
    cfg = bwd_dq_config(q.dtype, D, block_size, arch)
    n_items = fwd_items.shape[1]
    K._bigbird_attn_bwd_dq_kernel[(n_items * (block_size // cfg.block_m) * B * H,)](
        q, k, v, dout, lse, delta, dq, part_dq, mask,
        fwd_items, fwd_idx, fwd_cnt,
        scale, scale * K.LOG2E,
        *q.stride(), *k.stride(), *v.stride(), *dout.stride(),
        H, S, n_items, fwd_idx.shape[1], n_slots_f,
        BLOCK_SIZE=block_size, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, HEAD_DIM=D,
        HAS_MASK=has_mask, DOT_PRECISION=dot_prec,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )

    # dk, dv
    n_slots_b = G * bwd_splits if bwd_splits > 1 else 0
    part_dk = _alloc((max(1, B * H * n_slots_b * block_size), D), torch.float32, dev)
    part_dv = _alloc((max(1, B * H * n_slots_b * block_size), D), torch.float32, dev)
    cfg = bwd_dkdv_config(q.dtype, D, block_size, arch)
    n_items = bwd_items.shape[1]
    K._bigbird_attn_bwd_dkdv_kernel[(n_items * (block_size // cfg.block_n) * B * H,)](
        q, k, v, dout, lse, delta, dk, dv, part_dk, part_dv, mask,
        bwd_items, bwd_idx, bwd_cnt,
        scale, scale * K.LOG2E,
        *q.stride(), *k.stride(), *v.stride(), *dout.stride(),
        H, S, n_items, bwd_idx.shape[1], n_slots_b,
        BLOCK_SIZE=block_size, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, HEAD_DIM=D,
        HAS_MASK=has_mask, DOT_PRECISION=dot_prec,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )

    grid_r = (G * (block_size // sc.block_m) * B * H,)
    for part, dst, n_slots, n_splits in ((part_dq, dq, n_slots_f, fwd_splits), (part_dk, dk, n_slots_b, bwd_splits),
                                         (part_dv, dv, n_slots_b, bwd_splits)):
        if n_slots:
            K._bigbird_attn_bwd_reduce_kernel[grid_r](
                part, dst, glob, S, n_slots, n_splits,
                BLOCK_SIZE=block_size, BLOCK_M=sc.block_m, HEAD_DIM=D,
                num_warps=sc.num_warps, num_stages=1,
            )
    if flipped:
        dq = dq.neg_()
    return dq, dk, dv


# --------------------------------------------------------------------------------------------------
# Every configuration the launchers can use (compile check)
# --------------------------------------------------------------------------------------------------

_STRIDE_GROUPS = {
    "q": ("stride_qb", "stride_qh", "stride_qs", "stride_qd"),
    "k": ("stride_kb", "stride_kh", "stride_ks", "stride_kd"),
    "v": ("stride_vb", "stride_vh", "stride_vs", "stride_vd"),
    "do": ("stride_dob", "stride_doh", "stride_dos", "stride_dod"),
}

# pointer arguments: "T" = the input dtype, otherwise a fixed Triton type
_POINTERS = {
    "Q": "T", "K": "T", "V": "T", "Out": "T", "DO": "T", "DQ": "T", "DK": "T", "DV": "T", "Dst": "T",
    "Lse": "fp32", "PartO": "fp32", "PartLse": "fp32", "Delta": "fp32", "PartDQ": "fp32",
    "PartDK": "fp32", "PartDV": "fp32", "Part": "fp32",
    "Mask": "u8", "Items": "i32", "ListIdx": "i32", "ListCnt": "i32", "Glob": "i32",
}
_FLOATS = ("sm_scale", "sm_scale2")


def _signature(fn, dtype: torch.dtype, constexprs: dict) -> dict:
    """Triton signature of ``fn`` for contiguous inputs of ``dtype`` (unit strides are constexpr 1)."""
    t = _TL_DTYPE[dtype]
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in _POINTERS:
            sig[name] = "*" + (t if _POINTERS[name] == "T" else _POINTERS[name])
        elif name in _FLOATS:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def _unit_strides(fn) -> dict:
    return {name: 1 for group in _STRIDE_GROUPS.values() for name in group[3:] if name in fn.arg_names}


CONFIG_ARCHS = (80, 90)  # configuration families: sm_80 (and every non-Hopper target), sm_90


def arch_family(cc: int) -> int:
    return 90 if cc >= 90 else 80


def launch_configs() -> list[dict]:
    """Every kernel configuration the launchers can launch, deduplicated.

    Each entry: ``name`` (readable id; ``@sm90`` / ``@sm80`` when the configuration differs between the
    families of :data:`CONFIG_ARCHS`), ``fn`` (the JIT function), ``signature`` and ``constexprs`` (for
    ``triton.compiler.ASTSource``, with unit inner strides specialised to 1 as the JIT does for
    contiguous inputs), ``num_warps``, ``num_stages``, ``archs`` (the families that launch it).
    """
    by_key: dict = {}

    def add(fn, dtype, cfg: KernelConfig, consts: dict, what: str, arch: int):
        consts = {**consts, **_unit_strides(fn)}
        key = (fn.__name__, dtype, cfg.num_warps, cfg.num_stages, tuple(sorted(consts.items())))
        if key in by_key:
            by_key[key]["archs"].add(arch)
            return
        by_key[key] = dict(
            name=f"{fn.__name__}[{what}]",
            fn=fn,
            signature=_signature(fn, dtype, consts),
            constexprs=consts,
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
            archs={arch},
        )

    for arch in CONFIG_ARCHS:
        for dtype in SUPPORTED_DTYPES:
            t = _TL_DTYPE[dtype]
            prec = _dot_precision(dtype)
            for D in SUPPORTED_HEAD_DIMS:
                for bs in SUPPORTED_BLOCK_SIZES:
                    for has_mask in (False, True):
                        what = f"{t},D={D},bs={bs},mask={int(has_mask)}"
                        for fn, cfg in ((K._bigbird_attn_fwd_kernel, fwd_config(dtype, D, bs)),
                                        (K._bigbird_attn_bwd_dq_kernel, bwd_dq_config(dtype, D, bs, arch)),
                                        (K._bigbird_attn_bwd_dkdv_kernel, bwd_dkdv_config(dtype, D, bs, arch))):
                            add(fn, dtype, cfg, dict(BLOCK_SIZE=bs, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                                                     HEAD_DIM=D, HAS_MASK=has_mask, DOT_PRECISION=prec), what, arch)
                        sc = _small_config(bs, D)
                        add(K._bigbird_attn_fwd_merge_kernel, dtype, sc,
                            dict(BLOCK_SIZE=bs, BLOCK_M=sc.block_m, HEAD_DIM=D, HAS_MASK=has_mask), what, arch)
                    sc = _small_config(bs, D)
                    what = f"{t},D={D},bs={bs}"
                    add(K._bigbird_attn_bwd_preprocess_kernel, dtype, KernelConfig(sc.block_m, 0, sc.num_warps, 1),
                        dict(BLOCK_M=sc.block_m, HEAD_DIM=D), what, arch)
                    add(K._bigbird_attn_bwd_reduce_kernel, dtype, KernelConfig(sc.block_m, 0, sc.num_warps, 1),
                        dict(BLOCK_SIZE=bs, BLOCK_M=sc.block_m, HEAD_DIM=D), what, arch)
    out = list(by_key.values())
    for c in out:
        if len(c["archs"]) < len(CONFIG_ARCHS):
            c["name"] += "".join(f"@sm{a}" for a in sorted(c["archs"]))
    return out


def triton_version() -> str:
    return triton.__version__
