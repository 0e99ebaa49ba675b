"""bigbird.pipeline against transformers' pipelines on tiny random checkpoints with the tiny vocab (and
the real vocab when present): the same keys and nesting, the same values where the input fits one
window; long documents windowed; bad input refused by name."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from resources import REAL_VOCAB, REAL_VOCAB_MISSING
from test_model_utils import hf_model, transformers
from test_tokenizer import HUB_CONFIG, tiny_model, tiny_words  # noqa: F401 - fixtures

import bigbird

SEED_TEXT = "Plants create [MASK] through a process known as photosynthesis."
NER_LABELS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
TOL = 1e-4


def _checkpoint(folder, head, spiece, vocab_size, **cfg):
    """A transformers checkpoint of ``head`` with a tokenizer (``spiece`` + hub tokenizer_config.json)."""
    hf = hf_model(head, vocab_size=vocab_size, **cfg)
    hf.save_pretrained(folder)
    shutil.copyfile(spiece, folder / "spiece.model")
    (folder / "tokenizer_config.json").write_text(json.dumps(HUB_CONFIG))
    return hf


@pytest.fixture(scope="module")
def ckpts(tiny_model, tmp_path_factory):  # noqa: F811 - the fixture
    """{head: (folder, transformers model)} on the tiny vocab (320 pieces)."""
    root = tmp_path_factory.mktemp("pipelines")
    spiece = tiny_model / "spiece.model"
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the module's checkpoints; the tests draw their own inputs
        return {
            head: (root / head, _checkpoint(root / head, head, spiece, 320, **cfg))
            for head, cfg in (
                ("BigBirdForMaskedLM", {}),
                ("BigBirdForSequenceClassification", {"num_labels": 3}),
                ("BigBirdForTokenClassification", {"id2label": NER_LABELS}),
                ("BigBirdForQuestionAnswering", {}),
                ("BigBirdModel", {}),
            )
        }


def _hf_pipeline(task, folder, **kwargs):
    """transformers' pipeline, built afresh for each call: transformers' BigBird switches to full attention
    for good after a short input, so a reused model would run long inputs densely. Within one call,
    put long inputs first."""
    return lambda *args, **call_kwargs: transformers.pipeline(task, model=str(folder), **kwargs)(*args, **call_kwargs)


def _assert_same_predictions(ours: list[dict], ref: list[dict]):
    """Same keys, scores within TOL; tokens equal unless two scores are within TOL of each other."""
    assert [set(d) for d in ours] == [set(d) for d in ref]
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert abs(a["score"] - b["score"]) <= TOL * max(1.0, abs(b["score"]))
        near = [d for d in ref if abs(d["score"] - b["score"]) <= TOL * max(1.0, abs(b["score"]))]
        if len(near) == 1:
            assert {k: v for k, v in a.items() if k != "score"} == {k: v for k, v in b.items() if k != "score"}, i


def _words(tiny_words, n, rng):  # noqa: F811 - the fixture's value
    return " ".join(tiny_words[int(i)] for i in torch.randint(len(tiny_words), (n,), generator=rng))


def _seeded(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------------
# fill-mask
# ---------------------------------------------------------------------------------------------------


def test_fill_mask_matches_transformers(ckpts, tiny_words, _seed_everything):  # noqa: F811
    folder, _ = ckpts["BigBirdForMaskedLM"]
    ours, ref = bigbird.pipeline("fill-mask", model=str(folder)), _hf_pipeline("fill-mask", folder)
    rng = _seeded(_seed_everything)
    one = _words(tiny_words, 5, rng) + " [MASK] " + _words(tiny_words, 4, rng)
    long_one = _words(tiny_words, 60, rng) + " [MASK] " + _words(tiny_words, 30, rng)  # > 72 tokens: block-sparse
    two = _words(tiny_words, 3, rng) + " [MASK] " + _words(tiny_words, 3, rng) + " [MASK]."
    for text in (one, long_one, SEED_TEXT):
        got = ours(text)
        assert len(got) == 5
        _assert_same_predictions(got, ref(text))
    got, want = ours(two, top_k=3), ref(two, top_k=3)
    assert len(got) == len(want) == 2
    for a, b in zip(got, want):
        _assert_same_predictions(a, b)
    batch = ours([one, SEED_TEXT], top_k=2)
    assert len(batch) == 2 and batch[0] == ours(one, top_k=2)


def test_fill_mask_seed_example_with_the_real_vocab(tmp_path):
    if not REAL_VOCAB.is_file():
        pytest.skip(REAL_VOCAB_MISSING)
    _checkpoint(tmp_path / "real", "BigBirdForMaskedLM", REAL_VOCAB, 50358)
    got = bigbird.pipeline("fill-mask", model=tmp_path / "real")(SEED_TEXT)
    _assert_same_predictions(got, transformers.pipeline("fill-mask", model=str(tmp_path / "real"))(SEED_TEXT))
    assert all(d["sequence"].startswith("Plants create") and d["sequence"].endswith("photosynthesis.") for d in got)


def test_fill_mask_long_document_is_windowed(ckpts, tiny_words, _seed_everything):  # noqa: F811
    folder, _ = ckpts["BigBirdForMaskedLM"]
    windowed = bigbird.pipeline("fill-mask", model=folder, max_length=64, stride=8)
    rng = _seeded(_seed_everything)
    text = _words(tiny_words, 50, rng) + " [MASK] " + _words(tiny_words, 150, rng) + " [MASK] " + _words(tiny_words, 20, rng)
    content = windowed.tokenizer.encode(text, add_special_tokens=False)
    assert len(content) > 3 * 64  # several windows
    got = windowed(text, top_k=2)
    assert len(got) == 2 and all(len(row) == 2 for row in got)
    # each mask is predicted from the window where it is most central: the same as a window cut there
    windows = windowed._windows(content)
    central = windowed._central(windows, len(content))
    masks = [j for j, t in enumerate(content) if t == windowed.tokenizer.mask_token_id]
    for j, row in zip(masks, got):
        _, start, stop, _ = windows[central[j]]
        piece = windowed.tokenizer.decode(content[start:stop])
        alone = windowed(piece, top_k=2)
        alone = alone if isinstance(alone[0], dict) else alone[sum(1 for m in masks if start <= m < j)]
        assert [d["token"] for d in row] == [d["token"] for d in alone]
        torch.testing.assert_close([d["score"] for d in row], [d["score"] for d in alone], atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------
# text-classification
# ---------------------------------------------------------------------------------------------------


def test_text_classification_matches_transformers(ckpts, tiny_words, _seed_everything):  # noqa: F811
    folder, _ = ckpts["BigBirdForSequenceClassification"]
    ours = bigbird.pipeline("text-classification", model=folder)
    ref = _hf_pipeline("text-classification", folder)
    rng = _seeded(_seed_everything)
    texts = [_words(tiny_words, 90, rng), _words(tiny_words, 8, rng)]  # long first (see _hf_pipeline)
    cases = [((texts[0],), {}), ((texts,), {}), ((texts[0],), {"top_k": None}), ((texts,), {"top_k": 2}),
             ((texts[1],), {"top_k": 1}), ((texts[0],), {"top_k": None, "function_to_apply": "sigmoid"}),
             ((texts[0],), {"top_k": None, "function_to_apply": "none"})]
    for args, kwargs in cases:
        got, want = ours(*args, **kwargs), ref(*args, **kwargs)
        assert type(got) is type(want) and len(got) == len(want), kwargs
        flat = lambda x: [d for r in x for d in (r if isinstance(r, list) else [r])]  # noqa: E731
        for a, b in zip(flat(got), flat(want)):
            assert set(a) == set(b) == {"label", "score"}
            assert abs(a["score"] - b["score"]) <= TOL
    assert bigbird.pipeline("sentiment-analysis", model=folder)(texts[0])[0]["label"] in ("LABEL_0", "LABEL_1", "LABEL_2")


def test_text_classification_long_document_averages_window_logits(ckpts, tiny_words, _seed_everything):  # noqa: F811
    folder, _ = ckpts["BigBirdForSequenceClassification"]
    p = bigbird.pipeline("text-classification", model=folder, max_length=48, stride=4)
    text = _words(tiny_words, 120, _seeded(_seed_everything))
    windows = p._windows(p.tokenizer.encode(text, add_special_tokens=False))
    assert len(windows) > 2
    with torch.no_grad():
        logits = torch.stack([p.model(input_ids=torch.tensor([w[0]])).logits[0] for w in windows]).mean(0)
    got = p(text, top_k=None, function_to_apply="none")
    assert sorted(d["score"] for d in got) == pytest.approx(sorted(logits.tolist()), abs=1e-5)


# ---------------------------------------------------------------------------------------------------
# token-classification
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["none", "simple"])
def test_token_classification_matches_transformers(strategy, ckpts, tiny_words, _seed_everything, monkeypatch):  # noqa: F811
    folder, hf = ckpts["BigBirdForTokenClassification"]
    ours = bigbird.pipeline("token-classification", model=folder)
    # transformers' post-processing on exactly our logits (the models agree to ~1e-6; a near tie between
    # two labels must not decide the test), so every field can be compared
    from transformers.modeling_outputs import TokenClassifierOutput

    def our_forward(input_ids=None, attention_mask=None, **_):
        return TokenClassifierOutput(logits=ours.model(input_ids=input_ids, attention_mask=attention_mask).logits)

    monkeypatch.setattr(hf, "forward", our_forward)
    ref = transformers.pipeline("token-classification", model=hf, tokenizer=str(folder))
    rng = _seeded(_seed_everything)
    text = _words(tiny_words, 12, rng).capitalize() + ", " + _words(tiny_words, 6, rng) + " ☃ 日本 [MASK] 42."
    got, want = ours(text, aggregation_strategy=strategy), ref(text, aggregation_strategy=strategy)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert set(a) == set(b)
        assert {k: v for k, v in a.items() if k != "score"} == {k: v for k, v in b.items() if k != "score"}
        assert abs(a["score"] - float(b["score"])) <= 1e-5
    everything = ours(text, ignore_labels=[])
    assert len(everything) == len(ours.tokenizer.encode(text, add_special_tokens=False))
    assert ours(text, aggregation_strategy=strategy, ignore_labels=[]) == [
        {**d, "score": pytest.approx(float(d["score"]), abs=1e-5)} for d in ref(text, aggregation_strategy=strategy, ignore_labels=[])
    ]


def test_token_classification_end_to_end_scores_and_long_documents(ckpts, tiny_words, _seed_everything):  # noqa: F811
    folder, _ = ckpts["BigBirdForTokenClassification"]
    ours = bigbird.pipeline("ner", model=folder)
    ref = _hf_pipeline("token-classification", folder)
    text = _words(tiny_words, 30, _seeded(_seed_everything))
    got, want = ours(text, ignore_labels=[]), ref(text, ignore_labels=[])
    assert [(d["index"], d["start"], d["end"], d["word"]) for d in got] == [(d["index"], d["start"], d["end"], d["word"]) for d in want]
    windowed = bigbird.pipeline("token-classification", model=folder, max_length=40, stride=6)
    long_text = _words(tiny_words, 150, _seeded(_seed_everything + 1))
    entities = windowed(long_text, ignore_labels=[])
    n = len(windowed.tokenizer.encode(long_text, add_special_tokens=False))
    assert [d["index"] for d in entities] == list(range(1, n + 1))
    assert all(long_text[d["start"]:d["end"]].strip() for d in entities)
    with pytest.raises(ValueError, match="aggregation_strategy='first' is not supported"):
        ours(text, aggregation_strategy="first")


# ---------------------------------------------------------------------------------------------------
# question-answering
# ---------------------------------------------------------------------------------------------------


def _qa_oracle(hf, tok, question, context, max_answer_len=15):
    """transformers 4.x's question-answering rule on the transformers model: p(start) * p(end), softmax
    over [CLS] and the context tokens, the best span of at most max_answer_len tokens."""
    enc = tok(question, context, return_offsets_mapping=True, return_tensors="pt")
    seq = enc.sequence_ids(0)
    with torch.no_grad():
        out = hf(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    keep = torch.tensor([i == 0 or s == 1 for i, s in enumerate(seq)])
    ps = out.start_logits[0].double().masked_fill(~keep, -1e4).softmax(-1)
    pe = out.end_logits[0].double().masked_fill(~keep, -1e4).softmax(-1)
    ps[0] = pe[0] = 0
    scores = torch.triu(torch.outer(ps, pe)).tril(max_answer_len - 1)
    best = int(scores.argmax())
    i, j = divmod(best, scores.shape[1])
    offsets = enc["offset_mapping"][0]
    return float(scores[i, j]), int(offsets[i][0]), int(offsets[j][1])


def test_question_answering_matches_the_transformers_rule(ckpts, tiny_words, _seed_everything):  # noqa: F811
    folder, hf = ckpts["BigBirdForQuestionAnswering"]
    qa = bigbird.pipeline("question-answering", model=folder)
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    rng = _seeded(_seed_everything)
    question, context = _words(tiny_words, 4, rng) + "?", _words(tiny_words, 40, rng) + "."
    got = qa(question=question, context=context)
    assert set(got) == {"score", "start", "end", "answer"}
    score, start, end = _qa_oracle(hf, tok, question, context)
    assert got["score"] == pytest.approx(score, rel=1e-3)
    assert got["end"] == end and got["answer"] == context[got["start"]:got["end"]] == context[start:end].strip()
    assert qa({"question": question, "context": context}) == got
    assert qa([{"question": question, "context": context}] * 2) == [got, got]
    top = qa(question=question, context=context, top_k=3)
    assert len(top) == 3 and top[0] == got and top[0]["score"] >= top[1]["score"] >= top[2]["score"]
    assert all(d["end"] - d["start"] <= len(context) for d in top)


def test_question_answering_long_context_is_windowed(ckpts, tiny_words, _seed_everything):  # noqa: F811
    folder, _ = ckpts["BigBirdForQuestionAnswering"]
    qa = bigbird.pipeline("question-answering", model=folder, max_length=48, stride=8)
    rng = _seeded(_seed_everything)
    question, context = _words(tiny_words, 3, rng), _words(tiny_words, 200, rng)
    got = qa(question=question, context=context, top_k=2, max_answer_len=4)
    assert len(got) == 2 and all(0 <= d["start"] < d["end"] <= len(context) for d in got)
    assert all(len(qa.tokenizer.encode(d["answer"], add_special_tokens=False)) <= 5 for d in got)
    with pytest.raises(ValueError, match="question-answering needs question= and context="):
        qa(question=question)
    with pytest.raises(ValueError, match="leaving no room for the context"):
        qa(question=_words(tiny_words, 60, rng), context=context)


# ---------------------------------------------------------------------------------------------------
# feature-extraction
# ---------------------------------------------------------------------------------------------------


def test_feature_extraction_matches_transformers(ckpts, tiny_words, _seed_everything):  # noqa: F811
    folder, _ = ckpts["BigBirdModel"]
    ours = bigbird.pipeline("feature-extraction", model=folder)
    ref = _hf_pipeline("feature-extraction", folder)
    rng = _seeded(_seed_everything)
    texts = [_words(tiny_words, 90, rng), _words(tiny_words, 6, rng)]  # long first (see _hf_pipeline)
    for got, want in zip(ours(texts), ref(texts)):
        assert len(got) == len(want) == 1 and len(got[0]) == len(want[0]) and len(got[0][0]) == len(want[0][0]) == 32
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), atol=TOL, rtol=TOL)
    tensor = ours(texts[0], return_tensors=True)
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (1, len(ours.tokenizer.encode(texts[0])), 32)


def test_feature_extraction_long_document_takes_each_token_from_its_central_window(ckpts, tiny_words, _seed_everything):  # noqa: F811
    folder, _ = ckpts["BigBirdModel"]
    p = bigbird.pipeline("feature-extraction", model=folder, max_length=40, stride=10)
    text = _words(tiny_words, 100, _seeded(_seed_everything))
    content = p.tokenizer.encode(text, add_special_tokens=False)
    out = p(text, return_tensors=True)
    assert out.shape == (1, len(content) + 2, 32)
    windows = p._windows(content)
    central = p._central(windows, len(content))
    with torch.no_grad():
        hidden = [p.model(input_ids=torch.tensor([w[0]])).last_hidden_state[0] for w in windows]
    for j in (0, len(content) // 2, len(content) - 1):
        _, start, _, offset = windows[central[j]]
        torch.testing.assert_close(out[0, j + 1], hidden[central[j]][offset + j - start])
    torch.testing.assert_close(out[0, 0], hidden[0][0])


# ---------------------------------------------------------------------------------------------------
# construction and bad input
# ---------------------------------------------------------------------------------------------------


def test_pipeline_construction_and_errors(ckpts):
    folder, _ = ckpts["BigBirdForMaskedLM"]
    model = bigbird.BigBirdForMaskedLM.from_pretrained(folder)
    tok = bigbird.AutoTokenizer.from_pretrained(folder)
    p = bigbird.pipeline("fill-mask", model=model, tokenizer=tok, device="cpu")
    assert p.model is model and p.tokenizer is tok and p.max_length == 512
    assert bigbird.pipeline("fill-mask", model=folder, torch_dtype="bfloat16").model.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown task 'summarization'"):
        bigbird.pipeline("summarization", model=folder)
    with pytest.raises(ValueError, match="needs model="):
        bigbird.pipeline("fill-mask")
    with pytest.raises(ValueError, match="pass tokenizer="):
        bigbird.pipeline("fill-mask", model=model)
    with pytest.raises(ValueError, match="needs a BigBirdForSequenceClassification, got BigBirdForMaskedLM"):
        bigbird.pipeline("text-classification", model=model, tokenizer=tok)
    with pytest.raises(ValueError, match=r"max_length must be an int in \[3, 512\]"):
        bigbird.pipeline("fill-mask", model=model, tokenizer=tok, max_length=1024)
    with pytest.raises(ValueError, match="has no \\[MASK\\] token"):
        p("no mask here")
    with pytest.raises(ValueError, match="takes a str or a non-empty list of str"):
        p(42)
    with pytest.raises(ValueError, match="top_k must be a positive int"):
        p("a [MASK]", top_k=0)
    with pytest.raises(TypeError):
        bigbird.pipeline("fill-mask", model=folder, trust_remote_code=True)
