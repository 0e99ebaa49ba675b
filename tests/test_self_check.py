"""The kernel backends' self-check (``bigbird_kernels.dispatch``): on first use per (device, dtype, head
dim, block size, pass) a backend runs on a small problem against the reference on the same device; a
failure makes ``auto`` skip it with one warning, makes a named backend raise, and shows in ``info``.

Exercised on CPU with the Triton interpreter (TRITON_INTERPRET=1, set by conftest) and deliberately
broken kernels (the launchers monkeypatched)."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from bigbird_kernels import block_sparse_attention, block_sparse_attention_ref, make_layout
from bigbird_kernels import dispatch
from bigbird_kernels.testing import make_padding_mask, make_qkv

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="interpreter tests need TRITON_INTERPRET=1 before triton loads"
)

launch = pytest.importorskip("bigbird_kernels.backends.triton.launch")

B, H, NB, BS, D = 1, 2, 5, 16, 32


@pytest.fixture(autouse=True)
def _fresh_checks(monkeypatch):
    """Each test starts with no remembered self-check and the check on; ``auto`` may pick the Triton
    backend for CPU tensors (the interpreter), which it otherwise leaves to CUDA tensors."""
    monkeypatch.setattr(dispatch, "_self_checks", {})
    monkeypatch.setattr(dispatch, "_GPU_ONLY_IN_AUTO", ())
    monkeypatch.delenv("BIGBIRD_SELF_CHECK", raising=False)
    monkeypatch.delenv("BIGBIRD_BACKEND", raising=False)


def _problem(requires_grad=False):
    layout = make_layout(torch.randint(0, NB, (H, NB, 1)), block_size=BS)
    q, k, v = make_qkv(B, H, NB * BS, D, requires_grad=requires_grad)
    return q, k, v, layout, make_padding_mask(B, NB * BS, block_size=BS, kind="tail")


def _break_forward(monkeypatch):
    real = launch._bigbird_attn_fwd

    def wrong(*args):
        out, lse = real(*args)
        return out + 0.01, lse

    monkeypatch.setattr(launch, "_bigbird_attn_fwd", wrong)


def _break_backward(monkeypatch):
    real = launch._bigbird_attn_bwd

    def wrong(*args):
        dq, dk, dv = real(*args)
        return dq * 1.5, dk, dv

    monkeypatch.setattr(launch, "_bigbird_attn_bwd", wrong)


def test_a_correct_backend_passes_once_per_key(monkeypatch):
    calls = []
    real = dispatch.run_self_check
    monkeypatch.setattr(dispatch, "run_self_check", lambda *a: calls.append(a[1:]) or real(*a))
    q, k, v, layout, mask = _problem(requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):
            out = block_sparse_attention(q, k, v, layout, attention_mask=mask, backend="triton")
            out.sum().backward()
    assert [c[-1] for c in calls] == ["fwd", "bwd"]  # one check per pass, remembered afterwards
    results = dispatch.self_check_results()
    assert len(results) == 2 and all(err is None for err in results.values()), results
    assert any("cpu, float32, head_dim 32, block_size 16, bwd" in key for key in results)


def test_a_broken_forward_is_skipped_by_auto_with_one_warning(monkeypatch):
    _break_forward(monkeypatch)
    q, k, v, layout, mask = _problem()
    with pytest.warns(RuntimeWarning, match=r"backend 'triton' failed its self-check .*out .*max error") as rec:
        out = block_sparse_attention(q, k, v, layout, attention_mask=mask)
    assert len([w for w in rec if "self-check" in str(w.message)]) == 1
    ref, _ = block_sparse_attention_ref(q, k, v, layout, mask)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)  # auto fell back to the reference backend
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # remembered: no second warning, no second check
        block_sparse_attention(q, k, v, layout, attention_mask=mask)


def test_a_broken_forward_named_raises(monkeypatch):
    _break_forward(monkeypatch)
    q, k, v, layout, mask = _problem()
    with pytest.warns(RuntimeWarning, match="self-check"):
        with pytest.raises(dispatch.SelfCheckError, match=r"'triton' failed its self-check \(cpu, float32, head_dim 32"):
            block_sparse_attention(q, k, v, layout, attention_mask=mask, backend="triton")
    with pytest.raises(dispatch.BackendNotSupportedError, match="max error"):  # still refused, no new check
        block_sparse_attention(q, k, v, layout, attention_mask=mask, backend="triton")


def test_a_broken_backward_only_refuses_calls_that_need_gradients(monkeypatch):
    _break_backward(monkeypatch)
    q, k, v, layout, mask = _problem()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        block_sparse_attention(q, k, v, layout, attention_mask=mask, backend="triton")  # forward only: fine
    q.requires_grad_()
    with pytest.warns(RuntimeWarning, match=r"bwd\): dq "):
        with pytest.raises(dispatch.SelfCheckError, match="dq"):
            block_sparse_attention(q, k, v, layout, attention_mask=mask, backend="triton")


def test_a_kernel_that_raises_fails_its_check(monkeypatch):
    def boom(*args):
        raise RuntimeError("out of resources: shared memory\nsecond line")

    monkeypatch.setattr(launch, "_bigbird_attn_fwd", boom)
    q, k, v, layout, mask = _problem()
    with pytest.warns(RuntimeWarning, match="raised RuntimeError: out of resources: shared memory;"):
        out = block_sparse_attention(q, k, v, layout, attention_mask=mask)
    assert torch.isfinite(out).all()


def test_self_check_off(monkeypatch):
    monkeypatch.setenv("BIGBIRD_SELF_CHECK", "0")
    _break_forward(monkeypatch)
    q, k, v, layout, mask = _problem()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = block_sparse_attention(q, k, v, layout, attention_mask=None, backend="triton")
    ref, _ = block_sparse_attention_ref(q, k, v, layout, None)
    assert (out - ref).abs().max() > 0.005  # the broken kernel ran unchecked
    assert dispatch.self_check_results() == {}


def test_info_reports_the_failure(monkeypatch):
    from bigbird_kernels import info

    _break_forward(monkeypatch)
    with pytest.warns(RuntimeWarning, match="self-check"):
        text = info.report()
    line = next(l for l in text.splitlines() if l.strip().startswith("triton"))
    assert "unavailable: failed its self-check (cpu, float32, head_dim 64, block_size 64, fwd): out " in line, text
    monkeypatch.setattr(dispatch, "_self_checks", {})
    monkeypatch.setattr(dispatch, "run_self_check", lambda *a: None)  # the passing case, without its cost
    line = next(l for l in info.report().splitlines() if l.strip().startswith("triton"))
    assert "available, self-check passed" in line
