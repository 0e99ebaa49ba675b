"""No NaN leaks: NaN or Inf planted only in padded positions of q, k, v (mask False) never reaches a real
row, and padded query rows are exactly 0.

Every check runs for each name in BACKENDS; adding a backend that keeps this promise is a one-word change.
A backend that cannot run a case on this machine (no gradients on CPU, ...) says so through its own
``not_supported_reasons`` and the case is skipped with that reason.
"""

import pytest
import torch

from bigbird_kernels import block_sparse_attention, hf_layout
from bigbird_kernels.dispatch import AttentionInputs, not_supported_reasons
from bigbird_kernels.nn import BlockSparseSelfAttention
from bigbird_kernels.testing import make_padding_mask, make_qkv

BACKENDS = ["reference", "sdpa", "flex", "triton"]
POISONS = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
B, H, BS, NB, D, R = 4, 2, 16, 8, 32, 1
S = BS * NB


def _skip_unless_supported(backend, *, requires_grad):
    inputs = AttentionInputs(device=torch.device(DEVICE), dtype=torch.float32, batch=B, num_heads=H, seq_len=S,
                             head_dim=D, block_size=BS, num_random_blocks=R, requires_grad=requires_grad,
                             has_mask=True, deterministic=False)
    reasons = not_supported_reasons(backend, inputs)
    if reasons:
        pytest.skip(f"{backend} cannot run this case here: {'; '.join(reasons)}")


def _case(poison):
    """Clean q, k, v, the same with ``poison`` in every padded position, the mask and a layout."""
    layout = hf_layout(layer_idx=2, seq_len=S, block_size=BS, num_random_blocks=R, num_heads=H, training=True,
                       device=DEVICE)
    # rows: tail padding, left padding over 3+ blocks, all padding, random holes inside blocks
    mask = make_padding_mask(B, S, block_size=BS, kind="adversarial", device=DEVICE)
    clean = make_qkv(B, H, S, D, device=DEVICE)
    pad = ~mask[:, None, :, None]  # (B, 1, S, 1)
    dirty = tuple(torch.where(pad, torch.full_like(t, POISONS[poison]), t) for t in clean)
    return clean, dirty, mask, layout


def _real_rows(t, mask):
    """Rows of real query positions: ``t[b, :, s]`` for mask[b, s] True, as (n, H, ...)."""
    return t.transpose(1, 2)[mask]


@pytest.mark.parametrize("poison", POISONS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_poison_in_padding_never_reaches_real_rows(backend, poison):
    _skip_unless_supported(backend, requires_grad=False)
    clean, dirty, mask, layout = _case(poison)
    out, lse = block_sparse_attention(*dirty, layout, attention_mask=mask, backend=backend, return_lse=True)
    ref, ref_lse = block_sparse_attention(*clean, layout, attention_mask=mask, backend=backend, return_lse=True)
    assert torch.isfinite(_real_rows(out, mask)).all(), "padding leaked into real rows"
    torch.testing.assert_close(_real_rows(out, mask), _real_rows(ref, mask), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(_real_rows(lse, mask), _real_rows(ref_lse, mask), atol=1e-6, rtol=1e-6)
    padded = ~mask
    assert (out.transpose(1, 2)[padded] == 0).all(), "padded query rows must be exactly 0"
    assert torch.isneginf(lse.transpose(1, 2)[padded]).all(), "padded query rows must have lse -inf"


@pytest.mark.parametrize("poison", POISONS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_poison_in_padding_never_reaches_gradients(backend, poison):
    _skip_unless_supported(backend, requires_grad=True)
    clean, dirty, mask, layout = _case(poison)
    g = torch.randn(B, H, S, D, device=DEVICE)
    grads = []
    for inputs in (dirty, clean):
        inputs = [t.clone().requires_grad_() for t in inputs]
        out = block_sparse_attention(*inputs, layout, attention_mask=mask, backend=backend)
        grads.append(torch.autograd.grad(out, inputs, g))
    for name, got, want in zip("qkv", *grads):
        assert torch.isfinite(got).all(), f"grad {name}: padding leaked into the gradients"
        # the output does not depend on padded positions: their gradients are 0, real ones unchanged
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("poison", POISONS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_module_with_poisoned_padded_tokens(backend, poison):
    _skip_unless_supported(backend, requires_grad=False)
    m = BlockSparseSelfAttention(H * D, H, block_size=BS, num_random_blocks=R, layout_mode="seeded", out_proj=False,
                                 backend=backend, device=DEVICE)
    mask = make_padding_mask(B, S - 5, block_size=BS, kind="adversarial", device=DEVICE)  # the module pads to S
    x = torch.randn(B, S - 5, H * D, device=DEVICE)
    with torch.no_grad():
        out = m(torch.where(mask[..., None], x, POISONS[poison]), mask)
        ref = m(x, mask)
    assert torch.isfinite(out[mask]).all(), "padding leaked into real rows"
    torch.testing.assert_close(out[mask], ref[mask], atol=1e-6, rtol=1e-6)
    assert (out[~mask] == 0).all(), "padded positions must be exactly 0 (no output projection)"
