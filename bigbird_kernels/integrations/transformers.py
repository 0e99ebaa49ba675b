"""Run Hugging Face ``transformers``' BigBird block-sparse attention with our op.

>>> from transformers import BigBirdForMaskedLM
>>> from bigbird_kernels.integrations.transformers import patch_bigbird, unpatch_bigbird
>>> model = patch_bigbird(BigBirdForMaskedLM.from_pretrained("google/bigbird-roberta-base"))  # doctest: +SKIP
>>> unpatch_bigbird(model)  # doctest: +SKIP

:func:`patch_bigbird` replaces, in place and per module, the ``forward`` of every
``BigBirdBlockSparseAttention`` (and BigBird-Pegasus' ``BigBirdPegasusBlockSparseAttention``) in a
loaded model. The replacement projects q/k/v with the module's own ``query``/``key``/``value`` Linear
layers (weights untouched), builds the layer's layout and calls
:func:`~bigbird_kernels.block_sparse_attention`. It returns what Hugging Face's forward returns,
``(context (B, L, hidden), attention_probs)``, with two deliberate differences:

* ``attention_probs`` is ``None`` unless attentions were requested (``output_attentions=True`` or
  ``config.output_attentions``): transformers 5 records it with a forward hook that skips ``None``
  and every caller discards it, while Hugging Face's own forward builds a dense ``(B, H, L, L)``
  matrix on every call. When requested it is the true probability matrix at the padded length
  ``L`` (a key block listed twice has its two contributions summed; Hugging Face's ``scatter_``
  keeps only one, so its eval-mode rows of blocks 1..nb-2 do not sum to 1), with rows of padded
  queries 0.
* NumPy's global RNG is left alone (Hugging Face re-seeds it with the layer index on every training
  forward); the random blocks are identical all the same.

Layers that Hugging Face switched to full attention (``original_full``, permanently, after a short
input) hold a ``BigBirdSelfAttention`` instead and are left alone. ``set_attention_type`` creates
fresh, unpatched block-sparse modules: call :func:`patch_bigbird` again after it.
"""

from __future__ import annotations

import inspect

import torch

from ..api import block_sparse_attention
from ..dispatch import BACKEND_NAMES
from ..layout import LAYOUT_MODES, BigBirdLayout, get_layout
from ..reference import block_sparse_attention_probs

__all__ = [
    "UnsupportedTransformersError",
    "check_transformers_support",
    "patch_bigbird",
    "unpatch_bigbird",
    "is_patched",
]

SUPPORTED_MAJOR_VERSIONS = (5,)

# The forward and the algorithm entry point as transformers 5.x defines them. A different signature
# means different code, which this patch would silently change: refuse instead.
_FORWARD_PARAMS = ("self", "hidden_states", "band_mask", "from_mask", "to_mask", "from_blocked_mask",
                   "to_blocked_mask", "kwargs")
_ALGO_PARAMS = ("self", "query_layer", "key_layer", "value_layer", "band_mask", "from_mask", "to_mask",
                "from_blocked_mask", "to_blocked_mask", "n_heads", "n_rand_blocks", "attention_head_size",
                "from_block_size", "to_block_size", "batch_size", "from_seq_len", "to_seq_len", "seed",
                "plan_from_length", "plan_num_rand_blocks")
_MODULE_ATTRS = ("query", "key", "value", "num_attention_heads", "attention_head_size", "block_size",
                 "num_random_blocks", "seed", "max_seqlen")

_MISSING = object()


class UnsupportedTransformersError(RuntimeError):
    """The installed ``transformers`` defines BigBird attention differently from the versions we know."""


# --------------------------------------------------------------------------------------------------
# Version and signature checks
# --------------------------------------------------------------------------------------------------


def _block_sparse_classes() -> list[type]:
    """The block-sparse attention classes of the installed transformers (BigBird, BigBird-Pegasus)."""
    classes = []
    from transformers.models.big_bird import modeling_big_bird

    classes.append(modeling_big_bird.BigBirdBlockSparseAttention)
    try:
        from transformers.models.bigbird_pegasus import modeling_bigbird_pegasus
    except ImportError:  # pragma: no cover - shipped with every transformers 5 release
        pass
    else:
        classes.append(modeling_bigbird_pegasus.BigBirdPegasusBlockSparseAttention)
    return classes


def _full_attention_classes() -> list[type]:
    from transformers.models.big_bird import modeling_big_bird

    classes = [modeling_big_bird.BigBirdSelfAttention]
    try:
        from transformers.models.bigbird_pegasus import modeling_bigbird_pegasus
    except ImportError:  # pragma: no cover
        pass
    else:
        classes.append(modeling_bigbird_pegasus.BigBirdPegasusSelfAttention)
    return classes


def _params(fn) -> tuple[str, ...]:
    return tuple(inspect.signature(fn).parameters)


def check_transformers_support(classes=None) -> str:
    """Raise :class:`UnsupportedTransformersError` unless the installed transformers is one we know.

    Checks the major version (5.x) and the signatures of ``forward`` and
    ``bigbird_block_sparse_attention`` of each block-sparse attention class. Returns the version.
    """
    import transformers

    version = getattr(transformers, "__version__", "unknown")
    try:
        major = int(str(version).split(".")[0])
    except ValueError:
        major = None
    if major not in SUPPORTED_MAJOR_VERSIONS:
        raise UnsupportedTransformersError(
            f"bigbird_kernels.integrations.transformers supports transformers "
            f"{', '.join(f'{m}.x' for m in SUPPORTED_MAJOR_VERSIONS)} (tested with 5.17 and 5.24); the installed "
            f"version is {version}. Its BigBird attention may compute something else, so the model was not patched."
        )
    for cls in classes if classes is not None else _block_sparse_classes():
        for name, expected in (("forward", _FORWARD_PARAMS), ("bigbird_block_sparse_attention", _ALGO_PARAMS)):
            fn = getattr(cls, name, None)
            got = _params(fn) if fn is not None else None
            if got != expected:
                raise UnsupportedTransformersError(
                    f"transformers {version}: {cls.__name__}.{name} has the signature "
                    f"{'(missing)' if got is None else '(' + ', '.join(got) + ')'}, not the one this patch was "
                    f"written for ({', '.join(expected)}); its BigBird attention changed, so the model was not "
                    "patched. Please report it with your transformers version."
                )
    return version


# --------------------------------------------------------------------------------------------------
# The replacement forward
# --------------------------------------------------------------------------------------------------


def _attentions_requested(kwargs) -> bool:
    """Whether the running transformers forward records attentions (then we must return them)."""
    if kwargs.get("output_attentions"):
        return True
    try:
        from transformers.utils.output_capturing import _active_collector
    except ImportError:  # cannot tell: build them, as Hugging Face does
        return True
    collected = _active_collector.get()
    return collected is not None and "attentions" in collected


def _token_mask(B, L, to_mask, from_mask, blocked_mask):
    """``(B, L)`` bool (True = real token) from any of Hugging Face's block-sparse masks, or None."""
    for m in (to_mask, from_mask, blocked_mask):
        if m is not None:
            if m.numel() != B * L:
                raise ValueError(f"attention mask of shape {tuple(m.shape)} does not hold B*L = {B}*{L} tokens")
            return m.reshape(B, L) != 0
    return None


class _PatchedForward:
    """Replacement ``forward`` of one Hugging Face block-sparse attention module (see the module doc)."""

    def __init__(self, module, *, backend: str, layout_mode: str, original):
        self.module = module
        self.backend = backend
        self.layout_mode = layout_mode
        self.original = original  # the instance's own ``forward`` before patching, or _MISSING

    def __repr__(self) -> str:
        return (f"<bigbird_kernels forward of {type(self.module).__name__} (backend={self.backend!r}, "
                f"layout_mode={self.layout_mode!r})>")

    def layout(self, seq_len: int, device) -> BigBirdLayout:
        m = self.module
        mode = self.layout_mode
        if mode == "hf" and m.training and m.seed is None:
            raise ValueError(
                f"{type(m).__name__}.seed is None: Hugging Face would draw an unseeded random layout in training, "
                "which cannot be reproduced; use layout_mode='resample' or set the module's seed (its layer index)"
            )
        return get_layout(
            mode,
            layer_idx=m.seed if m.seed is not None else 0,
            seq_len=seq_len,
            block_size=m.block_size,
            num_random_blocks=m.num_random_blocks,
            num_heads=m.num_attention_heads,
            max_position_embeddings=m.max_seqlen,
            training=m.training,
            device=device,
        )

    def __call__(self, hidden_states, band_mask=None, from_mask=None, to_mask=None, from_blocked_mask=None,
                 to_blocked_mask=None, **kwargs):
        m = self.module
        B, L, _ = hidden_states.shape
        bs = m.block_size
        if L % bs:
            raise ValueError(f"Query sided sequence length must be multiple of block size ({L} % {bs} != 0)")
        H, D = m.num_attention_heads, m.attention_head_size
        # (B, L, H, D) views; the op takes their (B, H, L, D) transposes without a copy
        q = m.query(hidden_states).view(B, L, H, D).transpose(1, 2)
        k = m.key(hidden_states).view(B, L, H, D).transpose(1, 2)
        v = m.value(hidden_states).view(B, L, H, D).transpose(1, 2)
        if not (q.dtype == k.dtype == v.dtype):
            dt = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
            q, k, v = q.to(dt), k.to(dt), v.to(dt)
        mask = _token_mask(B, L, to_mask, from_mask, from_blocked_mask)
        layout = self.layout(L, hidden_states.device)
        need_probs = _attentions_requested(kwargs)
        out = block_sparse_attention(q, k, v, layout, attention_mask=mask, backend=self.backend)
        context = out.transpose(1, 2).reshape(B, L, H * D)
        probs = block_sparse_attention_probs(q, k, layout, mask) if need_probs else None
        return context, probs


# --------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------


def _is_bigbird_model(model, sparse_classes, full_classes) -> bool:
    return any(isinstance(mod, tuple(sparse_classes) + tuple(full_classes)) for mod in model.modules())


def patch_bigbird(model, *, backend: str = "auto", layout_mode: str = "hf"):
    """Make every block-sparse attention of a transformers BigBird / BigBird-Pegasus model use our op.

    Args:
        model: a loaded ``BigBirdModel`` (any head: ``BigBirdForMaskedLM``,
            ``BigBirdForQuestionAnswering``, ...) or ``BigBirdPegasusModel`` /
            ``BigBirdPegasusForConditionalGeneration`` (its encoder; the decoder is dense).
        backend: the op's backend (``"auto"``, ``"reference"``, ...).
        layout_mode: ``"hf"`` - exactly Hugging Face's layout (layer index = the module's ``seed``,
            training flag = the module's, ``max_position_embeddings`` = its ``max_seqlen``), so outputs
            equal the unpatched model's up to rounding; ``"seeded"`` - HF's training layout in eval too
            (Google's original behaviour); ``"resample"`` - fresh random blocks every call from
            torch's default generator.

    Returns:
        ``model``, patched in place (weights untouched). Patching a patched model updates its
        settings; :func:`unpatch_bigbird` restores the original forwards exactly.

    Raises:
        UnsupportedTransformersError: transformers' version or BigBird attention code is not one we know.
        TypeError: ``model`` holds no BigBird attention.
        ValueError: unknown ``backend`` or ``layout_mode``.
    """
    if layout_mode not in LAYOUT_MODES:
        raise ValueError(f"layout_mode must be one of {LAYOUT_MODES}, got {layout_mode!r}")
    if not isinstance(backend, str) or (backend != "auto" and backend not in BACKEND_NAMES):
        raise ValueError(f"unknown backend {backend!r}; expected 'auto' or one of {', '.join(BACKEND_NAMES)}")
    sparse_classes = _block_sparse_classes()
    check_transformers_support(sparse_classes)
    if not isinstance(model, torch.nn.Module) or not _is_bigbird_model(model, sparse_classes, _full_attention_classes()):
        raise TypeError(
            f"patch_bigbird expects a transformers BigBird or BigBird-Pegasus model, got {type(model).__name__} "
            "without any BigBird attention module"
        )
    for mod in model.modules():
        if not isinstance(mod, tuple(sparse_classes)):
            continue  # full attention (original_full) and everything else: untouched
        missing = [a for a in _MODULE_ATTRS if not hasattr(mod, a)]
        if missing:
            raise UnsupportedTransformersError(
                f"{type(mod).__name__} lacks the attributes {missing}: not the transformers 5 module this patch knows"
            )
        current = mod.__dict__.get("forward", _MISSING)
        original = current.original if isinstance(current, _PatchedForward) else current
        mod.forward = _PatchedForward(mod, backend=backend, layout_mode=layout_mode, original=original)
    return model


def unpatch_bigbird(model):
    """Undo :func:`patch_bigbird`: every patched module gets its original ``forward`` back. Returns ``model``."""
    for mod in model.modules():
        current = mod.__dict__.get("forward", _MISSING)
        if not isinstance(current, _PatchedForward):
            continue
        if current.original is _MISSING:
            del mod.forward
        else:
            mod.forward = current.original
    return model


def is_patched(model) -> bool:
    """Whether any module of ``model`` runs a forward installed by :func:`patch_bigbird`."""
    return any(isinstance(mod.__dict__.get("forward"), _PatchedForward) for mod in model.modules())
