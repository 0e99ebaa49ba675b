"""``transformers``-style Auto classes for BigBird checkpoints.

As in ``transformers``, each ``AutoModelFor<Task>`` loads its task's class whatever head the checkpoint
was saved with (``AutoModel`` -> :class:`BigBirdModel`, ``AutoModelForMaskedLM`` ->
:class:`BigBirdForMaskedLM`, ...; missing head weights are an error unless ``allow_missing`` names
them), and the checkpoint must be a BigBird one: ``config.json``'s ``model_type`` (or, when it has
none, its ``architectures``) naming another model is refused by name. ``AutoConfig`` and
``AutoTokenizer`` give :class:`BigBirdConfig` and :class:`BigBirdTokenizer`.

>>> from bigbird import AutoModelForMaskedLM, AutoTokenizer
>>> model = AutoModelForMaskedLM.from_pretrained("google/bigbird-roberta-base")   # or a local folder
>>> tokenizer = AutoTokenizer.from_pretrained("google/bigbird-roberta-base")
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import heads
from .config import BigBirdConfig, read_config_dict
from .hub import CONFIG_NAME, looks_like_local_path, resolve_checkpoint_dir, resolve_hub_files
from .modeling import BigBirdModel

__all__ = [
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
]

_TOKENIZER_CLASSES = ("BigBirdTokenizer", "BigBirdTokenizerFast")
_HUB_OPTIONS = ("local_files_only", "revision", "cache_dir")


def check_bigbird_config(config: dict, where) -> None:
    """Raise ``ValueError`` naming the model when a ``config.json`` dict is not a BigBird one.

    ``model_type`` must be ``"big_bird"``; a config without ``model_type`` must not list
    ``architectures`` of another model (every name must start with ``BigBird``).
    """
    model_type = config.get("model_type")
    if model_type is not None and model_type != BigBirdConfig.model_type:
        raise ValueError(f"{where} is a {model_type!r} checkpoint (config.json model_type), not a BigBird one "
                         f"({BigBirdConfig.model_type!r}): bigbird's Auto classes load BigBird checkpoints only")
    others = [a for a in config.get("architectures") or () if not str(a).startswith("BigBird")]
    if model_type is None and others:
        raise ValueError(f"{where} has architectures {others} in config.json, not BigBird ones: bigbird's Auto "
                         "classes load BigBird checkpoints only")


def _read_checked_config(name_or_path, hub: dict) -> dict:
    p = Path(os.path.expanduser(os.fspath(name_or_path)))
    path = p if p.is_file() else resolve_checkpoint_dir(name_or_path, config_only=True, **hub) / CONFIG_NAME
    config = read_config_dict(path)
    check_bigbird_config(config, os.fspath(name_or_path))
    return config


class AutoConfig:
    """``AutoConfig.from_pretrained(name_or_path, **overrides)``: the :class:`BigBirdConfig` of a checkpoint."""

    def __init__(self):
        raise TypeError("AutoConfig is not instantiated: use AutoConfig.from_pretrained(name_or_path)")

    @staticmethod
    def from_pretrained(name_or_path, **kwargs) -> BigBirdConfig:
        """See :meth:`BigBirdConfig.from_pretrained`; a non-BigBird ``config.json`` is a ``ValueError``."""
        _read_checked_config(name_or_path, {k: kwargs[k] for k in _HUB_OPTIONS if k in kwargs})
        return BigBirdConfig.from_pretrained(name_or_path, **kwargs)


class _AutoModel:
    """Base of the ``AutoModel*`` classes: ``_model_class`` is the class they load."""

    _model_class: type

    def __init__(self):
        raise TypeError(f"{type(self).__name__} is not instantiated: use {type(self).__name__}.from_pretrained(...) "
                        "or .from_config(config)")

    @classmethod
    def from_pretrained(cls, name_or_path, *args, **kwargs):
        """``<task class>.from_pretrained(name_or_path, **kwargs)`` (see
        :meth:`BigBirdPreTrainedModel.from_pretrained`) after checking that the checkpoint is a BigBird one.

        Raises:
            ValueError: ``config.json`` names another model (its ``model_type``, or ``architectures``).
        """
        if args:
            raise TypeError(f"{cls.__name__}.from_pretrained takes one positional argument (the checkpoint); "
                            "pass the others by keyword")
        if kwargs.get("config") is None:
            _read_checked_config(name_or_path, {k: kwargs[k] for k in _HUB_OPTIONS if k in kwargs})
        return cls._model_class.from_pretrained(name_or_path, **kwargs)

    @classmethod
    def from_config(cls, config: BigBirdConfig):
        """A freshly initialised model of the task's class for ``config``."""
        if not isinstance(config, BigBirdConfig):
            raise TypeError(f"{cls.__name__}.from_config needs a BigBirdConfig, got {type(config).__name__}")
        return cls._model_class(config)


def _auto(name: str, model_class: type) -> type:
    doc = f"Loads :class:`{model_class.__name__}` (``{name}.from_pretrained`` / ``{name}.from_config``)."
    return type(name, (_AutoModel,), {"_model_class": model_class, "__doc__": doc, "__module__": __name__})


AutoModel = _auto("AutoModel", BigBirdModel)
AutoModelForPreTraining = _auto("AutoModelForPreTraining", heads.BigBirdForPreTraining)
AutoModelForMaskedLM = _auto("AutoModelForMaskedLM", heads.BigBirdForMaskedLM)
AutoModelForCausalLM = _auto("AutoModelForCausalLM", heads.BigBirdForCausalLM)
AutoModelForSequenceClassification = _auto("AutoModelForSequenceClassification", heads.BigBirdForSequenceClassification)
AutoModelForMultipleChoice = _auto("AutoModelForMultipleChoice", heads.BigBirdForMultipleChoice)
AutoModelForTokenClassification = _auto("AutoModelForTokenClassification", heads.BigBirdForTokenClassification)
AutoModelForQuestionAnswering = _auto("AutoModelForQuestionAnswering", heads.BigBirdForQuestionAnswering)


class AutoTokenizer:
    """``AutoTokenizer.from_pretrained(name_or_path, **kwargs)``: a :class:`BigBirdTokenizer`."""

    def __init__(self):
        raise TypeError("AutoTokenizer is not instantiated: use AutoTokenizer.from_pretrained(name_or_path)")

    @staticmethod
    def from_pretrained(name_or_path, **kwargs):
        """See :meth:`BigBirdTokenizer.from_pretrained`.

        Raises:
            ValueError: the folder's ``tokenizer_config.json`` names another ``tokenizer_class``, or its
                ``config.json`` another model.
        """
        from .tokenizer import CONFIG_FILE, SPIECE_FILE, TOKENIZER_FILE, BigBirdTokenizer

        given = os.fspath(name_or_path)
        path = Path(os.path.expanduser(given))
        if not path.exists() and not looks_like_local_path(given):
            hub = {k: kwargs[k] for k in _HUB_OPTIONS if k in kwargs}
            path = resolve_hub_files(given, (TOKENIZER_FILE, SPIECE_FILE), (CONFIG_FILE, CONFIG_NAME), **hub)
        if path.is_dir():
            if (path / CONFIG_NAME).is_file():
                check_bigbird_config(read_config_dict(path / CONFIG_NAME), given)
            if (path / CONFIG_FILE).is_file():
                try:
                    tokenizer_class = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8")).get("tokenizer_class")
                except (ValueError, AttributeError):
                    tokenizer_class = None  # BigBirdTokenizer.from_pretrained names the broken file
                if tokenizer_class is not None and tokenizer_class not in _TOKENIZER_CLASSES:
                    raise ValueError(f"{given} holds a {tokenizer_class!r} tokenizer (tokenizer_config.json), not a "
                                     "BigBird one: AutoTokenizer loads BigBirdTokenizer only")
        return BigBirdTokenizer.from_pretrained(path, **kwargs)
