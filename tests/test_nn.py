"""bigbird_kernels.nn: the BlockSparseSelfAttention module and the BSHD/BHSD functional form."""

import math

import numpy as np
import pytest
import torch

from bigbird_kernels import block_sparse_attention, block_sparse_attention_ref, get_layout, resample_layout
from bigbird_kernels.nn import BlockSparseSelfAttention, _resample_traceable, block_sparse_attn_func
from bigbird_kernels.testing import assert_close_by_rule, make_padding_mask, make_qkv


def _by_hand(m: BlockSparseSelfAttention, x, mask, *, layout=None, upcast=None):
    """The module's function written out: pad, q/k/v through its Linear layers, the reference, unpad."""
    B, S, hid = x.shape
    bs, H, D = m.block_size, m.num_heads, m.head_dim
    Sp = -(-S // bs) * bs
    xp = torch.cat([x, x.new_zeros(B, Sp - S, hid)], dim=1)
    real = torch.zeros(B, Sp, dtype=torch.bool)
    real[:, :S] = True if mask is None else mask.bool()
    q, k, v = (lin(xp).view(B, Sp, H, D).transpose(1, 2) for lin in (m.query, m.key, m.value))
    if layout is None:
        layout = get_layout(m.layout_mode, layer_idx=m.layer_idx, seq_len=Sp, block_size=bs,
                            num_random_blocks=m.num_random_blocks, num_heads=H, training=m.training,
                            max_position_embeddings=m.max_position_embeddings)
    out, _ = block_sparse_attention_ref(q, k, v, layout, real, upcast=upcast)
    out = out.transpose(1, 2).reshape(B, Sp, hid)
    if m.out_proj is not None:
        out = m.out_proj(out)
    return out[:, :S]


CASES = [
    # (B, S, hidden, H, block, r, mode, training)
    (2, 330, 64, 4, 16, 2, "hf", False),  # padded 330 -> 336
    (3, 320, 32, 2, 16, 3, "hf", True),  # block multiple, HF training layout
    (2, 300, 48, 3, 32, 1, "seeded", False),
    (1, 97, 16, 1, 16, 0, "hf", True),  # r = 0, odd length, one head
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}-S{}-hid{}-H{}-bs{}-r{}-{}-{}".format(*c[:7], "train" if c[7] else "eval"))
def test_module_forward_and_grads_match_reference_by_hand(case):
    B, S, hid, H, bs, r, mode, training = case
    m = BlockSparseSelfAttention(hid, H, block_size=bs, num_random_blocks=r, layout_mode=mode, layer_idx=2,
                                 max_position_embeddings=1024).double().train(training)
    x = torch.randn(B, S, hid, dtype=torch.float64, requires_grad=True)
    mask = make_padding_mask(B, S, block_size=bs, kind="tail")
    mask[:, 0] = True
    out = m(x, mask.long())
    ref = _by_hand(m, x, mask)
    assert out.shape == (B, S, hid)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, *m.parameters()], g)
    grads_ref = torch.autograd.grad(ref, [x, *m.parameters()], g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    # 0/1 integer and bool masks mean the same
    torch.testing.assert_close(m(x, mask), out, atol=0, rtol=0)


def test_module_fp32_grads_match_reference_by_hand():
    m = BlockSparseSelfAttention(64, 4, block_size=16, num_random_blocks=2).train()
    x = torch.randn(2, 333, 64, requires_grad=True)
    mask = make_padding_mask(2, 333, block_size=16, kind="tail")
    mask[:, 0] = True
    out, ref = m(x, mask), _by_hand(m, x, mask)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, *m.parameters()], g)
    want = torch.autograd.grad(ref, [x, *m.parameters()], g)
    names = ["x"] + [n for n, _ in m.named_parameters()]
    for name, a, b in zip(names, got, want):
        err, scale = (a - b).abs().max().item(), b.abs().max().item()
        assert err <= 2e-5 * max(scale, 1.0), f"grad {name}: max error {err:.3e} (max |grad| {scale:.3e})"


def test_padded_positions_are_zero_before_the_output_projection():
    m = BlockSparseSelfAttention(32, 2, block_size=16, num_random_blocks=1, out_proj=False)
    x = torch.randn(3, 200, 32)
    mask = make_padding_mask(3, 200, block_size=16, kind="adversarial")  # includes an all-padding row
    out = m(x, mask)
    assert torch.isfinite(out).all()
    assert (out[~mask] == 0).all()
    assert m.out_proj is None and sorted(n for n, _ in m.named_parameters()) == [
        "key.bias", "key.weight", "query.bias", "query.weight", "value.bias", "value.weight"]


def test_no_mask_equals_all_true_mask_and_unpadded_length():
    m = BlockSparseSelfAttention(32, 2, block_size=16, num_random_blocks=2)
    x = torch.randn(2, 250, 32)
    torch.testing.assert_close(m(x), m(x, torch.ones(2, 250, dtype=torch.bool)), atol=0, rtol=0)
    x = torch.randn(2, 256, 32)  # block multiple: no padding path
    torch.testing.assert_close(m(x), _by_hand(m, x, None), atol=1e-5, rtol=0)


@pytest.mark.parametrize("S, training", [(1, True), (16, False), (40, True), (64, True)])
def test_short_sequences_run_full_attention(S, training):
    # fewer than 3 blocks, or (training) too few blocks for HF's generator to place r=2 random blocks
    m = BlockSparseSelfAttention(16, 2, block_size=16, num_random_blocks=2).double().train(training)
    x = torch.randn(2, S, 16, dtype=torch.float64)
    q, k, v = (lin(x).view(2, S, 2, 8).transpose(1, 2) for lin in (m.query, m.key, m.value))
    dense = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), -1) @ v
    torch.testing.assert_close(m(x), m.out_proj(dense.transpose(1, 2).reshape(2, S, 16)), atol=1e-12, rtol=0)


def test_layout_modes_and_layer_index():
    kw = dict(block_size=16, num_random_blocks=2, max_position_embeddings=1024)
    hf = BlockSparseSelfAttention(32, 2, layout_mode="hf", layer_idx=3, **kw)
    seeded = BlockSparseSelfAttention(32, 2, layout_mode="seeded", layer_idx=3, **kw)
    ref_train = get_layout("hf", layer_idx=3, seq_len=320, block_size=16, num_random_blocks=2, num_heads=2,
                           training=True, max_position_embeddings=1024)
    assert (hf.eval().get_layout(320).random_blocks == 0).all()  # HF eval: every random slot is block 0
    assert torch.equal(hf.train().get_layout(320).random_blocks, ref_train.random_blocks)
    assert torch.equal(seeded.eval().get_layout(320).random_blocks, ref_train.random_blocks)
    # the module keeps its layouts (host work once per length)
    assert hf.get_layout(320) is hf.get_layout(320)


def test_resample_mode_seeded_generator_replays():
    m = BlockSparseSelfAttention(32, 2, block_size=16, num_random_blocks=2, layout_mode="resample", seed=7)
    a, b = m.get_layout(320), m.get_layout(320)
    assert not torch.equal(a.random_blocks, b.random_blocks)
    m.reset_generator()
    assert torch.equal(m.get_layout(320).random_blocks, a.random_blocks)
    x = torch.randn(2, 300, 32)
    m.reset_generator()
    y1 = m(x)
    m.reset_generator()
    torch.testing.assert_close(m(x), y1, atol=0, rtol=0)
    with pytest.raises(ValueError, match="seed only applies"):
        BlockSparseSelfAttention(32, 2, layout_mode="hf", seed=1)


def test_traceable_resample_equals_resample_layout():
    from bigbird_kernels.nn import _build_layout

    base = _build_layout("resample-base", layer_idx=0, seq_len=16 * 14, block_size=16, num_random_blocks=3,
                         num_heads=3, max_position_embeddings=4096, training=False, window=3,
                         global_blocks=(0, 13), device=torch.device("cpu"))
    ours = _resample_traceable(base, torch.Generator().manual_seed(5))
    ref = resample_layout(seq_len=16 * 14, block_size=16, num_random_blocks=3, num_heads=3,
                          generator=torch.Generator().manual_seed(5))
    for name in ("random_blocks", "kv_indices", "kv_num_blocks", "is_global"):
        assert torch.equal(getattr(ours, name), getattr(ref, name)), name
    assert ours.nnz_per_head == ref.nnz_per_head and ours.global_blocks == ref.global_blocks


def test_module_rejects_bad_inputs():
    m = BlockSparseSelfAttention(32, 2, block_size=16, num_random_blocks=1)
    with pytest.raises(TypeError, match="additive float masks"):
        m(torch.randn(1, 40, 32), torch.ones(1, 40))
    with pytest.raises(ValueError, match=r"\(B, S\)"):
        m(torch.randn(1, 40, 32), torch.ones(1, 41, dtype=torch.bool))
    with pytest.raises(ValueError, match="hidden_states"):
        m(torch.randn(1, 40, 16))
    with pytest.raises(ValueError, match="multiple of num_heads"):
        BlockSparseSelfAttention(30, 4)
    with pytest.raises(ValueError, match="layout_mode"):
        BlockSparseSelfAttention(32, 2, layout_mode="google")


def test_autocast_bf16_within_tolerance_rule():
    torch.manual_seed(torch.initial_seed())
    m = BlockSparseSelfAttention(64, 4, block_size=16, num_random_blocks=2)
    x = torch.randn(2, 330, 64)
    mask = make_padding_mask(2, 330, block_size=16, kind="tail")
    mask[:, 0] = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x, mask)
    assert out.dtype == torch.bfloat16
    m64 = BlockSparseSelfAttention(64, 4, block_size=16, num_random_blocks=2).double()
    m64.load_state_dict(m.state_dict())
    oracle = _by_hand(m64, x.double(), mask)
    mb = BlockSparseSelfAttention(64, 4, block_size=16, num_random_blocks=2).to(torch.bfloat16)
    mb.load_state_dict(m.state_dict())
    lowp = _by_hand(mb, x.bfloat16(), mask, upcast=False)
    assert_close_by_rule(out, oracle, lowp, torch.bfloat16, what="module output under autocast")


# --------------------------------------------------------------------------------------------------
# functional form
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_mask", [False, True], ids=["nomask", "mask"])
def test_bshd_and_bhsd_functional_forms_are_equal_and_copy_free(with_mask):
    B, H, S, D, bs = 2, 3, 16 * 12, 16, 16
    layout = get_layout("hf", layer_idx=1, seq_len=S, block_size=bs, num_random_blocks=2, num_heads=H, training=True)
    q, k, v = make_qkv(B, H, S, D, requires_grad=True)
    mask = make_padding_mask(B, S, block_size=bs, kind="tail") if with_mask else None
    out_bhsd, lse_bhsd = block_sparse_attn_func(q, k, v, layout, layout_format="BHSD", attention_mask=mask,
                                                return_lse=True)
    ref = block_sparse_attention(q, k, v, layout, attention_mask=mask)
    torch.testing.assert_close(out_bhsd, ref, atol=0, rtol=0)
    # (B, S, H, D) tensors as a Linear produces them: non-contiguous transposed views in, a view out
    qs, ks, vs = (t.detach().transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v))
    out_bshd, lse_bshd = block_sparse_attn_func(qs, ks, vs, layout, attention_mask=mask, return_lse=True)  # BSHD
    assert out_bshd.shape == (B, S, H, D)
    assert out_bshd._base is not None and not out_bshd.is_contiguous()  # a transpose view, no copy
    torch.testing.assert_close(out_bshd, out_bhsd.transpose(1, 2), atol=1e-6, rtol=0)
    torch.testing.assert_close(lse_bshd, lse_bhsd, atol=1e-6, rtol=0)
    g = torch.randn_like(out_bhsd)
    gq, gk, gv = torch.autograd.grad(out_bhsd, (q, k, v), g)
    gqs, gks, gvs = torch.autograd.grad(out_bshd, (qs, ks, vs), g.transpose(1, 2))
    for a, b in ((gq, gqs), (gk, gks), (gv, gvs)):
        torch.testing.assert_close(a, b.transpose(1, 2), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="layout_format"):
        block_sparse_attn_func(q, k, v, layout, layout_format="SBHD")


@pytest.mark.parametrize("arg, value, exc, match", [
    ("hidden_size", 32.0, TypeError, "hidden_size must be an integer, got float"),
    ("num_heads", True, TypeError, "num_heads must be an integer, got bool"),
    ("block_size", "16", TypeError, "block_size must be an integer, got str"),
    ("num_random_blocks", 1.5, TypeError, "num_random_blocks must be an integer"),
    ("window", np.float64(3), TypeError, "window must be an integer, got float64"),
    ("global_blocks", (0, 2.0), TypeError, r"global_blocks\[1\] must be an integer, got float"),
    ("layer_idx", 1.0, TypeError, "layer_idx must be an integer"),
    ("max_position_embeddings", 1024.0, TypeError, "max_position_embeddings must be an integer"),
    ("block_size", 0, ValueError, "block_size must be positive"),
    ("window", 2, ValueError, "window must be an odd number"),
    ("scale", float("nan"), ValueError, "scale must be a finite positive number"),
    ("scale", float("inf"), ValueError, "scale must be a finite positive number"),
    ("scale", -1.0, ValueError, "scale must be a finite positive number"),
    ("scale", 0, ValueError, "scale must be a finite positive number"),
    ("scale", True, TypeError, "scale must be a finite positive number"),
    ("scale", torch.tensor(float("nan")), TypeError, "scale must be a finite positive number"),
])
def test_module_refuses_bad_arguments_by_name(arg, value, exc, match):
    kw = {"block_size": 16, "num_random_blocks": 1, arg: value}
    hidden, heads = kw.pop("hidden_size", 32), kw.pop("num_heads", 2)
    with pytest.raises(exc, match=match):
        BlockSparseSelfAttention(hidden, heads, **kw)


def test_module_accepts_numpy_and_torch_integers():
    m = BlockSparseSelfAttention(np.int64(32), torch.tensor(2), block_size=np.int32(16),
                                 num_random_blocks=torch.tensor(1), window=np.int64(3),
                                 global_blocks=torch.tensor([0, -1]), layer_idx=np.int64(1), scale=np.float32(0.25))
    got = (m.hidden_size, m.num_heads, m.block_size, m.window, m.global_blocks, m.scale)
    assert got == (32, 2, 16, 3, (0, -1), 0.25)
    assert all(type(x) is int for x in got[:4] + got[4])
    assert m(torch.randn(1, 70, 32)).shape == (1, 70, 32)


@pytest.mark.parametrize("layout_format", ["BHSD", "BSHD"])
@pytest.mark.parametrize("scale", [float("nan"), float("-inf"), 0.0, False])
def test_functional_form_refuses_bad_scale(layout_format, scale):
    layout = get_layout("hf", layer_idx=0, seq_len=64, block_size=16, num_random_blocks=1, num_heads=2)
    q, k, v = make_qkv(1, 2, 64, 8)
    if layout_format == "BSHD":
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    with pytest.raises((TypeError, ValueError), match="scale must be a finite positive number"):
        block_sparse_attn_func(q, k, v, layout, layout_format=layout_format, scale=scale)


def test_module_replaces_a_layout_a_caller_wrote_into():
    m = BlockSparseSelfAttention(32, 2, block_size=16, num_random_blocks=1, layout_mode="seeded", layer_idx=5)
    x = torch.randn(2, 190, 32)
    want = m(x)
    m.get_layout(192).kv_indices.zero_()  # the shared, cached layout
    torch.testing.assert_close(m(x), want, atol=0, rtol=0)
    assert not m.get_layout(192).modified_tensors()


@pytest.mark.parametrize("S", [20, 190])  # full attention (fewer than 3 blocks) and a sparse layout
def test_layouts_first_built_under_inference_mode_serve_training_later(S):
    m = BlockSparseSelfAttention(32, 2, block_size=16, num_random_blocks=1, layout_mode="seeded").eval()
    x = torch.randn(1, S, 32, requires_grad=True)
    with torch.inference_mode():
        want = m(x.detach())
    out = m(x)
    out.sum().backward()
    torch.testing.assert_close(out, want, atol=0, rtol=0)
    assert torch.isfinite(x.grad).all()
