"""The public op: :func:`block_sparse_attention`."""

from __future__ import annotations

import math
import numbers

import torch

from .dispatch import BACKEND_NAMES, AttentionInputs, select_backend
from .layout import BigBirdLayout

__all__ = ["block_sparse_attention", "repeat_kv_heads"]

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: BigBirdLayout,
    *,
    attention_mask: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str = "auto",
    return_lse: bool = False,
    deterministic: bool = False,
):
    """BigBird block-sparse attention.

    For query block ``i`` one softmax runs over the concatenation of the key blocks the layout lists
    for row ``i``, with multiplicity (a block listed twice counts twice); global query blocks attend
    to every key once. Equivalently: dense attention with the additive bias ``log(count[h, i, j])``.

    Args:
        q: ``(B, H, S, D)``; k, v: ``(B, H_kv, S, D)``, all of one dtype (float32, float16, bfloat16;
            float64 on the reference backend) and device; any strides. ``S`` must equal
            ``layout.seq_len`` (a multiple of ``layout.block_size``) and ``H`` must equal
            ``layout.num_heads``. Grouped-query attention: ``H_kv`` may divide ``H``; query head ``h``
            then reads key/value head ``h // (H // H_kv)`` (flash-attn's and SDPA's convention).
            Backends that do not handle it natively (``supports_gqa`` False) get k and v with their
            heads repeated (a copy; gradients are summed back over each group). A ``(B, S, H, D)``
            tensor is refused with an error saying so (use
            :func:`~bigbird_kernels.nn.block_sparse_attn_func` for that layout).
        layout: a :class:`~bigbird_kernels.layout.BigBirdLayout` on the same device as ``q``, not
            written in place since it was built (layouts are read-only).
        attention_mask: ``(B, S)`` bool, or integers 0/1, **True/1 = real token** (Hugging Face's
            convention; the opposite of ``nn.MultiheadAttention``'s ``key_padding_mask``). Padded
            keys get no weight; output rows of padded queries are exactly 0. None = no padding.
        scale: multiplies ``q @ k^T``: a finite positive real number (Python or NumPy), default
            ``1 / sqrt(D)``.
        backend: ``"auto"`` (cuda, then triton, then reference: the first that accepts the inputs;
            the environment variable ``BIGBIRD_BACKEND`` replaces ``auto``) or a name from
            ``cuda, triton, reference, sdpa, flex``. A named backend never falls back.
        return_lse: also return the fp32 log-sum-exp ``(B, H, S)`` of each row's scaled scores
            (``-inf`` for padded queries).
        deterministic: ask the backend for bit-reproducible gradients.

    Under ``torch.autocast`` the op runs in the autocast dtype (q, k, v are cast to it).

    Returns:
        ``out (B, H, S, D)`` in the input dtype, or ``(out, lse)`` with ``return_lse``.

    Raises:
        TypeError / ValueError on malformed inputs, naming the problem (a ``scale`` that is not a
        finite positive number, a layout whose tensors were modified in place, ...);
        :class:`~bigbird_kernels.dispatch.BackendNotSupportedError` when no (or not the named)
        backend can run them, listing each backend's reason.
    """
    if isinstance(q, torch.Tensor) and torch.is_autocast_enabled(q.device.type):
        # autocast: run the op in the autocast dtype, and keep autocast away from the backends' own
        # precision choices (the reference's fp32 statistics, the kernels' accumulators)
        dt = torch.get_autocast_dtype(q.device.type)
        q, k, v = (t.to(dt) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in (q, k, v))
        with torch.autocast(q.device.type, enabled=False):
            return block_sparse_attention(q, k, v, layout, attention_mask=attention_mask, scale=scale,
                                          backend=backend, return_lse=return_lse, deterministic=deterministic)
    attention_mask = _validate(q, k, v, layout, attention_mask, backend)
    scale = check_scale(scale)
    B, H, S, D = q.shape
    if B == 0:
        out = q.new_empty(B, H, S, D)
        return (out, q.new_empty(B, H, S, dtype=torch.float32)) if return_lse else out
    inputs = AttentionInputs(
        device=q.device,
        dtype=q.dtype,
        batch=B,
        num_heads=H,
        seq_len=S,
        head_dim=D,
        block_size=layout.block_size,
        num_random_blocks=layout.num_random_blocks,
        requires_grad=torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad),
        has_mask=attention_mask is not None,
        deterministic=deterministic,
    )
    impl = select_backend(backend, inputs)
    if k.shape[1] != H and not getattr(impl, "supports_gqa", False):
        k, v = repeat_kv_heads(k, H), repeat_kv_heads(v, H)
    out, lse = impl.forward(q, k, v, layout, attention_mask, scale, need_lse=return_lse, deterministic=deterministic)
    return (out, lse) if return_lse else out


def repeat_kv_heads(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``t (B, H_kv, S, D)`` -> ``(B, num_heads, S, D)``: each head repeated ``num_heads // H_kv`` times,
    consecutively (head ``h`` of the result is head ``h // group`` of ``t``); differentiable."""
    B, Hkv, S, D = t.shape
    return t[:, :, None].expand(B, Hkv, num_heads // Hkv, S, D).reshape(B, num_heads, S, D)


def check_scale(scale) -> float | None:
    """``scale`` as a Python float (None stays None).

    Raises TypeError for anything but a real number (bools, tensors, strings), ValueError for NaN,
    Inf, 0 and negative numbers, naming ``scale``.
    """
    if scale is None:
        return None
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a finite positive number or None, got {type(scale).__name__}: {scale!r}")
    value = float(scale)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"scale must be a finite positive number, got {scale!r}")
    return value


def _validate(q, k, v, layout, attention_mask, backend):
    """Check everything the kernel contract promises; return the mask as bool (or None)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (B, H, S, D), got {t.dim()} dims: {tuple(t.shape)}")
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{name} must be a floating tensor (float32, float16, bfloat16), got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must have the same dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on the same device, got {q.device}, {k.device}, {v.device}")
    if not isinstance(layout, BigBirdLayout):
        raise TypeError(f"layout must be a BigBirdLayout, got {type(layout).__name__}")
    check_dim_order(q, k, v, layout, "BHSD")
    B, H, S, D = q.shape
    if not all(t.shape[0] == B and t.shape[2:] == q.shape[2:] for t in (k, v)):
        raise ValueError(f"q, k, v must have the same shape (B, H, S, D) up to the heads of k and v, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    check_kv_heads(q, k, v, head_dim=1)
    if not torch.compiler.is_compiling():  # graph inputs: their versions are not traced
        layout.check_unmodified()
    if D == 0:
        raise ValueError("head dim D must be positive")
    if S % layout.block_size:
        raise ValueError(
            f"sequence length S={S} is not a multiple of block_size={layout.block_size}: pad the "
            "sequence (and mask the padding) to a block multiple"
        )
    if S != layout.seq_len:
        raise ValueError(
            f"layout was built for S={layout.seq_len} ({layout.num_blocks} blocks of {layout.block_size}), "
            f"but the inputs have S={S}"
        )
    if H != layout.num_heads:
        raise ValueError(f"layout was built for {layout.num_heads} heads, but the inputs have H={H}")
    if layout.device != q.device:
        raise ValueError(f"layout is on {layout.device} but the inputs are on {q.device}: use layout.to(device)")
    if not isinstance(backend, str) or (backend != "auto" and backend not in BACKEND_NAMES):
        raise ValueError(f"unknown backend {backend!r}; expected 'auto' or one of {', '.join(BACKEND_NAMES)}")
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}")
    if attention_mask.shape != (B, S):
        raise ValueError(f"attention_mask must have shape (B, S) = {(B, S)}, got {tuple(attention_mask.shape)}")
    if attention_mask.device != q.device:
        raise ValueError(f"attention_mask is on {attention_mask.device} but the inputs are on {q.device}")
    if attention_mask.dtype == torch.bool:
        return attention_mask
    if attention_mask.dtype.is_floating_point or attention_mask.dtype.is_complex:
        raise TypeError(
            f"attention_mask must be bool or 0/1 integers (True/1 = real token), got {attention_mask.dtype}; "
            "additive float masks are not accepted"
        )
    if attention_mask.device.type == "cpu" and attention_mask.numel() and not torch.compiler.is_compiling():
        # checked where it costs no device synchronisation (and outside compiled graphs)
        lo, hi = int(attention_mask.min()), int(attention_mask.max())
        if lo < 0 or hi > 1:
            raise ValueError(f"integer attention_mask must hold only 0 and 1, found values in [{lo}, {hi}]")
    return attention_mask != 0


_SHAPES = {"BHSD": "(B, H, S, D)", "BSHD": "(B, S, H, D)"}
_OTHER = {"BHSD": "BSHD", "BSHD": "BHSD"}


def check_dim_order(q, k, v, layout: BigBirdLayout, layout_format: str) -> None:
    """Refuse q, k, v whose dimensions are in the other order than ``layout_format`` says.

    ``(B, X, Y, D)`` in ``BHSD`` is read as ``H = X, S = Y`` (``BSHD``: the reverse). When that reading
    does not fit the layout but the swapped one does (``S`` padded to a block multiple equals
    ``layout.seq_len``, the heads of q equal ``layout.num_heads`` and those of k and v divide them),
    a ValueError says which order was expected. Anything else is left to the other checks.
    """
    def fits(s_dim: int, h_dim: int) -> bool:
        if -(-q.shape[s_dim] // layout.block_size) * layout.block_size != layout.seq_len:
            return False
        if q.shape[h_dim] != layout.num_heads:
            return False
        return all(t.shape[s_dim] == q.shape[s_dim] and t.shape[h_dim] > 0 and layout.num_heads % t.shape[h_dim] == 0
                   for t in (k, v))

    h_dim, s_dim = (1, 2) if layout_format == "BHSD" else (2, 1)
    if not fits(s_dim, h_dim) and fits(h_dim, s_dim):
        raise ValueError(
            f"q, k, v look like {_SHAPES[_OTHER[layout_format]]} tensors (q {tuple(q.shape)}; the layout has "
            f"{layout.num_heads} heads and S={layout.seq_len}) but {_SHAPES[layout_format]} was expected: "
            + ("pass q.transpose(1, 2) (and k, v), or use bigbird_kernels.nn.block_sparse_attn_func, which "
               "takes flash-attn's (B, S, H, D) by default" if layout_format == "BHSD"
               else "pass layout_format='BHSD' or q.transpose(1, 2) (and k, v)")
        )


def check_kv_heads(q, k, v, *, head_dim: int) -> None:
    """Grouped-query attention: k and v have the same number of heads, one that divides q's."""
    hq, hk, hv = q.shape[head_dim], k.shape[head_dim], v.shape[head_dim]
    if hk != hv:
        raise ValueError(f"k has {hk} heads but v has {hv}: k and v must have the same number of heads")
    if hk == 0 or hq % hk:
        raise ValueError(f"q has {hq} heads, which is not a multiple of the {hk} heads of k and v (grouped-query "
                         "attention needs H_q % H_kv == 0)")
