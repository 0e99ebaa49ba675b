"""The ``cuda`` backend's Python side on CPU (no GPU, no extension): what it refuses, and that its
per-call plumbing (layout unpacking, the transposed layout for the backward, the op arguments) makes no
host synchronisation and no host-to-device copy, in every layout mode (``resample`` builds a new layout
on every call). The op itself is replaced by a recorder with the real fake implementation's shapes."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from bigbird_kernels import hf_layout, make_layout, resample_layout
from bigbird_kernels.backends import cuda as cuda_backend
from bigbird_kernels.dispatch import AttentionInputs, not_supported_reasons

# calls that wait for the device or move host data to it when the tensors live on a GPU
_SYNCING = {"item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__", "nonzero", "tensor",
            "as_tensor", "from_numpy", "pin_memory", "synchronize"}


class _CallRecorder(TorchFunctionMode):
    """Records every torch function / Tensor method called; flags syncing calls and device moves."""

    def __init__(self):
        super().__init__()
        self.bad: list[str] = []
        self.names: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        self.names.append(name)
        if name in _SYNCING:
            self.bad.append(name)
        if name == "to" and ("device" in kwargs or any(isinstance(a, (torch.device, str)) for a in args[1:])):
            self.bad.append(f"to({args[1:]}, {kwargs})")
        return func(*args, **kwargs)


def _inputs(**kw):
    base = dict(device=torch.device("cuda"), dtype=torch.bfloat16, batch=2, num_heads=4, seq_len=1024, head_dim=64,
                block_size=64, num_random_blocks=3, requires_grad=True, has_mask=True, deterministic=False)
    base.update(kw)
    return AttentionInputs(**base)


@pytest.mark.parametrize("field,value,what", [("batch", 65536, "batch size 65536"), ("num_heads", 70000, "head count 70000")])
def test_refuses_batch_or_heads_beyond_the_grid_limit_by_name(field, value, what):
    """B and H go on grid z and y (at most 65535 each): refused with a reason, so ``auto`` falls back."""
    reasons = not_supported_reasons("cuda", _inputs(**{field: value}))
    assert any(what in r and "65535" in r for r in reasons), reasons
    assert not any("65535" in r for r in not_supported_reasons("cuda", _inputs(batch=65535, num_heads=65535)))


def _layout(kind: str, S: int, H: int, gen: torch.Generator):
    nb = S // 64
    if kind == "hf_train":
        return hf_layout(layer_idx=1, seq_len=S, block_size=64, num_random_blocks=3, num_heads=H, training=True)
    if kind == "make":
        rand = torch.randint(0, nb, (H, nb, 2), generator=gen)
        return make_layout(rand, block_size=64, window=3, global_blocks=(0, nb // 2, -1))
    return resample_layout(seq_len=S, block_size=64, num_random_blocks=3, num_heads=H, generator=gen)


@pytest.mark.parametrize("kind", ["hf_train", "make", "resample"])
def test_forward_plumbing_makes_no_sync_and_no_host_to_device_copy(kind, monkeypatch):
    B, H, S, D = 2, 3, 1024, 64
    calls = []

    def fake_fwd(q, k, v, kv_indices, kv_num_blocks, q_offsets, q_indices, global_blocks, mask, scale, block_size, det):
        calls.append((q_offsets is not None, list(global_blocks)))
        return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=torch.float32)

    monkeypatch.setattr(cuda_backend, "_ensure_loaded", lambda allow_jit: None)
    monkeypatch.setattr(cuda_backend, "_op", lambda name: {"fwd": fake_fwd}[name])
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, S, D, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    mask = torch.ones(B, S, dtype=torch.bool)
    layouts = [_layout(kind, S, H, gen) for _ in range(3)]  # built outside: the layout builders are not the plumbing
    with _CallRecorder() as rec:
        for layout in layouts:
            out, lse = cuda_backend.BACKEND.forward(q, k, v, layout, mask, None, need_lse=True, deterministic=False)
    assert rec.names, "the recorder saw no torch call (it must wrap the plumbing)"
    assert not rec.bad, f"host syncs / host-to-device copies in the cuda backend's plumbing: {rec.bad}"
    assert len(calls) == 3 and all(has_t for has_t, _ in calls), "the transposed layout goes with every grad call"
    assert out.shape == (B, H, S, D) and lse.shape == (B, H, S)


def test_recorder_flags_syncs_and_device_moves():
    """The recorder of the test above does see what it must refuse."""
    x = torch.ones(3)
    with _CallRecorder() as rec:
        x.sum().item()
        torch.tensor([1, 2])
        x.to("cpu")
    assert rec.bad[:2] == ["item", "tensor"] and rec.bad[2].startswith("to(")
