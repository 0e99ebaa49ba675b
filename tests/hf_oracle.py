"""Helpers that run Hugging Face's BigBird as the parity oracle (transformers is a test dependency)."""

from __future__ import annotations

import torch

transformers = __import__("pytest").importorskip("transformers")
from transformers import BigBirdConfig  # noqa: E402
from transformers.models.big_bird.modeling_big_bird import (  # noqa: E402
    BigBirdBlockSparseAttention,
    BigBirdModel,
)


def hf_attention_module(*, num_heads, head_dim, block_size, num_random_blocks, layer_idx, training,
                        max_position_embeddings=4096, dtype=torch.float64):
    cfg = BigBirdConfig(
        hidden_size=num_heads * head_dim,
        num_attention_heads=num_heads,
        block_size=block_size,
        num_random_blocks=num_random_blocks,
        max_position_embeddings=max_position_embeddings,
        attention_type="block_sparse",
    )
    m = BigBirdBlockSparseAttention(cfg, seed=layer_idx).to(dtype)
    m.train(training)
    return m


def run_hf_attention(module, x, mask):
    """HF's block-sparse attention on ``x (B, L, hidden)`` with a 0/1 ``mask (B, L)``.

    Returns ``(context (B, L, hidden), q, k, v (B, H, L, D), rand_attn (H, nb-2, r))``.
    """
    B, L, _ = x.shape
    H = module.num_attention_heads
    D = module.attention_head_size
    captured = {}
    original = BigBirdBlockSparseAttention._create_rand_mask_from_inputs

    def record(from_blocked, to_blocked, rand_attn, *rest):
        captured["rand_attn"] = rand_attn[0].clone()
        return original(from_blocked, to_blocked, rand_attn, *rest)

    blocked, band, from_mask, to_mask = BigBirdModel.create_masks_for_block_sparse_attn(mask.to(x.dtype), module.block_size)
    BigBirdBlockSparseAttention._create_rand_mask_from_inputs = staticmethod(record)
    try:
        with torch.no_grad():
            ctx, _ = module(x, band_mask=band, from_mask=from_mask, to_mask=to_mask,
                            from_blocked_mask=blocked, to_blocked_mask=blocked)
            q, k, v = (lin(x).view(B, L, H, D).transpose(1, 2) for lin in (module.query, module.key, module.value))
    finally:
        BigBirdBlockSparseAttention._create_rand_mask_from_inputs = staticmethod(original)
    return ctx, q, k, v, captured["rand_attn"]
