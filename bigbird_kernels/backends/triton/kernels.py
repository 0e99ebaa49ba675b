"""Triton kernels of BigBird block-sparse attention (forward, split-KV merge, backward).

Plain pointer arithmetic only (no block pointers / tensor descriptors), so the same source compiles on
Triton 3.6 through 3.9 and runs under ``TRITON_INTERPRET=1``.

Work is described by *item tables* built once per layout (see ``launch.py``): ``Items (H, N_ITEMS, 4)``
int32 rows ``(block, lo, hi, slot)``. A program of the forward / dq kernels takes query block ``block``
and runs one online softmax over the key blocks ``ListIdx[h, lo:hi]`` with multiplicities
``ListCnt[h, lo:hi]`` (a key block listed ``c`` times adds ``log(c)`` to its logits: the lists are
deduplicated). The dk/dv kernel takes key block ``block`` and walks the query blocks
``ListIdx[h, lo:hi]`` that read it (global query rows included). ``slot < 0``: the program owns its
rows and writes final results; ``slot >= 0``: it is one split of a long list (global rows / global
columns) and writes an fp32 partial result to scratch slot ``slot``, combined afterwards by
``_bigbird_attn_fwd_merge_kernel`` (by log-sum-exp) or ``_bigbird_attn_bwd_reduce_kernel`` (a sum in
a fixed order: deterministic).

All softmax statistics are fp32 and in log2 units inside the kernels (``exp2`` with the scale
pre-multiplied by log2(e)); the ``Lse`` tensor the forward writes is in natural-log units.
Padded query rows write 0 and lse ``-inf``; backward turns lse ``-inf`` into ``+inf`` so that such
rows get ``p = 0``.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@triton.jit
def _bigbird_attn_fwd_kernel(
    Q, K, V, Out, Lse, PartO, PartLse, Mask,
    Items, ListIdx, ListCnt,
    sm_scale2,
    stride_qb, stride_qh, stride_qs, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    H, S, N_ITEMS, LIST_STRIDE, N_SLOTS,
    BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
    HAS_MASK: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    M_SUB: tl.constexpr = BLOCK_SIZE // BLOCK_M
    N_SUB: tl.constexpr = BLOCK_SIZE // BLOCK_N
    # a 1-D grid (CUDA limits grid y/z to 65535): consecutive programs share (b, h)
    per_bh = N_ITEMS * M_SUB
    bh = tl.program_id(0) // per_bh
    pid = tl.program_id(0) - bh * per_bh
    b = bh // H
    h = bh - b * H
    item = pid // M_SUB
    msub = pid - item * M_SUB

    it = Items + (h * N_ITEMS + item) * 4
    row = tl.load(it)
    lo = tl.load(it + 1)
    hi = tl.load(it + 2)
    slot = tl.load(it + 3)

    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    q_rows = row * BLOCK_SIZE + msub * BLOCK_M + offs_m
    q_ptrs = Q + b64 * stride_qb + h64 * stride_qh + q_rows.to(tl.int64)[:, None] * stride_qs + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs)
    k_base = K + b64 * stride_kb + h64 * stride_kh
    v_base = V + b64 * stride_vb + h64 * stride_vh
    # tile offsets computed once (int32: the launcher keeps BLOCK_N * stride below 2**31); the loop adds
    # one int64 scalar per key tile
    k_tile = offs_n[:, None] * stride_ks + offs_d[None, :] * stride_kd
    v_tile = offs_n[:, None] * stride_vs + offs_d[None, :] * stride_vd
    mask_base = Mask + b64 * S
    list_base = h * LIST_STRIDE

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    # one flat loop over (listed key block, key sub-tile): no unrolling, one body to pipeline. The
    # list entry of the next step is loaded one step ahead (loop-carried) so that the K/V tile loads
    # do not depend on a load of the same iteration: the pipeliner then issues them num_stages - 1
    # steps ahead (the lists carry one padding entry, so reading one past the end is in bounds).
    # With a mask, the key mask of the next tile is loaded one step ahead too, and padded value rows
    # are loaded as 0 (a masked load), so that NaN / Inf there never meet a weight of 0.
    j = tl.load(ListIdx + list_base + lo)
    cnt = tl.load(ListCnt + list_base + lo)
    if HAS_MASK:
        key_ok = tl.load(mask_base + j.to(tl.int64) * BLOCK_SIZE + offs_n) != 0
    for tt in range(lo * N_SUB, hi * N_SUB):
        t = tt // N_SUB
        t_next = (tt + 1) // N_SUB
        j_next = tl.load(ListIdx + list_base + t_next)
        cnt_next = tl.load(ListCnt + list_base + t_next)
        log2c = tl.log2(cnt.to(tl.float32))
        row0 = (j * BLOCK_SIZE + (tt - t * N_SUB) * BLOCK_N).to(tl.int64)
        k = tl.load(k_base + row0 * stride_ks + k_tile)
        if HAS_MASK:
            row0_next = (j_next * BLOCK_SIZE + (tt + 1 - t_next * N_SUB) * BLOCK_N).to(tl.int64)
            key_ok_next = tl.load(mask_base + row0_next + offs_n) != 0
            v = tl.load(v_base + row0 * stride_vs + v_tile, mask=key_ok[:, None], other=0.0)
        else:
            v = tl.load(v_base + row0 * stride_vs + v_tile)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        if HAS_MASK:
            s = tl.where(key_ok[None, :], qk * sm_scale2, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp2(s - (m_use - log2c)[:, None])
        else:
            # sm_scale2 >= 0 (the launcher flips the sign of q otherwise)
            m_new = tl.maximum(m_i, tl.max(qk, 1) * sm_scale2)
            m_use = m_new
            p = tl.exp2(qk * sm_scale2 - (m_use - log2c)[:, None])
        alpha = tl.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        m_i = m_new
        j = j_next
        cnt = cnt_next
        if HAS_MASK:
            key_ok = key_ok_next

    l_ok = l_i > 0.0
    l_safe = tl.where(l_ok, l_i, 1.0)
    o = acc / l_safe[:, None]
    lse2 = tl.where(l_ok, m_i + tl.log2(l_safe), float("-inf"))
    if slot >= 0:
        p_rows = (bh.to(tl.int64) * N_SLOTS + slot) * BLOCK_SIZE + msub * BLOCK_M + offs_m
        tl.store(PartO + p_rows[:, None] * HEAD_DIM + offs_d[None, :], o)
        tl.store(PartLse + p_rows, lse2)
    else:
        if HAS_MASK:
            q_ok = tl.load(mask_base + q_rows) != 0
            o = tl.where(q_ok[:, None], o, 0.0)
            lse2 = tl.where(q_ok, lse2, float("-inf"))
        o_rows = bh.to(tl.int64) * S + q_rows
        tl.store(Out + o_rows[:, None] * HEAD_DIM + offs_d[None, :], o.to(Out.dtype.element_ty))
        tl.store(Lse + o_rows, lse2 * 0.6931471805599453)


@triton.jit
def _bigbird_attn_fwd_merge_kernel(
    Out, Lse, PartO, PartLse, Mask, Glob,
    H, S, N_SLOTS, NUM_SPLITS,
    BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr, HAS_MASK: tl.constexpr,
):
    """Combine the split-KV partial results of global query rows by their log-sum-exp."""
    M_SUB: tl.constexpr = BLOCK_SIZE // BLOCK_M
    # a 1-D grid (CUDA limits grid y/z to 65535): consecutive programs share (b, h)
    per_bh = N_SLOTS // NUM_SPLITS * M_SUB
    bh = tl.program_id(0) // per_bh
    pid = tl.program_id(0) - bh * per_bh
    g = pid // M_SUB
    msub = pid - g * M_SUB
    row = tl.load(Glob + g)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    local = msub * BLOCK_M + offs_m

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    for sp in range(0, NUM_SPLITS):
        p_rows = (bh.to(tl.int64) * N_SLOTS + g * NUM_SPLITS + sp) * BLOCK_SIZE + local
        lse_s = tl.load(PartLse + p_rows)
        o_s = tl.load(PartO + p_rows[:, None] * HEAD_DIM + offs_d[None, :])
        m_new = tl.maximum(m_i, lse_s)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_use)
        w = tl.exp2(lse_s - m_use)
        l_i = l_i * alpha + w
        acc = acc * alpha[:, None] + w[:, None] * o_s
        m_i = m_new

    l_ok = l_i > 0.0
    l_safe = tl.where(l_ok, l_i, 1.0)
    o = acc / l_safe[:, None]
    lse2 = tl.where(l_ok, m_i + tl.log2(l_safe), float("-inf"))
    q_rows = row * BLOCK_SIZE + local
    if HAS_MASK:
        b = bh // H
        q_ok = tl.load(Mask + b.to(tl.int64) * S + q_rows) != 0
        o = tl.where(q_ok[:, None], o, 0.0)
        lse2 = tl.where(q_ok, lse2, float("-inf"))
    o_rows = bh.to(tl.int64) * S + q_rows
    tl.store(Out + o_rows[:, None] * HEAD_DIM + offs_d[None, :], o.to(Out.dtype.element_ty))
    tl.store(Lse + o_rows, lse2 * 0.6931471805599453)


@triton.jit
def _bigbird_attn_bwd_preprocess_kernel(
    Out, DO, Delta,
    stride_dob, stride_doh, stride_dos, stride_dod,
    H, S,
    BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr,
):
    """delta = rowsum(dO * O) in fp32 (O is the forward's contiguous output)."""
    # a 1-D grid (CUDA limits grid y/z to 65535): consecutive programs share (b, h)
    per_bh = S // BLOCK_M
    bh = tl.program_id(0) // per_bh
    pid = tl.program_id(0) - bh * per_bh
    b = bh // H
    h = bh - b * H
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    o_rows = bh.to(tl.int64) * S + rows
    o = tl.load(Out + o_rows[:, None] * HEAD_DIM + offs_d[None, :]).to(tl.float32)
    do_ptrs = (DO + b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh
               + rows.to(tl.int64)[:, None] * stride_dos + offs_d[None, :] * stride_dod)
    do = tl.load(do_ptrs).to(tl.float32)
    tl.store(Delta + o_rows, tl.sum(o * do, 1))


@triton.jit
def _bigbird_attn_bwd_dq_kernel(
    Q, K, V, DO, Lse, Delta, DQ, PartDQ, Mask,
    Items, ListIdx, ListCnt,
    sm_scale, sm_scale2,
    stride_qb, stride_qh, stride_qs, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    stride_dob, stride_doh, stride_dos, stride_dod,
    H, S, N_ITEMS, LIST_STRIDE, N_SLOTS,
    BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
    HAS_MASK: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """dq of one query tile over the key blocks its row lists (same items as the forward)."""
    M_SUB: tl.constexpr = BLOCK_SIZE // BLOCK_M
    N_SUB: tl.constexpr = BLOCK_SIZE // BLOCK_N
    # a 1-D grid (CUDA limits grid y/z to 65535): consecutive programs share (b, h)
    per_bh = N_ITEMS * M_SUB
    bh = tl.program_id(0) // per_bh
    pid = tl.program_id(0) - bh * per_bh
    b = bh // H
    h = bh - b * H
    item = pid // M_SUB
    msub = pid - item * M_SUB

    it = Items + (h * N_ITEMS + item) * 4
    row = tl.load(it)
    lo = tl.load(it + 1)
    hi = tl.load(it + 2)
    slot = tl.load(it + 3)

    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    q_rows = row * BLOCK_SIZE + msub * BLOCK_M + offs_m
    q_rows64 = q_rows.to(tl.int64)
    q = tl.load(Q + b64 * stride_qb + h64 * stride_qh + q_rows64[:, None] * stride_qs + offs_d[None, :] * stride_qd)
    do = tl.load(DO + b64 * stride_dob + h64 * stride_doh + q_rows64[:, None] * stride_dos + offs_d[None, :] * stride_dod)
    stat_rows = bh.to(tl.int64) * S + q_rows
    lse2 = tl.load(Lse + stat_rows) * 1.4426950408889634
    lse2 = tl.where(lse2 == float("-inf"), float("inf"), lse2)  # rows without weight: p = 0
    delta = tl.load(Delta + stat_rows)
    k_base = K + b64 * stride_kb + h64 * stride_kh
    v_base = V + b64 * stride_vb + h64 * stride_vh
    # tile offsets computed once (int32: the launcher keeps BLOCK_N * stride below 2**31); the loop adds
    # one int64 scalar per key tile
    k_tile = offs_n[:, None] * stride_ks + offs_d[None, :] * stride_kd
    v_tile = offs_n[:, None] * stride_vs + offs_d[None, :] * stride_vd
    mask_base = Mask + b64 * S
    list_base = h * LIST_STRIDE

    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    # next entry (and key mask) loaded one step ahead, padded key and value rows loaded as 0 (see the
    # forward): they feed dp and dq, where a weight of 0 must not meet NaN
    j = tl.load(ListIdx + list_base + lo)
    cnt = tl.load(ListCnt + list_base + lo)
    if HAS_MASK:
        key_ok = tl.load(mask_base + j.to(tl.int64) * BLOCK_SIZE + offs_n) != 0
    for tt in range(lo * N_SUB, hi * N_SUB):
        t = tt // N_SUB
        t_next = (tt + 1) // N_SUB
        j_next = tl.load(ListIdx + list_base + t_next)
        cnt_next = tl.load(ListCnt + list_base + t_next)
        shift = lse2 - tl.log2(cnt.to(tl.float32))
        row0 = (j * BLOCK_SIZE + (tt - t * N_SUB) * BLOCK_N).to(tl.int64)
        if HAS_MASK:
            row0_next = (j_next * BLOCK_SIZE + (tt + 1 - t_next * N_SUB) * BLOCK_N).to(tl.int64)
            key_ok_next = tl.load(mask_base + row0_next + offs_n) != 0
            k = tl.load(k_base + row0 * stride_ks + k_tile, mask=key_ok[:, None], other=0.0)
            v = tl.load(v_base + row0 * stride_vs + v_tile, mask=key_ok[:, None], other=0.0)
        else:
            k = tl.load(k_base + row0 * stride_ks + k_tile)
            v = tl.load(v_base + row0 * stride_vs + v_tile)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        if HAS_MASK:
            s = tl.where(key_ok[None, :], qk * sm_scale2, float("-inf"))
            p = tl.exp2(s - shift[:, None])
        else:
            p = tl.exp2(qk * sm_scale2 - shift[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)
        j = j_next
        cnt = cnt_next
        if HAS_MASK:
            key_ok = key_ok_next

    dq = dq * sm_scale
    if HAS_MASK:
        # padded query rows (whatever q holds there) get no gradient
        q_ok = tl.load(mask_base + q_rows) != 0
        dq = tl.where(q_ok[:, None], dq, 0.0)
    if slot >= 0:
        p_rows = (bh.to(tl.int64) * N_SLOTS + slot) * BLOCK_SIZE + msub * BLOCK_M + offs_m
        tl.store(PartDQ + p_rows[:, None] * HEAD_DIM + offs_d[None, :], dq)
    else:
        tl.store(DQ + stat_rows[:, None] * HEAD_DIM + offs_d[None, :], dq.to(DQ.dtype.element_ty))


@triton.jit
def _bigbird_attn_bwd_dkdv_kernel(
    Q, K, V, DO, Lse, Delta, DK, DV, PartDK, PartDV, Mask,
    Items, ListIdx, ListCnt,
    sm_scale, sm_scale2,
    stride_qb, stride_qh, stride_qs, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    stride_dob, stride_doh, stride_dos, stride_dod,
    H, S, N_ITEMS, LIST_STRIDE, N_SLOTS,
    BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
    HAS_MASK: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """dk, dv of one key tile over the query blocks that read it (transposed lists, global rows included)."""
    M_SUB: tl.constexpr = BLOCK_SIZE // BLOCK_M
    N_SUB: tl.constexpr = BLOCK_SIZE // BLOCK_N
    # a 1-D grid (CUDA limits grid y/z to 65535): consecutive programs share (b, h)
    per_bh = N_ITEMS * N_SUB
    bh = tl.program_id(0) // per_bh
    pid = tl.program_id(0) - bh * per_bh
    b = bh // H
    h = bh - b * H
    item = pid // N_SUB
    nsub = pid - item * N_SUB

    it = Items + (h * N_ITEMS + item) * 4
    col = tl.load(it)
    lo = tl.load(it + 1)
    hi = tl.load(it + 2)
    slot = tl.load(it + 3)

    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    k_rows = col * BLOCK_SIZE + nsub * BLOCK_N + offs_n
    k_rows64 = k_rows.to(tl.int64)
    k = tl.load(K + b64 * stride_kb + h64 * stride_kh + k_rows64[:, None] * stride_ks + offs_d[None, :] * stride_kd)
    v = tl.load(V + b64 * stride_vb + h64 * stride_vh + k_rows64[:, None] * stride_vs + offs_d[None, :] * stride_vd)
    q_base = Q + b64 * stride_qb + h64 * stride_qh
    do_base = DO + b64 * stride_dob + h64 * stride_doh
    q_tile = offs_m[:, None] * stride_qs + offs_d[None, :] * stride_qd
    do_tile = offs_m[:, None] * stride_dos + offs_d[None, :] * stride_dod
    stat_base = bh.to(tl.int64) * S
    list_base = h * LIST_STRIDE

    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    # next entry (and query mask) loaded one step ahead; padded query rows loaded as 0, so that their
    # p is exactly 0 (lse +inf) whatever q holds there (see the forward)
    i = tl.load(ListIdx + list_base + lo)
    cnt = tl.load(ListCnt + list_base + lo)
    if HAS_MASK:
        mask_base = Mask + b64 * S
        q_ok = tl.load(mask_base + i.to(tl.int64) * BLOCK_SIZE + offs_m) != 0
    for tt in range(lo * M_SUB, hi * M_SUB):
        t = tt // M_SUB
        t_next = (tt + 1) // M_SUB
        i_next = tl.load(ListIdx + list_base + t_next)
        cnt_next = tl.load(ListCnt + list_base + t_next)
        log2c = tl.log2(cnt.to(tl.float32))
        row0 = (i * BLOCK_SIZE + (tt - t * M_SUB) * BLOCK_M).to(tl.int64)
        if HAS_MASK:
            row0_next = (i_next * BLOCK_SIZE + (tt + 1 - t_next * M_SUB) * BLOCK_M).to(tl.int64)
            q_ok_next = tl.load(mask_base + row0_next + offs_m) != 0
            q = tl.load(q_base + row0 * stride_qs + q_tile, mask=q_ok[:, None], other=0.0)
        else:
            q = tl.load(q_base + row0 * stride_qs + q_tile)
        do = tl.load(do_base + row0 * stride_dos + do_tile)
        lse2 = tl.load(Lse + (stat_base + row0) + offs_m) * 1.4426950408889634
        lse2 = tl.where(lse2 == float("-inf"), float("inf"), lse2)
        delta = tl.load(Delta + (stat_base + row0) + offs_m)
        qk_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_M)
        p_t = tl.exp2(qk_t * sm_scale2 - (lse2 - log2c)[None, :])
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=DOT_PRECISION)
        i = i_next
        cnt = cnt_next
        if HAS_MASK:
            q_ok = q_ok_next

    dk = dk * sm_scale
    if HAS_MASK:
        # a padded key's column is garbage here (its logits were not masked in the loop) but only its
        # own rows of dk/dv depend on it: zero them
        key_ok = tl.load(mask_base + k_rows64) != 0
        dk = tl.where(key_ok[:, None], dk, 0.0)
        dv = tl.where(key_ok[:, None], dv, 0.0)
    if slot >= 0:
        p_rows = (bh.to(tl.int64) * N_SLOTS + slot) * BLOCK_SIZE + nsub * BLOCK_N + offs_n
        p_off = p_rows[:, None] * HEAD_DIM + offs_d[None, :]
        tl.store(PartDK + p_off, dk)
        tl.store(PartDV + p_off, dv)
    else:
        o_off = (stat_base + k_rows64)[:, None] * HEAD_DIM + offs_d[None, :]
        tl.store(DK + o_off, dk.to(DK.dtype.element_ty))
        tl.store(DV + o_off, dv.to(DV.dtype.element_ty))


@triton.jit
def _bigbird_attn_bwd_reduce_kernel(
    Part, Dst, Glob,
    S, N_SLOTS, NUM_SPLITS,
    BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr,
):
    """Dst[rows of global block g] = sum over splits (fixed order) of the fp32 partials."""
    M_SUB: tl.constexpr = BLOCK_SIZE // BLOCK_M
    # a 1-D grid (CUDA limits grid y/z to 65535): consecutive programs share (b, h)
    per_bh = N_SLOTS // NUM_SPLITS * M_SUB
    bh = tl.program_id(0) // per_bh
    pid = tl.program_id(0) - bh * per_bh
    g = pid // M_SUB
    msub = pid - g * M_SUB
    row = tl.load(Glob + g)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    local = msub * BLOCK_M + offs_m
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    for sp in range(0, NUM_SPLITS):
        p_rows = (bh.to(tl.int64) * N_SLOTS + g * NUM_SPLITS + sp) * BLOCK_SIZE + local
        acc += tl.load(Part + p_rows[:, None] * HEAD_DIM + offs_d[None, :])
    o_rows = bh.to(tl.int64) * S + row * BLOCK_SIZE + local
    tl.store(Dst + o_rows[:, None] * HEAD_DIM + offs_d[None, :], acc.to(Dst.dtype.element_ty))
