"""Helpers shared by test_model*.py, test_heads*.py and test_checkpoint*.py (no tests in here).

Parity models are created *by transformers* (random init under torch's RNG, seeded per test by
conftest), saved with ``save_pretrained`` into a temporary folder and loaded by ours.
"""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()
logging.getLogger("transformers").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=".*padded.*")

import bigbird  # noqa: E402

HEADS = (
    "BigBirdModel",
    "BigBirdForPreTraining",
    "BigBirdForMaskedLM",
    "BigBirdForCausalLM",
    "BigBirdForSequenceClassification",
    "BigBirdForMultipleChoice",
    "BigBirdForTokenClassification",
    "BigBirdForQuestionAnswering",
)

VOCAB = 100
SEP = 66  # config.sep_token_id default, inside the tiny vocab


def tiny_kwargs(**over):
    """A tiny BigBird: hidden 32, 2 layers, 4 heads, block 8, r 2 (short-input threshold 72 tokens)."""
    kw = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=512,
        block_size=8,
        num_random_blocks=2,
        type_vocab_size=2,
    )
    kw.update(over)
    return kw


def hf_model(name: str, **cfg):
    """A randomly initialised transformers model of class ``name`` (dropout 0 unless given)."""
    cfg.setdefault("hidden_dropout_prob", 0.0)
    cfg.setdefault("attention_probs_dropout_prob", 0.0)
    if name == "BigBirdForCausalLM":
        cfg.setdefault("is_decoder", True)
        cfg.setdefault("attention_type", "original_full")
    config = transformers.BigBirdConfig(**tiny_kwargs(**cfg))
    model = getattr(transformers, name)(config)
    with torch.no_grad():  # transformers zero-initialises some biases: make every weight matter
        for n, p in model.named_parameters():
            if n.endswith("bias") or "LayerNorm" in n:
                p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def hf_and_ours(name: str, tmp_path, **cfg):
    """(transformers model, our model) with the same weights, both in eval mode."""
    hf = hf_model(name, **cfg)
    folder = tmp_path / f"hf_{name}"
    hf.save_pretrained(folder)
    ours = getattr(bigbird, name).from_pretrained(folder)
    return hf, ours


def make_batch(B: int, n: int, *, pad=(), vocab: int = VOCAB, choices: int | None = None, sep_at=None):
    """Random ids in [3, vocab) (never SEP unless placed), right-padded mask (pad[i] tokens off in row i)."""
    shape = (B, choices, n) if choices else (B, n)
    ids = torch.randint(3, vocab, shape)
    ids[ids == SEP] = SEP + 1
    mask = torch.ones(shape, dtype=torch.long)
    for i, p in enumerate(pad):
        if p:
            mask[i, ..., n - p:] = 0
            ids[i, ..., n - p:] = 0
    if sep_at is not None:
        for i, s in enumerate(sep_at):
            if s is not None:
                ids[i, ..., s] = SEP
    return ids, mask


def make_left_padded_batch(B: int, n: int, pads) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids in [3, VOCAB), left-padded: the first ``pads[i]`` tokens of row i are padding (id 0)."""
    ids = torch.randint(3, VOCAB, (B, n))
    mask = torch.ones(B, n, dtype=torch.long)
    for row, p in enumerate(pads):
        mask[row, :p] = 0
        ids[row, :p] = 0
    return ids, mask


def set_block_sparse(hf):
    """Undo transformers' permanent switch to full attention (must be called before each sparse call)."""
    base = getattr(hf, "bert", hf)
    if hf.config.attention_type == "block_sparse":
        base.set_attention_type("block_sparse")


def max_err(a, b) -> float:
    if a.numel() == 0 and b.numel() == 0:
        return 0.0
    return (a.float() - b.float()).abs().max().item()


def assert_close(ours, ref, tol, what=""):
    err = max_err(ours, ref)
    assert err <= tol, f"{what}: max abs error {err:.3g} > {tol:.3g}"
    return err
