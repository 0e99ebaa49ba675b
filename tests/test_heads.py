"""Every task head against transformers: outputs, losses, gradients, bf16, QA question handling."""

from __future__ import annotations

import pytest
import torch

from test_model_utils import (
    HEADS,
    SEP,
    assert_close,
    hf_and_ours,
    make_batch,
    max_err,
    set_block_sparse,
)

import bigbird

TOL = 1e-4
LOSS_TOL = 1e-5


def _inputs(name, n, B=3, *, labels=True, num_labels=3):
    """Inputs (and labels) for head ``name``: right-padded batch, length n."""
    pad = (0, 7, n // 3)[:B]
    if name == "BigBirdForMultipleChoice":
        ids, mask = make_batch(B, n, pad=pad, choices=2)
    elif name == "BigBirdForQuestionAnswering":
        ids, mask = make_batch(B, n, pad=pad, sep_at=[5, 9, None][:B])
    else:
        ids, mask = make_batch(B, n, pad=pad)
    kw = dict(input_ids=ids, attention_mask=mask)
    if name == "BigBirdForSequenceClassification" and labels:
        kw["labels"] = torch.randint(0, num_labels, (B,))
    elif name == "BigBirdForMultipleChoice" and labels:
        kw["labels"] = torch.randint(0, 2, (B,))
    elif name in ("BigBirdForMaskedLM", "BigBirdForCausalLM", "BigBirdForPreTraining", "BigBirdForTokenClassification") and labels:
        hi = num_labels if name == "BigBirdForTokenClassification" else 100
        lab = torch.randint(0, hi, (B, n))
        lab[torch.rand(B, n) < 0.3] = -100
        lab[mask == 0] = -100
        kw["labels"] = lab
        if name == "BigBirdForPreTraining":
            kw["next_sentence_label"] = torch.randint(0, 2, (B,))
    elif name == "BigBirdForQuestionAnswering" and labels:
        kw["start_positions"] = torch.tensor([12, n + 5, 3][:B])  # n + 5: clamped to n, ignored
        kw["end_positions"] = torch.tensor([[20], [n - 1], [n]][:B])  # (B, 1) is accepted too
    return kw


def _compare(name, a, b, n, sparse):
    """Compare a transformers output ``a`` with ours ``b``; returns the errors."""
    errs = {}
    if name == "BigBirdModel":
        errs["last_hidden_state"] = assert_close(b.last_hidden_state, a.last_hidden_state, TOL, "last_hidden_state")
        errs["pooler"] = assert_close(b.pooler_output, a.pooler_output, TOL, "pooler_output")
    elif name == "BigBirdForPreTraining":
        errs["pred"] = assert_close(b.prediction_logits, a.prediction_logits, TOL, "prediction_logits")
        errs["nsp"] = assert_close(b.seq_relationship_logits, a.seq_relationship_logits, TOL, "seq_relationship_logits")
    elif name == "BigBirdForQuestionAnswering":
        for f in ("start_logits", "end_logits"):
            x, y = getattr(b, f), getattr(a, f)
            masked = y < -1e5
            assert torch.equal(masked, x < -1e5), f"{f}: question masks differ"
            errs[f] = assert_close(x[~masked], y[~masked], TOL, f)
            assert max_err(x[masked], y[masked]) <= 0.5  # -1e6 + O(1): fp32 spacing there is 0.06
        assert b.pooler_output is None and a.pooler_output is None
    else:
        errs["logits"] = assert_close(b.logits, a.logits, TOL, "logits")
    if getattr(a, "loss", None) is not None:
        assert b.loss is not None
        errs["loss"] = assert_close(b.loss, a.loss, LOSS_TOL, "loss")
    if a.hidden_states is not None:
        assert len(b.hidden_states) == len(a.hidden_states)
        for i, (x, y) in enumerate(zip(b.hidden_states, a.hidden_states)):
            assert x.shape[1] == n, "our hidden states are un-padded"
            errs[f"h{i}"] = assert_close(x, y[:, :n], TOL, f"hidden_states[{i}]")
    return errs


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("n", [40, 100], ids=["full-n40", "sparse-n100"])
@pytest.mark.parametrize("name", HEADS)
def test_head_parity(name, n, mode, tmp_path):
    """Same outputs, hidden states and losses as transformers (dropout 0 for train-mode parity)."""
    extra = {"num_labels": 3} if name in ("BigBirdForSequenceClassification", "BigBirdForTokenClassification") else {}
    hf, ours = hf_and_ours(name, tmp_path, **extra)
    hf.train(mode == "train")
    ours.train(mode == "train")
    kw = _inputs(name, n)
    set_block_sparse(hf)
    with torch.no_grad():
        a = hf(**kw, output_hidden_states=True)
        b = ours(**kw, output_hidden_states=True)
    sparse = n > 72 and name != "BigBirdForCausalLM"
    if name != "BigBirdForCausalLM":
        assert getattr(hf, "bert", hf).attention_type == ("block_sparse" if sparse else "original_full")
    errs = _compare(name, a, b, n, sparse)
    print(name, n, mode, {k: f"{v:.2g}" for k, v in errs.items()})


@pytest.mark.parametrize("problem", ["regression", "multi_label_classification", "single_label_classification"])
def test_sequence_classification_losses(problem, tmp_path):
    num_labels = 1 if problem == "regression" else 4
    hf, ours = hf_and_ours("BigBirdForSequenceClassification", tmp_path, num_labels=num_labels)
    kw = _inputs("BigBirdForSequenceClassification", 90, labels=False)
    B = kw["input_ids"].shape[0]
    if problem == "regression":
        labels = torch.randn(B)
    elif problem == "multi_label_classification":
        labels = (torch.rand(B, num_labels) > 0.5).float()
    else:
        labels = torch.randint(0, num_labels, (B,))
    set_block_sparse(hf)
    with torch.no_grad():
        a = hf(**kw, labels=labels)
        b = ours(**kw, labels=labels)
    assert_close(b.logits, a.logits, TOL, "logits")
    assert_close(b.loss, a.loss, LOSS_TOL, f"{problem} loss")
    assert ours.config.problem_type is None  # not mutated (transformers writes it into the config)


@pytest.mark.parametrize("n", [60, 120])
def test_question_answering_question_lengths(n, tmp_path):
    """Explicit question_lengths, (B,) and (B, 1), with and without token_type_ids; inputs_embeds path."""
    hf, ours = hf_and_ours("BigBirdForQuestionAnswering", tmp_path)
    ids, mask = make_batch(2, n, pad=(0, 11))
    ql = torch.tensor([[7], [13]])
    for kw in (dict(question_lengths=ql), dict(question_lengths=ql.view(-1)),
               dict(question_lengths=ql, token_type_ids=torch.randint(0, 2, (2, n)))):
        set_block_sparse(hf)
        with torch.no_grad():
            a = hf(input_ids=ids, attention_mask=mask, **{**kw, "question_lengths": ql})
            b = ours(input_ids=ids, attention_mask=mask, **kw)
        _compare("BigBirdForQuestionAnswering", a, b, n, n > 72)
        assert (b.start_logits[0, 1:7] < -1e5).all() and (b.start_logits[0, 7:] > -1e5).all()
        assert b.start_logits[0, 0] > -1e5  # [CLS] stays predictable
    # no SEP in the ids and no question_lengths: question length 1, nothing masked but position 0 exempt
    set_block_sparse(hf)
    with torch.no_grad():
        a = hf(input_ids=ids, attention_mask=mask)
        b = ours(input_ids=ids, attention_mask=mask)
    _compare("BigBirdForQuestionAnswering", a, b, n, n > 72)
    assert (b.start_logits > -1e5).all()
    # inputs_embeds: no question mask at all (transformers cannot find the SEP either)
    emb = ours.bert.embeddings.word_embeddings(ids).detach()
    set_block_sparse(hf)
    with torch.no_grad():
        a = hf(inputs_embeds=emb, attention_mask=mask)
        b = ours(inputs_embeds=emb, attention_mask=mask)
    _compare("BigBirdForQuestionAnswering", a, b, n, n > 72)


def test_question_answering_sep_and_token_types(tmp_path):
    hf, ours = hf_and_ours("BigBirdForQuestionAnswering", tmp_path)
    ids, mask = make_batch(2, 100, pad=(0, 5), sep_at=[10, 3])
    seen = {}
    hook = ours.bert.embeddings.token_type_embeddings.register_forward_hook(
        lambda m, inp, out: seen.update(tt=inp[0].clone()))
    with torch.no_grad():
        b = ours(input_ids=ids, attention_mask=mask)
    hook.remove()
    tt = seen["tt"][:, :100]
    assert tt[0, :11].eq(0).all() and tt[0, 11:].eq(1).all()  # question incl. [CLS] and [SEP] is type 0
    assert tt[1, :4].eq(0).all() and tt[1, 4:].eq(1).all()
    assert (b.start_logits[0, 1:11] < -1e5).all() and (b.end_logits[1, 1:4] < -1e5).all()
    assert ours.config.num_labels == 2 and ours.qa_classifier.qa_outputs.out_features == 2


def _grads(model):
    return {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ["BigBirdForMaskedLM", "BigBirdForSequenceClassification", "BigBirdForQuestionAnswering"])
def test_parameter_gradients_match_transformers(name, tmp_path):
    """Training mode, dropout 0, block-sparse length with padding: every parameter gradient equal."""
    hf, ours = hf_and_ours(name, tmp_path, **({"num_labels": 3} if "Sequence" in name else {}))
    hf.train()
    ours.train()
    kw = _inputs(name, 100)
    set_block_sparse(hf)
    hf(**kw).loss.backward()
    ours(**kw).loss.backward()
    assert hf.bert.attention_type == "block_sparse"
    ga, gb = _grads(hf), _grads(ours)
    assert set(gb) == set(ga), f"different parameters received gradients: {set(ga) ^ set(gb)}"
    # relative to each parameter's own gradient scale; the small absolute floor (relative to the whole
    # model's gradient scale) covers gradients that are analytically zero (e.g. the QA output bias)
    top = max(g.abs().max().item() for g in ga.values())
    worst = 0.0
    for k, g in ga.items():
        scale = g.abs().max().item()
        err = max_err(gb[k], g)
        assert err <= 1e-4 * scale + 1e-6 * top, f"{k}: grad error {err:.3g} vs scale {scale:.3g} (top {top:.3g})"
        if scale > 1e-3 * top:
            worst = max(worst, err / scale)
    print(name, "worst relative grad error", worst)


@pytest.mark.parametrize("name", ["BigBirdModel", "BigBirdForMaskedLM", "BigBirdForQuestionAnswering"])
def test_bf16_tolerance_rule(name, tmp_path):
    """ours in bf16 vs transformers fp32 <= 3 x (transformers bf16 vs fp32) + 8e-3."""
    hf, _ = hf_and_ours(name, tmp_path)
    ours = getattr(bigbird, name).from_pretrained(tmp_path / f"hf_{name}", dtype=torch.bfloat16)
    assert ours.dtype == torch.bfloat16
    kw = _inputs(name, 100, labels=False)
    set_block_sparse(hf)
    with torch.no_grad():
        ref = hf(**kw)
        hf16 = hf.to(torch.bfloat16)
        set_block_sparse(hf16)
        low = hf16(**kw)
        b = ours(**kw)
    fields = {"BigBirdModel": ["last_hidden_state"], "BigBirdForMaskedLM": ["logits"],
              "BigBirdForQuestionAnswering": ["start_logits", "end_logits"]}[name]
    for f in fields:
        r, lo, o = getattr(ref, f).float(), getattr(low, f).float(), getattr(b, f).float()
        keep = r > -1e5  # QA: question positions are -1e6 in every variant
        err_hf = max_err(lo[keep], r[keep])
        err = max_err(o[keep], r[keep])
        print(name, f, "ours bf16", err, "hf bf16", err_hf)
        assert err <= 3 * err_hf + 8e-3, f"{f}: ours bf16 error {err:.3g} > 3 x {err_hf:.3g} + 8e-3"


def test_causal_lm_is_causal_under_block_sparse_config(tmp_path):
    """Our causal LM runs causal full attention even when the config says block_sparse / not a decoder;
    it then equals transformers' original_full decoder, and future tokens never change past logits."""
    hf, _ = hf_and_ours("BigBirdForCausalLM", tmp_path)
    ours = bigbird.BigBirdForCausalLM.from_pretrained(tmp_path / "hf_BigBirdForCausalLM",
                                                      attention_type="block_sparse", is_decoder=False)
    kw = _inputs("BigBirdForCausalLM", 150)
    with torch.no_grad():
        a = hf(**kw)
        b = ours(**kw)
    assert_close(b.logits, a.logits, TOL, "logits")
    assert_close(b.loss, a.loss, LOSS_TOL, "loss")
    ids = kw["input_ids"].clone()
    ids[:, 100:] = torch.randint(3, 60, ids[:, 100:].shape)
    with torch.no_grad():
        c = ours(input_ids=ids, attention_mask=kw["attention_mask"])
    assert torch.equal(c.logits[:, :100], b.logits[:, :100])


def test_heads_expose_hf_parameter_names():
    cfg = bigbird.BigBirdConfig(**__import__("test_model_utils").tiny_kwargs())
    import test_model_utils as u

    for name in HEADS:
        hf = u.hf_model(name)
        ours = getattr(bigbird, name)(cfg.copy(is_decoder=name == "BigBirdForCausalLM"))
        assert set(ours.state_dict()) == set(hf.state_dict()), name
        for k, v in hf.state_dict().items():
            assert ours.state_dict()[k].shape == v.shape, k


def test_multiple_choice_shapes_and_errors(tmp_path):
    hf, ours = hf_and_ours("BigBirdForMultipleChoice", tmp_path)
    ids, mask = make_batch(2, 30, choices=4)
    out = ours(input_ids=ids, attention_mask=mask, labels=torch.tensor([1, 3]))
    assert out.logits.shape == (2, 4) and out.loss.ndim == 0
    with pytest.raises(ValueError, match="num_choices"):
        ours(input_ids=ids[:, 0])
    with pytest.raises(ValueError, match="input_ids or inputs_embeds"):
        ours()


def test_tied_decoder_and_token_classification_dropout(tmp_path):
    _, mlm = hf_and_ours("BigBirdForMaskedLM", tmp_path)
    assert mlm.cls.predictions.decoder.weight is mlm.bert.embeddings.word_embeddings.weight
    assert mlm.cls.predictions.decoder.bias is mlm.cls.predictions.bias
    cfg = bigbird.BigBirdConfig(**__import__("test_model_utils").tiny_kwargs(classifier_dropout=0.3))
    tok = bigbird.BigBirdForTokenClassification(cfg)
    assert tok.dropout.p == 0.3
    assert SEP == cfg.sep_token_id
