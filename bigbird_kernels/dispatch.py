"""Backend capability records and the choice of backend for one call.

Each backend module under ``bigbird_kernels.backends`` exposes ``BACKEND``, an object with

* ``name`` (str),
* ``not_supported_reasons(inputs: AttentionInputs) -> list[str]`` (empty when it accepts the call),
* ``forward(q, k, v, layout, attention_mask, scale, *, need_lse, deterministic) -> (out, lse | None)``,
  differentiable with respect to q, k and v.

``auto`` tries :data:`AUTO_ORDER` and takes the first backend that accepts the inputs; ``sdpa`` and
``flex`` are baselines chosen only by name. A backend named explicitly never falls back; when nothing
fits, the error lists every backend tried with its reasons. ``BIGBIRD_BACKEND=name`` replaces ``auto``.

Self-check: the first time a kernel backend (:data:`SELF_CHECKED`) would run on a given (device, dtype,
head dim, block size, pass), it first runs itself on a small random problem and compares with the
reference on the same device by the tolerance rule (:func:`run_self_check`). A failure (a mismatch, or
an exception) is remembered for the process: ``auto`` then skips that backend for those inputs (one
warning names the error), a backend named explicitly raises :class:`SelfCheckError`, and
``python -m bigbird_kernels.info`` reports it. ``BIGBIRD_SELF_CHECK=0`` turns the check off. It is not
run while ``torch.compile`` traces or while a CUDA graph is being captured.
"""

from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass

import torch

__all__ = [
    "AttentionInputs",
    "BackendNotSupportedError",
    "SelfCheckError",
    "SELF_CHECKED",
    "run_self_check",
    "self_check_enabled",
    "self_check_failure",
    "self_check_results",
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


class SelfCheckError(BackendNotSupportedError):
    """The backend asked for by name gave wrong results in its self-check on this device."""


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


# ------------------------------------------------------------------------------------------------------
# self-check
# ------------------------------------------------------------------------------------------------------

SELF_CHECKED = ("cuda", "triton")
_self_checks: dict[tuple, str | None] = {}  # (backend, device, dtype, head dim, block size, pass) -> error


def self_check_enabled() -> bool:
    return os.environ.get("BIGBIRD_SELF_CHECK", "1").strip() != "0"


def _check_keys(name: str, inputs: AttentionInputs) -> list[tuple]:
    passes = ("fwd", "bwd") if inputs.requires_grad else ("fwd",)
    return [(name, str(inputs.device), inputs.dtype, inputs.head_dim, inputs.block_size, p) for p in passes]


def run_self_check(backend, device, dtype: torch.dtype, head_dim: int, block_size: int, check_pass: str) -> str | None:
    """Run ``backend`` on a small fixed random problem (B=2, H=2, 6 blocks, r=1, global blocks 0 and
    -1; once without a mask and once with padding) on ``device`` and compare with the reference there.

    The oracle is the reference in float64, the bound the tolerance rule (docs/design.md section 6) applied
    to the reference run in ``dtype`` without upcast; ``check_pass="bwd"`` also compares dq, dk, dv for
    a random output gradient. Returns None when every comparison holds, else a one-line description of
    the first failure (or of the exception raised).
    """
    from .layout import make_layout
    from .reference import block_sparse_attention_ref
    from .testing import tolerance

    B, H, nb = 2, 2, 6
    S = nb * block_size
    gen = torch.Generator(device="cpu").manual_seed(20240917)
    q, k, v = (torch.randn(B, H, S, head_dim, generator=gen).to(device=device, dtype=dtype) for _ in range(3))
    dout = torch.randn(B, H, S, head_dim, generator=gen).to(device=device, dtype=dtype)
    layout = make_layout(torch.randint(0, nb, (H, nb, 1), generator=gen), block_size=block_size).to(device)
    real = torch.ones(B, S, dtype=torch.bool)  # True = real token; the second sequence ends in padding
    real[1, S - block_size - block_size // 2 :] = False
    grad = check_pass == "bwd"

    def run(fn, dt, mask, upcast=None):
        xs = [t.detach().to(dt).requires_grad_(grad) for t in (q, k, v)]
        kw = {} if upcast is None else dict(upcast=upcast)
        out = fn(*xs, layout, mask, None, **kw)
        out = out[0] if isinstance(out, tuple) else out
        if not grad:
            return [out.detach()]
        return [out.detach(), *torch.autograd.grad(out, xs, dout.to(dt))]

    def kernel(q_, k_, v_, layout_, mask, scale):
        return backend.forward(q_, k_, v_, layout_, mask, scale, need_lse=False, deterministic=False)

    try:
        with torch.enable_grad(), torch.autocast(torch.device(device).type, enabled=False):
            for mask in (None, real.to(device)):
                got = run(kernel, dtype, mask)
                oracle = run(block_sparse_attention_ref, torch.float64, mask, upcast=False)
                low = run(block_sparse_attention_ref, dtype, mask, upcast=False)
                for what, a, o, lo in zip(("out", "dq", "dk", "dv"), got, oracle, low):
                    err = (a.double() - o).abs().max().item()
                    bound = tolerance((lo.double() - o).abs().max().item(), dtype, grad=what != "out")
                    if not err <= bound:  # NaN fails too
                        return (f"{what} {'with' if mask is not None else 'without'} padding: max error {err:.3e} "
                                f"> bound {bound:.3e} against the reference")
    except Exception as e:  # a kernel that cannot run here is as unusable as a wrong one
        return f"raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def _run_self_check_unsynced(backend, device, *args) -> str | None:
    """:func:`run_self_check` (which copies to and reads back from the device, once per key) with CUDA's
    sync-debug mode off meanwhile, so that a caller checking its own hot path is not blamed for it."""
    if device.type != "cuda":
        return run_self_check(backend, device, *args)
    mode = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(0)
    try:
        return run_self_check(backend, device, *args)
    finally:
        torch.cuda.set_sync_debug_mode(mode)


def self_check_failure(name: str, inputs: AttentionInputs) -> str | None:
    """The self-check error of backend ``name`` for ``inputs`` (running the check on first use), or None."""
    if name not in SELF_CHECKED or not self_check_enabled() or torch.compiler.is_compiling():
        return None
    if inputs.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return None
    for key in _check_keys(name, inputs):
        if key not in _self_checks:
            _self_checks[key] = _run_self_check_unsynced(get_backend(name), inputs.device, *key[2:])
            if _self_checks[key] is not None:
                warnings.warn(
                    f"bigbird_kernels: backend {name!r} failed its self-check ({_describe_key(key)}): "
                    f"{_self_checks[key]}; auto skips it for these inputs (BIGBIRD_SELF_CHECK=0 turns the check off)",
                    RuntimeWarning,
                    stacklevel=3,
                )
        if _self_checks[key] is not None:
            return f"failed its self-check ({_describe_key(key)}): {_self_checks[key]}"
    return None


def self_check_results() -> dict[str, str | None]:
    """Every self-check run in this process: readable key -> error (None: passed)."""
    return {f"{key[0]} {_describe_key(key)}": err for key, err in _self_checks.items()}


def _describe_key(key: tuple) -> str:
    _, device, dtype, head_dim, block_size, check_pass = key
    return f"{device}, {str(dtype).replace('torch.', '')}, head_dim {head_dim}, block_size {block_size}, {check_pass}"


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
                failure = self_check_failure(name, inputs)
                if failure is None:
                    return get_backend(name)
                reasons = [failure]
            tried[name] = reasons
        raise BackendNotSupportedError(_describe("no backend accepts these inputs", inputs, tried))
    reasons = not_supported_reasons(requested, inputs)
    if reasons:
        raise BackendNotSupportedError(_describe(f"backend {requested!r} cannot run these inputs", inputs, {requested: reasons}))
    failure = self_check_failure(requested, inputs)
    if failure is not None:
        raise SelfCheckError(f"backend {requested!r} {failure}")
    return get_backend(requested)


def _describe(head: str, inputs: AttentionInputs, tried: dict[str, list[str]]) -> str:
    lines = [
        f"{head} (device={inputs.device}, dtype={inputs.dtype}, head_dim={inputs.head_dim}, "
        f"block_size={inputs.block_size}, requires_grad={inputs.requires_grad}):"
    ]
    lines += [f"  {name}: {'; '.join(reasons)}" for name, reasons in tried.items()]
    return "\n".join(lines)
