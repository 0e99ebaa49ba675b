"""The public op: dispatch, validation with clear errors, empty batches, backends agreeing."""

import numpy as np
import pytest
import torch

import bigbird_kernels
from bigbird_kernels import BackendNotSupportedError, block_sparse_attention, block_sparse_attention_ref, hf_layout
from bigbird_kernels.dispatch import AttentionInputs, not_supported_reasons, select_backend
from bigbird_kernels.testing import assert_close_by_rule, make_padding_mask, make_qkv

B, H, L, BS, D = 2, 3, 256, 16, 32


@pytest.fixture
def layout():
    return hf_layout(layer_idx=1, seq_len=L, block_size=BS, num_random_blocks=2, num_heads=H, training=True)


def test_auto_on_cpu_runs_reference_and_matches(layout):
    q, k, v = make_qkv(B, H, L, D)
    mask = make_padding_mask(B, L, block_size=BS, kind="tail")
    out, lse = block_sparse_attention(q, k, v, layout, attention_mask=mask, return_lse=True)
    ref, ref_lse = block_sparse_attention_ref(q, k, v, layout, mask)
    assert torch.equal(out, ref) and torch.equal(lse, ref_lse)
    assert lse.dtype == torch.float32 and lse.shape == (B, H, L)
    assert block_sparse_attention(q, k, v, layout, attention_mask=mask).shape == (B, H, L, D)


def test_integer_mask_and_non_contiguous_inputs(layout):
    q, k, v = make_qkv(B, L, H, D)  # (B, S, H, D) storage, viewed as (B, H, S, D)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    assert not q.is_contiguous()
    mask = make_padding_mask(B, L, block_size=BS, kind="holes")
    a = block_sparse_attention(q, k, v, layout, attention_mask=mask.long())
    b = block_sparse_attention(q.contiguous(), k.contiguous(), v.contiguous(), layout, attention_mask=mask)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_scale_is_honoured(layout):
    q, k, v = make_qkv(1, H, L, D)
    a = block_sparse_attention(q, k, v, layout, scale=0.5)
    b = block_sparse_attention(q * 0.5 * D**0.5, k, v, layout)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # any finite positive real number: NumPy scalars and ints too
    torch.testing.assert_close(block_sparse_attention(q, k, v, layout, scale=np.float32(0.5)), a, atol=0, rtol=0)
    torch.testing.assert_close(block_sparse_attention(q, k, v, layout, scale=1),
                               block_sparse_attention(q, k, v, layout, scale=1.0), atol=0, rtol=0)


BAD_SCALES = [
    (float("nan"), ValueError), (float("inf"), ValueError), (float("-inf"), ValueError), (0.0, ValueError),
    (-0.125, ValueError), (np.float64("nan"), ValueError), (True, TypeError), (torch.tensor(0.1), TypeError),
    (torch.tensor(float("nan")), TypeError), ("0.1", TypeError), (1j, TypeError),
]


@pytest.mark.parametrize("scale, exc", BAD_SCALES, ids=lambda x: repr(x) if not isinstance(x, type) else "")
def test_bad_scale_is_refused_by_name(layout, scale, exc):
    q, k, v = make_qkv(1, H, L, D)
    with pytest.raises(exc, match="scale must be a finite positive number"):
        block_sparse_attention(q, k, v, layout, scale=scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_sdpa_baseline_matches_reference_by_tolerance_rule(layout, dtype):
    q, k, v = make_qkv(B, H, L, D, dtype=dtype)
    mask = make_padding_mask(B, L, block_size=BS, kind="adversarial")
    out, lse = block_sparse_attention(q, k, v, layout, attention_mask=mask, backend="sdpa", return_lse=True)
    oracle, oracle_lse = block_sparse_attention_ref(q.double(), k.double(), v.double(), layout, mask)
    lowp, _ = block_sparse_attention_ref(q, k, v, layout, mask, upcast=False)
    assert_close_by_rule(out, oracle, lowp, dtype)
    real = mask[:, None, :].expand_as(lse)
    assert torch.isneginf(lse[~real]).all()
    torch.testing.assert_close(lse[real].double(), oracle_lse[real], atol=1e-3, rtol=0)


def test_gradients_flow_through_the_op(layout):
    q, k, v = make_qkv(B, H, L, 4, dtype=torch.float64, requires_grad=True)
    mask = make_padding_mask(B, L, block_size=BS, kind="tail")
    assert torch.autograd.gradcheck(
        lambda q, k, v: block_sparse_attention(q, k, v, layout, attention_mask=mask), (q, k, v), fast_mode=True
    )


def test_empty_batch_returns_empty(layout):
    q, k, v = make_qkv(0, H, L, D)
    out = block_sparse_attention(q, k, v, layout, attention_mask=torch.ones(0, L, dtype=torch.bool))
    assert out.shape == (0, H, L, D)
    out, lse = block_sparse_attention(q, k, v, layout, return_lse=True)
    assert lse.shape == (0, H, L)


@pytest.mark.parametrize(
    "case, exc, match",
    [
        ("q-rank-3", ValueError, r"q must have shape \(B, H, S, D\)"),
        ("k-shape", ValueError, "same shape"),
        ("v-head-dim", ValueError, "same shape"),
        ("v-length", ValueError, "same shape"),
        ("v-dtype", TypeError, "same dtype"),
        ("int-tensors", TypeError, "floating tensor"),
        ("not-a-tensor", TypeError, "must be a torch.Tensor"),
        ("S-not-multiple", ValueError, "not a multiple of block_size"),
        ("layout-other-S", ValueError, "layout was built for S=512"),
        ("layout-other-heads", ValueError, "layout was built for 4 heads"),
        ("mask-shape", ValueError, r"attention_mask must have shape \(B, S\)"),
        ("mask-float", TypeError, "additive float masks are not accepted"),
        ("mask-values", ValueError, "only 0 and 1"),
        ("backend-name", ValueError, "unknown backend 'fast'"),
        ("layout-type", TypeError, "layout must be a BigBirdLayout"),
        ("meta-device", ValueError, "same device"),
    ],
)
def test_bad_input_gets_a_clear_error(layout, case, exc, match):
    q, k, v = make_qkv(B, H, L, D)
    kw = {}
    if case == "q-rank-3":
        q = q[0]
    elif case == "k-shape":
        k = k[:, :, :, :16]
    elif case == "v-head-dim":
        v = v[:, :, :, :16]
    elif case == "v-length":
        v = v[:, :, :BS * 4]
    elif case == "v-dtype":
        v = v.double()
    elif case == "int-tensors":
        q, k, v = (t.long() for t in (q, k, v))
    elif case == "not-a-tensor":
        q = q.tolist()
    elif case == "S-not-multiple":
        q, k, v = (t[:, :, :250] for t in (q, k, v))
    elif case == "layout-other-S":
        layout = hf_layout(layer_idx=0, seq_len=512, block_size=BS, num_random_blocks=2, num_heads=H, training=False)
    elif case == "layout-other-heads":
        layout = hf_layout(layer_idx=0, seq_len=L, block_size=BS, num_random_blocks=2, num_heads=4, training=False)
    elif case == "mask-shape":
        kw["attention_mask"] = torch.ones(B, L + 1, dtype=torch.bool)
    elif case == "mask-float":
        kw["attention_mask"] = torch.zeros(B, L)
    elif case == "mask-values":
        kw["attention_mask"] = torch.full((B, L), 2)
    elif case == "backend-name":
        kw["backend"] = "fast"
    elif case == "layout-type":
        layout = layout.kv_indices
    elif case == "meta-device":
        k = k.to("meta")
    with pytest.raises(exc, match=match):
        block_sparse_attention(q, k, v, layout, **kw)


def test_named_backend_never_falls_back(layout):
    q, k, v = make_qkv(1, H, L, D)
    # triton and cuda refuse CPU tensors outside the interpreter; the error says why, listing the backend
    with pytest.raises(BackendNotSupportedError, match="backend 'cuda' cannot run these inputs") as ei:
        block_sparse_attention(q, k, v, layout, backend="cuda")
    assert "cuda:" in str(ei.value)


def test_error_lists_every_backend_when_nothing_fits():
    inputs = AttentionInputs(device=torch.device("cpu"), dtype=torch.int8, batch=1, num_heads=1, seq_len=64,
                             head_dim=8, block_size=16, num_random_blocks=1, requires_grad=False, has_mask=False,
                             deterministic=False)
    with pytest.raises(BackendNotSupportedError) as ei:
        select_backend("auto", inputs)
    msg = str(ei.value)
    for name in ("cuda", "triton", "reference"):
        assert f"  {name}: " in msg
    assert not_supported_reasons("reference", inputs)


def test_environment_override_replaces_auto(layout, monkeypatch):
    q, k, v = make_qkv(1, H, L, D)
    monkeypatch.setenv("BIGBIRD_BACKEND", "sdpa")
    calls = []
    sdpa = bigbird_kernels.dispatch.get_backend("sdpa")
    original = sdpa.forward
    monkeypatch.setattr(sdpa, "forward", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    block_sparse_attention(q, k, v, layout)
    assert calls == [1]
    monkeypatch.setenv("BIGBIRD_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="unknown backend 'nonsense'"):
        block_sparse_attention(q, k, v, layout)


def test_autocast_runs_the_op_in_the_autocast_dtype(layout):
    q, k, v = make_qkv(B, H, L, D)
    mask = make_padding_mask(B, L, block_size=BS, kind="tail")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block_sparse_attention(q, k.bfloat16(), v, layout, attention_mask=mask)  # mixed dtypes are fine here
    assert out.dtype == torch.bfloat16
    oracle, _ = block_sparse_attention_ref(q.double(), k.double(), v.double(), layout, mask)
    lowp, _ = block_sparse_attention_ref(q.bfloat16(), k.bfloat16(), v.bfloat16(), layout, mask, upcast=False)
    assert_close_by_rule(out, oracle, lowp, torch.bfloat16)
