"""Backend capability records and the choice of backend for one call.

Each backend module under ``bigbird_kernels.backends`` exposes ``BACKEND``, an object with

* ``name`` (str),
* ``not_supported_reasons(inputs: AttentionInputs) -> list[str]`` (empty when it accepts the call),
* ``forward(q, k, v, layout, attention_mask, scale, *, need_lse, deterministic) -> (out, lse | None)``,
  differentiable with respect to q, k and v.

``auto`` tries :data:`AUTO_ORDER` and takes the first backend that accepts the inputs; ``sdpa`` and
``flex`` are baselines chosen only by name. A backend named explicitly never falls back; when nothing
fits, the error lists every backend tried with its reasons. ``BIGBIRD_BACKEND=name`` replaces ``auto``.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

import torch

__all__ = [
    "AttentionInputs",
    "BackendNotSupportedError",
    "BACKEND_NAMES",
    "AUTO_ORDER",
    "get_backend",
    "load_backends",
    "not_supported_reasons",
    "select_backend",
]

BACKEND_NAMES = ("cuda", "triton", "reference", "sdpa", "flex")
AUTO_ORDER = ("cuda", "triton", "reference")
_GPU_ONLY_IN_AUTO = ("cuda", "triton")
_MODULES = {name: f"bigbird_kernels.backends.{name}" for name in BACKEND_NAMES}
_loaded: dict[str, object] = {}
_load_errors: dict[str, str] = {}


class BackendNotSupportedError(ValueError):
    """No backend (or not the one asked for) can run these inputs; the message says why."""


@dataclass(frozen=True)
class AttentionInputs:
    """What a backend needs to know to accept or refuse a call."""

    device: torch.device
    dtype: torch.dtype
    batch: int
    num_heads: int
    seq_len: int
    head_dim: int
    block_size: int
    num_random_blocks: int
    requires_grad: bool
    has_mask: bool
    deterministic: bool


def get_backend(name: str):
    """The backend object called ``name``, or None when its module cannot be imported here."""
    if name not in _MODULES:
        raise ValueError(f"unknown backend {name!r}; expected 'auto' or one of {', '.join(BACKEND_NAMES)}")
    if name not in _loaded and name not in _load_errors:
        try:
            _loaded[name] = importlib.import_module(_MODULES[name]).BACKEND
        except Exception as e:  # an optional dependency or extension is missing: report, don't crash
            _load_errors[name] = f"not available ({type(e).__name__}: {e})"
    return _loaded.get(name)


def load_backends() -> None:
    """Import every backend module now (at package import), so that no import happens inside a
    ``torch.compile`` trace; import errors are recorded as the backend's reason."""
    for name in BACKEND_NAMES:
        get_backend(name)


def not_supported_reasons(name: str, inputs: AttentionInputs) -> list[str]:
    """Why backend ``name`` refuses ``inputs`` (empty list: it accepts them)."""
    backend = get_backend(name)
    if backend is None:
        return [_load_errors[name]]
    return list(backend.not_supported_reasons(inputs))


def select_backend(requested: str, inputs: AttentionInputs):
    """The backend object that runs this call, honouring ``auto`` and ``BIGBIRD_BACKEND``."""
    if requested == "auto":
        requested = os.environ.get("BIGBIRD_BACKEND", "").strip() or "auto"
    if requested == "auto":
        tried = {}
        for name in AUTO_ORDER:
            if name in _GPU_ONLY_IN_AUTO and inputs.device.type != "cuda":
                # the Triton interpreter runs on CPU tensors, but only when asked for by name
                tried[name] = ["auto uses it only for CUDA tensors"]
                continue
            reasons = not_supported_reasons(name, inputs)
            if not reasons:
                return get_backend(name)
            tried[name] = reasons
        raise BackendNotSupportedError(_describe("no backend accepts these inputs", inputs, tried))
    reasons = not_supported_reasons(requested, inputs)
    if reasons:
        raise BackendNotSupportedError(_describe(f"backend {requested!r} cannot run these inputs", inputs, {requested: reasons}))
    return get_backend(requested)


def _describe(head: str, inputs: AttentionInputs, tried: dict[str, list[str]]) -> str:
    lines = [
        f"{head} (device={inputs.device}, dtype={inputs.dtype}, head_dim={inputs.head_dim}, "
        f"block_size={inputs.block_size}, requires_grad={inputs.requires_grad}):"
    ]
    lines += [f"  {name}: {'; '.join(reasons)}" for name, reasons in tried.items()]
    return "\n".join(lines)
