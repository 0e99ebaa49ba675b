"""BigBird for PyTorch on fused block-sparse attention, loading and saving Hugging Face checkpoints.

>>> from bigbird import BigBirdConfig, BigBirdForMaskedLM
>>> model = BigBirdForMaskedLM.from_pretrained("google/bigbird-roberta-base")   # or a local folder
>>> out = model(input_ids, attention_mask=attention_mask)                        # out.logits

Classes (parameter names equal ``transformers``' state-dict keys): :class:`BigBirdConfig`,
:class:`BigBirdModel`, :class:`BigBirdForPreTraining`, :class:`BigBirdForMaskedLM`,
:class:`BigBirdForCausalLM`, :class:`BigBirdForSequenceClassification`,
:class:`BigBirdForMultipleChoice`, :class:`BigBirdForTokenClassification`,
:class:`BigBirdForQuestionAnswering`, :class:`BigBirdEncoderDecoderModel` (loads ``transformers``'
``EncoderDecoderModel`` checkpoints of two BigBirds) and :class:`BigBirdTokenizer`.
``BigBirdForCausalLM`` and ``BigBirdEncoderDecoderModel`` have ``generate()`` (:mod:`bigbird.generation`). Every model class has
``from_pretrained(dir_or_hub_id, *, dtype=None, torch_dtype=None, device=None, device_map=None,
attn_implementation=None, local_files_only=None, revision=None, cache_dir=None, allow_missing=(),
ignore_unexpected=(), **config_overrides)`` and ``save_pretrained(dir)``.

``transformers`` habits: :class:`AutoConfig`, :class:`AutoModel`, ``AutoModelFor<Task>`` and
:class:`AutoTokenizer` (:mod:`bigbird.auto`), and :func:`pipeline` (:mod:`bigbird.pipelines`).
"""

from bigbird_kernels._version import __version__

from .auto import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForMultipleChoice,
    AutoModelForPreTraining,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
)
from .config import BigBirdConfig
from .heads import (
    BigBirdForCausalLM,
    BigBirdForMaskedLM,
    BigBirdForMultipleChoice,
    BigBirdForPreTraining,
    BigBirdForQuestionAnswering,
    BigBirdForSequenceClassification,
    BigBirdForTokenClassification,
)
from .encoder_decoder import BigBirdEncoderDecoderConfig, BigBirdEncoderDecoderModel
from .modeling import BigBirdModel, BigBirdPreTrainedModel
from .outputs import (
    BaseModelOutputWithPooling,
    BigBirdForPreTrainingOutput,
    CausalLMOutput,
    MaskedLMOutput,
    ModelOutput,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    Seq2SeqLMOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

__all__ = [
    "BigBirdConfig",
    "BigBirdPreTrainedModel",
    "BigBirdModel",
    "BigBirdForPreTraining",
    "BigBirdForMaskedLM",
    "BigBirdForCausalLM",
    "BigBirdForSequenceClassification",
    "BigBirdForMultipleChoice",
    "BigBirdForTokenClassification",
    "BigBirdForQuestionAnswering",
    "BigBirdEncoderDecoderConfig",
    "BigBirdEncoderDecoderModel",
    "BigBirdTokenizer",
    "ModelOutput",
    "BaseModelOutputWithPooling",
    "BigBirdForPreTrainingOutput",
    "MaskedLMOutput",
    "CausalLMOutput",
    "SequenceClassifierOutput",
    "MultipleChoiceModelOutput",
    "TokenClassifierOutput",
    "QuestionAnsweringModelOutput",
    "Seq2SeqLMOutput",
    "AutoConfig",
    "AutoModel",
    "AutoModelForPreTraining",
    "AutoModelForMaskedLM",
    "AutoModelForCausalLM",
    "AutoModelForSequenceClassification",
    "AutoModelForMultipleChoice",
    "AutoModelForTokenClassification",
    "AutoModelForQuestionAnswering",
    "AutoTokenizer",
    "pipeline",
]


def __getattr__(name):
    # the tokenizer (and its optional dependencies) and the pipelines are imported on first use only
    if name == "BigBirdTokenizer":
        from .tokenizer import BigBirdTokenizer

        globals()["BigBirdTokenizer"] = BigBirdTokenizer
        return BigBirdTokenizer
    if name == "pipeline":
        from .pipelines import pipeline

        globals()["pipeline"] = pipeline
        return pipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
