"""The ``cuda`` backend: the fused CUDA kernels of ``csrc/`` through ``torch.ops.bigbird_kernels_cuda``.

Where the ops come from, first that works:

1. the prebuilt extension ``bigbird_kernels._C`` (``pip install --no-build-isolation .`` on a machine with
   nvcc and a CUDA build of torch);
2. on a machine with a CUDA device, a JIT build of ``csrc/`` with ``torch.utils.cpp_extension.load``
   (ninja, ``MAX_JOBS`` parallel nvcc jobs, cached under ``BIGBIRD_CUDA_BUILD_DIR`` or torch's
   extension directory; only the visible devices' architectures unless ``BIGBIRD_CUDA_ARCHS`` says
   otherwise). It runs on the first call with CUDA inputs, not at import. ``BIGBIRD_CUDA_JIT=0``
   disables it.

On a CPU-only torch this module imports cleanly and refuses every input, saying why.

The C++ side defines the ops (schemas in ``csrc/bigbird_attn.cpp``); this module registers their fake
(meta) implementations and the autograd formula, so ``torch.compile`` sees one node per call.

Supported: CUDA tensors on compute capability >= 8.0, float16/bfloat16, head dims 64 and 128, block
size 64, B and H up to 65535 each (B * H * S < 2^31), any layout (window, globals, r, duplicates),
padding masks. The forward uses the Hopper kernel (TMA + wgmma) on sm_90 when the build holds it
(``BIGBIRD_CUDA_DISABLE_SM90=1`` forces the portable mma.sync kernel); the backward is deterministic in
every mode (no atomics).

Inputs are read in place through their strides (the model's ``view(B, S, H, D).transpose(1, 2)``
included) when the last dimension is contiguous and the data pointer and other strides are 16-byte
aligned; anything else is copied first (the rule is ``bigbird::readable_in_place`` in
``csrc/bigbird_attn.h``, applied by the op itself, so it holds under ``torch.compile`` too). Outputs
and gradients are contiguous ``(B, H, S, D)``. NaN or Inf stored in padded positions never reaches a
real row, and padded query rows of the output are exactly 0. No call synchronises with the host, so
calls can be captured in CUDA graphs (warm up once first: the first call per device may build or load
the extension).
"""

from __future__ import annotations

import glob
import importlib
import math
import os
import threading
from pathlib import Path

import torch

__all__ = ["BACKEND", "CudaBackend", "build_info", "extension_status"]

_NS = "bigbird_kernels_cuda"
_DTYPES = (torch.float16, torch.bfloat16)
_HEAD_DIMS = (64, 128)
_BLOCK_SIZES = (64,)
# largest dynamic shared memory of any kernel per head dim (the backward: 4 + 4 tiles of 64 x D 16-bit
# values plus statistics and the schedule), rounded up; sm_86 / sm_89 allow only 99 KiB per block
_SMEM_NEEDED = {64: 70 * 1024, 128: 134 * 1024}
_MAX_GRID_YZ = 65535  # the kernels put the head on grid y and the batch on grid z
# CUDA sources for the JIT build: shipped inside the package by wheels and sdists
# (site-packages/bigbird_kernels/csrc), else the repository's csrc/ (source checkout, editable install)
_PKG_CSRC = Path(__file__).resolve().parents[1] / "csrc"
_REPO_CSRC = Path(__file__).resolve().parents[2] / "csrc"
_CSRC = next((d for d in (_PKG_CSRC, _REPO_CSRC) if any(d.glob("*.cu"))), _PKG_CSRC)
_JIT_NAME = "bigbird_kernels_cuda_jit"

_lock = threading.RLock()
_state: dict = {"loaded": False, "registered": False, "jit_error": None, "source": None}


def _ops_defined() -> bool:
    try:
        getattr(torch.ops, _NS).fwd  # noqa: B018 - raises when the library is not loaded
        return True
    except (AttributeError, RuntimeError):
        return False


def _op(name: str):
    """The registered op ``bigbird_kernels_cuda::<name>`` (once the extension is loaded)."""
    return getattr(getattr(torch.ops, _NS), name)


def _static_reason() -> str | None:
    """Why the extension can never load in this process, without trying (None: it might)."""
    if torch.version.cuda is None:
        return "torch was built without CUDA (CPU-only wheel), so the CUDA extension cannot be built or loaded"
    return None


def _import_prebuilt() -> str | None:
    try:
        importlib.import_module("bigbird_kernels._C")
    except ImportError as e:
        return f"prebuilt bigbird_kernels._C is not installed ({e})"
    except OSError as e:  # built against another torch / CUDA
        return f"prebuilt bigbird_kernels._C failed to load ({e})"
    return None


def _jit_arch_list() -> str:
    archs = os.environ.get("BIGBIRD_CUDA_ARCHS", "").strip()
    if archs:
        return archs
    found = []
    for i in range(torch.cuda.device_count()):
        major, minor = torch.cuda.get_device_capability(i)
        arch = "9.0a" if (major, minor) == (9, 0) else f"{major}.{minor}"
        if arch not in found:
            found.append(arch)
    return ";".join(found) or "8.0;9.0a"


def _jit_build() -> str | None:
    """Builds and loads csrc/ with torch's JIT extension loader; returns why it failed (None: loaded)."""
    if os.environ.get("BIGBIRD_CUDA_JIT", "1").strip() == "0":
        return "BIGBIRD_CUDA_JIT=0 disables the JIT build"
    if not torch.cuda.is_available():
        return "no CUDA device visible, so no JIT build was attempted"
    sources = sorted(glob.glob(str(_CSRC / "*.cu"))) + sorted(glob.glob(str(_CSRC / "*.cpp")))
    if not sources:
        return f"no CUDA sources under {_CSRC} (the package was installed without csrc/)"
    try:
        from torch.utils.cpp_extension import CUDA_HOME, load
    except ImportError as e:  # pragma: no cover - torch always ships it
        return f"torch.utils.cpp_extension unavailable ({e})"
    if CUDA_HOME is None:
        return "nvcc / CUDA_HOME not found for the JIT build"
    build_dir = os.environ.get("BIGBIRD_CUDA_BUILD_DIR") or None
    if build_dir:
        os.makedirs(build_dir, exist_ok=True)
    saved = {key: os.environ.get(key) for key in ("TORCH_CUDA_ARCH_LIST", "MAX_JOBS")}
    os.environ["TORCH_CUDA_ARCH_LIST"] = _jit_arch_list()
    if not saved["MAX_JOBS"]:
        os.environ["MAX_JOBS"] = str(max(1, min(len(sources), os.cpu_count() or 1)))
    try:
        load(
            name=_JIT_NAME,
            sources=sources,
            extra_cflags=["-O3"],
            extra_cuda_cflags=["-O3", "--use_fast_math", "-lineinfo"],
            extra_include_paths=[str(_CSRC)],
            build_directory=build_dir,
            is_python_module=False,
            verbose=os.environ.get("BIGBIRD_CUDA_JIT_VERBOSE") == "1",
        )
    except Exception as e:  # noqa: BLE001 - report any build failure as a refusal reason
        msg = str(e).strip().splitlines()
        return f"JIT build failed ({type(e).__name__}: {msg[-1] if msg else ''})"
    finally:
        for key, val in saved.items():
            if val is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = val
    return None


def _register_python_side() -> None:
    """Fake implementations and autograd of the C++ ops (once per process)."""
    if _state["registered"]:
        return

    def fwd_fake(q, k, v, kv_indices, kv_num_blocks, q_offsets, q_indices, global_blocks, attention_mask, scale,
                 block_size, deterministic):
        B, H, S, D = q.shape
        out = q.new_empty((B, H, S, D))
        lse = q.new_empty((B, H, S), dtype=torch.float32)
        return out, lse

    def bwd_fake(dout, dlse, q, k, v, out, lse, kv_indices, kv_num_blocks, q_offsets, q_indices, global_blocks,
                 attention_mask, scale, block_size, deterministic):
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)

    def setup_context(ctx, inputs, output):
        (q, k, v, kv_indices, kv_num_blocks, q_offsets, q_indices, global_blocks, attention_mask, scale, block_size,
         deterministic) = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, out, lse, kv_indices, kv_num_blocks, q_offsets, q_indices, attention_mask)
        ctx.global_blocks = list(global_blocks)
        ctx.scale = scale
        ctx.block_size = block_size
        ctx.deterministic = deterministic

    def backward(ctx, dout, dlse):
        q, k, v, out, lse, kv_indices, kv_num_blocks, q_offsets, q_indices, attention_mask = ctx.saved_tensors
        if q_offsets is None or q_indices is None:
            raise RuntimeError(
                "bigbird_kernels_cuda::fwd was called without q_offsets/q_indices (layout.transpose()), which the "
                "backward needs; pass them whenever q, k or v require grad"
            )
        if dout is None:
            dout = torch.zeros_like(out)
        dq, dk, dv = _op("bwd")(
            dout, dlse, q, k, v, out, lse, kv_indices, kv_num_blocks, q_offsets, q_indices, ctx.global_blocks,
            attention_mask, ctx.scale, ctx.block_size, ctx.deterministic,
        )
        return dq, dk, dv, None, None, None, None, None, None, None, None, None

    torch.library.register_fake(f"{_NS}::fwd")(fwd_fake)
    torch.library.register_fake(f"{_NS}::bwd")(bwd_fake)
    torch.library.register_autograd(f"{_NS}::fwd", backward, setup_context=setup_context)
    _state["registered"] = True


def _ensure_loaded(allow_jit: bool) -> str | None:
    """Loads the ops (prebuilt, else JIT when allowed); returns why they are unavailable (None: loaded)."""
    if _state["loaded"]:
        return None
    reason = _static_reason()
    if reason:
        return reason
    with _lock:
        if _state["loaded"]:
            return None
        if not _ops_defined():
            prebuilt_err = _import_prebuilt()
            if prebuilt_err is not None and not _ops_defined():
                if _state["jit_error"] is not None:
                    return f"{prebuilt_err}; {_state['jit_error']}"
                if not allow_jit:
                    return f"{prebuilt_err}; a JIT build would be tried on the first call with CUDA inputs"
                jit_err = _jit_build()
                if jit_err is not None or not _ops_defined():
                    _state["jit_error"] = jit_err or "the JIT-built library did not register the ops"
                    return f"{prebuilt_err}; {_state['jit_error']}"
                _state["source"] = "jit"
            else:
                _state["source"] = "prebuilt bigbird_kernels._C"
        else:
            _state["source"] = _state["source"] or "already registered"
        _register_python_side()
        _state["loaded"] = True
    return None


def extension_status() -> str:
    """One line: where the ops come from, or why they are unavailable (does not trigger a JIT build)."""
    err = _ensure_loaded(allow_jit=False)
    return f"loaded ({_state['source']})" if err is None else f"not available: {err}"


def build_info() -> str:
    """What the loaded extension holds and which forward path each device takes."""
    err = _ensure_loaded(allow_jit=False)
    if err is not None:
        return f"not available: {err}"
    return _op("build_info")()


class CudaBackend:
    name = "cuda"
    capabilities = {"dtypes": _DTYPES, "head_dims": _HEAD_DIMS, "block_sizes": _BLOCK_SIZES}  # for `bigbird info`

    def not_supported_reasons(self, inputs) -> list[str]:
        reasons = []
        on_cuda = inputs.device.type == "cuda"
        if not on_cuda:
            reasons.append(f"inputs are on {inputs.device.type}; the cuda backend needs CUDA tensors")
        if inputs.dtype not in _DTYPES:
            reasons.append(f"dtype {inputs.dtype} not supported (float16, bfloat16)")
        if inputs.head_dim not in _HEAD_DIMS:
            reasons.append(f"head dim {inputs.head_dim} not supported (64, 128)")
        if inputs.block_size not in _BLOCK_SIZES:
            reasons.append(f"block size {inputs.block_size} not supported (64)")
        for what, n in (("batch size", inputs.batch), ("head count", inputs.num_heads)):
            if n > _MAX_GRID_YZ:
                reasons.append(f"{what} {n} > {_MAX_GRID_YZ} (a CUDA grid limit of the kernels)")
        if on_cuda and torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(inputs.device)
            if (major, minor) < (8, 0):
                reasons.append(f"compute capability {major}.{minor} < 8.0")
            elif inputs.head_dim in _HEAD_DIMS:
                need = _SMEM_NEEDED[inputs.head_dim]
                have = getattr(torch.cuda.get_device_properties(inputs.device), "shared_memory_per_block_optin", need)
                if have < need:
                    reasons.append(f"head dim {inputs.head_dim} needs {need // 1024} KiB of shared memory per block, "
                                   f"the device allows {have // 1024} KiB")
        # build / load only for calls the kernels could run; otherwise just report what is known
        err = _ensure_loaded(allow_jit=on_cuda and not reasons)
        if err is not None:
            reasons.append(f"extension not available: {err}")
        return reasons

    def forward(self, q, k, v, layout, attention_mask, scale, *, need_lse, deterministic):
        err = _ensure_loaded(allow_jit=True)
        if err is not None:
            raise RuntimeError(f"the cuda backend is not available: {err}")
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
        q_offsets = q_indices = None
        if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
            t = layout.transpose()
            q_offsets, q_indices = t.q_offsets, t.q_indices
        out, lse = _op("fwd")(
            q, k, v, layout.kv_indices, layout.kv_num_blocks, q_offsets, q_indices, list(layout.global_blocks),
            attention_mask, scale, int(layout.block_size), bool(deterministic),
        )
        return out, (lse if need_lse else None)


BACKEND = CudaBackend()
