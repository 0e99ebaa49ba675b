"""Input makers and the shared tolerance rule, used by the tests and the benchmarks (docs/design.md section 6)."""

from __future__ import annotations

import torch

__all__ = ["make_qkv", "make_padding_mask", "poison", "tolerance", "assert_close_by_rule", "ABS_FLOOR"]

# absolute floor added to every bound, per low-precision dtype
ABS_FLOOR = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float64: 1e-12}


def make_qkv(B, H, S, D, *, dtype=torch.float32, device="cpu", requires_grad=False, generator=None):
    """Fresh random ``q, k, v`` of shape ``(B, H, S, D)`` (standard normal, never zeros)."""
    out = []
    for _ in range(3):
        t = torch.randn(B, H, S, D, generator=generator, dtype=torch.float32, device="cpu").to(device=device, dtype=dtype)
        out.append(t.requires_grad_(requires_grad))
    return tuple(out)


def make_padding_mask(B, S, *, block_size, kind="tail", device="cpu", generator=None):
    """``(B, S)`` bool masks (True = real token) exercising the padding paths.

    ``kind``: ``none`` (all real), ``tail`` (random right padding per row), ``holes`` (random holes
    everywhere), ``adversarial`` (row 0 tail padding, row 1 left padding over the first three blocks,
    row 2 all padding, further rows random holes).
    """
    m = torch.ones(B, S, dtype=torch.bool)
    if kind == "none":
        pass
    elif kind == "tail":
        for b in range(B):
            n = int(torch.randint(1, S + 1, (1,), generator=generator))
            m[b, n:] = False
    elif kind == "holes":
        m = torch.rand(B, S, generator=generator) > 0.3
    elif kind == "adversarial":
        for b in range(B):
            if b % 4 == 0:
                m[b, S - S // 3 :] = False
            elif b % 4 == 1:
                m[b, : min(S, 3 * block_size + 1)] = False
            elif b % 4 == 2:
                m[b] = False
            else:
                m[b] = torch.rand(S, generator=generator) > 0.5
    else:
        raise ValueError(f"unknown mask kind {kind!r}")
    return m.to(device)


def poison(t: torch.Tensor) -> torch.Tensor:
    """Fill ``t`` with NaN in place (outputs before a kernel writes them) and return it."""
    return t.fill_(float("nan"))


def tolerance(err_lowp: float, dtype: torch.dtype, *, grad: bool = False) -> float:
    """Allowed max error of a kernel: 2x (3x for gradients) the low-precision reference's error + floor."""
    return (3.0 if grad else 2.0) * err_lowp + ABS_FLOOR[dtype]


def assert_close_by_rule(actual, oracle, lowp, dtype, *, grad=False, what="output"):
    """Assert ``max|actual - oracle| <= tolerance(max|lowp - oracle|)``; print both errors on failure.

    ``oracle`` is the fp32 (or fp64) reference, ``lowp`` the same reference run in ``dtype`` without
    upcast. Non-finite values in ``actual`` fail.
    """
    actual, oracle, lowp = (t.detach().double() for t in (actual, oracle, lowp))
    assert torch.isfinite(actual).all(), f"{what}: non-finite values in the kernel's result"
    err = (actual - oracle).abs().max().item() if actual.numel() else 0.0
    err_lowp = (lowp - oracle).abs().max().item() if lowp.numel() else 0.0
    bound = tolerance(err_lowp, dtype, grad=grad)
    assert err <= bound, f"{what}: max error {err:.3e} > bound {bound:.3e} (reference in {dtype}: {err_lowp:.3e})"
    return err, err_lowp
