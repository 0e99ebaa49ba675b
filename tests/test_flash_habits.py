"""block_sparse_attn_func called the way flash-attn's flash_attn_func is: (B, S, H, D), any length,
no layout needed, flash-attn's argument names, its unsupported options refused by name, and tensors
in the wrong dimension order refused with an error that says so (in the op as well)."""

import math

import pytest
import torch
import torch.nn.functional as F

from bigbird_kernels import block_sparse_attention, block_sparse_attention_probs, hf_layout
from bigbird_kernels.nn import block_sparse_attn_func
from bigbird_kernels.reference import dense_attention_ref
from bigbird_kernels.testing import make_qkv


def _bshd(*ts):
    """(B, H, S, D) tensors as fresh contiguous (B, S, H, D) leaves."""
    return tuple(t.detach().transpose(1, 2).contiguous().requires_grad_(t.requires_grad) for t in ts)


def _padded_oracle(q, k, v, layout, mask=None):
    """``(B, H, S, D)`` inputs of any S: pad to ``layout.seq_len``, dense oracle, cut back to S."""
    B, H, S, D = q.shape
    pad = layout.seq_len - S
    qp, kp, vp = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    real = torch.arange(layout.seq_len) < S
    keep = real.expand(B, -1) if mask is None else F.pad(mask, (0, pad)) & real
    out, lse = dense_attention_ref(qp, kp, vp, layout, keep)
    return out[:, :, :S], lse[:, :, :S]


def test_default_is_bshd_any_length_and_bigbird_default_layout():
    B, H, S, D = 2, 3, 200, 16  # S pads to 256: 4 blocks of 64
    q, k, v = make_qkv(B, H, S, D, dtype=torch.float64, requires_grad=True)
    default = hf_layout(layer_idx=0, seq_len=256, block_size=64, num_random_blocks=3, num_heads=H, training=False)
    qs, ks, vs = _bshd(q, k, v)
    out, lse = block_sparse_attn_func(qs, ks, vs, return_lse=True)
    assert out.shape == (B, S, H, D) and lse.shape == (B, H, S)
    ref, ref_lse = _padded_oracle(q, k, v, default)
    torch.testing.assert_close(out, ref.transpose(1, 2), atol=1e-12, rtol=0)
    torch.testing.assert_close(lse, ref_lse, atol=1e-12, rtol=0)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(out, (qs, ks, vs), g.transpose(1, 2))
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b.transpose(1, 2), atol=1e-12, rtol=0)


def test_given_layout_pads_the_sequence_and_honours_an_integer_mask():
    B, H, S, D = 2, 2, 180, 8  # layout for 192 = 12 blocks of 16
    layout = hf_layout(layer_idx=1, seq_len=192, block_size=16, num_random_blocks=2, num_heads=H, training=True)
    q, k, v = make_qkv(B, H, S, D, dtype=torch.float64)
    mask = torch.ones(B, S, dtype=torch.long)
    mask[1, 70:] = 0
    out = block_sparse_attn_func(q, k, v, layout, attention_mask=mask, layout_format="BHSD")
    ref, _ = _padded_oracle(q, k, v, layout, mask.bool())
    assert out.shape == (B, H, S, D)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)


def test_short_sequence_runs_full_attention():
    B, S, H, D = 1, 50, 2, 8  # one block: Hugging Face runs full attention, and so do we
    q, k, v = (torch.randn(B, S, H, D, dtype=torch.float64) for _ in range(3))
    out = block_sparse_attn_func(q, k, v)
    ref = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)


def test_softmax_scale_is_flash_attn_name_for_scale():
    q, k, v = (torch.randn(1, 192, 2, 16) for _ in range(3))
    a = block_sparse_attn_func(q, k, v, softmax_scale=0.3)
    b = block_sparse_attn_func(q, k, v, scale=0.3)
    c = block_sparse_attn_func(q, k, v)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    with pytest.raises(TypeError, match="softmax_scale or scale"):
        block_sparse_attn_func(q, k, v, softmax_scale=0.3, scale=0.3)


def test_return_attn_probs_gives_the_true_probabilities():
    B, S, H, D = 2, 150, 2, 8
    q, k, v = (torch.randn(B, S, H, D, dtype=torch.float64) for _ in range(3))
    mask = torch.ones(B, S, dtype=torch.bool)
    mask[0, 100:] = False
    out, lse, probs = block_sparse_attn_func(q, k, v, attention_mask=mask, return_attn_probs=True)
    assert probs.shape == (B, H, S, S) and lse.shape == (B, H, S)
    torch.testing.assert_close(probs @ v.transpose(1, 2), out.transpose(1, 2), atol=1e-12, rtol=0)
    torch.testing.assert_close(probs.sum(-1), mask[:, None, :].double().expand(B, H, S), atol=1e-12, rtol=0)
    layout = hf_layout(layer_idx=0, seq_len=192, block_size=64, num_random_blocks=3, num_heads=H, training=False)
    qp, kp = (F.pad(t.transpose(1, 2), (0, 0, 0, 42)) for t in (q, k))
    expect = block_sparse_attention_probs(qp, kp, layout, F.pad(mask, (0, 42)))[:, :, :S, :S]
    torch.testing.assert_close(probs, expect, atol=1e-12, rtol=0)


@pytest.mark.parametrize("kwargs, match", [
    ({"causal": True}, "causal=True is not supported: BigBird attention is bidirectional"),
    ({"dropout_p": 0.1}, "dropout_p=0.1 is not supported"),
    ({"dropout_p": True}, "dropout_p=True is not supported"),
    ({"layout_format": "SBHD"}, "layout_format must be one of"),
    ({"attention_mask": torch.ones(1, 65, dtype=torch.bool)}, r"attention_mask must have shape \(B, S\) = \(1, 64\)"),
])
def test_flash_attn_options_we_do_not_have_are_refused_by_name(kwargs, match):
    q, k, v = (torch.randn(1, 64, 2, 8) for _ in range(3))
    with pytest.raises(ValueError, match=match):
        block_sparse_attn_func(q, k, v, **kwargs)


def test_flash_attn_positional_dropout_is_not_taken_for_a_layout():
    q, k, v = (torch.randn(1, 64, 2, 8) for _ in range(3))
    with pytest.raises(TypeError, match="layout must be a BigBirdLayout or None, got float: 0.0 .*dropout_p"):
        block_sparse_attn_func(q, k, v, 0.0)  # flash_attn_func(q, k, v, dropout_p)


def test_dropout_zero_and_causal_false_are_accepted():
    q, k, v = (torch.randn(1, 64, 2, 8) for _ in range(3))
    assert torch.equal(block_sparse_attn_func(q, k, v, dropout_p=0.0, causal=False), block_sparse_attn_func(q, k, v))


_SWAP_TO_BHSD = r"look like \(B, S, H, D\) tensors .* but \(B, H, S, D\) was expected"
_SWAP_TO_BSHD = r"look like \(B, H, S, D\) tensors .* but \(B, S, H, D\) was expected"


@pytest.mark.parametrize("S", [256, 250])  # block multiple, or padded by the functional form
def test_swapped_dimensions_are_named_with_a_layout(S):
    B, H, D = 1, 4, 8
    layout = hf_layout(layer_idx=0, seq_len=256, block_size=16, num_random_blocks=2, num_heads=H, training=False)
    q, k, v = make_qkv(B, H, S, D)  # (B, H, S, D)
    with pytest.raises(ValueError, match=_SWAP_TO_BSHD):
        block_sparse_attn_func(q, k, v, layout)  # BSHD by default
    qs, ks, vs = (t.transpose(1, 2) for t in (q, k, v))
    with pytest.raises(ValueError, match=_SWAP_TO_BHSD):
        block_sparse_attn_func(qs, ks, vs, layout, layout_format="BHSD")
    with pytest.raises(ValueError, match=_SWAP_TO_BHSD):
        block_sparse_attention(qs, ks, vs, layout)  # the op: (B, H, S, D) only
    # grouped-query k, v in the wrong order too
    with pytest.raises(ValueError, match=_SWAP_TO_BHSD):
        block_sparse_attention(qs, ks[:, :, :2], vs[:, :, :2], layout)


def test_swapped_dimensions_are_named_without_a_layout():
    q, k, v = make_qkv(1, 2, 192, 8)  # (B, H, S, D) read as (B, S, H, D): 2 tokens, 192 heads
    with pytest.raises(ValueError, match=r"looks like a \(B, H, S, D\) tensor .* expects \(B, S, H, D\)"):
        block_sparse_attn_func(q, k, v)
    with pytest.raises(ValueError, match=r"looks like a \(B, S, H, D\) tensor .* expects \(B, H, S, D\)"):
        block_sparse_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), layout_format="BHSD")
    # not ambiguous: 64 heads over 100 tokens is taken as given
    q, k, v = (torch.randn(1, 100, 64, 4) for _ in range(3))
    assert block_sparse_attn_func(q, k, v).shape == (1, 100, 64, 4)


def test_sequence_lengths_of_q_k_v_must_agree():
    q = torch.randn(1, 100, 2, 8)
    k = v = torch.randn(1, 99, 2, 8)
    with pytest.raises(ValueError, match="q, k, v must have the same sequence length"):
        block_sparse_attn_func(q, k, v)


def test_default_layout_matches_explicit_call_with_math_scale():
    """The defaults (layout and scale 1/sqrt(D)) are exactly the explicit call's."""
    B, S, H, D = 1, 320, 2, 16
    q, k, v = (torch.randn(B, S, H, D) for _ in range(3))
    layout = hf_layout(layer_idx=5, seq_len=S, block_size=64, num_random_blocks=3, num_heads=H, training=False)
    explicit = block_sparse_attn_func(q, k, v, layout, softmax_scale=1 / math.sqrt(D))
    assert torch.equal(block_sparse_attn_func(q, k, v), explicit)


def test_exported_at_the_top_level_and_empty_sequence_refused():
    import bigbird_kernels

    assert bigbird_kernels.block_sparse_attn_func is block_sparse_attn_func
    q = torch.randn(1, 0, 2, 8)
    with pytest.raises(ValueError, match="empty sequence dimension"):
        block_sparse_attn_func(q, q, q)
