"""The ``triton`` backend on a real GPU: forward and backward at real shapes against the reference,
races (bit-identical repeated runs), fp32, CUDA-graph capture, no host synchronisation, NaN in padded
positions, the self-check, and a speed report. Skipped without CUDA (tests/conftest.py).

Tolerances follow docs/design.md section 6 (``assert_close_by_rule``): error against the fp32 reference at
most 2x (3x for gradients) the error of the reference run in the low precision, plus a floor.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from bigbird_kernels import block_sparse_attention, block_sparse_attention_ref, hf_layout, make_layout, resample_layout
from bigbird_kernels import dispatch
from bigbird_kernels.dispatch import AttentionInputs, not_supported_reasons
from bigbird_kernels.testing import assert_close_by_rule, make_padding_mask, make_qkv

pytestmark = pytest.mark.gpu

DEV = "cuda"


@pytest.fixture(autouse=True)
def _no_interpreter(monkeypatch):
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("GPU tests need compiled Triton kernels: run without TRITON_INTERPRET (BIGBIRD_TEST_INTERPRET=0)")
    monkeypatch.setenv("BIGBIRD_TRITON_POISON", "1")  # NaN-filled outputs: unwritten elements fail


def _layout(kind: str, S: int, bs: int, H: int, r: int):
    nb = S // bs
    if kind == "hf_eval":  # block 0 listed r + 1 times
        return hf_layout(layer_idx=0, seq_len=S, block_size=bs, num_random_blocks=r, num_heads=H, training=False).to(DEV)
    if kind == "hf_train":
        return hf_layout(layer_idx=5, seq_len=S, block_size=bs, num_random_blocks=r, num_heads=H, training=True).to(DEV)
    if kind == "globals3_w5":
        g = torch.Generator().manual_seed(1)
        rand = torch.randint(0, nb, (H, nb, r), generator=g)
        return make_layout(rand, block_size=bs, window=5, global_blocks=(0, nb // 2, -1)).to(DEV)
    if kind == "no_globals":
        g = torch.Generator().manual_seed(2)
        return make_layout(torch.randint(0, nb, (H, nb, r), generator=g), block_size=bs, global_blocks=()).to(DEV)
    if kind == "resample":
        g = torch.Generator(device=DEV).manual_seed(3)
        return resample_layout(seq_len=S, block_size=bs, num_random_blocks=r, num_heads=H, generator=g, device=DEV)
    raise ValueError(kind)


def _require_backend(dtype, D, bs):
    inputs = AttentionInputs(device=torch.device(DEV), dtype=dtype, batch=1, num_heads=1, seq_len=4 * bs, head_dim=D,
                             block_size=bs, num_random_blocks=3, requires_grad=True, has_mask=False,
                             deterministic=False)
    reasons = not_supported_reasons("triton", inputs)
    assert not reasons, f"triton backend refuses a supported call: {reasons}"


# (id, dtype, B, H, S, D, block_size, r, layout kind, mask kind)
SHAPES = [
    ("bf16-1k-D64-bs64-hf_eval", torch.bfloat16, 2, 16, 1024, 64, 64, 3, "hf_eval", "none"),
    ("fp16-4k-D64-bs64-hf_train-tail", torch.float16, 2, 16, 4096, 64, 64, 3, "hf_train", "tail"),
    ("bf16-4k-D128-bs128-globals3", torch.bfloat16, 4, 8, 4096, 128, 128, 2, "globals3_w5", "none"),
    ("fp16-2k-D32-bs16-resample-adversarial", torch.float16, 4, 8, 2048, 32, 16, 3, "resample", "adversarial"),
    ("bf16-8k-D64-bs32-no_globals-holes", torch.bfloat16, 2, 16, 8192, 64, 32, 3, "no_globals", "holes"),
    ("bf16-16k-D64-bs64-hf_train", torch.bfloat16, 2, 16, 16384, 64, 64, 3, "hf_train", "none"),
    ("fp16-16k-D128-bs64-resample-tail", torch.float16, 2, 16, 16384, 128, 64, 3, "resample", "tail"),
    ("bf16-64k-D64-bs64-resample", torch.bfloat16, 1, 32, 65536, 64, 64, 3, "resample", "none"),
]


@pytest.mark.parametrize("case", SHAPES, ids=[s[0] for s in SHAPES])
def test_triton_matches_reference_fwd_bwd(case):
    _, dtype, B, H, S, D, bs, r, kind, mask_kind = case
    _require_backend(dtype, D, bs)
    layout = _layout(kind, S, bs, H, r)
    q, k, v = make_qkv(B, H, S, D, dtype=dtype, device=DEV)
    mask = None if mask_kind == "none" else make_padding_mask(B, S, block_size=bs, kind=mask_kind, device=DEV)
    do = torch.randn(B, H, S, D, device=DEV, dtype=dtype)

    def run(fn, qq, kk, vv):
        qq, kk, vv = (t.detach().requires_grad_() for t in (qq, kk, vv))
        out, lse = fn(qq, kk, vv)
        grads = torch.autograd.grad(out, (qq, kk, vv), do.to(out.dtype))
        return out.detach(), lse.detach(), grads

    out, lse, grads = run(lambda a, b, c: block_sparse_attention(a, b, c, layout, attention_mask=mask,
                                                                 backend="triton", return_lse=True), q, k, v)
    ref = run(lambda a, b, c: block_sparse_attention_ref(a, b, c, layout, mask, upcast=True), q.float(), k.float(),
              v.float())
    low = run(lambda a, b, c: block_sparse_attention_ref(a, b, c, layout, mask, upcast=False), q, k, v)
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert_close_by_rule(out, ref[0], low[0], dtype, what="out")
    assert torch.equal(torch.isneginf(lse), torch.isneginf(ref[1]))
    fin = torch.isfinite(ref[1])
    assert_close_by_rule(lse[fin], ref[1][fin], low[1][fin], dtype, what="lse")
    for name, g, gr, gl in zip(("dq", "dk", "dv"), grads, ref[2], low[2]):
        assert_close_by_rule(g, gr, gl, dtype, grad=True, what=name)
    if mask is not None:
        pad = ~mask[:, None, :].expand(B, H, S)
        assert (out[pad] == 0).all()
        assert (grads[1][pad] == 0).all() and (grads[2][pad] == 0).all()


@pytest.mark.parametrize("deterministic", [False, True])
def test_triton_bit_identical_runs(deterministic):
    """Races show up as run-to-run differences: forward and backward must repeat bit for bit."""
    B, H, S, D, bs = 2, 16, 8192, 64, 64
    layout = _layout("hf_train", S, bs, H, 3)
    q, k, v = make_qkv(B, H, S, D, dtype=torch.bfloat16, device=DEV)
    mask = make_padding_mask(B, S, block_size=bs, kind="tail", device=DEV)
    do = torch.randn(B, H, S, D, device=DEV, dtype=torch.bfloat16)
    results = []
    for _ in range(10):
        qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))
        out, lse = block_sparse_attention(qq, kk, vv, layout, attention_mask=mask, backend="triton", return_lse=True,
                                          deterministic=deterministic)
        results.append((out, lse, *torch.autograd.grad(out, (qq, kk, vv), do)))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def _fwd_bwd(q, k, v, layout, mask, do, **kw):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = block_sparse_attention(q, k, v, layout, attention_mask=mask, backend="triton", **kw)
    return (out.detach(), *torch.autograd.grad(out, (q, k, v), do))


def test_triton_fp32_matches_an_fp64_oracle():
    """fp32 runs in full fp32 (no TF32) on the GPU: within the fp32 rule of an fp64 oracle."""
    B, H, S, D, bs = 2, 4, 1024, 64, 64
    layout = _layout("hf_train", S, bs, H, 3)
    q, k, v = make_qkv(B, H, S, D, dtype=torch.float32, device=DEV)
    mask = make_padding_mask(B, S, block_size=bs, kind="tail", device=DEV)
    do = torch.randn(B, H, S, D, device=DEV)
    got = _fwd_bwd(q, k, v, layout, mask, do)

    def ref(dt):
        qq, kk, vv = (t.detach().to(dt).requires_grad_() for t in (q, k, v))
        out, _ = block_sparse_attention_ref(qq, kk, vv, layout, mask, upcast=False)
        return (out.detach(), *torch.autograd.grad(out, (qq, kk, vv), do.to(dt)))

    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        oracle, low = ref(torch.float64), ref(torch.float32)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    for name, a, o, lo in zip(("out", "dq", "dk", "dv"), got, oracle, low):
        assert_close_by_rule(a, o, lo, torch.float32, grad=name != "out", what=name)


def test_triton_nan_in_padded_positions_does_not_leak():
    B, H, S, D, bs = 3, 8, 4096, 64, 64
    layout = _layout("hf_train", S, bs, H, 3)
    q, k, v = make_qkv(B, H, S, D, dtype=torch.bfloat16, device=DEV)
    mask = make_padding_mask(B, S, block_size=bs, kind="adversarial", device=DEV)
    pad = ~mask[:, None, :, None]
    bad = [torch.where(pad, torch.full_like(t, val), t) for t, val in zip((q, k, v), (math.nan, math.inf, -math.inf))]
    do = torch.randn(B, H, S, D, device=DEV, dtype=torch.bfloat16)
    got = _fwd_bwd(*bad, layout, mask, do)
    clean = _fwd_bwd(q, k, v, layout, mask, do)
    real = mask[:, None, :].expand(B, H, S)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, clean):
        assert torch.isfinite(a).all(), name
        assert torch.equal(a[real], b[real]), f"{name}: padded positions changed real rows"  # padded rows load as 0
        assert (a[~real] == 0).all(), f"{name} must be exactly 0 at padded positions"


def test_triton_cuda_graph_capture_and_replay():
    """Forward and backward captured in a CUDA graph (the layout's plan built during capture: no host
    copy, no sync), replayed on new inputs: equal to eager calls."""
    B, H, S, D, bs = 2, 8, 4096, 64, 64
    make = lambda: resample_layout(seq_len=S, block_size=bs, num_random_blocks=3, num_heads=H, device=DEV)  # noqa: E731
    mask = make_padding_mask(B, S, block_size=bs, kind="tail", device=DEV)
    q, k, v, do = (torch.randn(B, H, S, D, device=DEV, dtype=torch.bfloat16) for _ in range(4))
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm-up on a side stream: compiles the kernels, caches this size's tables
        _fwd_bwd(q, k, v, make(), mask, do)
    torch.cuda.current_stream().wait_stream(s)
    layout = make()  # a new layout: its plan is built inside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = _fwd_bwd(q, k, v, layout, mask, do)
    for _ in range(2):
        for t in (q, k, v, do):
            t.copy_(torch.randn_like(t))
        graph.replay()
        eager = _fwd_bwd(q, k, v, layout, mask, do)
        for a, b in zip(static, eager):
            assert torch.equal(a, b)


def test_triton_no_host_sync_in_resample_mode():
    """``torch.cuda.set_sync_debug_mode("error")``: the op (fresh ``resample`` layouts each call, plan
    tables built per call) forward and backward never synchronise with the host."""
    from bigbird_kernels.backends.triton.ops import triton_attention

    B, H, S, D, bs = 2, 8, 4096, 64, 64
    mask = make_padding_mask(B, S, block_size=bs, kind="holes", device=DEV)
    q, k, v = make_qkv(B, H, S, D, dtype=torch.bfloat16, device=DEV, requires_grad=True)
    layouts = [resample_layout(seq_len=S, block_size=bs, num_random_blocks=3, num_heads=H, device=DEV)
               for _ in range(3)]
    out, _ = triton_attention(q, k, v, layouts[0], mask)  # first call of this size: compiles, caches tables
    out.sum().backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for layout in layouts[1:]:
            out, _ = triton_attention(q, k, v, layout, mask)
            torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("D", [64, 128])
def test_triton_self_check_passes_on_this_device(dtype, D):
    """The safety net's own problem, forward and backward: a correct kernel passes its tolerance."""
    for check_pass in ("fwd", "bwd"):
        err = dispatch.run_self_check(dispatch.get_backend("triton"), torch.device(DEV), dtype, D, 64, check_pass)
        assert err is None, err


def test_triton_speed_report():
    """Not an assertion: prints the effective TFLOP/s of the targets' shapes (docs/design.md section 7)."""
    import triton.testing

    rows = []
    for S in (4096, 16384, 65536):
        B, H, D, bs, r = max(1, 65536 // S) * 2, 12, 64, 64, 3
        layout = hf_layout(layer_idx=1, seq_len=S, block_size=bs, num_random_blocks=r, num_heads=H,
                           training=True).to(DEV)
        q, k, v = make_qkv(B, H, S, D, dtype=torch.bfloat16, device=DEV, requires_grad=True)
        flops = 4 * B * H * D * bs * bs * layout.num_pairs_per_head
        fwd = lambda: block_sparse_attention(q, k, v, layout, backend="triton")  # noqa: E731
        out = fwd()
        do = torch.randn_like(out)
        ms_f = triton.testing.do_bench(fwd, warmup=25, rep=200)
        ms_b = triton.testing.do_bench(lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True),
                                       warmup=25, rep=200)
        rows.append((S, B, ms_f, flops / ms_f * 1e-9, ms_b, 2.5 * flops / ms_b * 1e-9))
    print("\n S      B   fwd ms  fwd TFLOP/s  bwd ms  bwd TFLOP/s")
    for S, B, mf, tf, mb, tb in rows:
        print(f"{S:6d} {B:3d} {mf:7.3f} {tf:10.1f} {mb:7.3f} {tb:10.1f}")
