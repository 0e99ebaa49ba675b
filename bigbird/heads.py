"""Task heads on :class:`~bigbird.modeling.BigBirdModel`, with Hugging Face's module names and losses.

Every head keeps the encoder under ``self.bert`` so that parameter names equal ``transformers``'
state-dict keys (``bert.*``, ``cls.predictions.*``, ``cls.seq_relationship.*``, ``classifier.*``,
``qa_classifier.*``). Losses are computed as ``transformers`` computes them when labels are given.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import BigBirdConfig
from .generation import GenerationMixin
from .modeling import BigBirdIntermediate, BigBirdModel, BigBirdOutput, BigBirdPreTrainedModel, get_activation
from .outputs import (
    BigBirdForPreTrainingOutput,
    CausalLMOutput,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

__all__ = [
    "BigBirdForPreTraining",
    "BigBirdForMaskedLM",
    "BigBirdForCausalLM",
    "BigBirdForSequenceClassification",
    "BigBirdForMultipleChoice",
    "BigBirdForTokenClassification",
    "BigBirdForQuestionAnswering",
]

_LM_TIES = {
    "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
}


# --------------------------------------------------------------------------------------------------
# head modules
# --------------------------------------------------------------------------------------------------


def _classifier_dropout(config: BigBirdConfig) -> nn.Dropout:
    """Dropout of the classification heads: ``classifier_dropout``, or ``hidden_dropout_prob`` when it is None."""
    p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
    return nn.Dropout(p)


class BigBirdPredictionHeadTransform(nn.Module):
    def __init__(self, config: BigBirdConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = get_activation(config.hidden_act)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x):
        return self.LayerNorm(self.transform_act_fn(self.dense(x)))


class BigBirdLMPredictionHead(nn.Module):
    """transform (dense, act, LayerNorm) then ``decoder`` (tied to the word embeddings; bias tied to ``bias``)."""

    def __init__(self, config: BigBirdConfig):
        super().__init__()
        self.transform = BigBirdPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=True)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x):
        return self.decoder(self.transform(x))


class BigBirdOnlyMLMHead(nn.Module):
    def __init__(self, config: BigBirdConfig):
        super().__init__()
        self.predictions = BigBirdLMPredictionHead(config)

    def forward(self, sequence_output):
        return self.predictions(sequence_output)


class BigBirdPreTrainingHeads(nn.Module):
    def __init__(self, config: BigBirdConfig):
        super().__init__()
        self.predictions = BigBirdLMPredictionHead(config)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)

    def forward(self, sequence_output, pooled_output):
        return self.predictions(sequence_output), self.seq_relationship(pooled_output)


class BigBirdClassificationHead(nn.Module):
    """HF's sequence-classification head on ``h[:, 0]``: dropout, dense, ``hidden_act``, dropout, out_proj."""

    def __init__(self, config: BigBirdConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = _classifier_dropout(config)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)
        self.act = get_activation(config.hidden_act)

    def forward(self, features):
        x = self.dropout(features[:, 0, :])
        x = self.act(self.dense(x))
        return self.out_proj(self.dropout(x))


class BigBirdForQuestionAnsweringHead(nn.Module):
    """``qa_classifier``: dropout, intermediate (dense + act), output (dense, dropout, LN(+ residual)), qa_outputs."""

    def __init__(self, config: BigBirdConfig):
        super().__init__()
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.intermediate = BigBirdIntermediate(config)
        self.output = BigBirdOutput(config)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, encoder_output):
        h = self.dropout(encoder_output)
        h = self.output(self.intermediate(h), encoder_output)
        return self.qa_outputs(h)


# --------------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------------


class BigBirdForPreTraining(BigBirdPreTrainedModel):
    """Masked LM + next-sentence prediction (``cls.predictions``, ``cls.seq_relationship`` on the pooler).

    Loss: MLM cross-entropy over ``labels`` (-100 ignored), plus the NSP cross-entropy when
    ``next_sentence_label`` is also given (as in ``transformers``: NSP alone gives no loss).
    """

    _tied_weights_keys = _LM_TIES

    def __init__(self, config: BigBirdConfig):
        super().__init__(config)
        self.bert = BigBirdModel(config, add_pooling_layer=True, _init_weights=False)
        self.cls = BigBirdPreTrainingHeads(config)
        self.init_weights()

    def get_output_embeddings(self):
        return self.cls.predictions.decoder

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, next_sentence_label=None, output_attentions=None,
                output_hidden_states=None, return_dict=None):
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                        output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        prediction_scores, seq_relationship = self.cls(out.last_hidden_state, out.pooler_output)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(prediction_scores.view(-1, self.config.vocab_size), labels.view(-1))
            if next_sentence_label is not None:
                loss = loss + F.cross_entropy(seq_relationship.view(-1, 2), next_sentence_label.view(-1))
        res = BigBirdForPreTrainingOutput(loss, prediction_scores, seq_relationship, out.hidden_states, out.attentions)
        return res.to_tuple() if return_dict is False else res


class _BigBirdLMBase(BigBirdPreTrainedModel):
    """Shared by the masked and causal LM: encoder ``bert`` + ``cls.predictions`` (decoder tied to the word embeddings)."""

    _tied_weights_keys = _LM_TIES

    def __init__(self, config: BigBirdConfig):
        super().__init__(config)
        self.bert = BigBirdModel(config, add_pooling_layer=True, _init_weights=False)
        self.cls = BigBirdOnlyMLMHead(config)
        self.init_weights()

    def get_output_embeddings(self):
        return self.cls.predictions.decoder


class BigBirdForMaskedLM(_BigBirdLMBase):
    """Masked LM head ``cls.predictions`` (decoder tied to the word embeddings). Loss: CE, -100 ignored."""

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                        output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                        compute_pooler=False)
        logits = self.cls(out.last_hidden_state)  # (B, n, vocab)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, self.config.vocab_size), labels.view(-1))
        res = MaskedLMOutput(loss, logits, out.hidden_states, out.attentions)
        return res.to_tuple() if return_dict is False else res


class BigBirdForCausalLM(GenerationMixin, _BigBirdLMBase):
    """Left-to-right LM with the MLM head (``cls.predictions``), a key/value cache and :meth:`generate`.

    **Always causal full attention** (``is_decoder`` semantics, whatever ``attention_type`` and
    ``is_decoder`` say): Hugging Face's block-sparse attention is bidirectional, so its
    ``BigBirdForCausalLM`` is only causal in ``original_full`` mode; parity is therefore defined
    against ``transformers.BigBirdForCausalLM`` with ``attention_type="original_full"`` and
    ``is_decoder=True``.

    With ``is_decoder=True, add_cross_attention=True`` every layer also attends to
    ``encoder_hidden_states`` (the decoder of an encoder-decoder). Ours is the standard decoder layer
    (causal self-attention over the decoder tokens, then cross-attention); ``transformers``' BigBird
    layer instead feeds the encoder states to its self-attention too (its decoder tokens never attend
    to each other, and its cache mixes self and cross keys), so cross-attention parity is checked
    against ``transformers``' ``BertLMHeadModel``, the same layer with the same parameter names.

    Loss (when ``labels`` are given): logits up-cast to float32, labels shifted left by one, CE with
    -100 ignored, mean over the counted tokens (``transformers``' ``ForCausalLMLoss``).
    """

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, *, encoder_hidden_states=None, encoder_attention_mask=None,
                past_key_values=None, use_cache=None, logits_to_keep: int | torch.Tensor = 0):
        """Next-token logits; see :meth:`BigBirdModel.forward` for the inputs and the cache.

        ``logits_to_keep``: 0 = every position; an int k = the last k positions; a 1-d tensor = those
        positions (as ``transformers``). ``labels`` need every position (``logits_to_keep=0``).
        """
        if labels is not None and not (isinstance(logits_to_keep, int) and logits_to_keep == 0):
            raise ValueError("labels need the logits of every position: pass logits_to_keep=0 with labels")
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                        output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                        encoder_hidden_states=encoder_hidden_states, encoder_attention_mask=encoder_attention_mask,
                        past_key_values=past_key_values, use_cache=use_cache, causal=True, compute_pooler=False)
        hidden = out.last_hidden_state
        if isinstance(logits_to_keep, int):
            if logits_to_keep < 0:
                raise ValueError(f"logits_to_keep must be >= 0, got {logits_to_keep}")
            hidden = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
        else:
            hidden = hidden[:, logits_to_keep]
        logits = self.cls(hidden)
        loss = None
        if labels is not None:
            shifted = F.pad(labels, (0, 1), value=-100)[..., 1:]
            loss = F.cross_entropy(logits.float().reshape(-1, self.config.vocab_size), shifted.reshape(-1), ignore_index=-100)
        res = CausalLMOutput(loss, logits, out.past_key_values, out.hidden_states, out.attentions, out.cross_attentions)
        return res.to_tuple() if return_dict is False else res

    def _generation_step(self, input_ids, attention_mask, position_ids, past_key_values, model_kwargs):
        """One decoding step for :meth:`generate`: ``(last-position logits (B, V), cache)``."""
        out = self(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   past_key_values=past_key_values, use_cache=True, logits_to_keep=1, **model_kwargs)
        return out.logits[:, -1], out.past_key_values


def _classification_loss(config: BigBirdConfig, logits, labels):
    """transformers' rule: regression (MSE), single-label (CE) or multi-label (BCE) by problem_type.

    Without ``config.problem_type`` it is inferred per call (num_labels == 1: regression; integer
    labels: single-label; else multi-label). Unlike transformers the config is not modified.
    """
    n = config.num_labels
    problem = config.problem_type
    if problem is None:
        if n == 1:
            problem = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem = "single_label_classification"
        else:
            problem = "multi_label_classification"
    if problem == "regression":
        labels = labels.to(logits.dtype)
        if n == 1:
            return F.mse_loss(logits.squeeze(), labels.squeeze())
        return F.mse_loss(logits, labels)
    if problem == "single_label_classification":
        return F.cross_entropy(logits.view(-1, n), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


class BigBirdForSequenceClassification(BigBirdPreTrainedModel):
    """Sequence classification / regression with HF's BigBird head on ``h[:, 0]``
    (dropout, dense, ``hidden_act``, dropout, ``out_proj``); the pooler exists but is unused."""

    def __init__(self, config: BigBirdConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BigBirdModel(config, add_pooling_layer=True, _init_weights=False)
        self.classifier = BigBirdClassificationHead(config)
        self.init_weights()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                        output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                        compute_pooler=False)
        logits = self.classifier(out.last_hidden_state)
        loss = _classification_loss(self.config, logits, labels) if labels is not None else None
        res = SequenceClassifierOutput(loss, logits, out.hidden_states, out.attentions)
        return res.to_tuple() if return_dict is False else res


class BigBirdForMultipleChoice(BigBirdPreTrainedModel):
    """Multiple choice: inputs ``(B, num_choices, n)``; pooled output, dropout, ``classifier`` (hidden -> 1)."""

    def __init__(self, config: BigBirdConfig):
        super().__init__(config)
        self.bert = BigBirdModel(config, add_pooling_layer=True, _init_weights=False)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.init_weights()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        ref = input_ids if input_ids is not None else inputs_embeds
        if ref is None:
            raise ValueError("pass input_ids or inputs_embeds")
        expected_dim = 3 if input_ids is not None else 4
        if ref.dim() != expected_dim:
            what = "input_ids" if input_ids is not None else "inputs_embeds"
            raise ValueError(f"{what} must have shape (batch, num_choices, seq_len{', hidden' if expected_dim == 4 else ''}), "
                             f"got {tuple(ref.shape)}")
        num_choices = ref.shape[1]

        def flat(t):
            return None if t is None else t.reshape(-1, t.shape[-1])

        embeds = None if inputs_embeds is None else inputs_embeds.reshape(-1, *inputs_embeds.shape[-2:])
        out = self.bert(flat(input_ids), flat(attention_mask), flat(token_type_ids), flat(position_ids), embeds,
                        output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        logits = self.classifier(self.dropout(out.pooler_output)).view(-1, num_choices)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        res = MultipleChoiceModelOutput(loss, logits, out.hidden_states, out.attentions)
        return res.to_tuple() if return_dict is False else res


class BigBirdForTokenClassification(BigBirdPreTrainedModel):
    """Token classification: dropout (``classifier_dropout`` or ``hidden_dropout_prob``), ``classifier``."""

    def __init__(self, config: BigBirdConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BigBirdModel(config, add_pooling_layer=True, _init_weights=False)
        self.dropout = _classifier_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.init_weights()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                        output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                        compute_pooler=False)
        logits = self.classifier(self.dropout(out.last_hidden_state))
        loss = F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1)) if labels is not None else None
        res = TokenClassifierOutput(loss, logits, out.hidden_states, out.attentions)
        return res.to_tuple() if return_dict is False else res


class BigBirdForQuestionAnswering(BigBirdPreTrainedModel):
    """Extractive QA with HF's ``qa_classifier`` head; no pooler (``pooler_output`` is None).

    ``config.num_labels`` is set to 2, as in ``transformers``. Question handling (as ``transformers``):

    * ``question_lengths`` ``(B,)`` or ``(B, 1)``; if None and ``input_ids`` are given, the position
      of the first ``sep_token_id`` plus one (``[CLS] question [SEP]``; no SEP gives 1).
    * ``token_type_ids``, when not given, are 0 on the question part and 1 after it (padding included).
    * start/end logits of question tokens except position 0 get ``-1e6``.
    * The question does **not** change the attention pattern (only the first and last blocks are
      global, as in ``transformers``).

    Loss: start/end positions clamped to ``[0, n]``, cross-entropy with ``ignore_index = n`` (``n`` the
    input length), mean of the start and end losses.
    """

    def __init__(self, config: BigBirdConfig, add_pooling_layer: bool = False):
        super().__init__(config)
        config.num_labels = 2
        self.num_labels = 2
        self.sep_token_id = config.sep_token_id
        self.bert = BigBirdModel(config, add_pooling_layer=add_pooling_layer, _init_weights=False)
        self.qa_classifier = BigBirdForQuestionAnsweringHead(config)
        self.init_weights()

    @staticmethod
    def prepare_question_mask(q_lengths: torch.Tensor, maxlen: int) -> torch.Tensor:
        """``(B, maxlen)`` int64, 1 where ``position < q_length``."""
        return (torch.arange(maxlen, device=q_lengths.device)[None, :] < q_lengths.reshape(-1, 1)).long()

    def forward(self, input_ids=None, attention_mask=None, question_lengths=None, token_type_ids=None,
                position_ids=None, inputs_embeds=None, start_positions=None, end_positions=None,
                output_attentions=None, output_hidden_states=None, return_dict=None):
        ref = input_ids if input_ids is not None else inputs_embeds
        if ref is None:
            raise ValueError("pass input_ids or inputs_embeds")
        seqlen = ref.size(1)
        if question_lengths is None and input_ids is not None and input_ids.dim() == 2:
            question_lengths = torch.argmax(input_ids.eq(self.sep_token_id).int(), dim=-1) + 1
        logits_mask = None
        if question_lengths is not None:
            if not isinstance(question_lengths, torch.Tensor):
                question_lengths = torch.as_tensor(question_lengths)
            if question_lengths.numel() != ref.shape[0]:
                raise ValueError(f"question_lengths must have one entry per batch row ({ref.shape[0]}), "
                                 f"got shape {tuple(question_lengths.shape)}")
            question_lengths = question_lengths.to(ref.device)
            logits_mask = self.prepare_question_mask(question_lengths, seqlen)
            if token_type_ids is None:
                token_type_ids = 1 - logits_mask
            logits_mask[:, 0] = 0
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                        output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        logits = self.qa_classifier(out.last_hidden_state)
        if logits_mask is not None:
            logits = logits - (logits_mask[:, :, None] * 1e6).to(logits.dtype)
        start_logits, end_logits = (t.squeeze(-1).contiguous() for t in logits.split(1, dim=-1))
        loss = None
        if start_positions is not None and end_positions is not None:
            if start_positions.dim() > 1:
                start_positions = start_positions.squeeze(-1)
            if end_positions.dim() > 1:
                end_positions = end_positions.squeeze(-1)
            ignored = start_logits.size(1)
            start_positions = start_positions.clamp(0, ignored)
            end_positions = end_positions.clamp(0, ignored)
            loss = (F.cross_entropy(start_logits, start_positions, ignore_index=ignored)
                    + F.cross_entropy(end_logits, end_positions, ignore_index=ignored)) / 2
        res = QuestionAnsweringModelOutput(loss, start_logits, end_logits, out.pooler_output,
                                           out.hidden_states, out.attentions)
        return res.to_tuple() if return_dict is False else res
