"""The ``bigbird`` command end to end on a tiny model (CPU).

A tiny SentencePiece vocab is trained here (BigBird's special-token ids: [CLS] 65, [SEP] 66,
[MASK] 67), a 2-layer BigBird (hidden 32, 4 heads, block 8, r 1, 256 positions; rows longer than 56
tokens run block-sparse attention) is saved per task head, and every subcommand is driven through
``main([...])`` (one run through a subprocess, one under ``torchrun`` with two gloo processes).

Windowed results are checked against direct runs: the documents are made of words that are single
tokens, so the text of any window re-tokenizes to exactly that window's tokens and can be run on its
own. The real-vocabulary demo (the GNU GPL v3 through the base configuration) is gated by
``BIGBIRD_RUN_SLOW=1``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from resources import REAL_VOCAB

from bigbird.cli import main
from bigbird.inference import InputError, plan_batches, window_spans

ROOT = Path(__file__).resolve().parents[1]
GPL = Path("/usr/share/common-licenses/GPL-3")

SYLLABLES = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "bo", "fe", "gu", "ha", "jo", "ze", "wa", "py", "qu", "xi", "vo"]
MAX_POS = 256
BLOCK = 8  # with r = 1, rows of more than (5 + 2) * 8 = 56 tokens run block-sparse attention


# ------------------------------------------------------------------------------------------------
# fixtures: a tiny vocab, tiny checkpoints, documents of single-token words
# ------------------------------------------------------------------------------------------------


def _user_symbols() -> list[str]:
    """98 user-defined pieces after <pad> 0 and </s> 1: [CLS]/[SEP]/[MASK] land on 65/66/67, <unk> on 100."""
    symbols = ["<s>"] + [f"<sep_{i}>" for i in range(5)]
    symbols += [f"<unused_{i}>" for i in range(63 - len(symbols))]
    symbols += ["[CLS]", "[SEP]", "[MASK]"]
    symbols += [f"<unused_{i}>" for i in range(60, 60 + 98 - len(symbols))]
    return symbols


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    spm = pytest.importorskip("sentencepiece")
    work = tmp_path_factory.mktemp("cli_spm")
    rng = random.Random(7)
    words = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(300)]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) + rng.choice([".", ",", "?", ""])
             for _ in range(1500)]
    (work / "corpus.txt").write_text("\n".join(lines), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(work / "corpus.txt"), model_prefix=str(work / "m"), model_type="unigram", vocab_size=300,
        pad_id=0, eos_id=1, bos_id=-1, unk_id=100, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        user_defined_symbols=_user_symbols(), normalization_rule_name="identity", minloglevel=2, num_threads=1)
    folder = work / "tok"
    folder.mkdir()
    shutil.move(str(work / "m.model"), folder / "spiece.model")
    return folder


@pytest.fixture(scope="module")
def tok(tok_dir):
    from bigbird.tokenizer import BigBirdTokenizer

    t = BigBirdTokenizer.from_pretrained(tok_dir)
    assert (t.cls_token_id, t.sep_token_id, t.mask_token_id) == (65, 66, 67)
    return t


@pytest.fixture(scope="module")
def words(tok) -> list[str]:
    """Words that are exactly one token, so any run of them re-tokenizes to the same ids."""
    found = []
    for piece, _ in sorted(tok.backend.get_vocab().items(), key=lambda kv: kv[1]):
        w = piece[1:]
        if piece.startswith("\u2581") and len(w) >= 2 and w.isalpha() and tok.tokenize(w) == [piece]:
            found.append(w)
    assert len(found) >= 20, found
    return found


def _tiny_config(tok, **kw):
    from bigbird import BigBirdConfig

    cfg = dict(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=64, max_position_embeddings=MAX_POS, block_size=BLOCK, num_random_blocks=1,
               sep_token_id=tok.sep_token_id, initializer_range=0.2, hidden_dropout_prob=0.0,
               attention_probs_dropout_prob=0.0)
    cfg.update(kw)
    return BigBirdConfig(**cfg)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tok):
    """Checkpoint folders (with the tokenizer) for each task head: mlm, cls (3 labels), qa."""
    from bigbird import BigBirdForMaskedLM, BigBirdForQuestionAnswering, BigBirdForSequenceClassification

    root = tmp_path_factory.mktemp("cli_ckpt")
    out = {}
    for name, cls, kw in (("mlm", BigBirdForMaskedLM, {}),
                          ("cls", BigBirdForSequenceClassification,
                           {"id2label": {0: "neg", 1: "neu", 2: "pos"}}),
                          ("qa", BigBirdForQuestionAnswering, {})):
        torch.manual_seed(len(out))
        model = cls(_tiny_config(tok, **kw)).eval()
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        out[name] = str(root / name)
    return out


def _doc(words, n, seed, masks=()) -> list[str]:
    rng = random.Random(seed)
    units = [rng.choice(words) for _ in range(n)]
    for i in masks:
        units[i] = "[MASK]"
    return units


def _text(units) -> str:
    return " ".join(units)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("BIGBIRD_DEBUG", raising=False)
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def records(capsys, *argv) -> list[dict]:
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


def _close(a, b, tol=2e-5):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    assert a.shape == b.shape
    err = (a - b).abs().max().item()
    assert err <= tol * (1 + b.abs().max().item()), f"max |diff| {err}"


# ------------------------------------------------------------------------------------------------
# help and the pure helpers
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [[], ["fill-mask"], ["embed"], ["classify"], ["qa"], ["tokens"], ["bench"],
                                  ["bench", "attention"], ["bench", "model"], ["info"]])
def test_help(capsys, argv):
    code, out, err = run_cli(capsys, *argv, "--help")
    assert code == 0 and out.startswith("usage: bigbird"), err


def test_usage_error_is_one_line(capsys):
    code, out, err = run_cli(capsys, "fill-mask", "--text", "x")  # no --model
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "--model" in err


@pytest.mark.parametrize("n,size,stride", [(0, 5, 1), (5, 5, 2), (6, 5, 0), (23, 7, 3), (100, 10, 9), (61, 30, 0)])
def test_window_spans_cover_and_overlap(n, size, stride):
    spans = window_spans(n, size, stride)
    assert spans[0][0] == 0 and spans[-1][1] == n
    for (s, e) in spans:
        assert e - s == min(size, n)
    for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
        assert s0 < s1 and e1 - s1 > 0 and e0 - s1 >= stride  # consecutive windows share >= stride tokens
    with pytest.raises(InputError):
        window_spans(10, 4, 4)


def test_plan_batches_sorted_grouped_and_complete():
    lengths = [5, 70, 12, 71, 80, 3, 69, 5]
    key = lambda n: -1 if n <= 56 else -(-n // 8)  # noqa: E731
    batches = plan_batches(lengths, 3, key)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 3 and len({key(lengths[i]) for i in b}) == 1
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat, reverse=True)


# ------------------------------------------------------------------------------------------------
# tokens
# ------------------------------------------------------------------------------------------------


def test_tokens(capsys, ckpt, tok, words, tmp_path):
    texts = [_text(_doc(words, 10, 1)), _text(_doc(words, 300, 2))]  # the second is longer than the model
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text(json.dumps({"id": "a", "text": texts[0]}) + "\n\n" + json.dumps({"body": texts[1], "id": 7}))
    code, _, err = run_cli(capsys, "tokens", "--model", ckpt["mlm"], "--jsonl", jsonl)
    assert code != 0 and "no field 'text'" in err and len(err.strip().splitlines()) == 1
    jsonl.write_text(json.dumps({"id": "a", "text": texts[0]}) + "\n\n" + json.dumps({"text": texts[1], "id": 7}))
    f = tmp_path / "doc.txt"
    f.write_text(texts[1], encoding="utf-8")
    recs = records(capsys, "tokens", "--model", ckpt["mlm"], "--text", texts[0], "--file", f, "--jsonl", jsonl)
    assert [r["index"] for r in recs] == [0, 1, 2, 3]
    assert [r["source"] for r in recs] == ["text[0]", str(f), f"{jsonl}:1", f"{jsonl}:3"]
    assert recs[2]["id"] == "a" and recs[3]["id"] == 7
    for r, t in zip(recs, [texts[0], texts[1], texts[0], texts[1]]):
        assert r["ids"] == tok.encode(t) and r["num_tokens"] == len(r["ids"])
        assert r["tokens"] == tok.convert_ids_to_tokens(r["ids"])
    assert recs[1]["num_tokens"] == 302 > MAX_POS  # whole document, never windowed


# ------------------------------------------------------------------------------------------------
# fill-mask
# ------------------------------------------------------------------------------------------------


def test_fill_mask_schema(capsys, ckpt, tok, words, tmp_path):
    text = _text(_doc(words, 12, 3, masks=(4,)))
    out = tmp_path / "out.jsonl"
    code, stdout, _ = run_cli(capsys, "fill-mask", "--model", ckpt["mlm"], "--text", text, "--top-k", 4,
                              "--output", out, "--backend", "reference")
    assert code == 0 and stdout == ""
    (rec,) = [json.loads(line) for line in out.read_text().splitlines()]
    ids = tok.encode(text)
    assert rec["num_tokens"] == len(ids) and rec["num_windows"] == 1
    (m,) = rec["masks"]
    assert ids[m["position"]] == tok.mask_token_id and m["window"] == 0
    preds = m["predictions"]
    assert len(preds) == 4
    assert set(preds[0]) == {"token_id", "token", "text", "score"}
    scores = [p["score"] for p in preds]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6
    for p in preds:
        assert p["token"] == tok.convert_ids_to_tokens(p["token_id"])


def test_fill_mask_windowed_equals_direct(capsys, ckpt, tok, words):
    """Each mask of a long document is predicted from its most central window, exactly as a direct
    run on that window's text predicts it (windows of 64 > 56 tokens: block-sparse attention)."""
    masks = (3, 40, 61, 90, 150, 199)
    units = _doc(words, 200, 4, masks=masks)
    text = _text(units)
    content = tok.encode(text, add_special_tokens=False)
    max_len, stride = 64, 20
    spans = window_spans(len(content), max_len - 2, stride)
    (rec,) = records(capsys, "fill-mask", "--model", ckpt["mlm"], "--text", text, "--max-length", max_len,
                     "--stride", stride, "--batch-size", 3, "--top-k", 3)
    assert rec["num_windows"] == len(spans) > 3
    positions = [j for j, t in enumerate(content) if t == tok.mask_token_id]
    assert [m["position"] for m in rec["masks"]] == [j + 1 for j in positions]
    for m, j in zip(rec["masks"], positions):
        # the most central window (ties: the first)
        best = max(range(len(spans)), key=lambda w: (min(j - spans[w][0], spans[w][1] - 1 - j)
                                                     if spans[w][0] <= j < spans[w][1] else -1, -w))
        assert m["window"] == best
        s, e = spans[best]
        window_text = tok.decode(content[s:e])
        assert tok.encode(window_text, add_special_tokens=False) == content[s:e]
        (direct,) = records(capsys, "fill-mask", "--model", ckpt["mlm"], "--text", window_text, "--top-k", 3)
        (dm,) = [x for x in direct["masks"] if x["position"] == j - s + 1]
        assert [p["token_id"] for p in m["predictions"]][:1] == [p["token_id"] for p in dm["predictions"]][:1]
        _close([p["score"] for p in m["predictions"]], [p["score"] for p in dm["predictions"]])


# ------------------------------------------------------------------------------------------------
# embed and classify
# ------------------------------------------------------------------------------------------------


def _window_texts(tok, text, max_len, stride, prefix=0):
    content = tok.encode(text, add_special_tokens=False)
    spans = window_spans(len(content), max_len - 2 - prefix, stride)
    return spans, [tok.decode(content[s:e]) for s, e in spans]


@pytest.mark.parametrize("pooling", ["pooled", "mean"])
def test_embed_windowed_equals_weighted_direct(capsys, ckpt, tok, words, pooling):
    text = _text(_doc(words, 150, 5))
    max_len, stride = 72, 30
    spans, wtexts = _window_texts(tok, text, max_len, stride)
    (rec,) = records(capsys, "embed", "--model", ckpt["mlm"], "--text", text, "--max-length", max_len,
                     "--stride", stride, "--pooling", pooling)
    assert rec["num_windows"] == len(spans) > 2 and rec["pooling"] == pooling
    assert rec["dim"] == 32 == len(rec["embedding"])
    direct = records(capsys, "embed", "--model", ckpt["mlm"], *sum((["--text", t] for t in wtexts), []),
                     "--batch-size", 1, "--pooling", pooling)
    weights = torch.tensor([e - s + 2 for s, e in spans], dtype=torch.float64)
    vecs = torch.tensor([d["embedding"] for d in direct], dtype=torch.float64)
    _close(rec["embedding"], (vecs * weights[:, None]).sum(0) / weights.sum())


def test_embed_does_not_depend_on_batching(capsys, ckpt, words):
    """Short (full attention) and long (block-sparse) documents batched together give what each gives alone."""
    texts = [_text(_doc(words, n, 10 + n)) for n in (20, 90, 100, 33, 97, 200, 60)]
    args = sum((["--text", t] for t in texts), [])
    together = records(capsys, "embed", "--model", ckpt["mlm"], *args, "--batch-size", 4, "--pooling", "mean")
    alone = records(capsys, "embed", "--model", ckpt["mlm"], *args, "--batch-size", 1, "--pooling", "mean")
    assert [r["index"] for r in together] == list(range(len(texts)))
    for a, b in zip(together, alone):
        assert a["num_tokens"] == b["num_tokens"]
        _close(a["embedding"], b["embedding"])


def test_embed_mean_from_a_checkpoint_without_pooler(capsys, ckpt, words):
    (rec,) = records(capsys, "embed", "--model", ckpt["qa"], "--text", _text(_doc(words, 12, 12)), "--pooling", "mean")
    assert rec["dim"] == 32 and all(isinstance(x, float) for x in rec["embedding"])


def test_classify_windowed_equals_mean_of_direct(capsys, ckpt, tok, words):
    short = _text(_doc(words, 30, 6))
    long = _text(_doc(words, 400, 7))  # longer than the model's 256 positions: windowed by default
    recs = records(capsys, "classify", "--model", ckpt["cls"], "--text", short, "--text", long)
    for r in recs:
        assert set(r) >= {"index", "source", "num_tokens", "num_windows", "logits", "probabilities", "label_id",
                          "label", "score"}
        assert len(r["logits"]) == 3 and abs(sum(r["probabilities"]) - 1) < 1e-5
        assert r["label"] == ["neg", "neu", "pos"][r["label_id"]]
    assert recs[0]["num_windows"] == 1 and recs[1]["num_windows"] > 1
    spans, wtexts = _window_texts(tok, long, MAX_POS, MAX_POS // 4 - 1)  # the default stride: a quarter
    assert recs[1]["num_windows"] == len(spans)
    direct = records(capsys, "classify", "--model", ckpt["cls"], *sum((["--text", t] for t in wtexts), []))
    _close(recs[1]["logits"], torch.tensor([d["logits"] for d in direct]).double().mean(0))
    (alone,) = records(capsys, "classify", "--model", ckpt["cls"], "--text", short, "--max-length", 128,
                       "--stride", 100)
    _close(recs[0]["logits"], alone["logits"])  # one window either way: windowing options change nothing


# ------------------------------------------------------------------------------------------------
# question answering
# ------------------------------------------------------------------------------------------------


def test_qa_best_span_over_windows(capsys, ckpt, tok, words, tmp_path):
    question = _text(_doc(words, 5, 8))
    text = _text(_doc(words, 160, 9))
    max_len, stride = 80, 16
    qlen = len(tok.encode(question, add_special_tokens=False))
    spans, wtexts = _window_texts(tok, text, max_len, stride, prefix=qlen + 1)
    jsonl = tmp_path / "qa.jsonl"
    jsonl.write_text(json.dumps({"text": text, "id": "x"}) + "\n" + json.dumps({"text": text, "question": "ka lo"}))
    recs = records(capsys, "qa", "--model", ckpt["qa"], "--jsonl", jsonl, "--question", question,
                   "--max-length", max_len, "--stride", stride, "--max-answer-length", 5)
    rec = recs[0]
    assert recs[1]["question"] == "ka lo" and rec["question"] == question and rec["id"] == "x"
    assert rec["num_windows"] == len(spans) > 2
    assert 1 <= rec["start"] <= rec["end"] < rec["start"] + 5 and rec["end"] <= rec["num_tokens"] - 2
    assert rec["answer"] == text[rec["start_char"]:rec["end_char"]].strip()
    content = tok.encode(text, add_special_tokens=False)
    assert tok.decode(content[rec["start"] - 1:rec["end"]]).strip() == rec["answer"]
    direct = records(capsys, "qa", "--model", ckpt["qa"], "--question", question, "--max-answer-length", 5,
                     *sum((["--text", t] for t in wtexts), []))
    best = max(range(len(direct)), key=lambda w: direct[w]["score"])
    assert rec["window"] == best
    assert abs(rec["score"] - direct[best]["score"]) < 1e-4
    assert (rec["start"], rec["end"]) == (direct[best]["start"] + spans[best][0], direct[best]["end"] + spans[best][0])


# ------------------------------------------------------------------------------------------------
# processes: python -m bigbird, torchrun
# ------------------------------------------------------------------------------------------------


def _env(**extra):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("BIGBIRD_DEBUG", None)
    env.update(extra)
    return env


def test_subprocess_python_m_bigbird(ckpt, words, tmp_path):
    text = _text(_doc(words, 20, 11, masks=(5,)))
    proc = subprocess.run([sys.executable, "-m", "bigbird", "fill-mask", "--model", ckpt["mlm"], "--text", text,
                           "--top-k", "2"], capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (rec,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rec["masks"]) == 1 and len(rec["masks"][0]["predictions"]) == 2
    bad = subprocess.run([sys.executable, "-m", "bigbird", "fill-mask", "--model", ckpt["mlm"], "--text", "no mask"],
                         capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=120)
    assert bad.returncode == 1 and bad.stdout == ""
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
    debug = subprocess.run([sys.executable, "-m", "bigbird", "fill-mask", "--model", ckpt["mlm"], "--text", "no"],
                           capture_output=True, text=True, env=_env(BIGBIRD_DEBUG="1"), cwd=tmp_path, timeout=120)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "InputError" in debug.stderr


def test_torchrun_two_gloo_processes_equal_single_process(capsys, ckpt, words, tmp_path):
    """Two processes give the records of one, chunk by chunk, resuming the partial output of a single-process run."""
    texts = [_text(_doc(words, n, 20 + n)) for n in (15, 120, 300, 40, 75, 30, 90)]
    args = ["embed", "--model", ckpt["mlm"], "--pooling", "mean", "--max-length", 96, "--batch-size", 2,
            "--chunk-size", 2, *sum((["--text", t] for t in texts), [])]
    single = records(capsys, *args)
    out = tmp_path / "dist.jsonl"
    (tmp_path / "dist.jsonl.partial").write_text("".join(json.dumps(r) + "\n" for r in single[:2]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "bigbird", *map(str, args), "--output", str(out), "--no-progress", "--resume"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert proc.stdout.strip() == ""  # rank 0 wrote the file, nobody printed records
    dist = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in dist] == list(range(len(texts))) and not (tmp_path / "dist.jsonl.partial").exists()
    for a, b in zip(dist, single):
        assert (a["source"], a["num_tokens"], a["num_windows"]) == (b["source"], b["num_tokens"], b["num_windows"])
        _close(a["embedding"], b["embedding"])


def test_torchrun_failure_on_one_rank_stops_every_rank(ckpt, tmp_path):
    """A document without [MASK] lands on rank 1 only: no rank hangs, rank 0 reports it in one line."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "bigbird",
           "fill-mask", "--model", ckpt["mlm"], "--text", "ka [MASK] lo", "--text", "ka lo mi"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=180)
    assert proc.returncode != 0 and proc.stdout == ""
    ours = [line for line in proc.stderr.splitlines() if line.startswith("bigbird ") and "error:" in line]
    assert ours == ["bigbird fill-mask: error: rank 1 failed: InputError: text[1] has no [MASK] token to fill"]
    assert "[rank0]" not in proc.stderr and "[rank1]" not in proc.stderr  # no worker traceback (torchrun's own remains)


# ------------------------------------------------------------------------------------------------
# bad input: one line on stderr, non-zero exit, no traceback
# ------------------------------------------------------------------------------------------------


def _bad_cases(ckpt, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    no_ckpt = tmp_path / "not_a_checkpoint"
    no_ckpt.mkdir(exist_ok=True)
    (no_ckpt / "notes.txt").write_text("hello")
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "ok"}\n{oops\n')
    m = ckpt["mlm"]
    return {
        "missing file": (["embed", "--model", m, "--file", tmp_path / "nope.txt"], "does not exist"),
        "dir without checkpoint": (["embed", "--model", no_ckpt, "--text", "ka"], "no checkpoint"),
        "missing model dir": (["embed", "--model", tmp_path / "nope", "--text", "ka"], "does not exist"),
        "hub id offline": (["embed", "--model", "no-such-org/no-such-bigbird", "--text", "ka"], "HF_HUB_OFFLINE"),
        "no mask": (["fill-mask", "--model", m, "--text", "ka lo mi"], "[MASK]"),
        "empty file": (["classify", "--model", ckpt["cls"], "--file", empty], "empty"),
        "bad backend": (["embed", "--model", m, "--text", "ka", "--backend", "warp-drive"], "unknown backend"),
        "backend unusable here": (["embed", "--model", m, "--text", "ka", "--backend", "triton"], "cannot run"),
        "bad jsonl": (["embed", "--model", m, "--jsonl", bad_json], "bad.jsonl:2"),
        "no input": (["embed", "--model", m], "no input"),
        "no question": (["qa", "--model", ckpt["qa"], "--text", "ka lo"], "question"),
        "max-length too big": (["embed", "--model", m, "--text", "ka", "--max-length", 100000], "positions"),
        "stride too big": (["embed", "--model", m, "--text", "ka " * 80, "--max-length", 20, "--stride", 18],
                           "stride"),
        "bad dtype": (["embed", "--model", m, "--text", "ka", "--dtype", "float8"], "dtype"),
        "no cuda": (["embed", "--model", m, "--text", "ka", "--device", "cuda:0"], "CUDA"),
        "bad bench backend": (["bench", "attention", "--backends", "nope", "--no-save"], "unknown benchmark backend"),
        "pooled without pooler": (["embed", "--model", ckpt["qa"], "--text", "ka", "--pooling", "pooled"], "pooler"),
        "output dir missing": (["embed", "--model", m, "--text", "ka", "--output", tmp_path / "no" / "o.jsonl"],
                               "does not exist"),
    }


_BAD = ["missing file", "dir without checkpoint", "missing model dir", "hub id offline", "no mask", "empty file",
        "bad backend", "backend unusable here", "bad jsonl", "no input", "no question", "max-length too big",
        "stride too big", "bad dtype", "no cuda", "bad bench backend", "pooled without pooler", "output dir missing"]


@pytest.mark.parametrize("case", _BAD)
def test_bad_input_one_line_error(capsys, ckpt, tmp_path, case):
    argv, needle = _bad_cases(ckpt, tmp_path)[case]
    if case == "no cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    code, out, err = run_cli(capsys, *argv)
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bigbird ") and "error:" in lines[0], err
    assert needle in lines[0]


def test_debug_env_shows_traceback(capsys, ckpt, monkeypatch):
    monkeypatch.setenv("BIGBIRD_DEBUG", "1")
    code, _, err = run_cli(capsys, "fill-mask", "--model", ckpt["mlm"], "--text", "ka lo")
    assert code == 1 and "Traceback" in err and err.strip().splitlines()[-1].startswith("bigbird fill-mask: error:")


def test_progress_bar_only_with_several_batches(capsys, ckpt, words):
    texts = sum((["--text", _text(_doc(words, 10, i))] for i in range(3)), [])
    _, _, err = run_cli(capsys, "embed", "--model", ckpt["mlm"], *texts, "--batch-size", 1)
    assert "/3" in err and "embed" in err  # tqdm (or the fallback counter) over 3 batches
    _, _, err = run_cli(capsys, "embed", "--model", ckpt["mlm"], *texts, "--batch-size", 8)
    assert err == ""


def test_progress_fallback_without_tqdm(capsys, ckpt, words, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm now raises ImportError
    texts = sum((["--text", _text(_doc(words, 10, i))] for i in range(3)), [])
    _, _, err = run_cli(capsys, "embed", "--model", ckpt["mlm"], *texts, "--batch-size", 1)
    assert "3/3 batches" in err and err.endswith("\n")


# ------------------------------------------------------------------------------------------------
# bench and info
# ------------------------------------------------------------------------------------------------


def test_bench_attention_writes_json_and_png(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.image

    code, out, err = run_cli(capsys, "bench", "attention", "--seq-lens", 256, 512, "--heads", 2, "--backends",
                             "reference", "sdpa", "--quick", "--block-size", 64, "--reps", 1,
                             "--out-dir", tmp_path, "--name", "t")
    assert code == 0, err
    assert "| S |" in out and "reference ms" in out
    data = json.loads((tmp_path / "t.json").read_text())
    assert {(r["backend"], r["S"]) for r in data["records"]} == {(b, s) for b in ("reference", "sdpa")
                                                                  for s in (256, 512)}
    assert all(r["status"] == "ok" and r["ms"] > 0 for r in data["records"]), data["records"]
    png = tmp_path / "t.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(png)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def test_bench_model_help(capsys):
    code, out, err = run_cli(capsys, "bench", "model", "--help")
    assert code == 0 and out.startswith("usage: bigbird bench model"), err


def test_info(capsys):
    code, out, _ = run_cli(capsys, "info")
    assert code == 0
    assert "torch" in out and "reference" in out and "tokenizers" in out


# ------------------------------------------------------------------------------------------------
# the real-vocabulary demo: the GNU GPL v3 through the base configuration (slow, opt-in)
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("BIGBIRD_RUN_SLOW") != "1", reason="slow demo: set BIGBIRD_RUN_SLOW=1")
@pytest.mark.skipif(not REAL_VOCAB.is_file() or not GPL.is_file(), reason="needs the real vocab and GPL-3 text")
def test_gpl3_fill_mask_with_base_config(capsys, tmp_path):
    from bigbird import BigBirdConfig, BigBirdForMaskedLM
    from bigbird.tokenizer import BigBirdTokenizer

    t0 = time.perf_counter()
    folder = tmp_path / "base"
    folder.mkdir()
    shutil.copyfile(REAL_VOCAB, folder / "spiece.model")
    tok = BigBirdTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    BigBirdForMaskedLM(BigBirdConfig()).save_pretrained(folder)
    tok.save_pretrained(folder)
    words = GPL.read_text(encoding="utf-8").split(" ")
    for frac in (0.02, 0.3, 0.55, 0.8, 0.97):  # a few masks spread over the licence
        i = int(frac * len(words))
        while not words[i].isalpha():
            i += 1
        words[i] = "[MASK]"
    doc = tmp_path / "gpl3_masked.txt"
    doc.write_text(" ".join(words), encoding="utf-8")
    t1 = time.perf_counter()
    (rec,) = records(capsys, "fill-mask", "--model", folder, "--file", doc, "--top-k", 3, "--device", "cpu",
                     "--batch-size", 2)
    t2 = time.perf_counter()
    print(f"GPL-3 demo: {rec['num_tokens']} tokens, {rec['num_windows']} windows; setup {t1 - t0:.1f} s, "
          f"fill-mask {t2 - t1:.1f} s")
    assert rec["num_tokens"] > 4096 and rec["num_windows"] >= 2
    ids = tok.encode(doc.read_text(encoding="utf-8"))
    assert len(rec["masks"]) == 5
    for m in rec["masks"]:
        assert ids[m["position"]] == tok.mask_token_id and 0 <= m["window"] < rec["num_windows"]
        assert len(m["predictions"]) == 3
        for p in m["predictions"]:
            assert 0 <= p["token_id"] < 50358 and 0.0 <= p["score"] <= 1.0
            assert p["token"] == tok.convert_ids_to_tokens(p["token_id"])
