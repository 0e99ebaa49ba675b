"""``bigbird generate`` end to end on tiny checkpoints (causal LM and encoder-decoder), against direct calls."""

from __future__ import annotations

import json

import pytest
import torch

from test_cli import _offline, _tiny_config, records, run_cli, tok, tok_dir, words  # noqa: F401 - fixtures

import bigbird


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory, tok):
    folder = tmp_path_factory.mktemp("gen") / "lm"
    torch.manual_seed(0)
    bigbird.BigBirdForCausalLM(_tiny_config(tok, is_decoder=True)).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _prompts(tok, texts, *, seq2seq=False):
    """What the command feeds the model: [CLS] text (+ [SEP] for an encoder), left/right padded."""
    rows = [[tok.cls_token_id, *tok.encode(t, add_special_tokens=False)] + ([tok.sep_token_id] if seq2seq else [])
            for t in texts]
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        cols = slice(0, len(r)) if seq2seq else slice(width - len(r), width)
        ids[i, cols], mask[i, cols] = torch.tensor(r), 1
    return ids, mask, width


def _expected(tok, out, start, eos):
    rows = []
    for row in out[:, start:].tolist():
        cut = next((i for i, t in enumerate(row) if t == eos), None)
        rows.append(row if cut is None else row[:cut])
    return rows


def test_generate_causal_lm_greedy_and_sampled(capsys, lm_dir, tok, words):
    texts = [" ".join(words[:3]), " ".join(words[5:12])]
    recs = records(capsys, "generate", "--model", lm_dir, "--text", texts[0], "--text", texts[1],
                   "--max-new-tokens", 6, "--device", "cpu")
    model = bigbird.BigBirdForCausalLM.from_pretrained(lm_dir)
    ids, mask, width = _prompts(tok, texts)
    want = _expected(tok, model.generate(ids, attention_mask=mask, max_new_tokens=6), width, model.config.eos_token_id)
    assert [r["index"] for r in recs] == [0, 1] and [r["source"] for r in recs] == ["text[0]", "text[1]"]
    assert [r["ids"] for r in recs] == want
    assert [r["num_prompt_tokens"] for r in recs] == [4, 8]
    assert all(r["text"] == tok.decode(r["ids"], skip_special_tokens=True) for r in recs)

    argv = ["generate", "--model", lm_dir, "--text", texts[0], "--max-new-tokens", 8, "--do-sample",
            "--temperature", 1.3, "--top-k", 20, "--top-p", 0.9, "--seed", 5]
    assert records(capsys, *argv) == records(capsys, *argv)


def test_generate_encoder_decoder(capsys, tmp_path, tok, words):
    transformers = pytest.importorskip("transformers")
    cfg = _tiny_config(tok).to_dict()
    cfg.pop("architectures", None)
    hf_cfg = {k: v for k, v in cfg.items() if k not in ("layout_mode", "layout_seed", "window_blocks", "global_blocks",
                                                         "attention_backend", "gradient_checkpointing")}
    encoder = transformers.BigBirdModel(transformers.BigBirdConfig(**hf_cfg))
    decoder = transformers.BigBirdForCausalLM(transformers.BigBirdConfig(
        **{**hf_cfg, "is_decoder": True, "add_cross_attention": True, "attention_type": "original_full"}))
    ed = transformers.EncoderDecoderModel(encoder=encoder, decoder=decoder)
    ed.config.decoder_start_token_id, ed.config.pad_token_id = tok.cls_token_id, tok.pad_token_id
    ed.save_pretrained(tmp_path / "ed")
    tok.save_pretrained(tmp_path / "ed")

    texts = [" ".join(words[:70]), " ".join(words[3:9])]  # 72 tokens: block-sparse encoder; 8 tokens: full
    recs = records(capsys, "generate", "--model", tmp_path / "ed", "--text", texts[0], "--text", texts[1],
                   "--max-new-tokens", 5, "--device", "cpu")
    model = bigbird.BigBirdEncoderDecoderModel.from_pretrained(tmp_path / "ed")
    ids, mask, _ = _prompts(tok, texts, seq2seq=True)
    want = _expected(tok, model.generate(ids, attention_mask=mask, max_new_tokens=5), 1, model.config.decoder.eos_token_id)
    assert [r["ids"] for r in recs] == want
    assert [r["num_prompt_tokens"] for r in recs] == [72, 8]


@pytest.mark.parametrize("extra, message", [
    (["--max-new-tokens", 300], "generation past max_position_embeddings=256"),
    (["--do-sample", "--temperature", 0], "temperature must be > 0"),
    (["--do-sample", "--top-p", 2], "top_p must lie in (0, 1]"),
    (["--batch-size", 0], "--batch-size must be >= 1"),
])
def test_generate_bad_input_is_one_line(capsys, lm_dir, words, extra, message):
    code, out, err = run_cli(capsys, "generate", "--model", lm_dir, "--text", words[0], *extra)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("bigbird generate: error: ") and message in err, err


def test_generate_output_is_written_safely_and_resumes(capsys, monkeypatch, tmp_path, lm_dir, words):
    texts = [" ".join(words[i : i + 3]) for i in range(0, 15, 3)]  # 5 prompts
    argv = ["generate", "--model", lm_dir, "--max-new-tokens", 4, "--batch-size", 2, "--device", "cpu"]
    for t in texts:
        argv += ["--text", t]
    whole = records(capsys, *argv)
    out = tmp_path / "gen.jsonl"
    out.write_text("old\n")
    # fail in the second batch: the first batch's records are kept in OUTPUT.partial, OUTPUT untouched
    real_generate = bigbird.BigBirdForCausalLM.generate
    calls = []

    def failing_generate(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_generate(self, *args, **kwargs)

    monkeypatch.setattr(bigbird.BigBirdForCausalLM, "generate", failing_generate)
    code, _, err = run_cli(capsys, *argv, "-o", out)
    assert code == 130 and err.count("\n") == 1 and "2 finished records are kept" in err and "--resume" in err, err
    assert out.read_text() == "old\n"
    partial = tmp_path / "gen.jsonl.partial"
    assert [json.loads(line) for line in partial.read_text().splitlines()] == whole[:2]
    # a second run without --resume refuses to overwrite the partial file; with --resume it completes
    code, _, err = run_cli(capsys, *argv, "-o", out)
    assert code == 1 and "--resume" in err
    calls.clear()
    monkeypatch.setattr(bigbird.BigBirdForCausalLM, "generate", real_generate)
    code, _, err = run_cli(capsys, *argv, "-o", out, "--resume")
    assert code == 0, err
    assert [json.loads(line) for line in out.read_text().splitlines()] == whole and not partial.exists()


def test_generate_output_checked_before_any_work(capsys, monkeypatch, tmp_path, lm_dir, words):
    monkeypatch.setattr(bigbird.BigBirdForCausalLM, "from_pretrained",
                        lambda *a, **k: pytest.fail("the model was loaded before --output was checked"))
    code, out, err = run_cli(capsys, "generate", "--model", lm_dir, "--text", words[0], "-o", tmp_path / "no" / "x.jsonl")
    assert code == 1 and out == "" and "does not exist" in err and err.count("\n") == 1
