"""The PyTorch reference: equal to Hugging Face's BigBirdBlockSparseAttention, to the dense log(count)
oracle, and to full attention when the layout covers every block."""

import math

import pytest
import torch

import bigbird_kernels.reference as reference
from bigbird_kernels import block_sparse_attention_ref, hf_layout, make_layout, resample_layout
from bigbird_kernels.reference import dense_attention_ref
from bigbird_kernels.testing import make_padding_mask, make_qkv

from hf_oracle import hf_attention_module, run_hf_attention

PARITY_CASES = [
    # (B, L, block, r, H, D, layer)
    (3, 1024, 64, 3, 2, 8, 0),  # old-plan generator, duplicates of the last global block in training
    (3, 768, 64, 3, 2, 8, 4),  # plan generator, just above HF's short-input threshold
    (4, 512, 32, 2, 3, 16, 1),
    (3, 320, 16, 3, 2, 8, 2),
    (2, 256, 16, 1, 1, 4, 7),
]


def _ids(c):
    return "B{}-L{}-bs{}-r{}-H{}-D{}-layer{}".format(*c)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)], ids=["fp64", "fp32"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("case", PARITY_CASES, ids=_ids)
def test_reference_equals_transformers_block_sparse_attention(case, training, dtype, tol):
    B, L, bs, r, H, D, layer = case
    module = hf_attention_module(num_heads=H, head_dim=D, block_size=bs, num_random_blocks=r,
                                 layer_idx=layer, training=training, dtype=dtype)
    x = torch.randn(B, L, H * D, dtype=dtype)
    mask = make_padding_mask(B, L, block_size=bs, kind="adversarial")  # tail, left over 3 blocks, all-pad, holes
    ctx, q, k, v, rand_attn = run_hf_attention(module, x, mask)
    layout = hf_layout(layer_idx=layer, seq_len=L, block_size=bs, num_random_blocks=r, num_heads=H, training=training)
    assert torch.equal(layout.random_blocks[:, 1:-1].long(), rand_attn.long())
    out, lse = block_sparse_attention_ref(q, k, v, layout, mask)
    ours = out.transpose(1, 2).reshape(B, L, H * D)
    # HF gives padded query rows 0 too; rows with no real key at all are finite 0 for both
    err = (ours - ctx).abs().max().item()
    assert err <= tol, f"max |ours - HF| = {err:.3e}"
    assert torch.isfinite(out).all()
    assert (out.transpose(1, 2)[~mask] == 0).all()
    assert torch.isneginf(lse.transpose(1, 2)[~mask]).all()
    assert torch.isfinite(lse.transpose(1, 2)[mask]).all()


LAYOUTS = {
    "hf-eval": lambda H, L, bs: hf_layout(layer_idx=0, seq_len=L, block_size=bs, num_random_blocks=3, num_heads=H, training=False),
    "hf-train": lambda H, L, bs: hf_layout(layer_idx=3, seq_len=L, block_size=bs, num_random_blocks=2, num_heads=H, training=True),
    "resample-extra-globals": lambda H, L, bs: resample_layout(seq_len=L, block_size=bs, num_random_blocks=2, num_heads=H,
                                                               global_blocks=(0, 5, -1), window=5),
    "r0": lambda H, L, bs: make_layout(torch.zeros(H, L // bs, 0, dtype=torch.int32), block_size=bs),
}


@pytest.mark.parametrize("mask_kind", ["none", "adversarial", "holes"])
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_reference_equals_dense_log_count_oracle(name, mask_kind):
    B, H, bs, D = 4, 3, 16, 32
    L = 16 * 14
    layout = LAYOUTS[name](H, L, bs)
    q, k, v = make_qkv(B, H, L, D, dtype=torch.float64)
    mask = None if mask_kind == "none" else make_padding_mask(B, L, block_size=bs, kind=mask_kind)
    out, lse = block_sparse_attention_ref(q, k, v, layout, mask)
    out_d, lse_d = dense_attention_ref(q, k, v, layout, mask)
    torch.testing.assert_close(out, out_d, atol=1e-12, rtol=0)
    torch.testing.assert_close(lse, lse_d, atol=1e-12, rtol=0)


def test_reference_equals_full_attention_when_every_block_is_listed():
    B, H, L, bs, D = 2, 2, 128, 16, 16
    nb = L // bs
    # window wide enough to cover every block: each block listed exactly once
    layout = make_layout(torch.zeros(H, nb, 0, dtype=torch.int32), block_size=bs, window=2 * nb + 1, global_blocks=())
    q, k, v = make_qkv(B, H, L, D, dtype=torch.float64)
    mask = make_padding_mask(B, L, block_size=bs, kind="tail")
    mask[:, 0] = True
    out, _ = block_sparse_attention_ref(q, k, v, layout, mask)
    bias = torch.zeros(B, 1, 1, L, dtype=torch.float64).masked_fill(~mask[:, None, None, :], float("-inf"))
    full = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D) + bias, dim=-1) @ v
    full = full * mask[:, None, :, None]
    torch.testing.assert_close(out, full, atol=1e-12, rtol=0)


def test_reference_gradients_match_dense_oracle():
    B, H, L, bs, D = 3, 2, 16 * 10, 16, 8
    layout = hf_layout(layer_idx=1, seq_len=L, block_size=bs, num_random_blocks=2, num_heads=H, training=True)
    mask = make_padding_mask(B, L, block_size=bs, kind="adversarial")
    q, k, v = make_qkv(B, H, L, D, dtype=torch.float64, requires_grad=True)
    g = torch.randn(B, H, L, D, dtype=torch.float64)
    out, _ = block_sparse_attention_ref(q, k, v, layout, mask)
    grads = torch.autograd.grad((out * g).sum(), (q, k, v))
    out_d, _ = dense_attention_ref(q, k, v, layout, mask)
    grads_d = torch.autograd.grad((out_d * g).sum(), (q, k, v))
    for a, b in zip(grads, grads_d):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    # the all-padding batch row (index 2) gets exactly zero gradient everywhere
    assert all((gr[2] == 0).all() for gr in grads)


def test_reference_row_without_any_key_is_zero_not_nan():
    B, H, L, bs, D = 1, 1, 64, 16, 8
    layout = hf_layout(layer_idx=0, seq_len=L, block_size=bs, num_random_blocks=1, num_heads=H, training=False)
    q, k, v = make_qkv(B, H, L, D, requires_grad=True)
    mask = torch.zeros(B, L, dtype=torch.bool)
    out, lse = block_sparse_attention_ref(q, k, v, layout, mask)
    assert (out == 0).all() and torch.isneginf(lse).all()
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_reference_fp16_on_cpu_upcasts():
    B, H, L, bs, D = 2, 2, 256, 16, 16
    layout = hf_layout(layer_idx=0, seq_len=L, block_size=bs, num_random_blocks=2, num_heads=H, training=True)
    q, k, v = make_qkv(B, H, L, D, dtype=torch.float16)
    out, lse = block_sparse_attention_ref(q, k, v, layout)
    assert out.dtype == torch.float16 and lse.dtype == torch.float32
    ref, _ = block_sparse_attention_ref(q.float(), k.float(), v.float(), layout)
    # upcast on CPU: the only error is the final rounding to fp16
    assert (out.float() - ref).abs().max() <= (ref.abs().max() * torch.finfo(torch.float16).eps).item()
    low, _ = block_sparse_attention_ref(q, k, v, layout, upcast=False)
    assert low.dtype == torch.float16


@pytest.mark.parametrize("native", [True, False], ids=["native-bf16", "no-native-bf16"])
def test_reference_bf16_on_cpu_computes_in_bf16_only_with_native_support(monkeypatch, native):
    B, H, L, bs, D = 2, 2, 256, 16, 16
    layout = hf_layout(layer_idx=0, seq_len=L, block_size=bs, num_random_blocks=2, num_heads=H, training=True)
    mask = make_padding_mask(B, L, block_size=bs, kind="adversarial")
    q, k, v = make_qkv(B, H, L, D, dtype=torch.bfloat16)
    monkeypatch.setattr(reference, "cpu_has_native_bf16", lambda: native)
    out, lse = block_sparse_attention_ref(q, k, v, layout, mask)
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    same, _ = block_sparse_attention_ref(q, k, v, layout, mask, upcast=not native)
    assert torch.equal(out, same)
    oracle, _ = block_sparse_attention_ref(q.double(), k.double(), v.double(), layout, mask)
    assert (out.double() - oracle).abs().max() <= 4 * oracle.abs().max() * torch.finfo(torch.bfloat16).eps


def test_reference_native_bf16_detection_reads_cpu_flags():
    flags = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags |= set(line.split(":", 1)[1].split())
    assert reference.cpu_has_native_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})


@pytest.mark.parametrize("upcast", [False, None], ids=["fp16-matmuls", "default"])
def test_reference_fp16_scores_beyond_fp16_range_do_not_overflow(upcast):
    """q . k = 102400 > 65504 (fp16's largest) on the diagonal: the scores must be computed in fp32."""
    B, H, L, bs, D = 2, 2, 128, 16, 64
    layout = hf_layout(layer_idx=0, seq_len=L, block_size=bs, num_random_blocks=1, num_heads=H, training=True)
    q = 40 * torch.randn(B, H, L, D).sign()
    k = q.clone()
    v = torch.randn(B, H, L, D)
    mask = make_padding_mask(B, L, block_size=bs, kind="tail")
    oracle, oracle_lse = block_sparse_attention_ref(q.double(), k.double(), v.double(), layout, mask)
    out, lse = block_sparse_attention_ref(q.half(), k.half(), v.half(), layout, mask, upcast=upcast)
    assert torch.isfinite(out).all() and torch.isfinite(lse[mask[:, None, :].expand_as(lse)]).all()
    assert (out.double() - oracle).abs().max() <= 4 * torch.finfo(torch.float16).eps * oracle.abs().max()
    real = mask[:, None, :].expand_as(lse)
    torch.testing.assert_close(lse[real].double(), oracle_lse[real], atol=0, rtol=1e-6)


def _plant(t, mask, value):
    """``t`` with ``value`` at every padded position (mask False) of every head."""
    return torch.where(mask[:, None, :, None], t, torch.full_like(t, value))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_nan_and_inf_in_padded_positions_never_reach_real_rows(name, dtype):
    B, H, bs, D = 4, 3, 16, 32
    L = 16 * 14
    layout = LAYOUTS[name](H, L, bs)
    mask = make_padding_mask(B, L, block_size=bs, kind="adversarial")
    clean = make_qkv(B, H, L, D, dtype=dtype)
    out, lse = block_sparse_attention_ref(*clean, layout, mask)
    for value in (float("nan"), float("inf"), -float("inf")):
        bad = [_plant(t, mask, value) for t in clean]
        out_bad, lse_bad = block_sparse_attention_ref(*bad, layout, mask)
        assert torch.equal(out_bad, out) and torch.equal(lse_bad, lse)
    assert (out.transpose(1, 2)[~mask] == 0).all()


def test_gradients_stay_finite_with_nan_in_padded_positions():
    B, H, L, bs, D = 4, 2, 16 * 10, 16, 8
    layout = hf_layout(layer_idx=1, seq_len=L, block_size=bs, num_random_blocks=2, num_heads=H, training=True)
    mask = make_padding_mask(B, L, block_size=bs, kind="adversarial")
    g = torch.randn(B, H, L, D, dtype=torch.float64)
    clean = make_qkv(B, H, L, D, dtype=torch.float64)
    grads = []
    for value in (0.0, float("nan")):
        qkv = [_plant(t, mask, value).requires_grad_() for t in clean]
        out, _ = block_sparse_attention_ref(*qkv, layout, mask)
        grads.append(torch.autograd.grad((out * g).sum(), qkv))
    for a, b in zip(*grads):
        assert torch.equal(a, b) and torch.isfinite(b).all()
        assert (a.transpose(1, 2)[~mask] == 0).all()


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_distinct_key_blocks_count_every_listed_block(name):
    H, L, bs = 3, 16 * 14, 16
    layout = LAYOUTS[name](H, L, bs)
    blocks, log_count = reference._distinct_key_blocks(layout)
    counts = torch.where(log_count > reference._MASKED, log_count.exp().round(), 0).to(torch.int32)
    dense = torch.zeros(H, layout.num_blocks, layout.num_blocks, dtype=torch.int32).scatter_add_(2, blocks, counts)
    other = ~layout.is_global
    assert torch.equal(dense[:, other], layout.to_dense()[:, other])
    # each distinct block once per row
    listed = counts > 0
    assert all(len(set(blocks[h, i][listed[h, i]].tolist())) == int(listed[h, i].sum())
               for h in range(H) for i in range(layout.num_blocks))


def test_eval_hf_layout_reads_block_zero_once():
    """Eval-mode HF layouts list block 0 four times (global + three zero random blocks): read once, bias log 4."""
    layout = hf_layout(layer_idx=0, seq_len=64 * 16, block_size=64, num_random_blocks=3, num_heads=2, training=False)
    blocks, log_count = reference._distinct_key_blocks(layout)
    assert blocks.shape[-1] == 5 < layout.width
    row = 7
    assert blocks[0, row].tolist() == [0, 6, 7, 8, 15]
    torch.testing.assert_close(log_count[0, row], torch.tensor([4.0, 1, 1, 1, 1], dtype=torch.float64).log())


def test_reference_takes_any_strides():
    """Inputs laid out (B, S, H, D) and transposed, as the model passes them: the same result."""
    B, H, L, bs, D = 2, 3, 16 * 12, 16, 8
    layout = hf_layout(layer_idx=0, seq_len=L, block_size=bs, num_random_blocks=2, num_heads=H, training=True)
    mask = make_padding_mask(B, L, block_size=bs, kind="tail")
    q, k, v = make_qkv(B, H, L, D)
    strided = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v)]
    assert not strided[0].is_contiguous()
    out, lse = block_sparse_attention_ref(q, k, v, layout, mask)
    out_s, lse_s = block_sparse_attention_ref(*strided, layout, mask)
    assert torch.equal(out, out_s) and torch.equal(lse, lse_s)


def test_reference_all_true_mask_equals_no_mask():
    """An all-True mask takes the no-padding path on CPU (no selects): the same result, NaN-free lse."""
    B, H, L, bs, D = 2, 3, 16 * 12, 16, 8
    layout = hf_layout(layer_idx=0, seq_len=L, block_size=bs, num_random_blocks=2, num_heads=H, training=True)
    q, k, v = make_qkv(B, H, L, D)
    out, lse = block_sparse_attention_ref(q, k, v, layout, torch.ones(B, L, dtype=torch.bool))
    out_n, lse_n = block_sparse_attention_ref(q, k, v, layout)
    assert torch.equal(out, out_n) and torch.equal(lse, lse_n)


def test_reference_without_grad_equals_reference_with_grad():
    """The in-place path (reused buffers, softmax in place) computes what the autograd path computes."""
    B, H, L, bs, D = 2, 3, 64 * 9, 64, 16
    layout = hf_layout(layer_idx=0, seq_len=L, block_size=bs, num_random_blocks=3, num_heads=H, training=False)
    mask = make_padding_mask(B, L, block_size=bs, kind="adversarial")
    q, k, v = make_qkv(B, H, L, D, requires_grad=True)
    with torch.no_grad():
        out, lse = block_sparse_attention_ref(q, k, v, layout, mask)
    out_g, lse_g = block_sparse_attention_ref(q, k, v, layout, mask)
    assert out_g.requires_grad
    assert torch.equal(out, out_g.detach()) and torch.equal(lse, lse_g.detach())


def test_reference_compiled_matches_eager():
    """Under torch.compile the rows are read as listed (no distinct-block table): the same attention."""
    B, H, L, bs, D = 2, 2, 16 * 12, 16, 8
    layout = hf_layout(layer_idx=0, seq_len=L, block_size=bs, num_random_blocks=3, num_heads=H, training=False)
    layout._cache.pop("reference_distinct_blocks", None)
    q, k, v = make_qkv(B, H, L, D, dtype=torch.float64)
    mask = make_padding_mask(B, L, block_size=bs, kind="holes")
    f = torch.compile(lambda q, k, v: block_sparse_attention_ref(q, k, v, layout, mask), fullgraph=True, backend="eager")
    out_c, lse_c = f(q, k, v)
    assert "reference_distinct_blocks" not in layout._cache
    out, lse = block_sparse_attention_ref(q, k, v, layout, mask)
    torch.testing.assert_close(out_c, out, atol=1e-12, rtol=0)
    torch.testing.assert_close(lse_c, lse, atol=1e-12, rtol=0)


def test_reference_memory_is_linear_in_sequence_length():
    """No S x S (or nb x nb per element) tensor: the largest intermediate grows linearly with S."""
    import torch.utils._python_dispatch as pd

    class Largest(pd.TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    self.largest = max(self.largest, t.numel())
            return out

    sizes = {}
    for L in (2048, 8192):
        layout = hf_layout(layer_idx=0, seq_len=L, block_size=64, num_random_blocks=3, num_heads=1, training=False)
        q, k, v = make_qkv(1, 1, L, 16)
        with Largest() as mode:
            block_sparse_attention_ref(q, k, v, layout, torch.ones(1, L, dtype=torch.bool))
        sizes[L] = mode.largest
    assert sizes[8192] <= 4.5 * sizes[2048], sizes
    assert sizes[8192] < 8192 * 8192 // 8
