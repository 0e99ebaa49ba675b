"""Drop-in PyTorch modules and a functional form around :func:`~bigbird_kernels.block_sparse_attention`.

* :class:`BlockSparseSelfAttention` - BigBird self-attention as an ``nn.Module``: q/k/v projections
  (named ``query``, ``key``, ``value`` like Hugging Face's), an optional output projection, padding to
  a block multiple and back, and the layout of its layer (``hf``, ``seeded`` or ``resample`` mode).
* :func:`block_sparse_attn_func` - the op called like flash-attn's ``flash_attn_func``: ``(B, S, H, D)``
  tensors by default (or ``(B, H, S, D)``) without a copy (the op gets ``transpose(1, 2)`` views; it
  accepts any strides), any length (padded to a block multiple and cut back), BigBird's default layout
  when none is given, grouped-query attention.

Both work under ``torch.compile(fullgraph=True)``. The module's layout is built on the host the first
time a (padded length, training) pair is seen - at trace time under ``torch.compile``, through
:func:`torch.compiler.assume_constant_result` - and kept on the module, so the compiled graph reads
it like a buffer. When only the sequence length changes, the module recompiles at most once per
distinct number of blocks (the layout depends on it); lengths padding to the same block count share a
graph once the length dimension is dynamic (``torch._dynamo.mark_dynamic(x, 1)``, or automatically
after the first recompilation). Compiled calls always take the padded, masked path (even when ``S``
is a block multiple) so that a dynamic ``S`` adds no guard beyond the block count.
"""

from __future__ import annotations

import dataclasses
import numbers
import operator

import torch
import torch.nn.functional as F
from torch import nn

from . import layout as _layout_mod
from .api import block_sparse_attention, check_dim_order, check_scale, repeat_kv_heads
from .layout import (
    LAYOUT_MODES,
    BigBirdLayout,
    LayoutTooShortError,
    check_int,
    check_window,
    get_layout,
    global_block_ids,
    make_layout,
    normalize_global_blocks,
)
from .reference import block_sparse_attention_probs

__all__ = ["BlockSparseSelfAttention", "block_sparse_attn_func"]

_FORMATS = ("BHSD", "BSHD")


DEFAULT_BLOCK_SIZE = 64
DEFAULT_NUM_RANDOM_BLOCKS = 3


def block_sparse_attn_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: BigBirdLayout | None = None,
    *,
    softmax_scale: float | None = None,
    causal: bool = False,
    dropout_p: float = 0.0,
    attention_mask: torch.Tensor | None = None,
    layout_format: str = "BSHD",
    return_lse: bool = False,
    return_attn_probs: bool = False,
    backend: str = "auto",
    deterministic: bool = False,
    scale: float | None = None,
):
    """BigBird block-sparse attention called like flash-attn's ``flash_attn_func``.

    ``(B, S, H, D)`` tensors by default (flash-attn's layout; ``layout_format="BHSD"`` for
    ``(B, H, S, D)``), any ``S``: the sequence is padded to a multiple of the block size (the padding
    masked as keys) and the output cut back to ``S``. The op reads transposed strides directly: no
    ``transpose().contiguous()`` copies.

    Args:
        q: ``(B, S, H, D)`` (``BSHD``) or ``(B, H, S, D)`` (``BHSD``); k, v: the same with ``H_kv``
            heads, ``H_kv`` dividing ``H`` (grouped-query attention: query head ``h`` reads key/value
            head ``h // (H // H_kv)``). A tensor in the other order is refused with an error saying
            which one was expected (detected when the layout fits the swapped reading, or, without a
            layout, when ``H`` is a multiple of 64 larger than a non-multiple ``S``).
        layout: the block layout (:class:`~bigbird_kernels.layout.BigBirdLayout`, ``num_heads = H``)
            for the padded length (``layout.seq_len`` = ``S`` rounded up to ``layout.block_size``).
            None: BigBird's default, Hugging Face's eval-mode layout with block 64, 3 random blocks,
            window 3 and global first/last blocks (``hf_layout(..., training=False)``, cached per
            length, heads and device; full attention below 3 blocks, as Hugging Face does). Pass a
            layout for other settings, training-mode random blocks, or under ``torch.compile``.
        softmax_scale: multiplies ``q @ k^T`` (flash-attn's name), default ``1 / sqrt(D)``;
            ``scale`` is the older name for the same thing (give one of them).
        causal: must be False: BigBird attention is bidirectional (``True`` is refused by name).
        dropout_p: must be 0: attention dropout is not supported (refused by name).
        attention_mask: ``(B, S)`` bool or 0/1 integers, True/1 = real token (Hugging Face's
            convention). None = no padding besides the block padding added here.
        layout_format: ``"BSHD"`` (the default, flash-attn's) or ``"BHSD"`` (the default of earlier
            releases): the order of the dimensions of q, k, v and the output.
        return_lse: also return the fp32 log-sum-exp ``(B, H, S)`` of every row (flash-attn's
            ``softmax_lse``; ``-inf`` on padded rows).
        return_attn_probs: also return ``lse`` and the attention probabilities ``(B, H, S, S)``
            (dense: for tests and inspection only, as in flash-attn).
        backend, deterministic: as for :func:`~bigbird_kernels.block_sparse_attention`.

    Returns:
        ``out`` in ``layout_format`` with ``S`` rows (for ``BSHD`` a view of the op's
        ``(B, H, S, D)`` result), ``(out, lse)`` with ``return_lse``, ``(out, lse, probs)`` with
        ``return_attn_probs``.
    """
    if layout_format not in _FORMATS:
        raise ValueError(f"layout_format must be one of {_FORMATS}, got {layout_format!r}")
    if layout is not None and not isinstance(layout, BigBirdLayout):
        raise TypeError(f"layout must be a BigBirdLayout or None, got {type(layout).__name__}: {layout!r:.80} (the "
                        "4th positional argument is the layout, not flash_attn_func's dropout_p: pass options by name)")
    if causal:
        raise ValueError("causal=True is not supported: BigBird attention is bidirectional (global and random "
                         "blocks read later keys); pass causal=False")
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, numbers.Real) or dropout_p != 0:
        raise ValueError(f"dropout_p={dropout_p!r} is not supported: block-sparse attention has no attention "
                         "dropout; pass dropout_p=0.0 (and apply dropout to the output if you need it)")
    if softmax_scale is not None and scale is not None:
        raise TypeError("give softmax_scale or scale (the same thing), not both")
    scale = softmax_scale if softmax_scale is not None else scale
    shape = "(B, S, H, D)" if layout_format == "BSHD" else "(B, H, S, D)"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-d tensor {shape} for layout_format={layout_format!r}")
    s_dim, h_dim = (1, 2) if layout_format == "BSHD" else (2, 1)
    B, S, H = q.shape[0], q.shape[s_dim], q.shape[h_dim]
    if k.shape[s_dim] != S or v.shape[s_dim] != S:
        raise ValueError(f"q, k, v must have the same sequence length (dim {s_dim} of {shape}), got "
                         f"{S}, {k.shape[s_dim]}, {v.shape[s_dim]}")
    if layout is None:
        if S == 0:
            raise ValueError(f"q, k, v have an empty sequence dimension: {tuple(q.shape)} {shape}")
        _check_order_without_layout(q, layout_format)
        bs = DEFAULT_BLOCK_SIZE
        layout = _build_layout("hf", layer_idx=0, seq_len=-(-S // bs) * bs, block_size=bs,
                               num_random_blocks=DEFAULT_NUM_RANDOM_BLOCKS, num_heads=H,
                               max_position_embeddings=4096, training=False, window=3, global_blocks=(0, -1),
                               device=q.device)
    else:
        check_dim_order(q, k, v, layout, layout_format)
    if layout_format == "BSHD":
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, S, D) views
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor):
            raise TypeError(f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}")
        if attention_mask.shape != (B, S):
            raise ValueError(f"attention_mask must have shape (B, S) = {(B, S)}, got {tuple(attention_mask.shape)}")
        if (attention_mask.dtype != torch.bool and not attention_mask.dtype.is_floating_point
                and torch.compiler.is_compiling()):
            # the op's check that integer masks hold only 0/1 reads their values: a graph break when traced
            attention_mask = attention_mask != 0
    pad = layout.seq_len - S
    if 0 < pad < layout.block_size:
        # the layout is for S rounded up to a block multiple: pad with zeros, masked as keys
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        if attention_mask is None:
            attention_mask = (torch.arange(S + pad, device=q.device) < S).expand(B, S + pad)
        else:
            attention_mask = torch.cat([attention_mask, attention_mask.new_zeros(B, pad)], dim=1)
    else:
        pad = 0
    need_lse = return_lse or return_attn_probs
    res = block_sparse_attention(
        q, k, v, layout,
        attention_mask=attention_mask, scale=scale, backend=backend,
        return_lse=need_lse, deterministic=deterministic,
    )
    out, lse = res if need_lse else (res, None)
    probs = None
    if return_attn_probs:
        mask = None if attention_mask is None else attention_mask != 0
        probs = block_sparse_attention_probs(q, repeat_kv_heads(k, H), layout, mask, scale)[:, :, :S, :S]
    if pad:
        out, lse = out[:, :, :S], (None if lse is None else lse[:, :, :S])
    if layout_format == "BSHD":
        out = out.transpose(1, 2)
    if return_attn_probs:
        return out, lse, probs
    return (out, lse) if return_lse else out


def _check_order_without_layout(q: torch.Tensor, layout_format: str) -> None:
    """Without a layout, refuse the unambiguous case of swapped dimensions: a heads dimension that is a
    multiple of the default block size and larger than a sequence dimension that is not."""
    s_dim, h_dim = (1, 2) if layout_format == "BSHD" else (2, 1)
    S, H = q.shape[s_dim], q.shape[h_dim]
    if H % DEFAULT_BLOCK_SIZE == 0 and S % DEFAULT_BLOCK_SIZE and H > S:
        other = "BHSD" if layout_format == "BSHD" else "BSHD"
        raise ValueError(
            f"q {tuple(q.shape)} looks like a {'(B, H, S, D)' if other == 'BHSD' else '(B, S, H, D)'} tensor "
            f"(S={H} tokens, H={S} heads) but layout_format={layout_format!r} expects "
            f"{'(B, S, H, D)' if layout_format == 'BSHD' else '(B, H, S, D)'}: pass layout_format={other!r} "
            "or q.transpose(1, 2) (and k, v); pass a layout to run it as given"
        )


# --------------------------------------------------------------------------------------------------
# Layout store: host-built layouts a compiled graph reads as constants
# --------------------------------------------------------------------------------------------------


class _LayoutStore:
    """Plain attribute bag holding one module's layouts (not an ``nn.Module``: never in the state dict).

    Attributes are named by :func:`_store_key`; ``torch.compile`` reads them as sourced objects (the
    layout tensors become graph inputs guarded like buffers).
    """

    def __repr__(self) -> str:
        return f"_LayoutStore({sorted(vars(self))})"


def _store_key(kind: str, num_blocks: int, training: bool, device: torch.device) -> str:
    dev = str(device).replace(":", "_")
    return f"{kind}_nb{num_blocks}_{'train' if training else 'eval'}_{dev}"


def _ensure_layout(store, key, kind, layer_idx, seq_len, block_size, num_random_blocks, num_heads,
                   max_position_embeddings, training, window, global_blocks, device) -> bool:
    """Build the layout named ``key`` into ``store`` unless it is there and intact (runs eagerly, also
    at trace time); a stored layout a caller wrote into is replaced."""
    layout = getattr(store, key, None)
    if layout is None or layout.modified_tensors():
        setattr(store, key, _build_layout(kind, layer_idx=layer_idx, seq_len=seq_len, block_size=block_size,
                                          num_random_blocks=num_random_blocks, num_heads=num_heads,
                                          max_position_embeddings=max_position_embeddings, training=training,
                                          window=window, global_blocks=global_blocks, device=device))
    return True


def _dense_layout(nb, num_heads, block_size, global_blocks, mode, device) -> BigBirdLayout:
    """Every query block reads every key block once (full attention as a layout)."""
    return make_layout(torch.zeros(num_heads, nb, 0, dtype=torch.int32, device=device), block_size=block_size,
                       window=2 * nb + 1, global_blocks=global_blocks, mode=mode)


_compile_marks_done = False


def _mark_compile_constants() -> None:
    """Mark :func:`_ensure_layout` for ``torch.compile`` (run at trace time, result a constant).

    Done when the first module is built rather than at import: it imports ``torch._dynamo`` (about
    2 s when nothing imported it yet), which eager-only users of the op need not pay for.
    """
    global _compile_marks_done
    if not _compile_marks_done:
        torch.compiler.assume_constant_result(_ensure_layout)
        _compile_marks_done = True


@_layout_mod._outside_inference_mode  # kept on the module: later training calls must be able to use it
def _build_layout(kind, *, layer_idx, seq_len, block_size, num_random_blocks, num_heads, max_position_embeddings,
                  training, window, global_blocks, device) -> BigBirdLayout:
    nb = seq_len // block_size
    if kind == "resample-base":
        # structure only (random blocks 0): what a traced resample draws into
        return make_layout(torch.zeros(num_heads, nb, num_random_blocks, dtype=torch.int32, device=device),
                           block_size=block_size, window=window, global_blocks=global_blocks, mode="resample")
    if nb < 3:
        return _dense_layout(nb, num_heads, block_size, global_blocks, kind, device)
    try:
        return get_layout(kind, layer_idx=layer_idx, seq_len=seq_len, block_size=block_size,
                          num_random_blocks=num_random_blocks, num_heads=num_heads,
                          max_position_embeddings=max_position_embeddings, training=training, window=window,
                          global_blocks=global_blocks, device=device)
    except LayoutTooShortError:
        # Hugging Face's generator cannot place r random blocks in so few blocks (its model runs full
        # attention on such short inputs): do the same
        return _dense_layout(nb, num_heads, block_size, global_blocks, kind, device)


def _resample_traceable(base: BigBirdLayout, generator: torch.Generator | None = None) -> BigBirdLayout:
    """Fresh random blocks drawn into the structure of ``base`` with tensor ops only (traceable).

    Same distribution and, for the same generator state, the same draws as
    :func:`~bigbird_kernels.layout.resample_layout`; used under ``torch.compile``, where the host-side
    checks of ``make_layout`` cannot run.
    """
    H, nb, W = base.kv_indices.shape
    r = base.num_random_blocks
    if r == 0:
        return base
    Ws = W - r
    dev = base.kv_indices.device
    static_blocks = base.kv_indices[0, :, :Ws].long()  # (nb, Ws), zeros past each row's count
    static_count = (base.kv_num_blocks[0].long() - r).clamp(min=0)  # (nb,); 0 for global rows
    rand = _layout_mod._draw_excluding(static_blocks, static_count, nb, H, r, generator, dev)  # (H, nb, r)
    rand = rand.masked_fill(base.is_global[None, :, None], 0)
    pos = (static_count[:, None] + torch.arange(r, device=dev)[None, :]).expand(H, nb, r)
    kv = base.kv_indices.long().scatter(2, pos, rand)
    kv = kv.masked_fill(base.is_global[None, :, None], 0)
    return dataclasses.replace(base, mode="resample", random_blocks=rand.to(torch.int32),
                               kv_indices=kv.to(torch.int32), _cache={})


# --------------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------------


class BlockSparseSelfAttention(nn.Module):
    """BigBird block-sparse self-attention (ITC: global + sliding window + random key blocks).

    ``forward(hidden_states (B, S, hidden), attention_mask (B, S) | None) -> (B, S, hidden)``.
    ``S`` may be anything: the sequence is padded on the right to a multiple of ``block_size`` (the
    padding masked) and the output cut back to ``S``. Output rows of padded positions (mask False)
    are 0 before the output projection, like Hugging Face's block-sparse attention. There is no
    attention dropout (BigBird's sparse path has none). In ``hf``/``seeded`` mode, lengths too short
    for Hugging Face's random-block generator (fewer than 3 blocks, or too few to place ``r`` random
    blocks per row in training) run full attention, as BigBird's model does for short inputs.

    Args:
        hidden_size: model width; ``hidden_size % num_heads == 0``.
        num_heads: attention heads ``H``; head dim ``D = hidden_size // num_heads``.
        block_size: tokens per block.
        num_random_blocks: random key blocks ``r`` per non-global query block (0 allowed).
        window: sliding window in blocks (odd).
        global_blocks: blocks global as queries and keys (negative ids count from the end).
        layout_mode: ``"hf"`` - exactly Hugging Face's layout for ``layer_idx`` (all random blocks 0
            in eval, NumPy-seeded blocks in training); ``"seeded"`` - HF's training layout in eval too
            (what Google's checkpoints were trained with); ``"resample"`` - fresh random blocks every
            call, drawn on the device.
        layer_idx: seeds the ``hf``/``seeded`` layouts (Hugging Face uses the layer index).
        max_position_embeddings: feeds Hugging Face's layout generator (lengths 1024/3072/4096).
        bias: bias of the q/k/v (and output) projections.
        out_proj: add an output projection ``out_proj`` (``nn.Linear(hidden, hidden)``).
        backend: passed to the op (``"auto"``, ``"reference"``, ...).
        seed: ``resample`` mode only. ``None``: draw from torch's default generator (seeded by
            ``torch.manual_seed``; activation checkpointing restores it, so recomputation replays the
            same layout). An int: the module owns a ``torch.Generator`` per device seeded with it
            (reproducible independently of the global RNG; not restored by activation
            checkpointing, so don't combine the two). Under ``torch.compile`` a ``torch.Generator``
            cannot be traced: compiled calls draw from torch's default generator.
        scale: softmax scale, a finite positive number; default ``1 / sqrt(D)``.
        deterministic: ask the backend for bit-reproducible gradients.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        *,
        block_size: int = 64,
        num_random_blocks: int = 3,
        window: int = 3,
        global_blocks=(0, -1),
        layout_mode: str = "hf",
        layer_idx: int = 0,
        max_position_embeddings: int = 4096,
        bias: bool = True,
        out_proj: bool = True,
        backend: str = "auto",
        seed: int | None = None,
        scale: float | None = None,
        deterministic: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        hidden_size = check_int("hidden_size", hidden_size, minimum=1)
        num_heads = check_int("num_heads", num_heads, minimum=1)
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
        if layout_mode not in LAYOUT_MODES:
            raise ValueError(f"layout_mode must be one of {LAYOUT_MODES}, got {layout_mode!r}")
        if seed is not None and layout_mode != "resample":
            raise ValueError("seed only applies to layout_mode='resample' (hf/seeded layouts are seeded by layer_idx)")
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.block_size = check_int("block_size", block_size, minimum=1)
        self.num_random_blocks = check_int("num_random_blocks", num_random_blocks, minimum=0)
        self.window = check_window(window)
        self.global_blocks = global_block_ids(global_blocks)
        self.layout_mode = layout_mode
        self.layer_idx = check_int("layer_idx", layer_idx, minimum=0)
        self.max_position_embeddings = check_int("max_position_embeddings", max_position_embeddings, minimum=1)
        self.backend = backend
        self.seed = None if seed is None else check_int("seed", seed)
        self.scale = check_scale(scale)
        self.deterministic = deterministic
        kw = {"device": device, "dtype": dtype}
        self.query = nn.Linear(hidden_size, hidden_size, bias=bias, **kw)
        self.key = nn.Linear(hidden_size, hidden_size, bias=bias, **kw)
        self.value = nn.Linear(hidden_size, hidden_size, bias=bias, **kw)
        self.out_proj = nn.Linear(hidden_size, hidden_size, bias=bias, **kw) if out_proj else None
        self._layouts = _LayoutStore()
        self._generators: dict[str, torch.Generator] = {}
        _mark_compile_constants()

    def extra_repr(self) -> str:
        return (f"hidden_size={self.hidden_size}, num_heads={self.num_heads}, block_size={self.block_size}, "
                f"num_random_blocks={self.num_random_blocks}, window={self.window}, "
                f"global_blocks={self.global_blocks}, layout_mode={self.layout_mode!r}, layer_idx={self.layer_idx}, "
                f"backend={self.backend!r}")

    # ---- layouts ----------------------------------------------------------------------------------

    def get_layout(self, seq_len: int, device=None) -> BigBirdLayout:
        """The layout this module uses for a padded length ``seq_len`` (a block multiple) in its current mode.

        ``resample`` mode draws a fresh one (from the module's generator when it has a seed).
        """
        device = torch.device(device) if device is not None else self.query.weight.device
        nb = operator.index(seq_len // self.block_size)
        if nb * self.block_size != seq_len:
            raise ValueError(f"seq_len {seq_len} is not a multiple of block_size {self.block_size}")
        return self._layout_for(nb, device)

    def _layout_for(self, nb: int, device: torch.device) -> BigBirdLayout:
        mode = self.layout_mode
        training = self.training if mode == "hf" else False
        compiling = torch.compiler.is_compiling()
        if mode == "resample" and not compiling:
            if nb < 1:
                raise ValueError("empty sequence")
            return _layout_mod.resample_layout(
                seq_len=nb * self.block_size, block_size=self.block_size, num_random_blocks=self.num_random_blocks,
                num_heads=self.num_heads, window=self.window, global_blocks=self.global_blocks,
                generator=self._generator(device), device=device,
            )
        kind = "resample-base" if mode == "resample" else mode
        gb = normalize_global_blocks(nb, self.global_blocks)
        key = _store_key(kind, nb, training, device)
        _ensure_layout(self._layouts, key, kind, self.layer_idx, nb * self.block_size, self.block_size,
                       self.num_random_blocks, self.num_heads, self.max_position_embeddings, training,
                       self.window, gb, device)
        layout = getattr(self._layouts, key)
        if mode == "resample":
            layout = _resample_traceable(layout, None)  # compiled: torch's default generator
        return layout

    def _generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        k = str(device)
        g = self._generators.get(k)
        if g is None:
            g = torch.Generator(device=device)
            g.manual_seed(self.seed)
            self._generators[k] = g
        return g

    def reset_generator(self) -> None:
        """Re-seed the module's generators (``resample`` mode with a seed): the next layouts repeat."""
        for g in self._generators.values():
            g.manual_seed(self.seed)

    # ---- forward ----------------------------------------------------------------------------------

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``hidden_states (B, S, hidden)``, ``attention_mask (B, S)`` bool or 0/1 integers (True/1 =
        real token; None = all real) -> ``(B, S, hidden)``."""
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != self.hidden_size:
            raise ValueError(f"hidden_states must be (B, S, {self.hidden_size}), got {tuple(hidden_states.shape)}")
        B, S, _ = hidden_states.shape
        bs = self.block_size
        nb = operator.index((S + bs - 1) // bs)  # specialises on the block count under torch.compile
        Sp = nb * bs
        pad = Sp - S
        if nb == 0:
            raise ValueError("hidden_states has an empty sequence dimension")
        mask = None
        if attention_mask is not None:
            if attention_mask.shape != (B, S):
                raise ValueError(f"attention_mask must be (B, S) = {(B, S)}, got {tuple(attention_mask.shape)}")
            if attention_mask.dtype.is_floating_point:
                raise TypeError("attention_mask must be bool or 0/1 integers (True/1 = real token), not "
                                f"{attention_mask.dtype}: additive float masks are not accepted")
            mask = attention_mask if attention_mask.dtype == torch.bool else attention_mask != 0
        # eager calls skip padding when S is a block multiple; compiled graphs always take the padded,
        # masked path, so a dynamic S never guards on S % block_size and every S of a block count shares
        # one graph
        padded = torch.compiler.is_compiling() or pad > 0
        if padded:
            # Pad by gathering with clamped positions: the padded rows repeat the last token and are
            # masked out as keys and zeroed as queries. Unlike F.pad / torch.cat with a (B, pad, .)
            # tensor, every intermediate has a static size Sp, so a dynamic S adds no guards.
            pos = torch.arange(Sp, device=hidden_states.device)
            real = pos < S
            hidden_states = hidden_states.index_select(1, pos.clamp(max=S - 1))
            mask = real[None, :].expand(B, Sp) if mask is None else mask.index_select(1, pos.clamp(max=S - 1)) & real
        H, D = self.num_heads, self.head_dim
        # (B, Sp, H, D) views of the projections; the op reads the transposed strides directly
        q = self.query(hidden_states).view(B, Sp, H, D)
        k = self.key(hidden_states).view(B, Sp, H, D)
        v = self.value(hidden_states).view(B, Sp, H, D)
        q, k, v = _common_dtype(q, k, v)
        layout = self._layout_for(nb, hidden_states.device)
        ctx = block_sparse_attn_func(q, k, v, layout, attention_mask=mask, softmax_scale=self.scale,
                                     backend=self.backend, deterministic=self.deterministic)  # (B, Sp, H, D) view
        out = ctx.reshape(B, Sp, self.hidden_size)
        if self.out_proj is not None:
            # before un-padding: a Linear on the (B, S, .) slice would guard on S == Sp (contiguity)
            out = self.out_proj(out)
        if padded:
            if torch.compiler.is_compiling():
                # a fresh (B, S, .) tensor: a slice view's contiguity would depend on S == Sp (a guard)
                out = out.index_select(1, torch.arange(S, device=out.device))
            else:
                out = out[:, :S]
        return out


def _common_dtype(q, k, v):
    """q, k, v in one dtype: under autocast the autocast dtype, otherwise the widest of the three."""
    if q.dtype == k.dtype == v.dtype:
        return q, k, v
    if torch.is_autocast_enabled(q.device.type):
        dt = torch.get_autocast_dtype(q.device.type)
    else:
        dt = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    return q.to(dt), k.to(dt), v.to(dt)
