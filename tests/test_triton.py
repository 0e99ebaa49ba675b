"""The Triton backend under the interpreter (TRITON_INTERPRET=1, set by conftest): correctness of the
forward (out, lse) and backward (dq, dk, dv) against the reference, at small shapes.

bf16 ``tl.dot`` is wrong in the interpreter, so bf16 cases run the kernels on the bf16-valued inputs
upcast to fp32 and are judged with the fp32 floors. Every buffer the launchers allocate is NaN-poisoned
(BIGBIRD_TRITON_POISON=1), so an element a kernel forgets to write fails.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import pytest
import torch

from bigbird_kernels import (
    block_sparse_attention,
    block_sparse_attention_ref,
    hf_layout,
    make_layout,
    resample_layout,
    seeded_layout,
)
from bigbird_kernels.dispatch import AttentionInputs, get_backend
from bigbird_kernels.testing import assert_close_by_rule, make_padding_mask, make_qkv

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="interpreter tests need TRITON_INTERPRET=1 before triton loads"
)

launch = pytest.importorskip("bigbird_kernels.backends.triton.launch")


@pytest.fixture(autouse=True)
def _poison_outputs(monkeypatch):
    monkeypatch.setenv("BIGBIRD_TRITON_POISON", "1")
    # these tests compare with the reference themselves; the self-check (slow in the interpreter) has
    # its own tests in test_self_check.py
    monkeypatch.setenv("BIGBIRD_SELF_CHECK", "0")


# --------------------------------------------------------------------------------------------------
# the curated table
# --------------------------------------------------------------------------------------------------


def _hf(training, r):
    return lambda H, nb, bs: hf_layout(layer_idx=3, seq_len=nb * bs, block_size=bs, num_random_blocks=r,
                                       num_heads=H, training=training)


def _seeded(r):
    return lambda H, nb, bs: seeded_layout(layer_idx=1, seq_len=nb * bs, block_size=bs, num_random_blocks=r,
                                           num_heads=H)


def _resample(r, global_blocks=(0, -1)):
    def make(H, nb, bs):
        g = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,))))
        return resample_layout(seq_len=nb * bs, block_size=bs, num_random_blocks=r, num_heads=H,
                               global_blocks=global_blocks, generator=g)
    return make


def _r0(H, nb, bs):
    return make_layout(torch.zeros(H, nb, 0, dtype=torch.int32), block_size=bs)


@dataclass
class Case:
    id: str
    layout: object
    B: int
    H: int
    nb: int
    bs: int
    D: int
    dtype: torch.dtype
    mask: str = "none"
    split: tuple | None = None  # (fwd, bwd) key blocks per split-KV program
    scale: float | None = None
    strided: bool = False
    lse_grad: bool = False
    extra: dict = field(default_factory=dict)


CASES = [
    Case("hf-eval-r3-fp32-bs16-D32", _hf(False, 3), B=2, H=2, nb=6, bs=16, D=32, dtype=torch.float32),
    Case("hf-train-r3-fp16-bs16-D64-tail", _hf(True, 3), B=2, H=2, nb=8, bs=16, D=64, dtype=torch.float16, mask="tail"),
    Case("seeded-r2-fp32-bs32-D32-holes-split", _seeded(2), B=1, H=2, nb=7, bs=32, D=32, dtype=torch.float32,
         mask="holes", split=(2, 3)),
    Case("resample-r2-bf16up-bs16-D32-tail", _resample(2), B=2, H=2, nb=8, bs=16, D=32, dtype=torch.bfloat16,
         mask="tail"),
    Case("r0-fp16-bs32-D32", _r0, B=1, H=2, nb=5, bs=32, D=32, dtype=torch.float16),
    Case("globals-0-3-last-H3-fp32-adversarial-split", _resample(1, (0, 3, -1)), B=2, H=3, nb=8, bs=16, D=32,
         dtype=torch.float32, mask="adversarial", split=(3, 2)),
    Case("allpad-row-hf-train-fp16-adversarial-split", _hf(True, 1), B=3, H=2, nb=6, bs=16, D=32,
         dtype=torch.float16, mask="adversarial", split=(2, 2)),
    Case("bs128-fp16-D32-split", _hf(False, 1), B=1, H=1, nb=4, bs=128, D=32, dtype=torch.float16, split=(1, 1)),
    Case("D128-fp32-bs32-strided-smallscale", _resample(1), B=1, H=2, nb=5, bs=32, D=128, dtype=torch.float32,
         scale=0.07, strided=True, mask="tail"),
    Case("bs64-fp16-D64-holes-lsegrad", _resample(1), B=1, H=1, nb=4, bs=64, D=64, dtype=torch.float16,
         mask="holes", lse_grad=True),
    Case("hf-train-r2-bf16up-bs32-D64-holes-split", _hf(True, 2), B=1, H=2, nb=7, bs=32, D=64,
         dtype=torch.bfloat16, mask="holes", split=(4, 3)),
    Case("resample-r3-fp16-bs16-D128-adversarial", _resample(3), B=3, H=1, nb=9, bs=16, D=128,
         dtype=torch.float16, mask="adversarial"),
    Case("window1-r0-fp32-bs16-D32-H3", lambda H, nb, bs: make_layout(torch.zeros(H, nb, 0, dtype=torch.int32),
         block_size=bs, window=1), B=1, H=3, nb=6, bs=16, D=32, dtype=torch.float32, split=(2, 2)),
    Case("no-globals-w5-r2-fp32-bs16-D32-holes", lambda H, nb, bs: make_layout(torch.randint(0, nb, (H, nb, 2)),
         block_size=bs, window=5, global_blocks=()), B=2, H=2, nb=7, bs=16, D=32, dtype=torch.float32, mask="holes"),
    Case("hf-eval-r3-fp16-bs32-D32-adversarial-split", _hf(False, 3), B=3, H=1, nb=6, bs=32, D=32,
         dtype=torch.float16, mask="adversarial", split=(2, 4)),
]


def _inputs(c: Case, requires_grad=True):
    S = c.nb * c.bs
    q, k, v = make_qkv(c.B, c.H, S, c.D, dtype=c.dtype)
    if c.strided:  # (B, S, H, D) storage seen as (B, H, S, D): no unit stride on S
        q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
        assert not q.is_contiguous()
    mask = None if c.mask == "none" else make_padding_mask(c.B, S, block_size=c.bs, kind=c.mask)
    return q, k, v, mask


def _loss_terms(out, lse, do, dl):
    loss = (out.float() * do).sum()
    if dl is not None:
        loss = loss + torch.where(torch.isfinite(lse), lse * dl, torch.zeros_like(lse)).sum()
    return loss


def _run_triton(q, k, v, layout, mask, scale, do, dl, split=None, deterministic=False):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    ctx = launch.split_override(*split) if split else _nullctx()
    with ctx:
        out, lse = block_sparse_attention(q, k, v, layout, attention_mask=mask, scale=scale, backend="triton",
                                          return_lse=True, deterministic=deterministic)
        grads = torch.autograd.grad(_loss_terms(out, lse, do, dl), (q, k, v))
    return out.detach(), lse.detach(), grads


class _nullctx:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _run_ref(q, k, v, layout, mask, scale, do, dl, upcast):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out, lse = block_sparse_attention_ref(q, k, v, layout, mask, scale, upcast=upcast)
    grads = torch.autograd.grad(_loss_terms(out, lse, do, dl), (q, k, v))
    return out.detach(), lse.detach(), grads


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_forward_backward_matches_reference(c: Case):
    layout = c.layout(c.H, c.nb, c.bs)
    q, k, v, mask = _inputs(c)
    # bf16 tl.dot is wrong in the interpreter: run bf16-valued inputs in fp32, judge with fp32 floors
    kdtype = torch.float32 if c.dtype == torch.bfloat16 else c.dtype
    qk, kk, vk = (t.to(kdtype) for t in (q, k, v))
    do = torch.randn(q.shape)
    dl = torch.randn(q.shape[:-1]) if c.lse_grad else None

    out, lse, grads = _run_triton(qk, kk, vk, layout, mask, c.scale, do, dl, split=c.split)
    o_ref, lse_ref, g_ref = _run_ref(qk.float(), kk.float(), vk.float(), layout, mask, c.scale, do, dl, upcast=True)
    if kdtype == torch.float32:
        o_low, lse_low, g_low = o_ref, lse_ref, g_ref
    else:
        o_low, lse_low, g_low = _run_ref(qk, kk, vk, layout, mask, c.scale, do, dl, upcast=False)

    assert out.dtype == kdtype and out.shape == q.shape and lse.dtype == torch.float32
    assert_close_by_rule(out, o_ref, o_low, kdtype, what="out")
    # lse: -inf exactly where the reference has it, finite values by the rule
    inf_k, inf_r = torch.isneginf(lse), torch.isneginf(lse_ref)
    assert torch.equal(inf_k, inf_r), "lse is -inf at different rows than the reference"
    fin = ~inf_r
    assert_close_by_rule(lse[fin], lse_ref[fin], lse_low[fin], kdtype, what="lse")
    for name, g, gr, gl in zip(("dq", "dk", "dv"), grads, g_ref, g_low):
        assert g.dtype == kdtype
        assert_close_by_rule(g, gr, gl, kdtype, grad=True, what=name)
    if mask is not None:
        q_pad = ~mask[:, None, :].expand(c.B, c.H, -1)
        assert (out[q_pad] == 0).all(), "padded query rows must be exactly 0"
        assert torch.isneginf(lse[q_pad]).all()
        assert (grads[1][q_pad] == 0).all() and (grads[2][q_pad] == 0).all(), "padded keys must get no gradient"


HOPPER_CASES = [
    Case("sm90-D128-bs64-fp16-holes-split", _resample(1), B=1, H=2, nb=5, bs=64, D=128, dtype=torch.float16,
         mask="holes", split=(2, 2)),
    Case("sm90-D128-bs128-fp16-tail", _hf(False, 1), B=1, H=1, nb=4, bs=128, D=128, dtype=torch.float16, mask="tail"),
]


@pytest.mark.parametrize("c", HOPPER_CASES, ids=[c.id for c in HOPPER_CASES])
def test_hopper_configurations_match_reference(c: Case, monkeypatch):
    """The launch configurations chosen for sm_90 (one warp group, 32-row query steps in dk/dv at head
    dim 128) compute the same gradients: the launcher is told it runs on sm_90."""
    monkeypatch.setattr(launch, "arch_of", lambda device: 90)
    assert launch.bwd_dkdv_config(c.dtype, c.D, c.bs, 90).block_m == 32
    test_forward_backward_matches_reference(c)


def _plant_non_finite(t, pad):
    """``t`` with NaN, +Inf and -Inf (cycling) in the sequence positions where ``pad`` (B, S) is True."""
    bad = torch.tensor([float("nan"), float("inf"), float("-inf")], dtype=t.dtype)
    fill = bad[torch.arange(t.numel()) % 3].reshape(t.shape)
    return torch.where(pad[:, None, :, None], fill, t)


NAN_CASES = [c for c in CASES if c.id in ("seeded-r2-fp32-bs32-D32-holes-split", "allpad-row-hf-train-fp16-adversarial-split",
                                          "D128-fp32-bs32-strided-negscale", "hf-eval-r3-fp16-bs32-D32-adversarial-split")]


@pytest.mark.parametrize("c", NAN_CASES, ids=[c.id for c in NAN_CASES])
def test_non_finite_padded_positions_do_not_leak(c: Case):
    """NaN / Inf in q, k and v at padded positions only: real rows and every gradient equal the
    reference on clean inputs (so finite), padded query rows are exactly 0 and padded keys get no
    gradient (the kernels select, never multiply by a 0 weight)."""
    layout = c.layout(c.H, c.nb, c.bs)
    q, k, v, mask = _inputs(c)
    pad = ~mask
    assert pad.any()
    dirty = [_plant_non_finite(t, pad) for t in (q, k, v)]
    if c.strided:
        dirty = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in dirty]
    do = torch.randn(q.shape)
    out, lse, grads = _run_triton(*dirty, layout, mask, c.scale, do, None, split=c.split)
    o_ref, lse_ref, g_ref = _run_ref(q.float(), k.float(), v.float(), layout, mask, c.scale, do, None, upcast=True)
    o_low, _, g_low = _run_ref(q, k, v, layout, mask, c.scale, do, None, upcast=False)
    assert_close_by_rule(out, o_ref, o_low, c.dtype, what="out")
    q_pad = pad[:, None, :].expand(c.B, c.H, -1)
    assert (out[q_pad] == 0).all(), "padded query rows must be exactly 0"
    assert torch.equal(torch.isneginf(lse), torch.isneginf(lse_ref))
    for name, g, gr, gl in zip(("dq", "dk", "dv"), grads, g_ref, g_low):
        assert_close_by_rule(g, gr, gl, c.dtype, grad=True, what=name)
        assert (g[q_pad] == 0).all(), f"{name} of padded positions must be exactly 0"


# --------------------------------------------------------------------------------------------------
# plans, poisoning, determinism, capabilities
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["hf-train-nb64", "globals-resample-nb40", "hf-eval-nb20", "no-globals-nb30"])
@pytest.mark.parametrize("split", [None, (5, 7)])
def test_plan_tables_reproduce_the_layout(which, split):
    """The kernels' tables (deduplicated lists + multiplicities, transposed lists, split items) describe
    exactly the layout's (query block, key block) counts, and the split items tile every list once."""
    if which == "hf-train-nb64":
        layout = hf_layout(layer_idx=2, seq_len=64 * 16, block_size=16, num_random_blocks=3, num_heads=3, training=True)
    elif which == "globals-resample-nb40":
        layout = _resample(3, (0, 7, 8, -1))(2, 40, 16)
    elif which == "no-globals-nb30":
        layout = make_layout(torch.randint(0, 30, (2, 30, 4)), block_size=16, window=5, global_blocks=())
    else:
        layout = hf_layout(layer_idx=0, seq_len=20 * 16, block_size=16, num_random_blocks=3, num_heads=2, training=False)
    with launch.split_override(*(split or (None, None))):
        plan = launch.build_plan(layout)
    dense = layout.to_dense().long()  # (H, nb, nb)
    H, nb, _ = dense.shape
    for items, idx, cnt, by_row in ((plan.fwd_items, plan.fwd_idx, plan.fwd_cnt, True),
                                    (plan.bwd_items, plan.bwd_idx, plan.bwd_cnt, False)):
        for h in range(H):
            got = torch.zeros(nb, nb, dtype=torch.long)
            for blk, lo, hi, slot in items[h].tolist():
                for t in range(lo, hi):
                    other = int(idx[h, t])
                    if by_row:
                        got[blk, other] += int(cnt[h, t])
                    else:
                        got[other, blk] += int(cnt[h, t])
            assert torch.equal(got, dense[h]), f"{'fwd' if by_row else 'bwd'} tables of head {h} disagree with the layout"
        slots = sorted(s for s in items[0, :, 3].tolist() if s >= 0)
        assert slots == list(range(len(slots)))  # each scratch slot written by exactly one program
    if split and layout.global_blocks:
        assert plan.fwd_splits > 1 and plan.bwd_splits > 1


def test_resample_calls_copy_nothing_from_the_host(monkeypatch):
    """``resample`` makes a new layout per call: after the first call of a size, building its plan and
    running forward and backward make no host-to-device copy (no ``torch.tensor`` / ``torch.as_tensor``
    of host data) and building the plan reads nothing back (no ``item`` / ``tolist`` / ``bool``)."""
    B, H, nb, bs, D = 2, 2, 8, 16, 32
    q, k, v = make_qkv(B, H, nb * bs, D, requires_grad=True)
    mask = make_padding_mask(B, nb * bs, block_size=bs, kind="holes")
    import torch._dynamo  # noqa: F401  (dynamo records torch's functions on import: not the wrappers below)

    made, synced = [], []
    monkeypatch.setattr(launch, "_STATIC", {})  # as in a fresh process

    def counting(log, fn):
        def wrapper(*a, **kw):
            log.append(fn.__name__)
            return fn(*a, **kw)
        return wrapper

    for call in range(3):
        layout = _resample(2)(H, nb, bs)
        with monkeypatch.context() as m:
            for name in ("tensor", "as_tensor"):
                m.setattr(torch, name, counting(made, getattr(torch, name)))
            with monkeypatch.context() as m2:
                for name in ("item", "tolist", "__bool__"):
                    m2.setattr(torch.Tensor, name, counting(synced, getattr(torch.Tensor, name)))
                launch.get_plan(layout)
            out = block_sparse_attention(q, k, v, layout, attention_mask=mask, backend="triton")
            out.sum().backward()
        assert synced == [], f"call {call}: building the plan synchronised with the host: {synced}"
        if call == 0:
            assert made, "the first call builds the layout-independent tables"
        else:
            assert made == [], f"call {call}: host-to-device copies: {made}"
        made.clear()


def test_tables_cached_in_inference_mode_serve_training(monkeypatch):
    """A first call under ``torch.inference_mode`` caches the layout's plan and the size's tables; a
    later training call (same layout, or a new layout of that size) can save them for backward."""
    monkeypatch.setattr(launch, "_STATIC", {})
    B, H, nb, bs, D = 1, 2, 6, 16, 32
    layout = _resample(1)(H, nb, bs)
    q, k, v = make_qkv(B, H, nb * bs, D)
    with torch.inference_mode():
        block_sparse_attention(q, k, v, layout, backend="triton")
    for lay in (layout, _resample(1)(H, nb, bs)):
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
        block_sparse_attention(qq, kk, vv, lay, backend="triton").sum().backward()
        assert all(torch.isfinite(t.grad).all() for t in (qq, kk, vv))


def test_poison_catches_unwritten_outputs():
    """The harness works: a program that is not launched leaves NaN behind."""
    layout = _hf(False, 1)(1, 4, 16)
    q, k, v = make_qkv(1, 1, 64, 32)
    plan = launch.build_plan(layout)
    assert plan.fwd_items[0, -1, 0].item() == 2  # items: global rows 0 and 3, then rows 1 and 2
    items = plan.fwd_items[:, :-1].contiguous()  # drop query block 2's program
    out, lse = launch._bigbird_attn_fwd(q, k, v, None, items, plan.fwd_idx, plan.fwd_cnt, plan.glob, 0.2, 16,
                                        plan.fwd_splits)
    assert torch.isnan(out[..., 32:48, :]).all() and torch.isnan(lse[..., 32:48]).all()
    rest = torch.cat([out[..., :32, :], out[..., 48:, :]], dim=-2)
    assert not torch.isnan(rest).any()


def test_deterministic_bit_identical():
    c = CASES[5]  # extra globals, split forward and backward, adversarial padding
    layout = c.layout(c.H, c.nb, c.bs)
    q, k, v, mask = _inputs(c)
    do = torch.randn(q.shape)
    runs = [_run_triton(q, k, v, layout, mask, None, do, None, split=c.split, deterministic=True) for _ in range(2)]
    (o1, l1, g1), (o2, l2, g2) = runs
    assert torch.equal(o1, o2) and torch.equal(l1, l2)
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)


def _inputs_record(**kw):
    base = dict(device=torch.device("cpu"), dtype=torch.float16, batch=1, num_heads=2, seq_len=256, head_dim=64,
                block_size=64, num_random_blocks=3, requires_grad=True, has_mask=False, deterministic=False)
    base.update(kw)
    return AttentionInputs(**base)


def test_not_supported_reasons(monkeypatch):
    backend = get_backend("triton")
    assert backend is not None and backend.name == "triton"
    assert backend.not_supported_reasons(_inputs_record()) == []
    for kw, word in ((dict(dtype=torch.float64), "dtype"), (dict(head_dim=48), "head_dim"),
                     (dict(block_size=8), "block_size"), (dict(block_size=256), "block_size")):
        reasons = backend.not_supported_reasons(_inputs_record(**kw))
        assert len(reasons) == 1 and word in reasons[0], reasons
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    reasons = backend.not_supported_reasons(_inputs_record())
    assert len(reasons) == 1 and "CUDA" in reasons[0]


# --------------------------------------------------------------------------------------------------
# torch.library: opcheck and torch.compile
# --------------------------------------------------------------------------------------------------


def test_opcheck():
    import bigbird_kernels.backends.triton.ops  # noqa: F401  (registers the ops)

    layout = _hf(True, 1)(2, 6, 16)
    q, k, v = make_qkv(1, 2, 96, 32, requires_grad=True)
    mask = make_padding_mask(1, 96, block_size=16, kind="tail")
    with launch.split_override(2, 2):
        plan = launch.get_plan(layout)
    for m in (None, mask):
        args = (q, k, v, m, *plan.tensors(), 1.0 / math.sqrt(32), 16, plan.fwd_splits, plan.bwd_splits)
        torch.library.opcheck(torch.ops.bigbird_kernels.triton_attn_fwd.default, args)


def test_torch_compile_fullgraph():
    """torch.compile(fullgraph=True) of the public op with backend="triton" (inductor on CPU; the custom
    op runs the interpreted kernels), forward and backward equal to eager."""
    get_backend("triton")  # the dispatcher imports backends lazily: importlib cannot be traced
    layout = _hf(False, 1)(2, 5, 16)
    q, k, v = make_qkv(1, 2, 80, 32, requires_grad=True)
    mask = make_padding_mask(1, 80, block_size=16, kind="tail")

    def f(q, k, v, mask):
        out, lse = block_sparse_attention(q, k, v, layout, attention_mask=mask, backend="triton", return_lse=True)
        return out, lse

    torch._dynamo.reset()
    cf = torch.compile(f, fullgraph=True)
    do = torch.randn(q.shape)
    out_c, lse_c = cf(q, k, v, mask)
    g_c = torch.autograd.grad((out_c * do).sum(), (q, k, v))
    out_e, lse_e = f(q, k, v, mask)
    g_e = torch.autograd.grad((out_e * do).sum(), (q, k, v))
    assert torch.equal(out_c, out_e) and torch.equal(lse_c, lse_e)
    for a, b in zip(g_c, g_e):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# the flex baseline (CPU: eager FlexAttention, forward only)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask_kind", ["none", "adversarial"])
def test_flex_baseline_forward(mask_kind):
    pytest.importorskip("torch.nn.attention.flex_attention")
    B, H, nb, bs, D = 3, 2, 8, 16, 32
    layout = _hf(True, 3)(H, nb, bs)  # random blocks, duplicates
    q, k, v = make_qkv(B, H, nb * bs, D)
    mask = None if mask_kind == "none" else make_padding_mask(B, nb * bs, block_size=bs, kind=mask_kind)
    out, lse = block_sparse_attention(q, k, v, layout, attention_mask=mask, backend="flex", return_lse=True)
    o_ref, lse_ref = block_sparse_attention_ref(q, k, v, layout, mask)
    assert_close_by_rule(out, o_ref, o_ref, torch.float32, what="flex out")
    assert torch.equal(torch.isneginf(lse), torch.isneginf(lse_ref))
    fin = torch.isfinite(lse_ref)
    torch.testing.assert_close(lse[fin], lse_ref[fin], rtol=0, atol=1e-5)
    reasons = get_backend("flex").not_supported_reasons(_inputs_record(requires_grad=True))
    assert any("backward" in r for r in reasons)
