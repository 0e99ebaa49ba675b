"""Fused BigBird block-sparse attention: layouts, a PyTorch reference and fast backends.

>>> import torch
>>> from bigbird_kernels import block_sparse_attention, hf_layout
>>> layout = hf_layout(layer_idx=0, seq_len=1024, block_size=64, num_random_blocks=3, num_heads=12, training=False)
>>> q = k = v = torch.randn(1, 12, 1024, 64)
>>> block_sparse_attention(q, k, v, layout).shape
torch.Size([1, 12, 1024, 64])

flash-attn's calling convention, ``(B, S, H, D)``, any length, BigBird's default layout:

>>> from bigbird_kernels import block_sparse_attn_func
>>> q = k = v = torch.randn(1, 1000, 12, 64)
>>> block_sparse_attn_func(q, k, v).shape
torch.Size([1, 1000, 12, 64])
"""

from . import dispatch as _dispatch
from .api import block_sparse_attention
from .dispatch import BackendNotSupportedError
from .layout import (
    BigBirdLayout,
    get_layout,
    hf_layout,
    hf_random_blocks,
    make_layout,
    resample_layout,
    seeded_layout,
)
from .nn import BlockSparseSelfAttention, block_sparse_attn_func
from .reference import block_sparse_attention_probs, block_sparse_attention_ref

from ._version import __version__

_dispatch.load_backends()

__all__ = [
    "block_sparse_attention",
    "block_sparse_attn_func",
    "BlockSparseSelfAttention",
    "block_sparse_attention_ref",
    "block_sparse_attention_probs",
    "BackendNotSupportedError",
    "BigBirdLayout",
    "get_layout",
    "hf_layout",
    "hf_random_blocks",
    "make_layout",
    "resample_layout",
    "seeded_layout",
]
