"""Grouped-query attention: k and v with fewer heads than q, in the op and the functional form, on
every backend that runs on CPU, against the dense oracle with the key/value heads repeated."""

import pytest
import torch

from bigbird_kernels import block_sparse_attention, get_layout, hf_layout
from bigbird_kernels.dispatch import get_backend
from bigbird_kernels.nn import block_sparse_attn_func
from bigbird_kernels.reference import dense_attention_ref
from bigbird_kernels.testing import make_padding_mask

B, HQ, HKV, S, D, BS = 2, 6, 2, 16 * 10, 16, 16


def _inputs(dtype, requires_grad, head_dim=D):
    q = torch.randn(B, HQ, S, head_dim, dtype=dtype, requires_grad=requires_grad)
    k = torch.randn(B, HKV, S, head_dim, dtype=dtype, requires_grad=requires_grad)
    v = torch.randn(B, HKV, S, head_dim, dtype=dtype, requires_grad=requires_grad)
    return q, k, v


def _oracle(q, k, v, layout, mask):
    """Dense oracle with every key/value head repeated for its group of query heads."""
    g = q.shape[1] // k.shape[1]
    return dense_attention_ref(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), layout, mask)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])  # eval: duplicated blocks
@pytest.mark.parametrize("with_mask", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_gqa_forward_and_gradients_match_the_dense_oracle(backend, with_mask, training):
    layout = hf_layout(layer_idx=2, seq_len=S, block_size=BS, num_random_blocks=2, num_heads=HQ, training=training)
    q, k, v = _inputs(torch.float64, True)
    mask = make_padding_mask(B, S, block_size=BS, kind="tail") if with_mask else None
    out, lse = block_sparse_attention(q, k, v, layout, attention_mask=mask, backend=backend, return_lse=True)
    ref, ref_lse = _oracle(q, k, v, layout, mask)
    assert out.shape == (B, HQ, S, D)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-5 if backend == "sdpa" else 1e-12, rtol=0)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(out, (q, k, v), g)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    for name, a, b in zip("qkv", grads, ref_grads):
        assert a.shape == b.shape, name  # dk, dv: (B, H_kv, S, D), summed over each group
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0, msg=f"d{name}")


@pytest.mark.parametrize("with_mask", [False, True], ids=["nomask", "mask"])
def test_gqa_flex_forward_matches_the_dense_oracle(with_mask):
    pytest.importorskip("torch.nn.attention.flex_attention")
    layout = hf_layout(layer_idx=0, seq_len=S, block_size=BS, num_random_blocks=3, num_heads=HQ, training=False)
    q, k, v = _inputs(torch.float32, False)
    mask = make_padding_mask(B, S, block_size=BS, kind="tail") if with_mask else None
    out, lse = block_sparse_attention(q, k, v, layout, attention_mask=mask, backend="flex", return_lse=True)
    ref, ref_lse = _oracle(q.double(), k.double(), v.double(), layout, mask)
    torch.testing.assert_close(out.double(), ref, atol=2e-6, rtol=0)
    torch.testing.assert_close(lse.double(), ref_lse, atol=2e-6, rtol=0)


def test_backends_without_native_gqa_get_repeated_heads(monkeypatch):
    """A backend that does not declare ``supports_gqa`` is handed k, v with H_q heads."""
    sdpa = get_backend("sdpa")
    seen = []
    real_forward = sdpa.forward

    def spy(q, k, v, *args, **kwargs):
        seen.append((q.shape[1], k.shape[1], v.shape[1]))
        return real_forward(q, k, v, *args, **kwargs)

    monkeypatch.setattr(sdpa, "forward", spy)
    layout = get_layout("resample", layer_idx=0, seq_len=S, block_size=BS, num_random_blocks=2, num_heads=HQ)
    q, k, v = _inputs(torch.float64, True)
    native = block_sparse_attention(q, k, v, layout, backend="sdpa")
    monkeypatch.setattr(type(sdpa), "supports_gqa", False)
    expanded = block_sparse_attention(q, k, v, layout, backend="sdpa")
    assert seen == [(HQ, HKV, HKV), (HQ, HQ, HQ)]
    torch.testing.assert_close(native, expanded, atol=1e-12, rtol=0)
    assert not getattr(get_backend("reference"), "supports_gqa", False)  # expanded by the op


def test_gqa_in_the_functional_form_bshd():
    layout = hf_layout(layer_idx=1, seq_len=S, block_size=BS, num_random_blocks=2, num_heads=HQ, training=True)
    q, k, v = _inputs(torch.float64, False)
    out = block_sparse_attn_func(*(t.transpose(1, 2) for t in (q, k, v)), layout)  # (B, S, H, D)
    torch.testing.assert_close(out.transpose(1, 2), _oracle(q, k, v, layout, None)[0], atol=1e-12, rtol=0)
    # without a layout (BigBird's default, heads = H_q) and with padding
    qs, ks, vs = (t[:, :, :150].transpose(1, 2) for t in (q, k, v))
    assert block_sparse_attn_func(qs, ks, vs).shape == (B, 150, HQ, D)


@pytest.mark.parametrize("hk, hv, match", [
    (4, 4, "q has 6 heads, which is not a multiple of the 4 heads of k and v"),
    (2, 3, "k has 2 heads but v has 3"),
    (3, 2, "k has 3 heads but v has 2"),
])
def test_bad_head_counts_are_named(hk, hv, match):
    layout = hf_layout(layer_idx=0, seq_len=S, block_size=BS, num_random_blocks=2, num_heads=HQ, training=False)
    q = torch.randn(B, HQ, S, D)
    k, v = torch.randn(B, hk, S, D), torch.randn(B, hv, S, D)
    with pytest.raises(ValueError, match=match):
        block_sparse_attention(q, k, v, layout)
    with pytest.raises(ValueError, match=match):
        block_sparse_attn_func(q, k, v, layout, layout_format="BHSD")


def test_gqa_triton_interpreter_forward_and_gradients():
    """A backend without native GQA, run for real: the Triton kernels (interpreter on CPU)."""
    if get_backend("triton") is None:
        pytest.skip("the triton backend is not importable here")
    layout = hf_layout(layer_idx=2, seq_len=S, block_size=BS, num_random_blocks=2, num_heads=HQ, training=True)
    q, k, v = _inputs(torch.float32, True, head_dim=32)  # the kernels take D in (32, 64, 128)
    mask = make_padding_mask(B, S, block_size=BS, kind="tail")
    out = block_sparse_attention(q, k, v, layout, attention_mask=mask, backend="triton")
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref, _ = _oracle(qd, kd, vd, layout, mask)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=0)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(out, (q, k, v), g.float())
    ref_grads = torch.autograd.grad(ref, (qd, kd, vd), g)
    for name, a, b in zip("qkv", grads, ref_grads):
        torch.testing.assert_close(a.double(), b, atol=1e-4, rtol=0, msg=f"d{name}")
