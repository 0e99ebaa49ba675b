"""torch.compile(fullgraph=True) of the op and of BlockSparseSelfAttention: no graph break, parity with
eager, recompilation only when the number of blocks changes, autocast bf16."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounterWithBackend

from bigbird_kernels import block_sparse_attention, get_layout
from bigbird_kernels.nn import BlockSparseSelfAttention, block_sparse_attn_func
from bigbird_kernels.testing import assert_close_by_rule, make_padding_mask, make_qkv

from test_nn import _by_hand

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _inputs(B, S, hid, bs, *, grad=False):
    x = torch.randn(B, S, hid, requires_grad=grad)
    mask = make_padding_mask(B, S, block_size=bs, kind="tail")
    mask[:, 0] = True
    return x, mask


def test_compiled_module_matches_eager_forward_and_backward():
    m = BlockSparseSelfAttention(64, 4, block_size=16, num_random_blocks=2).eval()
    cm = torch.compile(m, fullgraph=True)  # fullgraph: any graph break raises
    x, mask = _inputs(2, 330, 64, 16, grad=True)
    out = cm(x, mask.long())
    ref = m(x, mask.long())
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    g = torch.randn_like(ref)
    got = torch.autograd.grad(out, [x, *m.parameters()], g)
    want = torch.autograd.grad(ref, [x, *m.parameters()], g)
    names = ["x"] + [n for n, _ in m.named_parameters()]
    for name, a, b in zip(names, got, want):
        # fp32 sums over B*S tokens in another order: bound the error by the gradient's scale
        err, scale = (a - b).abs().max().item(), b.abs().max().item()
        assert err <= 2e-5 * max(scale, 1.0), f"grad {name}: max error {err:.3e} (max |grad| {scale:.3e})"


def test_compiled_op_with_layout_argument_matches_eager():
    def attn(q, k, v, layout, mask):
        return block_sparse_attention(q, k, v, layout, attention_mask=mask, backend="reference")

    cnt = CompileCounterWithBackend("inductor")
    f = torch.compile(attn, fullgraph=True, backend=cnt)
    B, H, S, D, bs = 2, 3, 16 * 20, 32, 16
    q, k, v = make_qkv(B, H, S, D)
    mask = make_padding_mask(B, S, block_size=bs, kind="tail")
    for training in (False, True):  # a different layout of the same structure: layout tensors are graph inputs
        layout = get_layout("hf", layer_idx=1, seq_len=S, block_size=bs, num_random_blocks=2, num_heads=H, training=training)
        torch.testing.assert_close(f(q, k, v, layout, mask), attn(q, k, v, layout, mask), atol=1e-5, rtol=0)
    assert cnt.frame_count == 1
    # the BSHD functional form compiles too, output in the caller's layout
    g = torch.compile(lambda q, k, v, lay: block_sparse_attn_func(q, k, v, lay, layout_format="BSHD"),
                      fullgraph=True, backend="aot_eager")
    qs, ks, vs = (t.transpose(1, 2) for t in (q, k, v))
    torch.testing.assert_close(g(qs, ks, vs, layout), block_sparse_attention(q, k, v, layout).transpose(1, 2),
                               atol=1e-5, rtol=0)


def test_recompiles_only_when_the_block_count_changes():
    m = BlockSparseSelfAttention(32, 2, block_size=16, num_random_blocks=2).eval()
    cnt = CompileCounterWithBackend("aot_eager")
    cm = torch.compile(m, fullgraph=True, backend=cnt)

    def run(S, dynamic=True):
        x, mask = _inputs(2, S, 32, 16)
        if dynamic:
            torch._dynamo.mark_dynamic(x, 1)
            torch._dynamo.mark_dynamic(mask, 1)
        torch.testing.assert_close(cm(x, mask), m(x, mask), atol=1e-5, rtol=0)

    run(305)  # 20 blocks, compiled with a dynamic length
    with torch._dynamo.config.patch(error_on_recompile=True):
        for S in (311, 319, 320):  # same 20 blocks, including the exact multiple: no recompile
            run(S)
    assert cnt.frame_count == 1
    run(321)  # 21 blocks: a new layout, one recompile
    with torch._dynamo.config.patch(error_on_recompile=True):
        for S in (330, 336, 310):  # both graphs are reused
            run(S)
    assert cnt.frame_count == 2

    # without mark_dynamic: the first length change makes the dimension dynamic (torch's automatic
    # dynamic shapes), then lengths of a known block count reuse their graph
    torch._dynamo.reset()
    cnt2 = CompileCounterWithBackend("aot_eager")
    cm = torch.compile(m, fullgraph=True, backend=cnt2)
    for S in (305, 311, 316, 320, 330, 335):
        run(S, dynamic=False)
    assert cnt2.frame_count == 3, cnt2.frame_count  # 305 static, 311 dynamic (20 blocks), 330 (21 blocks)


@pytest.mark.parametrize("mode, training", [("hf", True), ("seeded", False), ("resample", True)])
def test_compiled_module_in_every_layout_mode(mode, training):
    m = BlockSparseSelfAttention(32, 2, block_size=16, num_random_blocks=2, layout_mode=mode, layer_idx=3).train(training)
    cm = torch.compile(m, fullgraph=True, backend="aot_eager")
    x, mask = _inputs(2, 300, 32, 16, grad=True)
    out = cm(x, mask)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    if mode != "resample":
        torch.testing.assert_close(out, m(x, mask), atol=1e-5, rtol=0)
        return
    # compiled calls draw a fresh layout per call from torch's default generator, exactly as eager calls
    # do: from one generator state both make the same draws. (Comparing two compiled calls instead fails
    # when the padding leaves at most 3 real blocks: every random block is then padding and the outputs
    # do not depend on the layout.) All-real rows so a stale layout would show in the output.
    real = torch.ones_like(mask)
    state = torch.get_rng_state()
    compiled = [cm(x, real) for _ in range(2)]
    torch.set_rng_state(state)
    eager = [m(x, real) for _ in range(2)]
    for c, e in zip(compiled, eager):
        torch.testing.assert_close(c, e, atol=1e-5, rtol=0)


def test_compiled_module_under_autocast_bf16():
    m = BlockSparseSelfAttention(64, 4, block_size=16, num_random_blocks=2).eval()
    cm = torch.compile(m, fullgraph=True)
    x, mask = _inputs(2, 330, 64, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = cm(x, mask)
    assert out.dtype == torch.bfloat16
    m64 = BlockSparseSelfAttention(64, 4, block_size=16, num_random_blocks=2).double().eval()
    m64.load_state_dict(m.state_dict())
    mb = BlockSparseSelfAttention(64, 4, block_size=16, num_random_blocks=2).to(torch.bfloat16).eval()
    mb.load_state_dict(m.state_dict())
    with torch.no_grad():
        oracle = _by_hand(m64, x.double(), mask)
        lowp = _by_hand(mb, x.bfloat16(), mask, upcast=False)
    assert_close_by_rule(out, oracle, lowp, torch.bfloat16, what="compiled module under autocast")


def test_first_compiled_call_in_a_fresh_process():
    code = textwrap.dedent("""
        import torch
        from bigbird_kernels import block_sparse_attention, get_layout
        lay = get_layout("hf", layer_idx=0, seq_len=96, block_size=16, num_random_blocks=1, num_heads=1)
        f = torch.compile(lambda q, k, v: block_sparse_attention(q, k, v, lay, backend="reference"),
                          fullgraph=True, backend="eager")
        q = torch.randn(1, 1, 96, 8)
        f(q, q, q)
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.gpu
def test_no_host_synchronisation_in_compiled_or_eager_module_on_cuda():
    m = BlockSparseSelfAttention(64, 4, block_size=64, num_random_blocks=3, device="cuda").eval()
    x = torch.randn(2, 1000, 64, device="cuda", requires_grad=True)
    mask = torch.ones(2, 1000, dtype=torch.bool, device="cuda")
    mask[1, 700:] = False
    for fn in (m, torch.compile(m, fullgraph=True)):
        fn(x, mask).sum().backward()  # warm-up: layouts built and cached, kernels compiled
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            fn(x, mask).sum().backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
