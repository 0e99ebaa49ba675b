"""Tests for bigbird.tokenizer.

Two vocabularies:

* a tiny SentencePiece unigram model trained here, with BigBird's id layout (<pad> 0, </s> 1, <s> 2,
  [CLS] 65, [SEP] 66, [MASK] 67, <unk> 100), for the plumbing;
* the real google/bigbird-roberta-base vocab (``BIGBIRD_VOCAB``, else ``shared/bigbird_vocab/gpt2.model`` beside the repo),
  skipped when absent.

The oracle is transformers' BigBirdTokenizer loaded with ``AutoTokenizer.from_pretrained`` on a folder
holding ``spiece.model`` and a hub-style ``tokenizer_config.json`` (calling ``BigBirdTokenizer(vocab_file=...)``
directly silently gives wrong ids in transformers 5.x, so it is not used).
"""

from __future__ import annotations

import copy
import json
import random
import shutil
from pathlib import Path

import pytest

from resources import REAL_VOCAB, REAL_VOCAB_MISSING, fill_hub_cache

from bigbird.tokenizer import BigBirdTokenizer, BatchEncoding, _spiece_piece_types


# BigBird's special token layout (google/bigbird-roberta-base), reproduced by the tiny model.
PAD, BOS, EOS, CLS, SEP, MASK, UNK = 0, 1, 2, 65, 66, 67, 100

# Hub-style tokenizer_config.json (as google/bigbird-roberta-large's): "</s>" is bos, "<s>" is eos.
HUB_CONFIG = {
    "tokenizer_class": "BigBirdTokenizer",
    "bos_token": "</s>",
    "eos_token": "<s>",
    "unk_token": "<unk>",
    "pad_token": "<pad>",
    "sep_token": "[SEP]",
    "cls_token": "[CLS]",
    "mask_token": {
        "__type": "AddedToken",
        "content": "[MASK]",
        "lstrip": True,
        "rstrip": False,
        "normalized": True,
        "single_word": False,
    },
}

SYLLABLES = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "bo", "fe", "gu", "ha", "jo", "ze", "wa", "py", "qu", "xi", "vo"]


def _tiny_user_symbols() -> list[str]:
    """98 user-defined symbols so that, after <pad> 0 and </s> 1, they take ids 2..99 with
    [CLS]/[SEP]/[MASK] at 65/66/67, and <unk> sits at 100 -- BigBird's layout."""
    symbols = ["<s>"] + [f"<sep_{i}>" for i in range(5)]
    symbols += [f"<unused_{len(symbols) + 2 + i}>" for i in range(63 - len(symbols))]
    symbols += ["[CLS]", "[SEP]", "[MASK]"]
    symbols += [f"<unused_{len(symbols) + 2 + i}>" for i in range(98 - len(symbols))]
    return symbols


def _sentence(rng: random.Random, words: list[str], n: int) -> str:
    return " ".join(rng.choice(words) for _ in range(n))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A folder holding only ``spiece.model``: a 320-piece unigram model trained on generated text."""
    spm = pytest.importorskip("sentencepiece")
    work = tmp_path_factory.mktemp("tiny_spm")
    rng = random.Random(1234)
    words = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(150)]
    lines = []
    for _ in range(400):
        line = _sentence(rng, words, rng.randint(3, 12))
        if rng.random() < 0.3:
            line = line.capitalize()
        line += rng.choice([".", ",", "!", "?", ""])
        if rng.random() < 0.2:
            line += f" {rng.randint(0, 999)}"
        lines.append(line)
    corpus = work / "corpus.txt"
    corpus.write_text("\n".join(lines), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(work / "m"),
        model_type="unigram",
        vocab_size=320,
        pad_id=PAD,
        eos_id=BOS,  # "</s>" at 1, as in BigBird's model (where it is the *eos* of SentencePiece)
        bos_id=-1,
        unk_id=UNK,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        user_defined_symbols=_tiny_user_symbols(),
        normalization_rule_name="identity",  # BigBird's vocab has no normalization rules either
        minloglevel=2,
        num_threads=1,
    )
    folder = work / "tiny"
    folder.mkdir()
    shutil.move(str(work / "m.model"), folder / "spiece.model")
    return folder


@pytest.fixture(scope="module")
def tiny_words(tiny_model) -> list[str]:
    rng = random.Random(1234)  # same stream as the corpus: the first 150 draws are its words
    return ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(150)]


def _make_oracle_dir(folder: Path, model_file: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_file, folder / "spiece.model")
    (folder / "tokenizer_config.json").write_text(json.dumps(HUB_CONFIG), encoding="utf-8")
    return folder


def _auto_tokenizer(folder: Path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("google.protobuf")  # transformers reads spiece.model through protobuf
    return transformers.AutoTokenizer.from_pretrained(str(folder))


@pytest.fixture(scope="module")
def real_model_file() -> Path:
    if not REAL_VOCAB.is_file():
        pytest.skip(REAL_VOCAB_MISSING)
    pytest.importorskip("sentencepiece")
    return REAL_VOCAB


def _texts(words: list[str], rng: random.Random) -> list[str]:
    """Varied strings built from a word list: the same shapes for both vocabularies."""
    w = lambda n: _sentence(rng, words, n)  # noqa: E731
    return [
        w(6) + ".",
        "  " + w(3) + "  ",  # leading/trailing spaces
        w(2) + "   " + w(2) + "    " + w(1),  # runs of spaces
        w(2) + "\t" + w(2) + "\n" + w(2) + "\r\n",  # tabs, newlines
        w(2).capitalize() + " [MASK] " + w(1) + "[MASK]" + w(1) + "  [MASK]",  # mask in text
        "<s> " + w(1) + " </s> <sep_0> " + w(1) + " <unused_70> <pad>",  # control/user-defined pieces
        w(1) + "<sep_1>" + w(1) + "<unused_70>" + w(1) + "</s>" + w(1),  # ... glued to words
        w(3) + " ☃ 😀 日本",  # characters outside the vocab
        "",
        " ",
        " ".join(w(rng.randint(5, 15)) + rng.choice([".", ",", "!", "?"]) for _ in range(25)),  # paragraph
    ]


REAL_TEXTS = [
    "Hello world, this is BigBird.",
    "  Leading and trailing spaces  ",
    "Repeated   spaces    inside\ttabs\tand\nnewlines\r\nand CRLF",
    "Café naïve résumé Ångström — façade, Zürich, São Paulo, Łódź.",
    "Ligatures: ﬁnance ﬂow ﬀ; circled ① ② ③; fullwidth ＡＢＣ; superscript x² and ½.",
    "The [MASK] sat on the [MASK].  x[MASK]y  [MASK]",
    "Emoji 😀, CJK 日本語のテキスト, Greek αβγ, Cyrillic привет, snowman ☃.",
    "<s> control </s> and <sep_0> user-defined <unused_70> pieces <pad> <unk>",
    "glued<sep_1>pieces<unused_70>and</s>control<pad>too",
    "URLs https://example.com/a_b?c=1&d=2 and e-mail a.b@example.org, code `x = f(y) + 3.14`",
    "",
    " ",
    (
        "BigBird, is a sparse-attention based transformer which extends Transformer based models, such as "
        "BERT to much longer sequences. In addition to sparse attention, BigBird also applies global "
        "attention as well as random attention to the input sequence. Theoretically, it has been shown "
        "that applying sparse, global, and random attention approximates full attention, while being "
        "computationally much more efficient for longer sequences. As a consequence of the capability to "
        "handle longer context, BigBird has shown improved performance on various long document NLP tasks, "
        "such as question answering and summarization, compared to BERT or RoBERTa. "
    )
    * 3,
]


@pytest.fixture(scope="module", params=["tiny", "real"])
def setup(request, tmp_path_factory):
    """(ours, transformers oracle, texts, name) for one vocabulary."""
    if request.param == "tiny":
        model_folder = request.getfixturevalue("tiny_model")
        model_file = model_folder / "spiece.model"
        words = request.getfixturevalue("tiny_words")
        texts = _texts(words, random.Random(7))
    else:
        model_file = request.getfixturevalue("real_model_file")
        model_folder = model_file  # a direct path to the .model file
        texts = REAL_TEXTS
    ours = BigBirdTokenizer.from_pretrained(model_folder)
    oracle = _auto_tokenizer(_make_oracle_dir(tmp_path_factory.mktemp(f"oracle_{request.param}"), model_file))
    return ours, oracle, texts, request.param


def _hf(oracle, *args, **kwargs) -> dict:
    return {key: list(value) for key, value in oracle(*args, **kwargs).items()}


def _compare(ours_enc, hf_enc, keys=("input_ids", "attention_mask")):
    for key in keys:
        assert ours_enc[key] == hf_enc[key], key


# ----------------------------------------------------------------------------------------------
# The documented examples and the vocab
# ----------------------------------------------------------------------------------------------


def test_real_vocab_documented_examples(real_model_file):
    tok = BigBirdTokenizer.from_pretrained(real_model_file)
    assert tok("Hello world, this is BigBird.")["input_ids"] == [65, 18536, 1096, 112, 529, 419, 4504, 42663, 114, 66]
    assert tok("What is it?", "It is a [MASK] model.")["input_ids"] == [
        65, 1968, 419, 441, 131, 66, 733, 419, 358, 321, 67, 2847, 114, 66,
    ]  # fmt: skip


def test_special_ids_and_vocab_size(setup):
    ours, oracle, _, name = setup
    ids = (ours.pad_token_id, ours.bos_token_id, ours.eos_token_id, ours.cls_token_id, ours.sep_token_id)
    assert ids == (PAD, BOS, EOS, CLS, SEP)
    assert (ours.mask_token_id, ours.unk_token_id) == (MASK, UNK)
    assert ours.vocab_size == len(ours) == len(oracle) == (50358 if name == "real" else 320)
    for attr in ("pad_token_id", "bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id", "mask_token_id", "unk_token_id"):
        assert getattr(ours, attr) == getattr(oracle, attr), attr


def test_piece_types_agree_with_sentencepiece(tiny_model):
    spm = pytest.importorskip("sentencepiece")
    sp = spm.SentencePieceProcessor(model_file=str(tiny_model / "spiece.model"))
    types, model_type = _spiece_piece_types(sp.serialized_model_proto())
    assert model_type == 1 and len(types) == sp.get_piece_size()
    for i, piece_type in enumerate(types):
        assert (piece_type == 3) == sp.is_control(i)
        assert (piece_type == 2) == sp.is_unknown(i)
    user_defined = [sp.id_to_piece(i) for i, t in enumerate(types) if t == 4]
    assert user_defined == _tiny_user_symbols()


# ----------------------------------------------------------------------------------------------
# Parity with transformers
# ----------------------------------------------------------------------------------------------


def test_single_texts_match_transformers(setup):
    ours, oracle, texts, _ = setup
    for text in texts:
        enc = ours(text, return_token_type_ids=True)
        _compare(enc, _hf(oracle, text, return_token_type_ids=True), ("input_ids", "attention_mask", "token_type_ids"))
        assert enc["input_ids"][0] == CLS and enc["input_ids"][-1] == SEP
        assert ours.encode(text) == enc["input_ids"]
        assert ours.tokenize(text) == oracle.tokenize(text)


def test_pairs_match_transformers(setup):
    ours, oracle, texts, _ = setup
    nonempty = [t for t in texts if t]  # transformers drops an empty *single* text_pair (see below)
    for first, second in zip(nonempty, nonempty[1:] + nonempty[:1]):
        enc = ours(first, second, return_token_type_ids=True)
        _compare(enc, _hf(oracle, first, second, return_token_type_ids=True), ("input_ids", "attention_mask", "token_type_ids"))
        ids, types = enc["input_ids"], enc["token_type_ids"]
        first_sep = ids.index(SEP)
        assert types == [0] * (first_sep + 1) + [1] * (len(ids) - first_sep - 1)


def test_empty_second_segment(setup):
    # An empty pair is an empty second segment. transformers agrees in batch form; for a single
    # str it treats text_pair="" as "no pair" (a falsy check), which we do not copy.
    ours, oracle, texts, _ = setup
    enc = ours([texts[0]], [""], return_token_type_ids=True)
    _compare(enc, _hf(oracle, [texts[0]], [""], return_token_type_ids=True), ("input_ids", "token_type_ids"))
    assert enc["input_ids"][0][-2:] == [SEP, SEP]
    assert ours(texts[0], "")["input_ids"] == enc["input_ids"][0]


def test_batch_padding_matches_transformers(setup):
    ours, oracle, texts, _ = setup
    batch = texts[:6]
    lengths = [len(ours(t)["input_ids"]) for t in batch]
    assert len(set(lengths)) > 1  # padding has something to do
    kw = dict(return_token_type_ids=True)
    for padding, max_length in [(True, None), ("longest", None), ("max_length", max(lengths) + 3), ("max_length", min(lengths) + 1)]:
        enc = ours(batch, padding=padding, max_length=max_length, **kw)
        _compare(enc, _hf(oracle, batch, padding=padding, max_length=max_length, **kw), ("input_ids", "attention_mask", "token_type_ids"))
        for row, mask, n in zip(enc["input_ids"], enc["attention_mask"], lengths):
            assert mask == [1] * n + [0] * (len(row) - n)
            assert row[n:] == [PAD] * (len(row) - n)
    # padding=True on one text changes nothing; no padding leaves ragged rows
    assert ours(texts[0], padding=True)["input_ids"] == ours(texts[0])["input_ids"]
    assert [len(r) for r in ours(batch)["input_ids"]] == lengths


def test_batch_of_pairs_matches_transformers(setup):
    ours, oracle, texts, _ = setup
    firsts, seconds = [t for t in texts if t][:4], [t for t in texts if t][4:8]
    kw = dict(padding=True, return_token_type_ids=True)
    _compare(ours(firsts, seconds, **kw), _hf(oracle, firsts, seconds, **kw), ("input_ids", "attention_mask", "token_type_ids"))


def test_truncation_single_matches_transformers(setup):
    ours, oracle, texts, _ = setup
    long_text = texts[-1]
    full = ours(long_text)["input_ids"]
    for truncation in (True, "longest_first", "only_first"):
        for max_length in (2, 3, 17, len(full) - 1, len(full), len(full) + 5):
            enc = ours(long_text, truncation=truncation, max_length=max_length)
            _compare(enc, _hf(oracle, long_text, truncation=truncation, max_length=max_length))
            assert enc["input_ids"] == full[: min(max_length, len(full)) - 1] + [SEP]
    # batch: each row truncated on its own, padding after truncation
    kw = dict(truncation=True, max_length=12, padding="max_length")
    _compare(ours(texts, **kw), _hf(oracle, texts, **kw))


def test_truncation_pairs_match_transformers(setup):
    ours, oracle, texts, name = setup
    words = ["a"] if name == "real" else ["kalo"]
    # longest_first over a grid of segment lengths and budgets
    firsts, seconds, max_lengths = [], [], []
    for n1 in range(0, 9):
        for n2 in range(1, 9):
            for m in range(3, 16):
                firsts.append(" ".join(words * n1))
                seconds.append(" ".join(words * n2))
                max_lengths.append(m)
    for m in sorted(set(max_lengths)):
        idx = [i for i, x in enumerate(max_lengths) if x == m]
        a, b = [firsts[i] for i in idx], [seconds[i] for i in idx]
        kw = dict(truncation="longest_first", max_length=m, return_token_type_ids=True)
        _compare(ours(a, b, **kw), _hf(oracle, a, b, **kw), ("input_ids", "token_type_ids"))
    # each strategy on a (short, long) pair
    question, context = texts[0], texts[-1]
    n_question = len(ours.encode(question, add_special_tokens=False))
    cases = [
        ("longest_first", question, context, 20),
        ("longest_first", context, question, 20),
        ("only_second", question, context, n_question + 3 + 5),
        ("only_first", context, question, n_question + 3 + 5),
    ]
    for truncation, first, second, max_length in cases:
        kw = dict(truncation=truncation, max_length=max_length, return_token_type_ids=True)
        enc = ours(first, second, **kw)
        _compare(enc, _hf(oracle, first, second, **kw), ("input_ids", "attention_mask", "token_type_ids"))
        assert len(enc["input_ids"]) == max_length
    # only_first / only_second at the edge: room for one token of the truncated segment works;
    # none (the other segment fills the budget) is an error, as in transformers
    for truncation, first, second in (("only_second", question, context), ("only_first", context, question)):
        kw = dict(truncation=truncation, max_length=n_question + 4, return_token_type_ids=True)
        enc = ours(first, second, **kw)
        _compare(enc, _hf(oracle, first, second, **kw), ("input_ids", "token_type_ids"))
        assert enc["input_ids"].count(SEP) == 2 and len(enc["input_ids"]) == n_question + 4
        kw["max_length"] -= 1
        with pytest.raises(ValueError, match="cannot fit"):
            ours(first, second, **kw)
        with pytest.raises(Exception):
            oracle(first, second, **kw)


def _check_windows(ours, text, enc, max_length, stride):
    """window_starts and the windows' content reassemble the un-windowed content."""
    content = ours.encode(text, add_special_tokens=False)
    size = max_length - 2
    starts = enc["window_starts"]
    assert starts[0] == 0
    assert all(b - a == size - stride for a, b in zip(starts, starts[1:]))
    covered = []
    for row, mask, start in zip(enc["input_ids"], enc["attention_mask"], starts):
        row = row[: sum(mask)]
        assert row[0] == CLS and row[-1] == SEP and len(row) <= max_length
        assert row[1:-1] == content[start : start + len(row) - 2]
        covered.extend(range(start, start + len(row) - 2))
    assert sorted(set(covered)) == list(range(len(content)))
    assert starts[-1] + sum(enc["attention_mask"][-1]) - 2 == len(content)  # last window ends at the end
    if len(starts) > 1:
        assert starts[-2] + size < len(content)  # ... and is the first one to get there


def test_windows_single_match_transformers(setup):
    ours, oracle, texts, _ = setup
    long_text = texts[-1]
    n = len(ours.encode(long_text, add_special_tokens=False))
    for max_length, stride in ((32, 8), (17, 0), (64, 16), (10, 7), (n + 2, 5), (n + 50, 0)):
        kw = dict(truncation=True, max_length=max_length, stride=stride, return_overflowing_tokens=True)
        enc = ours(long_text, **kw)
        hf = _hf(oracle, long_text, **kw)
        _compare(enc, hf, ("input_ids", "attention_mask", "overflow_to_sample_mapping"))
        assert enc["overflow_to_sample_mapping"] == [0] * len(enc["input_ids"])
        _check_windows(ours, long_text, enc, max_length, stride)
    assert len(ours(long_text, truncation=True, max_length=n + 2, return_overflowing_tokens=True)["input_ids"]) == 1


def test_windows_batch_with_padding_match_transformers(setup):
    ours, oracle, texts, _ = setup
    batch = [texts[-1], texts[0], texts[-1][:200], texts[3]]
    kw = dict(truncation=True, max_length=24, stride=6, return_overflowing_tokens=True, padding=True, return_token_type_ids=True)
    enc = ours(batch, **kw)
    _compare(enc, _hf(oracle, batch, **kw), ("input_ids", "attention_mask", "token_type_ids", "overflow_to_sample_mapping"))
    mapping = enc["overflow_to_sample_mapping"]
    assert mapping == sorted(mapping) and set(mapping) == set(range(len(batch)))
    for sample, text in enumerate(batch):
        rows = [i for i, s in enumerate(mapping) if s == sample]
        sub = {key: [enc[key][i] for i in rows] for key in ("input_ids", "attention_mask", "window_starts")}
        _check_windows(ours, text, sub, 24, 6)


def test_windows_pairs_match_transformers(setup):
    ours, oracle, texts, _ = setup
    question, context = texts[0], texts[-1]
    n_question = len(ours.encode(question, add_special_tokens=False))
    max_length = n_question + 3 + 20
    for truncation, first, second in (("only_second", question, context), ("only_first", context, question)):
        kw = dict(truncation=truncation, max_length=max_length, stride=5, return_overflowing_tokens=True, return_token_type_ids=True)
        enc = ours(first, second, **kw)
        _compare(enc, _hf(oracle, first, second, **kw), ("input_ids", "attention_mask", "token_type_ids", "overflow_to_sample_mapping"))
        content = ours.encode(context, add_special_tokens=False)
        for row, start in zip(enc["input_ids"], enc["window_starts"]):
            if truncation == "only_second":
                window = row[n_question + 2 : -1]
            else:
                window = row[1 : len(row) - n_question - 2]
            assert window == content[start : start + len(window)] and len(window) <= 20
        assert len(enc["input_ids"]) > 2


def test_decode_matches_transformers(setup):
    ours, oracle, texts, _ = setup
    for text in texts:
        ids = ours(text)["input_ids"]
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == oracle.decode(ids, skip_special_tokens=skip)
    decoded = ours.decode(ours(texts[0])["input_ids"], skip_special_tokens=True)
    assert decoded == texts[0] and CLS not in ours.encode(decoded, add_special_tokens=False)


def test_special_tokens_mask(setup):
    ours, oracle, texts, _ = setup
    assert ours.all_special_ids == sorted({PAD, BOS, EOS, CLS, SEP, MASK})
    enc = ours(texts[:6], padding=True, return_special_tokens_mask=True)
    hf = _hf(oracle, texts[:6], padding=True, return_special_tokens_mask=True)
    extra = {MASK, BOS, EOS, PAD}  # transformers' __call__ only marks the template's [CLS]/[SEP] and padding
    saw_mask = False
    for row, ours_mask, hf_mask in zip(enc["input_ids"], enc["special_tokens_mask"], hf["special_tokens_mask"]):
        assert ours_mask == [int(h or token in extra) for token, h in zip(row, hf_mask)]
        assert ours_mask == ours.get_special_tokens_mask(row)
        saw_mask |= MASK in row
    assert saw_mask
    assert ours.get_special_tokens_mask([CLS, 500, MASK, UNK, SEP, PAD]) == [1, 0, 1, 0, 1, 1]


def test_saved_folder_loads_in_transformers_and_back(setup, tmp_path):
    ours, _, texts, _ = setup
    written = ours.save_pretrained(tmp_path / "saved")
    names = sorted(Path(p).name for p in written)
    assert names == ["spiece.model", "tokenizer.json", "tokenizer_config.json"]
    expected = [ours(t, return_token_type_ids=True) for t in texts]
    hf = _auto_tokenizer(tmp_path / "saved")
    assert (hf.cls_token_id, hf.sep_token_id, hf.mask_token_id, hf.pad_token_id, hf.bos_token_id, hf.eos_token_id) == (
        CLS, SEP, MASK, PAD, BOS, EOS,
    )  # fmt: skip
    for text, exp in zip(texts, expected):
        _compare(exp, _hf(hf, text, return_token_type_ids=True), ("input_ids", "token_type_ids"))
    # tokenizer.json alone is enough, for transformers and for us (folder or file path)
    (tmp_path / "saved" / "spiece.model").unlink()
    hf_json = _auto_tokenizer(tmp_path / "saved")
    for source in (tmp_path / "saved", tmp_path / "saved" / "tokenizer.json"):
        reloaded = BigBirdTokenizer.from_pretrained(source)
        assert reloaded.vocab_size == ours.vocab_size
        for text, exp in zip(texts, expected):
            assert reloaded(text, return_token_type_ids=True) == exp
            assert hf_json(text)["input_ids"] == exp["input_ids"]
    # saving a tokenizer.json-loaded tokenizer writes no spiece.model
    again = BigBirdTokenizer.from_pretrained(tmp_path / "saved").save_pretrained(tmp_path / "again")
    assert sorted(Path(p).name for p in again) == ["tokenizer.json", "tokenizer_config.json"]


def test_hf_token_attributes_match_transformers(setup):
    ours, oracle, _, _ = setup
    for name in ("mask", "pad", "cls", "sep", "unk", "bos", "eos"):
        assert getattr(ours, f"{name}_token") == getattr(oracle, f"{name}_token"), name
        assert getattr(ours, f"{name}_token_id") == getattr(oracle, f"{name}_token_id"), name
    assert ours.model_max_length == oracle.model_max_length == int(1e30)  # no tokenizer_config.json limit
    assert ours.get_vocab() == oracle.get_vocab()


def test_id_token_conversions_and_batch_decode_match_transformers(setup):
    ours, oracle, texts, _ = setup
    rows = ours(texts, padding=True)["input_ids"]
    for row in rows:
        for skip in (False, True):
            assert ours.convert_ids_to_tokens(row, skip_special_tokens=skip) == oracle.convert_ids_to_tokens(
                row, skip_special_tokens=skip)
        tokens = ours.convert_ids_to_tokens(row)
        assert ours.convert_tokens_to_ids(tokens) == oracle.convert_tokens_to_ids(tokens) == row
    for skip in (False, True):
        assert ours.batch_decode(rows, skip_special_tokens=skip) == oracle.batch_decode(rows, skip_special_tokens=skip)


def test_pad_matches_transformers(setup):
    ours, oracle, texts, _ = setup
    # the same encodings go to both (our special_tokens_mask also marks [MASK] in the text, see above)
    singles = [ours(t, return_token_type_ids=True, return_special_tokens_mask=True) for t in texts[:5]]

    def hf_pad(encodings, **kwargs):  # a fresh copy each time: transformers may pad the lists in place
        return oracle.pad(copy.deepcopy(encodings), **kwargs)
    longest = max(len(e["input_ids"]) for e in singles)
    cases = [
        {},
        {"padding": "max_length", "max_length": longest + 3},
        {"padding": "longest", "pad_to_multiple_of": 8},
        {"padding": False},
        {"padding": True, "return_tensors": "pt"},
    ]
    for kwargs in cases:
        got, want = ours.pad(singles, **kwargs), hf_pad(singles, **kwargs)
        assert set(got) == set(want), kwargs
        for key in want:
            g, w = got[key], want[key]
            assert (g.tolist() if hasattr(g, "tolist") else g) == (w.tolist() if hasattr(w, "tolist") else w), (kwargs, key)
    as_dict = {"input_ids": [e["input_ids"] for e in singles]}
    assert ours.pad(as_dict) == dict(hf_pad(as_dict))
    assert ours.pad(as_dict, return_attention_mask=False) == dict(hf_pad(as_dict, return_attention_mask=False))
    assert ours.pad(singles[0], padding="max_length", max_length=longest + 1) == dict(
        hf_pad(singles[0], padding="max_length", max_length=longest + 1))
    assert ours.pad(singles[0]) == dict(hf_pad(singles[0]))  # one encoding: nothing to pad
    before = copy.deepcopy(singles)
    ours.pad(singles, padding="max_length", max_length=longest + 2)
    assert singles == before  # our pad leaves its input as it was


def test_pad_errors(tiny):
    with pytest.raises(ValueError, match="needs encodings with 'input_ids'"):
        tiny.pad({"attention_mask": [[1]]})
    with pytest.raises(ValueError, match="non-empty list of encodings"):
        tiny.pad([])
    with pytest.raises(ValueError, match="rows of 'attention_mask' do not have the lengths"):
        tiny.pad({"input_ids": [[65, 66], [65, 5, 66]], "attention_mask": [[1, 1], [1, 1]]})
    with pytest.raises(ValueError, match="padding='max_length' needs max_length"):
        tiny.pad({"input_ids": [[65, 66]]}, padding="max_length")
    with pytest.raises(ValueError, match="needs rows of equal length"):
        tiny.pad({"input_ids": [[65, 66], [65, 5, 66]]}, padding=False, return_tensors="pt")
    with pytest.raises(ValueError, match="pad_to_multiple_of must be a positive int"):
        tiny.pad({"input_ids": [[65, 66]]}, pad_to_multiple_of=0)


def test_model_max_length_from_config_saved_and_used(tiny, tiny_model, tiny_words, tmp_path):
    folder = _make_oracle_dir(tmp_path / "limited", tiny_model / "spiece.model")
    (folder / "tokenizer_config.json").write_text(json.dumps(dict(HUB_CONFIG, model_max_length=12)), encoding="utf-8")
    limited = BigBirdTokenizer.from_pretrained(folder)
    oracle = _auto_tokenizer(folder)
    assert limited.model_max_length == oracle.model_max_length == 12
    assert BigBirdTokenizer.from_pretrained(folder, model_max_length=20).model_max_length == 20
    text = " ".join(tiny_words[:30])
    assert limited(text, truncation=True)["input_ids"] == oracle(text, truncation=True)["input_ids"]
    assert len(limited(text, truncation=True)["input_ids"]) == 12
    assert limited.pad({"input_ids": [[65, 66]]}, padding="max_length")["input_ids"] == [[65, 66] + [0] * 10]
    limited.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "tokenizer_config.json").read_text())["model_max_length"] == 12
    assert _auto_tokenizer(tmp_path / "saved").model_max_length == 12
    assert BigBirdTokenizer.from_pretrained(tmp_path / "saved").model_max_length == 12
    with pytest.raises(ValueError, match="model_max_length must be an int >= 3"):
        BigBirdTokenizer.from_pretrained(folder, model_max_length=2)


def test_push_to_hub_is_refused(tiny):
    with pytest.raises(NotImplementedError, match=r"push_to_hub is not supported.*tokenizer\.save_pretrained"):
        tiny.push_to_hub("me/tok")


def test_oracle_folder_and_hub_config_are_read(setup, tmp_path):
    # Our loader reads the hub-style tokenizer_config.json (mask given as an AddedToken dict).
    ours, _, texts, _ = setup
    folder = _make_oracle_dir(tmp_path / "hub", Path(ours._spiece_file))
    config = dict(HUB_CONFIG, cls_token={"content": "[SEP]"}, sep_token="[CLS]")  # swapped on purpose
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    swapped = BigBirdTokenizer.from_pretrained(folder)
    assert (swapped.cls_token_id, swapped.sep_token_id) == (SEP, CLS)
    assert swapped(texts[0])["input_ids"] == [SEP] + ours.encode(texts[0], add_special_tokens=False) + [CLS]
    assert BigBirdTokenizer.from_pretrained(folder, cls_token="[CLS]", sep_token="[SEP]")(texts[0]) == ours(texts[0])


# ----------------------------------------------------------------------------------------------
# Plumbing (tiny model only)
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_model) -> BigBirdTokenizer:
    return BigBirdTokenizer.from_pretrained(tiny_model)


def test_load_routes_agree(tiny, tiny_model, tiny_words, tmp_path):
    texts = _texts(tiny_words, random.Random(3))
    saved = tmp_path / "saved"
    tiny.save_pretrained(saved)
    routes = [
        BigBirdTokenizer.from_pretrained(tiny_model / "spiece.model"),
        BigBirdTokenizer.from_pretrained(str(saved / "tokenizer.json")),
        BigBirdTokenizer.from_pretrained(saved),
    ]
    for text in texts:
        expected = tiny(text, return_token_type_ids=True)
        assert all(r(text, return_token_type_ids=True) == expected for r in routes)
    # a tokenizer.json saved with truncation/padding switched on still loads without them
    backend = routes[1].backend
    backend.enable_truncation(max_length=5)
    backend.enable_padding(length=50)
    backend.save(str(tmp_path / "tokenizer.json"))
    loaded = BigBirdTokenizer.from_pretrained(tmp_path / "tokenizer.json")
    assert loaded(texts[-1]) == tiny(texts[-1]) and len(loaded(texts[-1])["input_ids"]) > 50


def test_hub_id_resolves_through_the_hub_cache_like_the_models(tiny, tiny_model, tiny_words, tmp_path, monkeypatch):
    saved = tmp_path / "saved"
    tiny.save_pretrained(saved)
    shutil.copyfile(tiny_model / "spiece.model", saved / "spiece.model")
    commit = fill_hub_cache(tmp_path / "hub", "someorg/tiny-bigbird", saved)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    text = _texts(tiny_words, random.Random(5))[0]
    for kw in ({}, {"revision": commit}, {"revision": "main"}):
        assert BigBirdTokenizer.from_pretrained("someorg/tiny-bigbird", **kw)(text) == tiny(text), kw
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "elsewhere"))
    loaded = BigBirdTokenizer.from_pretrained("someorg/tiny-bigbird", cache_dir=tmp_path / "hub", local_files_only=True)
    assert loaded(text) == tiny(text)
    with pytest.raises(FileNotFoundError, match="someorg/not-there.*offline"):
        BigBirdTokenizer.from_pretrained("someorg/not-there")


def test_from_pretrained_errors(tiny_model, tmp_path):
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty_folder.*tokenizer\.json.*spiece\.model"):
        BigBirdTokenizer.from_pretrained(empty)
    with pytest.raises(FileNotFoundError, match="does_not_exist"):
        BigBirdTokenizer.from_pretrained(tmp_path / "does_not_exist")
    (tmp_path / "vocab.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match="expected a folder"):
        BigBirdTokenizer.from_pretrained(tmp_path / "vocab.txt")
    (tmp_path / "garbage.model").write_bytes(b"\x00not a sentencepiece model" * 10)
    with pytest.raises(ValueError, match="garbage.model"):
        BigBirdTokenizer.from_pretrained(tmp_path / "garbage.model")
    with pytest.raises(ValueError, match=r"\[NOPE\]"):
        BigBirdTokenizer.from_pretrained(tiny_model, cls_token="[NOPE]")


@pytest.mark.parametrize("content", [b"{bad", b"\xff\xfe", b"[1, 2]"])
@pytest.mark.parametrize("file", ["tokenizer.json", "tokenizer_config.json"])
def test_corrupt_files_are_value_errors_naming_them(tiny, tmp_path, file, content):
    tiny.save_pretrained(tmp_path)
    (tmp_path / file).write_bytes(content)
    with pytest.raises(ValueError, match=file.replace(".", r"\.")):
        BigBirdTokenizer.from_pretrained(tmp_path)


def test_home_relative_path(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    tiny.save_pretrained(tmp_path / "tok")
    assert BigBirdTokenizer.from_pretrained("~/tok").vocab_size == tiny.vocab_size
    with pytest.raises(FileNotFoundError, match=r"'~/typo'.*does not exist"):
        BigBirdTokenizer.from_pretrained("~/typo")


@pytest.mark.parametrize("patched", ["shutil.copyfile", "pathlib.Path.write_text"])
def test_interrupted_save_keeps_the_old_files(tiny, tiny_model, tmp_path, monkeypatch, patched):
    """An interrupt while writing spiece.model or tokenizer_config.json leaves the previous files as they were."""
    import pathlib

    folder = tmp_path / "tok"
    BigBirdTokenizer.from_pretrained(tiny_model, mask_token="<unk>").save_pretrained(folder)
    before = {f.name: f.read_bytes() for f in folder.iterdir()}
    owner, name = patched.rsplit(".", 1)
    target = shutil if owner == "shutil" else pathlib.Path

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(target, name, interrupted)
    with pytest.raises(KeyboardInterrupt):
        tiny.save_pretrained(folder)
    monkeypatch.undo()
    assert {f.name: f.read_bytes() for f in folder.iterdir()} == before
    assert BigBirdTokenizer.from_pretrained(folder).special_tokens["mask_token"] == "<unk>"


def test_tensors(tiny, tiny_words):
    torch = pytest.importorskip("torch")
    np = pytest.importorskip("numpy")
    texts = _texts(tiny_words, random.Random(5))[:4]
    lists = tiny(texts, padding=True, return_token_type_ids=True)
    pt = tiny(texts, padding=True, return_token_type_ids=True, return_tensors="pt")
    assert isinstance(pt, BatchEncoding) and pt.input_ids is pt["input_ids"]
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert pt[key].dtype == torch.long and pt[key].tolist() == lists[key]
    assert pt.to("cpu")["input_ids"].equal(pt["input_ids"])
    arrays = tiny(texts, padding=True, return_tensors="np")
    assert arrays["input_ids"].dtype == np.int64 and arrays["input_ids"].tolist() == lists["input_ids"]
    single = tiny(texts[0], return_tensors="pt")
    assert single["input_ids"].shape == (1, len(tiny(texts[0])["input_ids"]))
    # decode accepts a 1-D tensor
    assert tiny.decode(single["input_ids"][0]) == tiny.decode(lists["input_ids"][0][: single["input_ids"].shape[1]])


def test_token_id_conversion(tiny):
    assert tiny.convert_tokens_to_ids(["[CLS]", "[SEP]", "[MASK]", "<pad>", "</s>", "<s>", "<unk>"]) == [
        CLS, SEP, MASK, PAD, BOS, EOS, UNK,
    ]  # fmt: skip
    assert tiny.convert_tokens_to_ids("definitely-not-a-piece") == UNK
    ids = list(range(tiny.vocab_size))
    assert tiny.convert_tokens_to_ids(tiny.convert_ids_to_tokens(ids)) == ids
    assert tiny.convert_ids_to_tokens(CLS) == "[CLS]"
    for bad in (tiny.vocab_size, -1):
        with pytest.raises(ValueError, match="out of range"):
            tiny.convert_ids_to_tokens(bad)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (([],), {}, "empty list"),
        ((123,), {}, "str or a list of str"),
        ((None,), {}, "str or a list of str"),
        ((b"bytes",), {}, "str or a list of str"),
        ((["ok", 5],), {}, r"text\[1\] must be a str"),
        (("ok", 5), {}, "text_pair"),
        ((["ok"], "no"), {}, "text_pair must be a list"),
        ((["a", "b"], ["c"]), {}, "2 items but text_pair has 1"),
        (("ok",), {"padding": "max_length"}, "needs max_length"),
        (("ok",), {"truncation": True}, "needs max_length"),
        (("ok",), {"truncation": True, "max_length": 1}, "smaller than the 2 special tokens"),
        (("ok", "pair"), {"truncation": True, "max_length": 2}, "smaller than the 3 special tokens"),
        (("ok",), {"padding": "max_length", "max_length": 1}, "smaller than the 2 special tokens"),
        (("ok",), {"padding": "bogus"}, "padding must be one of"),
        (("ok",), {"truncation": "bogus", "max_length": 5}, "truncation must be one of"),
        (("ok",), {"return_tensors": "tf"}, "return_tensors"),
        (("ok",), {"return_overflowing_tokens": True, "max_length": 5}, "needs truncation"),
        (("ok",), {"truncation": "only_second", "max_length": 5}, "needs text_pair"),
        (("ok",), {"truncation": True, "max_length": 5, "stride": -1}, "stride"),
        (("ok",), {"truncation": True, "max_length": 5.0}, "max_length must be an int"),
        ((["ok", "a b c d"],), {"return_tensors": "pt"}, "equal length"),
        (("a b", "c d"), {"truncation": True, "max_length": 9, "return_overflowing_tokens": True}, "only_first"),
    ],
)
def test_input_errors(tiny, args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny(*args, **kwargs)


def test_errors_that_depend_on_lengths(tiny, tiny_words):
    long_text = " ".join(tiny_words * 2)
    with pytest.raises(ValueError, match="stride=4 must be smaller than the 4 content tokens"):
        tiny(long_text, truncation=True, max_length=6, stride=4, return_overflowing_tokens=True)
    with pytest.raises(ValueError, match="only_second.*cannot fit"):
        tiny(long_text, "short", truncation="only_second", max_length=12)
    with pytest.raises(ValueError, match="only_first.*cannot fit"):
        tiny("short", long_text, truncation="only_first", max_length=12)
    # a text that fits needs no windows, so a large stride is fine there
    enc = tiny("kalo", truncation=True, max_length=6, stride=4, return_overflowing_tokens=True)
    assert enc["window_starts"] == [0] and enc["overflow_to_sample_mapping"] == [0] and len(enc["input_ids"]) == 1
