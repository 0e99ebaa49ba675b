"""``BigBirdConfig``: the model's hyper-parameters, read from and written to a Hugging Face ``config.json``.

Every field of ``transformers.BigBirdConfig`` (5.x) exists here with the same name and default (the
defaults are google/bigbird-roberta-base), so a ``config.json`` written by ``transformers`` loads here
and one written here loads in ``transformers``. Keys this class does not know are kept as attributes
and written back unchanged. Our own fields are documented in :class:`BigBirdConfig`.
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from typing import Any

from .hub import CONFIG_NAME, refuse_push_to_hub, resolve_checkpoint_dir

__all__ = ["BigBirdConfig", "CONFIG_NAME", "SUPPORTED_ACTIVATIONS", "LAYOUT_MODES", "ATTENTION_TYPES",
           "check_override_keys", "read_config_dict"]

ATTENTION_TYPES = ("block_sparse", "original_full")
LAYOUT_MODES = ("hf", "seeded", "resample")
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")
# activations implemented in bigbird.modeling (names as in transformers' ACT2FN)
SUPPORTED_ACTIVATIONS = (
    "gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "gelu_python", "gelu_accurate", "quick_gelu",
    "relu", "relu2", "relu6", "silu", "swish", "tanh", "sigmoid", "linear", "mish", "leaky_relu",
)

# Fields of transformers' BigBirdConfig and its PreTrainedConfig base, with their defaults, in the order
# transformers lists them. ``num_labels`` is not stored: it is ``len(id2label)`` as in transformers.
_HF_FIELDS: dict[str, Any] = {
    # PreTrainedConfig
    "architectures": None,
    "output_hidden_states": False,
    "output_attentions": False,
    "return_dict": True,
    "dtype": None,
    "chunk_size_feed_forward": 0,
    "is_encoder_decoder": False,
    "id2label": None,
    "label2id": None,
    "problem_type": None,
    # BigBirdConfig
    "vocab_size": 50358,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu_new",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 4096,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
    "use_cache": True,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "sep_token_id": 66,
    "attention_type": "block_sparse",
    "use_bias": True,
    "rescale_embeddings": False,
    "block_size": 64,
    "num_random_blocks": 3,
    "classifier_dropout": None,
    "is_decoder": False,
    "add_cross_attention": False,
    "tie_word_embeddings": True,
}

# Fields of this project (not in transformers); transformers keeps them as plain attributes.
_OUR_FIELDS: dict[str, Any] = {
    "layout_mode": "hf",
    "layout_seed": None,
    "window_blocks": 3,
    "global_blocks": (0, -1),
    "attention_backend": "auto",
    "gradient_checkpointing": False,
}

# Keys transformers writes that carry no model hyper-parameter; dropped on read, rewritten on save.
_DROPPED_ON_READ = ("model_type", "_name_or_path", "name_or_path", "_commit_hash", "transformers_version",
                    "torch_dtype", "attn_implementation", "_attn_implementation_internal")

# every keyword a config accepts as a field (num_labels sets id2label / label2id; torch_dtype is dtype)
FIELD_NAMES = frozenset({*_HF_FIELDS, *_OUR_FIELDS, "num_labels", "torch_dtype"})

_INT_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
               "max_position_embeddings", "type_vocab_size", "block_size", "num_random_blocks",
               "chunk_size_feed_forward", "window_blocks")


def read_config_dict(path: Path) -> dict[str, Any]:
    """The JSON object in the ``config.json`` at ``path``, unvalidated.

    Raises:
        FileNotFoundError / ValueError: no such file, or not a JSON object (names the file).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"config file not found: {path}") from None
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(d).__name__}")
    return d


def check_override_keys(overrides, config_dict: dict[str, Any], caller: str, extra: tuple[str, ...] = ()) -> None:
    """Raise ``TypeError`` naming every keyword of ``overrides`` that is neither a config field, a key of
    ``config_dict`` (the ``config.json`` being overridden, unknown keys included, as in transformers) nor
    one of ``extra``: a typo must not silently become a new config field."""
    unknown = sorted(k for k in overrides if k not in FIELD_NAMES and k not in config_dict and k not in extra)
    if unknown:
        raise TypeError(
            f"{caller}() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}: neither an option of "
            f"{caller}() nor a field of BigBirdConfig (config fields passed as keywords override the config)"
        )


class BigBirdConfig:
    """Configuration of a BigBird model; field names and defaults are those of ``transformers.BigBirdConfig``.

    Hugging Face fields (defaults = google/bigbird-roberta-base): ``vocab_size`` 50358, ``hidden_size``
    768, ``num_hidden_layers`` 12, ``num_attention_heads`` 12, ``intermediate_size`` 3072,
    ``hidden_act`` "gelu_new", ``hidden_dropout_prob`` 0.1, ``attention_probs_dropout_prob`` 0.1 (full
    attention only), ``max_position_embeddings`` 4096, ``type_vocab_size`` 2, ``initializer_range``
    0.02, ``layer_norm_eps`` 1e-12, ``use_cache`` True, ``pad_token_id`` 0, ``bos_token_id`` 1,
    ``eos_token_id`` 2, ``sep_token_id`` 66, ``attention_type`` "block_sparse" (or "original_full"),
    ``use_bias`` True, ``rescale_embeddings`` False, ``block_size`` 64, ``num_random_blocks`` 3,
    ``classifier_dropout`` None, ``is_decoder`` False, ``add_cross_attention`` False (True needs
    ``is_decoder``), ``tie_word_embeddings`` True, plus the generic ``architectures``, ``id2label`` /
    ``label2id`` / ``num_labels`` (default 2), ``problem_type``, ``output_hidden_states``,
    ``output_attentions``, ``return_dict``, ``dtype``, ``chunk_size_feed_forward``,
    ``is_encoder_decoder``. Any other keyword (or unknown ``config.json`` key) is kept as an attribute
    and written back by :meth:`to_dict` / :meth:`save_pretrained`.

    Fields of this project (written to ``config.json`` too; ``transformers`` ignores them):

    * ``layout_mode`` ("hf"): which random blocks block-sparse attention reads.
      ``"hf"`` = exactly Hugging Face's (all random indices 0 in eval, NumPy seeded by the layer index in
      training); ``"seeded"`` = HF's training layout in eval too (Google's original behaviour, the layout
      the released checkpoints were trained with); ``"resample"`` = fresh random blocks on every forward,
      drawn on the device.
    * ``layout_seed`` (None): seed of the ``torch.Generator`` that ``"resample"`` draws from (one per
      model and device); None draws from torch's default generator of the device.
    * ``window_blocks`` (3): width of the sliding window in blocks (odd). HF is fixed at 3.
    * ``global_blocks`` ((0, -1)): blocks that are global (attend to and are attended by every block);
      integers (not bool), negative ids count from the end. HF is fixed at first and last. Every id
      must name a block of the shortest input block-sparse attention runs on, which has
      ``6 + 2 * num_random_blocks`` blocks (inputs of up to ``(5 + 2 r) * block_size`` tokens run
      full attention): ids lie in ``[-(6 + 2 r), 6 + 2 r)``. Checked when the config is built or
      loaded, not on the first long input.
    * ``attention_backend`` ("auto"): backend of :func:`bigbird_kernels.block_sparse_attention`.
    * ``gradient_checkpointing`` (False): recompute each encoder layer in backward
      (``torch.utils.checkpoint``, non-reentrant) instead of storing its activations.

    Invalid combinations (``hidden_size % num_attention_heads != 0``, unknown ``attention_type`` /
    ``layout_mode`` / ``hidden_act``, ``block_size < 1``, ``num_random_blocks < 0``, even window,
    non-integer or out-of-range ``global_blocks``, ...) raise ``ValueError`` naming the field, from
    the constructor, :meth:`from_dict`, :meth:`from_json_file` and :meth:`from_pretrained` alike.
    """

    model_type = "big_bird"

    def __init__(self, **kwargs):
        num_labels = kwargs.pop("num_labels", None)
        for key in ("torch_dtype",):
            if key in kwargs and kwargs.get("dtype") is None:
                kwargs["dtype"] = kwargs.pop(key)
        for key in _DROPPED_ON_READ:
            kwargs.pop(key, None)
        for name, default in {**_HF_FIELDS, **_OUR_FIELDS}.items():
            value = kwargs.pop(name, copy.deepcopy(default))
            object.__setattr__(self, name, value)
        self._extra_keys: list[str] = []
        for name, value in kwargs.items():
            if name.startswith("__"):
                continue
            if hasattr(type(self), name):  # would shadow a method or property of this class
                raise ValueError(f"BigBirdConfig: key {name!r} clashes with a BigBirdConfig attribute")
            object.__setattr__(self, name, value)
            self._extra_keys.append(name)
        if self.id2label is not None:
            self.id2label = {int(k): v for k, v in self.id2label.items()}
            if self.label2id is None:
                self.label2id = {v: k for k, v in self.id2label.items()}
        if num_labels is not None:
            self.num_labels = num_labels
        elif self.id2label is None:
            self.num_labels = 2
        if isinstance(self.global_blocks, list):
            self.global_blocks = tuple(self.global_blocks)
        if not isinstance(self.dtype, (str, type(None))):
            self.dtype = str(self.dtype).replace("torch.", "")
        self.validate()

    # ------------------------------------------------------------------ labels

    @property
    def num_labels(self) -> int:
        """``len(id2label)`` (transformers stores the map, not the count)."""
        return len(self.id2label) if self.id2label is not None else 0

    @num_labels.setter
    def num_labels(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"num_labels must be a positive integer, got {n!r}")
        if self.id2label is None or len(self.id2label) != n:
            self.id2label = {i: f"LABEL_{i}" for i in range(n)}
            self.label2id = {v: k for k, v in self.id2label.items()}

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def short_input_threshold(self) -> int:
        """Un-padded lengths ``n <= (5 + 2 r) * block_size`` run full attention (HF's rule), per call."""
        return (5 + 2 * self.num_random_blocks) * self.block_size

    # ------------------------------------------------------------------ validation

    def validate(self) -> None:
        """Raise ``ValueError`` on an invalid combination of fields, naming it."""
        for name in _INT_FIELDS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"BigBirdConfig.{name} must be an integer, got {v!r}")
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"BigBirdConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"BigBirdConfig: hidden_size ({self.hidden_size}) is not a multiple of num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.attention_type not in ATTENTION_TYPES:
            raise ValueError(
                f"BigBirdConfig.attention_type must be one of {ATTENTION_TYPES}, got {self.attention_type!r}"
            )
        if self.block_size < 1:
            raise ValueError(f"BigBirdConfig.block_size must be >= 1, got {self.block_size}")
        if self.num_random_blocks < 0:
            raise ValueError(f"BigBirdConfig.num_random_blocks must be >= 0, got {self.num_random_blocks}")
        if self.window_blocks < 1 or self.window_blocks % 2 == 0:
            raise ValueError(f"BigBirdConfig.window_blocks must be an odd number >= 1, got {self.window_blocks}")
        if self.layout_mode not in LAYOUT_MODES:
            raise ValueError(f"BigBirdConfig.layout_mode must be one of {LAYOUT_MODES}, got {self.layout_mode!r}")
        if self.layout_seed is not None and (isinstance(self.layout_seed, bool) or not isinstance(self.layout_seed, int)):
            raise ValueError(f"BigBirdConfig.layout_seed must be an integer or None, got {self.layout_seed!r}")
        if not isinstance(self.global_blocks, tuple) or not all(
            isinstance(g, int) and not isinstance(g, bool) for g in self.global_blocks
        ):
            raise ValueError(f"BigBirdConfig.global_blocks must be a sequence of block ids, got {self.global_blocks!r}")
        # the shortest input block-sparse attention runs on has this many blocks; every id must name a
        # block of it (and so of every longer input), or a long input would fail in the middle of a run
        fewest = self.short_input_threshold // self.block_size + 1
        out_of_range = [g for g in self.global_blocks if not -fewest <= g < fewest]
        if out_of_range:
            raise ValueError(
                f"BigBirdConfig.global_blocks {list(self.global_blocks)}: block ids {out_of_range} are out of range; "
                f"block-sparse inputs may have as few as {fewest} blocks (5 + 2 * num_random_blocks + 1), so ids "
                f"must lie in [-{fewest}, {fewest})"
            )
        from bigbird_kernels.dispatch import BACKEND_NAMES

        if self.attention_backend != "auto" and self.attention_backend not in BACKEND_NAMES:
            raise ValueError(
                f"BigBirdConfig.attention_backend must be 'auto' or one of {BACKEND_NAMES}, got {self.attention_backend!r}"
            )
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise ValueError(
                f"BigBirdConfig.hidden_act {self.hidden_act!r} is not supported; expected one of {SUPPORTED_ACTIVATIONS}"
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
            v = getattr(self, name)
            if v is None and name == "classifier_dropout":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"BigBirdConfig.{name} must be a probability in [0, 1], got {v!r}")
        if not isinstance(self.layer_norm_eps, (int, float)) or not self.layer_norm_eps > 0 or not math.isfinite(self.layer_norm_eps):
            raise ValueError(f"BigBirdConfig.layer_norm_eps must be a positive number, got {self.layer_norm_eps!r}")
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"BigBirdConfig.problem_type must be None or one of {PROBLEM_TYPES}, got {self.problem_type!r}")
        if self.problem_type == "single_label_classification" and self.num_labels == 1:
            raise ValueError('BigBirdConfig: problem_type="single_label_classification" requires num_labels > 1')
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"BigBirdConfig.pad_token_id ({self.pad_token_id}) must lie in [0, vocab_size={self.vocab_size})"
            )

    # ------------------------------------------------------------------ (de)serialisation

    def to_dict(self) -> dict[str, Any]:
        """Every field (HF's, ours, unknown keys kept from the source) as JSON-ready values."""
        out: dict[str, Any] = {}
        for name in list(_HF_FIELDS) + list(_OUR_FIELDS) + self._extra_keys:
            v = getattr(self, name)
            if name == "id2label" and v is not None:
                v = {str(k): lab for k, lab in v.items()}
            if isinstance(v, tuple):
                v = list(v)
            out[name] = copy.deepcopy(v)
        out["model_type"] = self.model_type
        return dict(sorted(out.items()))

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any], **overrides) -> BigBirdConfig:
        d = dict(d)
        mt = d.get("model_type")
        if mt is not None and mt != cls.model_type:
            raise ValueError(f"config has model_type {mt!r}, expected {cls.model_type!r} (a BigBird config)")
        if "torch_dtype" in overrides:  # the transformers alias overrides the file's dtype too
            overrides = dict(overrides)
            overrides.setdefault("dtype", overrides.pop("torch_dtype"))
        d.update(overrides)
        return cls(**d)

    @classmethod
    def from_json_file(cls, path, **overrides) -> BigBirdConfig:
        return cls.from_dict(read_config_dict(Path(path)), **overrides)

    @classmethod
    def from_pretrained(cls, name_or_path, *, local_files_only=None, revision=None, cache_dir=None, **overrides):
        """Read ``config.json`` from a directory, a file path, or a hub id (see :mod:`bigbird.hub`).

        Raises:
            FileNotFoundError: no ``config.json`` there; a name that looks like a local path and does
                not exist (at once, no hub look-up; see :func:`bigbird.hub.looks_like_local_path`).
            ValueError: not JSON, not a BigBird config, or an invalid field (named; see :meth:`validate`).
            TypeError: a keyword that is not a config field (named).
        """
        p = Path(os.path.expanduser(str(name_or_path)))
        if not p.is_file():
            folder = resolve_checkpoint_dir(name_or_path, local_files_only=local_files_only, revision=revision,
                                            cache_dir=cache_dir, config_only=True)
            p = folder / CONFIG_NAME
        d = read_config_dict(p)
        check_override_keys(overrides, d, f"{cls.__name__}.from_pretrained")
        return cls.from_dict(d, **overrides)

    def save_pretrained(self, save_directory) -> Path:
        """Write ``config.json`` into ``save_directory`` (created if needed); returns its path.

        The file is replaced atomically (see :mod:`bigbird.atomic`): a failed or interrupted save
        leaves the previous ``config.json`` as it was.

        Raises:
            OSError: the file cannot be written (names it).
        """
        from .atomic import write_files_atomically

        text = self.to_json_string()
        (path,) = write_files_atomically(save_directory, {CONFIG_NAME: lambda tmp: tmp.write_text(text, encoding="utf-8")})
        return path

    def push_to_hub(self, *args, **kwargs):
        """Refused: this package works offline (see :func:`bigbird.hub.refuse_push_to_hub`)."""
        refuse_push_to_hub("config")

    def copy(self, **overrides) -> BigBirdConfig:
        d = self.to_dict()
        d.update(overrides)
        return type(self).from_dict(d)

    def __eq__(self, other) -> bool:
        return isinstance(other, BigBirdConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"
