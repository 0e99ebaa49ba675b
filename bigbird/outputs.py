"""Model outputs: small dataclasses with Hugging Face's field names.

Fields are read by name (``out.logits``), by key (``out["logits"]``) or by position over the fields
that are not None (``out[0]``), as with ``transformers``' ``ModelOutput``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

__all__ = [
    "ModelOutput",
    "BaseModelOutputWithPooling",
    "BigBirdForPreTrainingOutput",
    "MaskedLMOutput",
    "CausalLMOutput",
    "Seq2SeqLMOutput",
    "SequenceClassifierOutput",
    "MultipleChoiceModelOutput",
    "TokenClassifierOutput",
    "QuestionAnsweringModelOutput",
]

Tensor = torch.Tensor
Tensors = tuple[torch.Tensor, ...]


class ModelOutput:
    """Mixin: tuple-like and dict-like access to the non-None fields of a dataclass."""

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def items(self):
        return [(k, getattr(self, k)) for k in self.keys()]

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, k) for k in self.keys())

    def __getitem__(self, key):
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __contains__(self, key) -> bool:
        return key in self.keys()

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())


@dataclass
class BaseModelOutputWithPooling(ModelOutput):
    """``BigBirdModel`` output.

    last_hidden_state: ``(B, n, hidden)`` at the un-padded input length ``n``.
    pooler_output: ``(B, hidden)`` ``tanh(pooler(h[:, 0]))``; None without a pooler.
    hidden_states: with ``output_hidden_states``, embeddings + every layer, each ``(B, n, hidden)``.
    past_key_values: with ``use_cache`` (decoders), the key/value cache (see :mod:`bigbird.kv_cache`).
    attentions: with ``output_attentions``, per layer ``(B, H, n, T + n)`` attention probabilities.
    cross_attentions: with ``output_attentions`` and cross-attention, per layer ``(B, H, n, S_enc)``.
    """

    last_hidden_state: Tensor | None = None
    pooler_output: Tensor | None = None
    hidden_states: Tensors | None = None
    past_key_values: object | None = None
    attentions: Tensors | None = None
    cross_attentions: Tensors | None = None


@dataclass
class BigBirdForPreTrainingOutput(ModelOutput):
    loss: Tensor | None = None
    prediction_logits: Tensor | None = None
    seq_relationship_logits: Tensor | None = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None


@dataclass
class MaskedLMOutput(ModelOutput):
    loss: Tensor | None = None
    logits: Tensor | None = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None


@dataclass
class CausalLMOutput(ModelOutput):
    """``BigBirdForCausalLM`` output (field order of ``transformers``' ``CausalLMOutputWithCrossAttentions``).

    logits: ``(B, n_kept, vocab)`` (``n_kept`` per ``logits_to_keep``). past_key_values: with
    ``use_cache``. cross_attentions: with ``output_attentions`` and cross-attention.
    """

    loss: Tensor | None = None
    logits: Tensor | None = None
    past_key_values: object | None = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None
    cross_attentions: Tensors | None = None


@dataclass
class Seq2SeqLMOutput(ModelOutput):
    """``BigBirdEncoderDecoderModel`` output (``transformers``' ``Seq2SeqLMOutput`` field order).

    logits: ``(B, m, vocab)`` decoder logits. past_key_values: the decoder's cache (with ``use_cache``).
    encoder_last_hidden_state: ``(B, n, hidden)``.
    """

    loss: Tensor | None = None
    logits: Tensor | None = None
    past_key_values: object | None = None
    decoder_hidden_states: Tensors | None = None
    decoder_attentions: Tensors | None = None
    cross_attentions: Tensors | None = None
    encoder_last_hidden_state: Tensor | None = None
    encoder_hidden_states: Tensors | None = None
    encoder_attentions: Tensors | None = None


@dataclass
class SequenceClassifierOutput(ModelOutput):
    loss: Tensor | None = None
    logits: Tensor | None = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None


@dataclass
class MultipleChoiceModelOutput(ModelOutput):
    loss: Tensor | None = None
    logits: Tensor | None = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None


@dataclass
class TokenClassifierOutput(ModelOutput):
    loss: Tensor | None = None
    logits: Tensor | None = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None


@dataclass
class QuestionAnsweringModelOutput(ModelOutput):
    loss: Tensor | None = None
    start_logits: Tensor | None = None
    end_logits: Tensor | None = None
    pooler_output: Tensor | None = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None
