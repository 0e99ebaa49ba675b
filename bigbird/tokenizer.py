"""BigBird tokenizer: a SentencePiece Unigram vocab run through the ``tokenizers`` library.

The ids are identical to Hugging Face transformers' ``BigBirdTokenizer`` (v5) loaded with
``AutoTokenizer.from_pretrained`` on the google/bigbird-roberta-base files. That tokenizer is:

* model: ``tokenizers`` Unigram built from the pieces and scores of ``spiece.model`` (every piece,
  including control and user-defined ones, keeps its SentencePiece id; ``<unk>`` is the unknown id);
* normalizer: ``Strip(left=False, right=False)`` (a no-op) then runs of two or more spaces replaced by
  one "▁"; the model's own normalization rules (``precompiled_charsmap``) are *not* applied;
* pre-tokenizer and decoder: ``Metaspace(replacement="▁", prepend_scheme="always", split=True)``;
* added tokens: every control and user-defined SentencePiece piece (ids 0..99 for BigBird, plus
  ``<unk>``) is matched verbatim in the raw text (``normalized=False``, no lstrip/rstrip, so the
  ``[MASK]`` in ``"a [MASK]"`` follows a standalone "▁" piece). Control pieces and the named special
  tokens are flagged special, i.e. dropped by ``decode(..., skip_special_tokens=True)``;
* template: ``[CLS] A [SEP]`` and ``[CLS] A [SEP] B [SEP]``, token type 0 up to and including the
  first ``[SEP]``, 1 after it.

Truncation, windows (overflowing tokens with a stride), special tokens and padding are done here in
Python, on the content ids the backend returns, following the rules transformers applies through
``tokenizers`` (see :meth:`BigBirdTokenizer.__call__`).

Usage::

    tok = BigBirdTokenizer.from_pretrained("path/to/folder")   # tokenizer.json and/or spiece.model
    enc = tok(["a text", "another one"], padding=True, return_tensors="pt")
    enc["input_ids"], enc["attention_mask"]
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Sequence

__all__ = ["BigBirdTokenizer", "BatchEncoding"]

SPIECE_UNDERLINE = "\u2581"
TOKENIZER_FILE = "tokenizer.json"
SPIECE_FILE = "spiece.model"
CONFIG_FILE = "tokenizer_config.json"

# Token names as in the google/bigbird-* hub configs. Note the swap: "</s>" (id 1) is the bos token
# and "<s>" (id 2) the eos token there, matching BigBirdConfig's bos_token_id=1, eos_token_id=2.
DEFAULT_SPECIAL_TOKENS = {
    "pad_token": "<pad>",
    "bos_token": "</s>",
    "eos_token": "<s>",
    "unk_token": "<unk>",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}

# transformers' model_max_length when tokenizer_config.json gives none ("no limit")
VERY_LARGE_INTEGER = int(1e30)

_PADDING_MODES = {False: None, None: None, "do_not_pad": None, True: "longest", "longest": "longest",
                  "max_length": "max_length"}
_TRUNCATION_MODES = {
    False: None,
    None: None,
    True: "longest_first",
    "longest_first": "longest_first",
    "only_first": "only_first",
    "only_second": "only_second",
}

# SentencePiece piece types (sentencepiece_model.proto, ModelProto.SentencePiece.Type).
_SP_NORMAL, _SP_UNKNOWN, _SP_CONTROL, _SP_USER_DEFINED, _SP_UNUSED, _SP_BYTE = 1, 2, 3, 4, 5, 6
_SP_UNIGRAM = 1


# ----------------------------------------------------------------------------------------------
# Reading a SentencePiece model
# ----------------------------------------------------------------------------------------------


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint in SentencePiece model")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _iter_fields(buf: bytes):
    """Yield ``(field_number, wire_type, value)`` of one protobuf message (value: int or bytes)."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} in SentencePiece model")
        if pos > len(buf):
            raise ValueError("truncated SentencePiece model")
        yield field, wire, value


def _spiece_piece_types(proto: bytes) -> tuple[list[int], int]:
    """Piece types (one per piece, in id order) and the trainer's model type of a serialized ModelProto.

    Only the two fields needed here are decoded: ``pieces[i].type`` (field 1.3, default NORMAL) and
    ``trainer_spec.model_type`` (field 2.3, default UNIGRAM).
    """
    types: list[int] = []
    model_type = _SP_UNIGRAM
    for field, wire, value in _iter_fields(proto):
        if field == 1 and wire == 2:  # repeated SentencePiece pieces
            piece_type = _SP_NORMAL
            for sub_field, sub_wire, sub_value in _iter_fields(value):
                if sub_field == 3 and sub_wire == 0:
                    piece_type = sub_value
            types.append(piece_type)
        elif field == 2 and wire == 2:  # TrainerSpec
            for sub_field, sub_wire, sub_value in _iter_fields(value):
                if sub_field == 3 and sub_wire == 0:
                    model_type = sub_value
    return types, model_type


def _read_spiece(model_file: Path) -> list[tuple[str, float, int]]:
    """``(piece, score, type)`` for every piece of a SentencePiece model, in id order."""
    try:
        import sentencepiece
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"reading {model_file} needs the 'sentencepiece' package (pip install sentencepiece); "
            f"a {TOKENIZER_FILE} does not"
        ) from exc
    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.LoadFromFile(str(model_file))
    except (OSError, RuntimeError) as exc:
        raise ValueError(f"{model_file} is not a readable SentencePiece model: {exc}") from exc
    size = processor.get_piece_size()
    types, model_type = _spiece_piece_types(processor.serialized_model_proto())
    if model_type != _SP_UNIGRAM:
        raise ValueError(f"{model_file}: expected a SentencePiece unigram model, got model_type={model_type}")
    if len(types) != size:  # pragma: no cover - would mean a broken reader
        raise ValueError(f"{model_file}: read {len(types)} piece types for {size} pieces")
    return [(processor.id_to_piece(i), float(processor.get_score(i)), types[i]) for i in range(size)]


def _build_backend(pieces: Sequence[tuple[str, float, int]], special_tokens: dict[str, str]):
    """The ``tokenizers.Tokenizer`` that transformers' BigBirdTokenizer builds from the same pieces."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    index = {piece: i for i, (piece, _, _) in enumerate(pieces)}
    missing = [name for name in special_tokens.values() if name not in index]
    if missing:
        raise ValueError(f"special tokens {missing} are not pieces of the SentencePiece model")

    unk_id = index[special_tokens["unk_token"]]
    backend = Tokenizer(Unigram([(piece, score) for piece, score, _ in pieces], unk_id=unk_id, byte_fallback=False))
    backend.normalizer = normalizers.Sequence(
        [normalizers.Strip(left=False, right=False), normalizers.Replace(Regex(" {2,}"), SPIECE_UNDERLINE)]
    )
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPIECE_UNDERLINE, prepend_scheme="always", split=True)
    backend.decoder = decoders.Metaspace(replacement=SPIECE_UNDERLINE, prepend_scheme="always", split=True)

    named = set(special_tokens.values())
    for i, (piece, _, piece_type) in enumerate(pieces):
        if piece_type in (_SP_CONTROL, _SP_USER_DEFINED, _SP_UNKNOWN) or piece in named:
            special = piece_type in (_SP_CONTROL, _SP_UNKNOWN) or piece in named
            token = AddedToken(piece, single_word=False, lstrip=False, rstrip=False, normalized=False, special=special)
            if special:
                backend.add_special_tokens([token])
            else:
                backend.add_tokens([token])

    cls, sep = special_tokens["cls_token"], special_tokens["sep_token"]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0",
        pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, index[cls]), (sep, index[sep])],
    )
    return backend


def _token_name(value: Any) -> str | None:
    """A token name from a tokenizer_config.json entry (a string or an AddedToken dict)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


# ----------------------------------------------------------------------------------------------
# Output container
# ----------------------------------------------------------------------------------------------


class BatchEncoding(dict):
    """The result of :meth:`BigBirdTokenizer.__call__`: a ``dict`` whose keys are also attributes.

    Keys: ``input_ids``, ``attention_mask`` always; ``token_type_ids``, ``special_tokens_mask``,
    ``overflow_to_sample_mapping`` and ``window_starts`` when asked for.
    """

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device) -> "BatchEncoding":
        """Move every tensor value to ``device`` (only meaningful with ``return_tensors="pt"``)."""
        return BatchEncoding({k: (v.to(device) if hasattr(v, "to") else v) for k, v in self.items()})


# ----------------------------------------------------------------------------------------------
# The tokenizer
# ----------------------------------------------------------------------------------------------


class BigBirdTokenizer:
    """BigBird's SentencePiece-Unigram tokenizer with transformers-identical ids.

    Build it with :meth:`from_pretrained`. ``backend`` is the underlying ``tokenizers.Tokenizer``
    (without truncation or padding; those are applied by :meth:`__call__`).
    """

    def __init__(self, backend, special_tokens: dict[str, str] | None = None, spiece_file: str | os.PathLike | None = None,
                 model_max_length: int | None = None):
        """Wrap a ``tokenizers.Tokenizer`` whose vocab holds the BigBird special tokens.

        ``special_tokens`` maps ``pad_token``, ``bos_token``, ``eos_token``, ``unk_token``,
        ``cls_token``, ``sep_token``, ``mask_token`` to token strings (defaults: the google/bigbird
        names). ``spiece_file`` is the SentencePiece model it came from, copied by
        :meth:`save_pretrained`. ``model_max_length`` is the longest input the model takes, used when
        ``max_length`` is not given (None: no limit, ``int(1e30)`` as in transformers). The backend's
        own truncation and padding settings are switched off (a ``tokenizer.json`` may carry some);
        :meth:`__call__` applies its own.
        """
        if model_max_length is None:
            model_max_length = VERY_LARGE_INTEGER
        if isinstance(model_max_length, bool) or not isinstance(model_max_length, int) or model_max_length < 3:
            raise ValueError(f"model_max_length must be an int >= 3 (room for [CLS] x [SEP]), got {model_max_length!r}")
        names = dict(DEFAULT_SPECIAL_TOKENS)
        names.update({k: v for k, v in (special_tokens or {}).items() if v is not None})
        unknown_keys = set(names) - set(DEFAULT_SPECIAL_TOKENS)
        if unknown_keys:
            raise ValueError(f"unknown special token keys {sorted(unknown_keys)}; expected {sorted(DEFAULT_SPECIAL_TOKENS)}")
        backend.no_truncation()
        backend.no_padding()
        ids = {key: backend.token_to_id(name) for key, name in names.items()}
        missing = [names[key] for key, value in ids.items() if value is None]
        if missing:
            raise ValueError(f"special tokens {missing} are not in the tokenizer's vocab")
        self.backend = backend
        self.special_tokens = names
        self._ids = ids
        self._spiece_file = Path(spiece_file) if spiece_file is not None else None
        self.model_max_length = model_max_length

    # -- loading and saving ---------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, revision: str | None = None, cache_dir=None,
                        local_files_only: bool | None = None, model_max_length: int | None = None,
                        **special_tokens: str) -> "BigBirdTokenizer":
        """Load from a folder or from a single file.

        * a folder holding ``tokenizer.json`` (loaded with the ``tokenizers`` library; preferred when
          present) and/or ``spiece.model`` (a SentencePiece Unigram model, read with
          ``sentencepiece`` and turned into the same ``tokenizers`` pipeline transformers builds); an
          optional ``tokenizer_config.json`` there supplies the special token names;
        * a path to a ``.model`` SentencePiece file or a ``.json`` tokenizers file.

        * a Hugging Face hub id (``google/bigbird-roberta-base``), resolved through the hub cache exactly
          as the models resolve it (``HF_HUB_CACHE`` / ``HF_HOME``, offline with ``HF_HUB_OFFLINE=1``
          or ``local_files_only=True``; ``revision``, ``cache_dir``). A name that looks like a local
          path (:func:`bigbird.hub.looks_like_local_path`) is never looked up on the hub.

        A leading ``~`` is expanded. Keyword arguments (``cls_token="[CLS]"``, ...) override the
        special token names; ``model_max_length`` overrides the one of ``tokenizer_config.json``
        (absent there: ``int(1e30)``, no limit, as in transformers).

        Raises:
            FileNotFoundError: the path does not exist (names it), a folder holds no tokenizer file, or
                the hub repo has no tokenizer file (or none is cached offline).
            ValueError: a file of another kind, a corrupt file, or special tokens not in the vocab.
        """
        given = os.fspath(path)
        path = Path(os.path.expanduser(given))
        if not path.exists():
            from .hub import looks_like_local_path, resolve_hub_files

            if not looks_like_local_path(given):
                path = resolve_hub_files(given, (TOKENIZER_FILE, SPIECE_FILE), (CONFIG_FILE,), revision=revision,
                                         cache_dir=cache_dir, local_files_only=local_files_only)
        names: dict[str, str] = {}
        config_max_length = None
        spiece_file: Path | None = None
        tokenizer_file: Path | None = None
        if path.is_dir():
            config_file = path / CONFIG_FILE
            if config_file.is_file():
                try:
                    config = json.loads(config_file.read_text(encoding="utf-8"))
                except ValueError as e:  # also not UTF-8
                    raise ValueError(f"{config_file} is not valid JSON: {e}") from None
                if not isinstance(config, dict):
                    raise ValueError(f"{config_file} must hold a JSON object, got {type(config).__name__}")
                for key in DEFAULT_SPECIAL_TOKENS:
                    name = _token_name(config.get(key))
                    if name is not None:
                        names[key] = name
                config_max_length = config.get("model_max_length")
            if (path / TOKENIZER_FILE).is_file():
                tokenizer_file = path / TOKENIZER_FILE
            if (path / SPIECE_FILE).is_file():
                spiece_file = path / SPIECE_FILE
            if tokenizer_file is None and spiece_file is None:
                raise FileNotFoundError(
                    f"no tokenizer files in folder {str(path)!r}: looked for {TOKENIZER_FILE!r} and {SPIECE_FILE!r}"
                )
        elif path.is_file():
            if path.suffix == ".json":
                tokenizer_file = path
            elif path.suffix == ".model":
                spiece_file = path
            else:
                raise ValueError(f"{path}: expected a folder, a SentencePiece '.model' file or a tokenizers '.json' file")
        else:
            raise FileNotFoundError(
                f"tokenizer path {given!r} does not exist ({path.absolute()}; expected a folder with {TOKENIZER_FILE!r} "
                f"or {SPIECE_FILE!r}, or one of those files)"
            )
        names.update(special_tokens)
        full_names = {**DEFAULT_SPECIAL_TOKENS, **names}
        if tokenizer_file is not None:
            from tokenizers import Tokenizer

            try:
                backend = Tokenizer.from_file(str(tokenizer_file))
            except Exception as e:  # the library raises a bare Exception
                raise ValueError(f"{tokenizer_file} is not a valid tokenizers file: {e}") from None
        else:
            backend = _build_backend(_read_spiece(spiece_file), full_names)
        if model_max_length is None:
            model_max_length = config_max_length
        return cls(backend, full_names, spiece_file=spiece_file, model_max_length=model_max_length)

    def save_pretrained(self, save_directory: str | os.PathLike) -> tuple[str, ...]:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` (and ``spiece.model`` when loaded
        from one) to ``save_directory``; ``transformers.AutoTokenizer.from_pretrained`` on that folder
        gives the same ids as this tokenizer. Returns the written paths.

        The files are swapped in atomically once all are written (see :mod:`bigbird.atomic`): a save
        that fails or is interrupted leaves the previous tokenizer files as they were.

        Raises:
            OSError: a file cannot be written (disk full, no permission; names the file).
        """
        from .atomic import write_files_atomically

        config: dict[str, Any] = {"tokenizer_class": "BigBirdTokenizer", "add_prefix_space": True,
                                  "model_max_length": self.model_max_length}
        config.update(self.special_tokens)
        config_text = json.dumps(config, indent=2, ensure_ascii=False) + "\n"
        writers = {TOKENIZER_FILE: lambda tmp: self.backend.save(str(tmp))}
        if self._spiece_file is not None:
            spiece_file = self._spiece_file
            writers[SPIECE_FILE] = lambda tmp: shutil.copyfile(spiece_file, tmp)
        writers[CONFIG_FILE] = lambda tmp: tmp.write_text(config_text, encoding="utf-8")
        return tuple(str(p) for p in write_files_atomically(save_directory, writers))

    def push_to_hub(self, *args, **kwargs):
        """Refused: this package works offline (see :func:`bigbird.hub.refuse_push_to_hub`)."""
        from .hub import refuse_push_to_hub

        refuse_push_to_hub("tokenizer")

    # -- vocab and special tokens ----------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids (50,358 for google/bigbird-roberta-base, = its config.vocab_size)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    pad_token = property(lambda self: self.special_tokens["pad_token"], doc="``<pad>``.")
    bos_token = property(lambda self: self.special_tokens["bos_token"], doc="``</s>`` (BigBird's bos).")
    eos_token = property(lambda self: self.special_tokens["eos_token"], doc="``<s>`` (BigBird's eos).")
    unk_token = property(lambda self: self.special_tokens["unk_token"], doc="``<unk>``.")
    cls_token = property(lambda self: self.special_tokens["cls_token"], doc="``[CLS]``.")
    sep_token = property(lambda self: self.special_tokens["sep_token"], doc="``[SEP]``.")
    mask_token = property(lambda self: self.special_tokens["mask_token"], doc="``[MASK]``.")
    pad_token_id = property(lambda self: self._ids["pad_token"], doc="Id of ``<pad>`` (0).")
    bos_token_id = property(lambda self: self._ids["bos_token"], doc="Id of the bos token ``</s>`` (1).")
    eos_token_id = property(lambda self: self._ids["eos_token"], doc="Id of the eos token ``<s>`` (2).")
    unk_token_id = property(lambda self: self._ids["unk_token"], doc="Id of ``<unk>`` (100).")
    cls_token_id = property(lambda self: self._ids["cls_token"], doc="Id of ``[CLS]`` (65).")
    sep_token_id = property(lambda self: self._ids["sep_token"], doc="Id of ``[SEP]`` (66).")
    mask_token_id = property(lambda self: self._ids["mask_token"], doc="Id of ``[MASK]`` (67).")

    def get_vocab(self) -> dict[str, int]:
        """``{token: id}`` for every id, special tokens included (as transformers')."""
        return self.backend.get_vocab(with_added_tokens=True)

    @property
    def all_special_ids(self) -> list[int]:
        """Ids that :meth:`get_special_tokens_mask` marks: pad, bos, eos, cls, sep and mask.

        ``<unk>`` is left out on purpose (it stands for real text), as are the user-defined
        ``<unused_*>``-style pieces. (transformers' ``all_special_ids`` lists every id 0..100.)
        """
        keys = ("pad_token", "bos_token", "eos_token", "cls_token", "sep_token", "mask_token")
        return sorted({self._ids[key] for key in keys})

    def get_special_tokens_mask(self, ids: Iterable[int]) -> list[int]:
        """1 for each id in :attr:`all_special_ids` ([CLS], [SEP], [MASK], <pad>, </s>, <s>), else 0."""
        special = set(self.all_special_ids)
        return [1 if int(i) in special else 0 for i in _as_list(ids)]

    def convert_tokens_to_ids(self, tokens: str | Iterable[str]) -> int | list[int]:
        """Id of a token string (``unk_token_id`` when unknown); a list gives a list."""
        if isinstance(tokens, str):
            token_id = self.backend.token_to_id(tokens)
            return self.unk_token_id if token_id is None else token_id
        return [self.convert_tokens_to_ids(token) for token in tokens]

    def convert_ids_to_tokens(self, ids: int | Iterable[int], skip_special_tokens: bool = False) -> str | list[str]:
        """Token string of an id; a list gives a list. ``skip_special_tokens`` drops every added token
        (the named special tokens, ``<unk>`` and all control and user-defined pieces, ids 0..100 for
        BigBird), as transformers does. Raises ``ValueError`` for ids out of range."""
        if isinstance(ids, int) or (hasattr(ids, "ndim") and ids.ndim == 0):
            token_id = int(ids)
            token = self.backend.id_to_token(token_id) if 0 <= token_id < self.vocab_size else None
            if token is None:
                raise ValueError(f"id {token_id} is out of range for a vocab of {self.vocab_size}")
            return token
        ids = [int(i) for i in _as_list(ids)]
        if skip_special_tokens:
            added = self.backend.get_added_tokens_decoder()
            ids = [i for i in ids if i not in added]
        return [self.convert_ids_to_tokens(i) for i in ids]

    def convert_tokens_to_string(self, tokens: Iterable[str]) -> str:
        """Text of a sequence of token strings (the backend's decoder, as transformers')."""
        return self.backend.decoder.decode(list(tokens))

    # -- encoding and decoding -------------------------------------------------------------------

    def tokenize(self, text: str) -> list[str]:
        """The content pieces of ``text`` (no [CLS]/[SEP])."""
        _check_str(text, "text")
        return self.backend.encode(text, add_special_tokens=False).tokens

    def encode(self, text: str, text_pair: str | None = None, add_special_tokens: bool = True) -> list[int]:
        """Ids of one text (or pair), with [CLS]/[SEP] unless ``add_special_tokens=False``."""
        _check_str(text, "text")
        content = self._content_ids([text])[0]
        pair = None
        if text_pair is not None:
            _check_str(text_pair, "text_pair")
            pair = self._content_ids([text_pair])[0]
        if not add_special_tokens:
            return content + (pair or [])
        return self._with_special_tokens(content, pair)[0]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of a sequence of ids (a list, tuple, 1-D tensor or array). With
        ``skip_special_tokens`` the tokens flagged special in the backend (control pieces, <unk> and
        the named special tokens) are dropped, as transformers does."""
        return self.backend.decode([int(i) for i in _as_list(ids)], skip_special_tokens=skip_special_tokens)

    def batch_decode(self, sequences: Iterable[Iterable[int]], skip_special_tokens: bool = False) -> list[str]:
        """:meth:`decode` for each sequence."""
        return [self.decode(seq, skip_special_tokens=skip_special_tokens) for seq in _as_list(sequences)]

    def pad(
        self,
        encoded_inputs,
        padding: bool | str = True,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        return_attention_mask: bool = True,
        return_tensors: str | None = None,
    ) -> BatchEncoding:
        """Pad encodings to one length, as transformers' ``tokenizer.pad``.

        Args:
            encoded_inputs: a list of encodings (dicts of flat lists, e.g. this tokenizer's outputs for
                single texts), a dict of lists of rows (a batch), or one encoding (dict of flat lists,
                padded to ``max_length`` only). Rows may be lists, tuples, 1-D tensors or arrays.
            padding: ``True``/``"longest"`` (to the longest row), ``"max_length"`` (to ``max_length``,
                else :attr:`model_max_length`) or ``False``/``"do_not_pad"``. Rows already longer are
                left alone.
            pad_to_multiple_of: round the padded length up to a multiple of this.
            return_attention_mask: add (or extend) ``attention_mask``.
            return_tensors: ``None``, ``"pt"`` or ``"np"`` (rows must then have equal lengths).

        Padding is on the right: ``input_ids`` with ``pad_token_id``, ``attention_mask`` and
        ``token_type_ids`` with 0, ``special_tokens_mask`` with 1; other keys are kept unpadded.

        Raises:
            ValueError: no ``input_ids``, rows of a key that do not match ``input_ids``, an unknown
                padding mode, ``padding="max_length"`` without a length, or tensors of unequal rows.
        """
        if isinstance(encoded_inputs, (list, tuple)):
            if not encoded_inputs or not all(isinstance(e, dict) for e in encoded_inputs):
                raise ValueError("pad() takes a non-empty list of encodings (dicts), or a dict of lists")
            keys = list(encoded_inputs[0])
            encoded_inputs = {key: [e[key] for e in encoded_inputs] for key in keys}
        if not isinstance(encoded_inputs, dict) or "input_ids" not in encoded_inputs:
            raise ValueError("pad() needs encodings with 'input_ids'")
        ids = _as_list(encoded_inputs["input_ids"])
        single = not ids or isinstance(ids[0], int) or getattr(ids[0], "ndim", None) == 0  # one encoding
        batch = {key: ([_as_list(value)] if single else [_as_list(row) for row in _as_list(value)])
                 for key, value in encoded_inputs.items()}
        rows = batch["input_ids"]
        if return_attention_mask and "attention_mask" not in batch:
            batch["attention_mask"] = [[1] * len(r) for r in rows]
        pad_mode = _lookup(_PADDING_MODES, padding, "padding")
        if pad_mode == "longest" and single:
            pad_mode = None  # one sequence is already as long as the longest (transformers)
        if pad_mode == "max_length" and max_length is None:
            if self.model_max_length >= VERY_LARGE_INTEGER:
                raise ValueError("padding='max_length' needs max_length (the tokenizer has no model_max_length)")
            max_length = self.model_max_length
        if pad_to_multiple_of is not None and (isinstance(pad_to_multiple_of, bool) or not isinstance(pad_to_multiple_of, int)
                                               or pad_to_multiple_of < 1):
            raise ValueError(f"pad_to_multiple_of must be a positive int, got {pad_to_multiple_of!r}")
        fill = {"input_ids": self.pad_token_id, "attention_mask": 0, "token_type_ids": 0, "special_tokens_mask": 1}
        for key in fill:
            if key in batch and [len(r) for r in batch[key]] != [len(r) for r in rows]:
                raise ValueError(f"pad(): the rows of {key!r} do not have the lengths of the rows of 'input_ids'")
        if pad_mode is not None:
            target = max_length if pad_mode == "max_length" else max(len(r) for r in rows)
            if pad_to_multiple_of is not None:
                target = -(-target // pad_to_multiple_of) * pad_to_multiple_of
            for key, value in fill.items():
                for row in batch.get(key, ()):
                    row.extend([value] * (target - len(row)))
        if return_tensors is not None:
            if return_tensors not in ("pt", "np"):
                raise ValueError(f"return_tensors must be None, 'pt' or 'np', got {return_tensors!r}")
            lengths = {len(r) for r in rows}
            if len(lengths) > 1:
                raise ValueError(f"return_tensors={return_tensors!r} needs rows of equal length (got lengths "
                                 f"{sorted(lengths)}); pad with padding=True or 'max_length'")
            return BatchEncoding({key: _to_tensor(value, return_tensors) for key, value in batch.items()})
        return BatchEncoding({key: (value[0] if single else value) for key, value in batch.items()})

    def __call__(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        *,
        padding: bool | str = False,
        truncation: bool | str = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
        return_token_type_ids: bool = False,
        return_special_tokens_mask: bool = False,
        return_overflowing_tokens: bool = False,
        stride: int = 0,
    ) -> BatchEncoding:
        """Encode a text, a pair, or a batch (list) of texts/pairs.

        Sequences are ``[CLS] A [SEP]`` or ``[CLS] A [SEP] B [SEP]``.

        Args:
            text: a ``str`` or a non-empty list of ``str``.
            text_pair: optional second segment(s), same shape as ``text`` (an empty string is an
                empty second segment: ``[CLS] A [SEP] [SEP]``).
            padding: ``False`` (none), ``True``/``"longest"`` (to the longest row) or
                ``"max_length"`` (to ``max_length``; rows already longer are left alone). Padding is
                on the right with ``pad_token_id`` (0), attention mask 0, token type 0.
            truncation: ``False``, ``True``/``"longest_first"``, ``"only_first"`` or
                ``"only_second"``; needs ``max_length`` (the length including special tokens).
                ``longest_first`` on a pair keeps the shorter segment whole when it fits in half of
                the budget, otherwise splits the budget in half with the odd token going to the
                longer segment (to the second on a tie) -- the rule of ``tokenizers``.
            max_length: the total length limit, special tokens included; when truncating or padding to
                ``"max_length"`` without it, :attr:`model_max_length` if ``tokenizer_config.json`` set one.
            return_tensors: ``None`` (Python lists), ``"pt"`` (torch.long tensors; a single text
                gives shape ``(1, L)``) or ``"np"`` (int64 arrays). Tensors need equal lengths.
            return_token_type_ids: add ``token_type_ids``.
            return_special_tokens_mask: add ``special_tokens_mask`` (see :meth:`get_special_tokens_mask`;
                padding positions are 1).
            return_overflowing_tokens: split each text that does not fit into windows instead of
                dropping the rest (needs truncation and ``max_length``). Each window holds at most
                ``max_length`` tokens including its own [CLS]/[SEP]; consecutive windows of the same
                text share ``stride`` content tokens. For pairs, ``truncation="only_second"`` windows
                the second segment (the first is repeated in every window) and ``"only_first"`` the
                first. Adds ``overflow_to_sample_mapping`` (the input index of each window) and
                ``window_starts`` (position of each window's first content token within the
                un-windowed content tokens of the windowed segment). Rows are always nested lists.
            stride: overlap between consecutive windows, ``0 <= stride <`` window content size.

        Returns:
            :class:`BatchEncoding` with ``input_ids`` and ``attention_mask`` (flat lists for a single
            text without windows, else lists of rows), plus the optional keys above.
        """
        is_batch, texts, pairs = _normalize_inputs(text, text_pair)
        pad_mode = _lookup(_PADDING_MODES, padding, "padding")
        trunc_mode = _lookup(_TRUNCATION_MODES, truncation, "truncation")
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors must be None, 'pt' or 'np', got {return_tensors!r}")
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)):
            raise ValueError(f"max_length must be an int, got {max_length!r}")
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 0:
            raise ValueError(f"stride must be a non-negative int, got {stride!r}")
        if max_length is None and (trunc_mode is not None or pad_mode == "max_length") and (
                self.model_max_length < VERY_LARGE_INTEGER):
            max_length = self.model_max_length  # as transformers does
        if pad_mode == "max_length" and max_length is None:
            raise ValueError("padding='max_length' needs max_length")
        if trunc_mode is not None and max_length is None:
            raise ValueError(f"truncation={truncation!r} needs max_length")
        if return_overflowing_tokens and trunc_mode is None:
            raise ValueError("return_overflowing_tokens=True needs truncation (e.g. truncation=True) and max_length")
        num_special = 2 if pairs is None else 3
        if max_length is not None and max_length < num_special:
            raise ValueError(
                f"max_length={max_length} is smaller than the {num_special} special tokens every "
                f"{'pair' if pairs is not None else 'sequence'} needs"
            )
        if trunc_mode == "only_second" and pairs is None:
            raise ValueError("truncation='only_second' needs text_pair")
        if return_overflowing_tokens and pairs is not None and trunc_mode == "longest_first":
            raise ValueError("windows over pairs need truncation='only_first' or 'only_second'")

        firsts = self._content_ids(texts)
        seconds = self._content_ids(pairs) if pairs is not None else [None] * len(firsts)

        rows: list[list[int]] = []
        type_rows: list[list[int]] = []
        sample_map: list[int] = []
        starts: list[int] = []
        for sample, (first, second) in enumerate(zip(firsts, seconds)):
            if trunc_mode is None:
                pieces = [(first, second, 0)]
            else:
                pieces = _truncate(first, second, trunc_mode, max_length - num_special, stride, return_overflowing_tokens)
            for a, b, start in pieces:
                ids, types = self._with_special_tokens(a, b)
                rows.append(ids)
                type_rows.append(types)
                sample_map.append(sample)
                starts.append(start)

        masks = [[1] * len(r) for r in rows]
        special_rows = [self.get_special_tokens_mask(r) for r in rows] if return_special_tokens_mask else None
        if pad_mode is not None:
            target = max_length if pad_mode == "max_length" else max(len(r) for r in rows)
            for i, r in enumerate(rows):
                extra = target - len(r)
                if extra > 0:
                    r.extend([self.pad_token_id] * extra)
                    masks[i].extend([0] * extra)
                    type_rows[i].extend([0] * extra)
                    if special_rows is not None:
                        special_rows[i].extend([1] * extra)

        result: dict[str, list] = {"input_ids": rows, "attention_mask": masks}
        if return_token_type_ids:
            result["token_type_ids"] = type_rows
        if special_rows is not None:
            result["special_tokens_mask"] = special_rows
        if return_overflowing_tokens:
            result["overflow_to_sample_mapping"] = sample_map
            result["window_starts"] = starts

        flat = not is_batch and not return_overflowing_tokens
        row_keys = ("input_ids", "attention_mask", "token_type_ids", "special_tokens_mask")
        if return_tensors is not None:
            lengths = {len(r) for r in rows}
            if len(lengths) > 1:
                raise ValueError(
                    f"return_tensors={return_tensors!r} needs rows of equal length (got lengths "
                    f"{sorted(lengths)}); pass padding=True or padding='max_length'"
                )
            result = {key: _to_tensor(value, return_tensors) for key, value in result.items()}
        elif flat:
            result = {key: (value[0] if key in row_keys else value) for key, value in result.items()}
        return BatchEncoding(result)

    # -- internals --------------------------------------------------------------------------------

    def _content_ids(self, texts: list[str]) -> list[list[int]]:
        return [list(e.ids) for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def _with_special_tokens(self, a: list[int], b: list[int] | None) -> tuple[list[int], list[int]]:
        ids = [self.cls_token_id, *a, self.sep_token_id]
        types = [0] * len(ids)
        if b is not None:
            ids += [*b, self.sep_token_id]
            types += [1] * (len(b) + 1)
        return ids, types

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, special_tokens={self.special_tokens})"


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _as_list(values) -> list:
    if hasattr(values, "tolist"):
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"expected a sequence of ids, got {type(values).__name__}")
    return list(values)


def _check_str(value, what: str) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a str, got {type(value).__name__}")


def _lookup(table: dict, value, what: str):
    try:
        return table[value]
    except (KeyError, TypeError):
        raise ValueError(f"{what} must be one of {sorted(map(repr, table))}, got {value!r}") from None


def _normalize_inputs(text, text_pair) -> tuple[bool, list[str], list[str] | None]:
    """(is_batch, texts, pairs or None), validating types and lengths."""
    if isinstance(text, str):
        if text_pair is not None:
            _check_str(text_pair, "text_pair (with a single text)")
            return False, [text], [text_pair]
        return False, [text], None
    if not isinstance(text, (list, tuple)):
        raise ValueError(f"text must be a str or a list of str, got {type(text).__name__}")
    if len(text) == 0:
        raise ValueError("text is an empty list: nothing to encode")
    for i, item in enumerate(text):
        _check_str(item, f"text[{i}]")
    if text_pair is None:
        return True, list(text), None
    if not isinstance(text_pair, (list, tuple)):
        raise ValueError(f"text_pair must be a list of str when text is a list, got {type(text_pair).__name__}")
    if len(text_pair) != len(text):
        raise ValueError(f"text has {len(text)} items but text_pair has {len(text_pair)}")
    for i, item in enumerate(text_pair):
        _check_str(item, f"text_pair[{i}]")
    return True, list(text), list(text_pair)


def _windows(n: int, size: int, stride: int, overflow: bool) -> list[tuple[int, int]]:
    """(start, stop) of the windows covering ``n`` tokens: ``size`` tokens each, consecutive windows
    overlapping by ``stride``, the last one ending at ``n``; without ``overflow`` only the first."""
    if n <= size:
        return [(0, n)]
    if not overflow:
        return [(0, size)]
    if stride >= size:
        raise ValueError(
            f"stride={stride} must be smaller than the {size} content tokens each window holds "
            "(max_length minus the special tokens, and minus the other segment for pairs)"
        )
    spans = []
    for start in range(0, n, size - stride):
        stop = min(start + size, n)
        spans.append((start, stop))
        if stop == n:
            break
    return spans


def _truncate(first, second, mode, budget, stride, overflow):
    """List of ``(a, b, window_start)`` after truncation to ``budget`` content tokens."""
    if second is None:
        return [(first[s:e], None, s) for s, e in _windows(len(first), budget, stride, overflow)]
    n1, n2 = len(first), len(second)
    if mode == "longest_first":
        if n1 + n2 > budget:
            if n1 > n2:
                n2 = min(n2, budget // 2)
                n1 = budget - n2
            else:
                n1 = min(n1, budget // 2)
                n2 = budget - n1
        return [(first[:n1], second[:n2], 0)]
    if mode == "only_first":
        size = budget - n2
        if n1 + n2 > budget and size < 1:
            raise ValueError(
                f"truncation='only_first' cannot fit: the second segment alone has {n2} tokens and "
                f"max_length leaves {budget} for content, so no room for any of the first"
            )
        return [(first[s:e], second, s) for s, e in _windows(n1, size, stride, overflow)]
    size = budget - n1  # only_second
    if n1 + n2 > budget and size < 1:
        raise ValueError(
            f"truncation='only_second' cannot fit: the first segment alone has {n1} tokens, "
            f"max_length leaves {budget} for content"
        )
    return [(first, second[s:e], s) for s, e in _windows(n2, size, stride, overflow)]


def _to_tensor(value, kind: str):
    if kind == "pt":
        import torch

        return torch.tensor(value, dtype=torch.long)
    import numpy as np

    return np.asarray(value, dtype=np.int64)
