"""BigBirdConfig and BigBirdModel: config I/O, parity with transformers over lengths / block sizes /
r / padding, per-call short-input switch, attentions, checkpointing, layout modes, bad inputs."""

from __future__ import annotations

import json

import pytest
import torch

from test_model_utils import (
    assert_close,
    hf_and_ours,
    hf_model,
    make_batch,
    set_block_sparse,
    tiny_kwargs,
    transformers,
)

import bigbird
from bigbird import BigBirdConfig, BigBirdModel

TOL = 1e-4


# --------------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------------


def test_config_defaults_equal_transformers():
    ours = BigBirdConfig().to_dict()
    hf = transformers.BigBirdConfig().to_dict()
    skip = {"transformers_version", "_name_or_path", "model_type"}
    for k, v in hf.items():
        if k in skip:
            continue
        assert k in ours, f"field {k} missing"
        if k == "id2label":
            v = {str(i): lab for i, lab in v.items()}
        assert ours[k] == v, f"{k}: ours {ours[k]!r} vs transformers {v!r}"
    c = BigBirdConfig()
    assert (c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == (
        50358, 768, 12, 12, 3072)
    assert (c.hidden_act, c.max_position_embeddings, c.block_size, c.num_random_blocks, c.sep_token_id) == (
        "gelu_new", 4096, 64, 3, 66)
    assert c.num_labels == 2 and c.tie_word_embeddings and c.classifier_dropout is None
    assert (c.layout_mode, c.layout_seed, c.window_blocks, c.global_blocks, c.attention_backend,
            c.gradient_checkpointing) == ("hf", None, 3, (0, -1), "auto", False)
    assert c.short_input_threshold == 704


def test_config_json_round_trip_both_ways(tmp_path):
    hf_cfg = transformers.BigBirdConfig(**tiny_kwargs(num_labels=5, problem_type="multi_label_classification"))
    hf_cfg.position_embedding_type = "absolute"  # an unknown key seen on the hub
    hf_cfg.save_pretrained(tmp_path / "a")
    ours = BigBirdConfig.from_pretrained(tmp_path / "a")
    assert ours.num_labels == 5 and ours.id2label[4] == "LABEL_4" and ours.problem_type == "multi_label_classification"
    assert ours.position_embedding_type == "absolute"
    assert ours.hidden_size == 32 and ours.block_size == 8
    ours.layout_mode = "seeded"
    ours.global_blocks = (0, 1, -1)
    ours.save_pretrained(tmp_path / "b")
    raw = json.loads((tmp_path / "b" / "config.json").read_text())
    assert raw["position_embedding_type"] == "absolute" and raw["model_type"] == "big_bird"
    assert raw["layout_mode"] == "seeded" and raw["global_blocks"] == [0, 1, -1]
    back = BigBirdConfig.from_pretrained(tmp_path / "b")
    assert back == ours and back.global_blocks == (0, 1, -1)
    hf_back = transformers.BigBirdConfig.from_pretrained(tmp_path / "b")
    assert hf_back.num_labels == 5 and hf_back.block_size == 8 and hf_back.hidden_size == 32


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(hidden_size=30, num_attention_heads=4), "not a multiple of num_attention_heads"),
        (dict(attention_type="sparse"), "attention_type"),
        (dict(block_size=0), "block_size"),
        (dict(num_random_blocks=-1), "num_random_blocks"),
        (dict(layout_mode="random"), "layout_mode"),
        (dict(window_blocks=2), "window_blocks"),
        (dict(hidden_act="gelu_9000"), "hidden_act"),
        (dict(hidden_dropout_prob=1.5), "hidden_dropout_prob"),
        (dict(num_hidden_layers=0), "num_hidden_layers"),
        (dict(vocab_size=10, pad_token_id=10), "pad_token_id"),
        (dict(problem_type="ranking"), "problem_type"),
        (dict(global_blocks="first"), "global_blocks"),
        (dict(layout_seed=1.5), "layout_seed"),
        (dict(num_labels=0), "num_labels"),
        (dict(attention_backend="magic"), "attention_backend"),
    ],
)
def test_config_rejects_invalid(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BigBirdConfig(**kwargs)


def test_config_errors_on_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config"):
        BigBirdConfig.from_json_file(tmp_path / "config.json")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        BigBirdConfig.from_json_file(tmp_path / "config.json")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type"):
        BigBirdConfig.from_json_file(tmp_path / "config.json")


# --------------------------------------------------------------------------------------------------
# parity with transformers over lengths, block sizes, r, padding
# --------------------------------------------------------------------------------------------------

# (block_size, r, lengths): threshold (5 + 2r) * bs; lengths below, at, just above, not a multiple, multiple
CASES = [
    (8, 2, [50, 72, 73, 100, 128]),
    (16, 1, [112, 113, 150]),
    (8, 3, [89, 160]),
    (4, 1, [29, 61]),
]


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("bs, r, lengths", CASES, ids=[f"bs{c[0]}-r{c[1]}" for c in CASES])
def test_model_parity_lengths(bs, r, lengths, mode, tmp_path):
    hf, ours = hf_and_ours("BigBirdModel", tmp_path, block_size=bs, num_random_blocks=r)
    hf.train(mode == "train")
    ours.train(mode == "train")
    threshold = (5 + 2 * r) * bs
    for n in lengths:
        ids, mask = make_batch(3, n, pad=(0, 3, n // 2))
        set_block_sparse(hf)
        with torch.no_grad():
            a = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            b = ours(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        assert hf.attention_type == ("block_sparse" if n > threshold else "original_full")
        assert b.last_hidden_state.shape == (3, n, 32)
        assert_close(b.last_hidden_state, a.last_hidden_state, TOL, f"n={n} last_hidden_state")
        assert_close(b.pooler_output, a.pooler_output, TOL, f"n={n} pooler")
        for x, y in zip(b.hidden_states, a.hidden_states):
            assert x.shape[1] == n
            assert_close(x, y[:, :n], TOL, f"n={n} hidden_states")


def test_model_parity_old_plan_length_1024_training(tmp_path):
    """Padded length 1024 in training: HF's old-plan generator (generated for max_position_embeddings)."""
    hf, ours = hf_and_ours("BigBirdModel", tmp_path, block_size=16, num_random_blocks=2, max_position_embeddings=1024)
    hf.train()
    ours.train()
    ids, mask = make_batch(1, 1020, pad=(9,))
    with torch.no_grad():
        a = hf(input_ids=ids, attention_mask=mask)
        b = ours(input_ids=ids, attention_mask=mask)
    assert hf.attention_type == "block_sparse"
    assert_close(b.last_hidden_state, a.last_hidden_state, TOL, "L=1024 train")


def test_model_parity_inputs_embeds_position_and_token_type_ids(tmp_path):
    hf, ours = hf_and_ours("BigBirdModel", tmp_path, rescale_embeddings=True)
    n = 93
    ids, mask = make_batch(2, n, pad=(0, 10))
    emb = ours.embeddings.word_embeddings(ids).detach() * 0.5
    tt = torch.randint(0, 2, (2, n))
    pos = torch.randint(0, 512, (2, n))
    for kw in (dict(inputs_embeds=emb), dict(input_ids=ids, token_type_ids=tt, position_ids=pos),
               dict(inputs_embeds=emb, token_type_ids=tt, position_ids=pos[:1])):
        set_block_sparse(hf)
        with torch.no_grad():
            a = hf(attention_mask=mask, **kw)
            b = ours(attention_mask=mask, **kw)
        assert_close(b.last_hidden_state, a.last_hidden_state, TOL, f"{sorted(kw)}")


def test_original_full_config_and_no_mask(tmp_path):
    hf, ours = hf_and_ours("BigBirdModel", tmp_path, attention_type="original_full")
    ids, _ = make_batch(2, 150)
    with torch.no_grad():
        a = hf(input_ids=ids)
        b = ours(input_ids=ids)
    assert_close(b.last_hidden_state, a.last_hidden_state, TOL, "original_full")


def test_short_input_switch_is_per_call(tmp_path):
    """A short call runs full attention for that call only; the next long call is block-sparse again."""
    hf, ours = hf_and_ours("BigBirdModel", tmp_path)
    long_ids, long_mask = make_batch(2, 120, pad=(0, 9))
    short_ids, _ = make_batch(2, 30)
    with torch.no_grad():
        before = ours(input_ids=long_ids, attention_mask=long_mask).last_hidden_state
        ours(input_ids=short_ids)
        after = ours(input_ids=long_ids, attention_mask=long_mask).last_hidden_state
        ref_sparse = hf(input_ids=long_ids, attention_mask=long_mask).last_hidden_state  # fresh HF: sparse
        hf(input_ids=short_ids)  # HF switches to full attention for good
        assert hf.attention_type == "original_full"
        ref_full = hf(input_ids=long_ids, attention_mask=long_mask).last_hidden_state
    assert torch.equal(before, after)
    assert_close(after, ref_sparse, TOL, "long after short")
    assert (after - ref_full).abs().max() > 1e-3  # HF's sticky switch really changes the result


# --------------------------------------------------------------------------------------------------
# attentions
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_block_sparse_attentions_are_true_probabilities(mode, tmp_path):
    hf, ours = hf_and_ours("BigBirdModel", tmp_path)
    hf.train(mode == "train")
    ours.train(mode == "train")
    n = 100
    ids, mask = make_batch(2, n, pad=(0, 17))
    with torch.no_grad():
        a = hf(input_ids=ids, attention_mask=mask, output_attentions=True)
        b = ours(input_ids=ids, attention_mask=mask, output_attentions=True)
        plain = ours(input_ids=ids, attention_mask=mask)
    assert plain.attentions is None
    assert_close(b.last_hidden_state, plain.last_hidden_state, 0.0, "attentions must not change the output")
    assert len(b.attentions) == 2
    real = mask.bool()
    for p, hp in zip(b.attentions, a.attentions):
        assert p.shape == (2, 4, n, n)
        assert (p >= 0).all()
        sums = p.sum(-1)  # (B, H, n)
        assert torch.allclose(sums[real[:, None, :].expand_as(sums)], torch.ones(()), atol=1e-5)
        assert (p[~real[:, None, :, None].expand_as(p)] == 0).all(), "padded queries have zero rows"
        assert (p[real[:, None, None, :].logical_not().expand_as(p)] == 0).all(), "padded keys get no weight"
        if mode == "train":  # no duplicated blocks at this length: HF's reconstruction is exact on real rows
            hp = hp[:, :, :n, :n]
            rows = real[:, None, :, None].expand_as(p)
            assert_close(p[rows], hp[rows], 1e-5, "attention probabilities vs HF")
    if mode == "eval":
        # eval duplicates block 0 r times: our rows sum to 1, HF's overwrite loses mass
        hp = a.attentions[0][:, :, :n, :n]
        assert hp[0, :, 8:16].sum(-1).min() < 0.999


def test_full_attention_attentions_equal_transformers(tmp_path):
    hf, ours = hf_and_ours("BigBirdModel", tmp_path)
    ids, mask = make_batch(2, 50, pad=(0, 12))
    with torch.no_grad():
        a = hf(input_ids=ids, attention_mask=mask, output_attentions=True)
        b = ours(input_ids=ids, attention_mask=mask, output_attentions=True)
    for x, y in zip(b.attentions, a.attentions):
        assert_close(x, y, 1e-5, "full attentions")
    assert_close(b.last_hidden_state, a.last_hidden_state, TOL, "hidden")


# --------------------------------------------------------------------------------------------------
# training: checkpointing and layout modes
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout_mode", ["hf", "resample"])
def test_gradient_checkpointing_same_grads(layout_mode, tmp_path):
    """Same loss and grads with and without checkpointing, with dropout on (RNG replayed) and, for
    resample, a layout drawn once per forward and replayed on recomputation."""
    hf = hf_model("BigBirdForMaskedLM", hidden_dropout_prob=0.1)
    hf.save_pretrained(tmp_path / "m")
    ids, mask = make_batch(2, 110, pad=(0, 13))
    labels = ids.masked_fill(mask == 0, -100)
    grads = []
    for ckpt in (False, True):
        model = bigbird.BigBirdForMaskedLM.from_pretrained(
            tmp_path / "m", layout_mode=layout_mode, layout_seed=1234, gradient_checkpointing=ckpt)
        model.train()
        torch.manual_seed(7)
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        grads.append((out.loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}))
    (l0, g0), (l1, g1) = grads
    assert torch.equal(l0, l1)
    assert set(g0) == set(g1)
    for k in g0:
        assert_close(g1[k], g0[k], 1e-6, k)


def test_gradient_checkpointing_api(tmp_path):
    cfg = BigBirdConfig(**tiny_kwargs())
    m = bigbird.BigBirdForSequenceClassification(cfg)
    m.gradient_checkpointing_enable()
    assert m.config.gradient_checkpointing
    m.train()
    ids, _ = make_batch(2, 80)
    m(input_ids=ids, labels=torch.tensor([0, 1])).loss.backward()
    assert all(p.grad is not None for n, p in m.named_parameters() if not n.startswith("bert.pooler"))
    m.gradient_checkpointing_disable()
    assert not m.config.gradient_checkpointing


def test_layout_modes_resample_and_seeded(tmp_path):
    hf = hf_model("BigBirdModel")
    hf.save_pretrained(tmp_path / "m")
    ids, mask = make_batch(2, 120, pad=(0, 5))
    outs = {}
    for mode in ("hf", "seeded", "resample"):
        m = BigBirdModel.from_pretrained(tmp_path / "m", layout_mode=mode, layout_seed=3)
        with torch.no_grad():
            outs[mode] = m(input_ids=ids, attention_mask=mask).last_hidden_state
            if mode == "resample":
                outs["resample2"] = m(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (outs["resample"] - outs["hf"]).abs().max() > 1e-4
    assert (outs["seeded"] - outs["hf"]).abs().max() > 1e-4
    assert (outs["resample"] - outs["resample2"]).abs().max() > 1e-6  # a fresh layout per call
    m = BigBirdModel.from_pretrained(tmp_path / "m", layout_mode="resample", layout_seed=3)
    with torch.no_grad():
        again = m(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.equal(again, outs["resample"])  # layout_seed makes resample reproducible
    # seeded == HF's training layout: equals HF train mode (dropout 0)
    hf.train()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    assert_close(outs["seeded"], ref, TOL, "seeded vs HF train")


def test_custom_window_and_global_blocks_and_r0():
    cfg = BigBirdConfig(**tiny_kwargs(window_blocks=5, global_blocks=(0, 3, -1), num_random_blocks=0))
    m = BigBirdModel(cfg).eval()
    ids, mask = make_batch(2, 100, pad=(0, 20))
    with torch.no_grad():
        out = m(input_ids=ids, attention_mask=mask, output_attentions=True)
    assert out.last_hidden_state.shape == (2, 100, 32)
    p = out.attentions[0]
    assert torch.allclose(p[0].sum(-1), torch.ones(()), atol=1e-5)
    assert (p[0, :, 40:48, 24:32] > 0).all()  # block 3 is global: every row reads it
    assert (p[0, :, 40:48, 64:72] == 0).all()  # block 8 is outside the 5-block window of block 5


# --------------------------------------------------------------------------------------------------
# bad inputs
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_model():
    return BigBirdModel(BigBirdConfig(**tiny_kwargs(max_position_embeddings=128))).eval()


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda: dict(input_ids=torch.tensor([[1, 2, 100]])), ValueError, "vocab_size=100.*100"),
        (lambda: dict(input_ids=torch.tensor([[1, -1, 3]])), ValueError, "token id -1"),
        (lambda: dict(input_ids=torch.ones(1, 129, dtype=torch.long)), ValueError, "max_position_embeddings"),
        (lambda: dict(input_ids=torch.ones(2, 10, dtype=torch.long), attention_mask=torch.ones(2, 11)), ValueError,
         "attention_mask must have shape"),
        (lambda: dict(input_ids=torch.ones(2, 10, dtype=torch.long), attention_mask=torch.ones(10)), ValueError,
         "attention_mask must have shape"),
        (lambda: dict(input_ids=torch.ones(0, 10, dtype=torch.long)), ValueError, "empty input"),
        (lambda: dict(input_ids=torch.ones(2, 0, dtype=torch.long)), ValueError, "empty input"),
        (lambda: dict(input_ids=torch.ones(1, 5, dtype=torch.long), inputs_embeds=torch.ones(1, 5, 32)), ValueError,
         "not both"),
        (lambda: dict(), ValueError, "input_ids or inputs_embeds"),
        (lambda: dict(input_ids=torch.ones(5, dtype=torch.long)), ValueError, r"\(batch, seq_len\)"),
        (lambda: dict(input_ids=torch.ones(1, 5)), TypeError, "integer"),
        (lambda: dict(inputs_embeds=torch.ones(1, 5, 31)), ValueError, "hidden_size"),
        (lambda: dict(input_ids=torch.ones(1, 5, dtype=torch.long), token_type_ids=torch.full((1, 5), 2)), ValueError,
         "type_vocab_size"),
        (lambda: dict(input_ids=torch.ones(1, 5, dtype=torch.long), position_ids=torch.full((1, 5), 128)), ValueError,
         "position_ids"),
    ],
    ids=["id>=vocab", "id<0", "too-long", "mask-shape", "mask-1d", "batch0", "len0",
         "both", "neither", "ids-1d", "float-ids", "embeds-dim", "token-type", "position"],
)
def test_bad_inputs(small_model, make, exc, match):
    with pytest.raises(exc, match=match):
        small_model(**make())


def test_length_limit_counts_padding(small_model):
    # 120 tokens pad to 128 = max_position_embeddings: allowed; 121 pads to 128 too
    with torch.no_grad():
        assert small_model(input_ids=torch.ones(1, 121, dtype=torch.long)).last_hidden_state.shape == (1, 121, 32)
    m = BigBirdModel(BigBirdConfig(**tiny_kwargs(max_position_embeddings=124))).eval()
    with torch.no_grad():
        m(input_ids=torch.ones(1, 72, dtype=torch.long))  # full attention: no padding, fits
    with pytest.raises(ValueError, match="padded to 128"):
        m(input_ids=torch.ones(1, 121, dtype=torch.long))


def test_outputs_behave_like_model_outputs(small_model):
    with torch.no_grad():
        out = small_model(input_ids=torch.ones(2, 20, dtype=torch.long))
        tup = small_model(input_ids=torch.ones(2, 20, dtype=torch.long), return_dict=False)
    assert out[0] is out.last_hidden_state and out["pooler_output"] is out.pooler_output
    assert len(out) == 2 and out.keys() == ["last_hidden_state", "pooler_output"]
    assert isinstance(tup, tuple) and torch.equal(tup[0], out[0])
    assert "attentions" not in out
