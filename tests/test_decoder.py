"""BigBird as a decoder: key/value cache, cross-attention, logits_to_keep, their parity and their errors."""

from __future__ import annotations

import pytest
import torch

from test_model_utils import VOCAB, assert_close, hf_and_ours, make_left_padded_batch, tiny_kwargs

import bigbird

transformers = pytest.importorskip("transformers")

TOL = 1e-5


def _encoder_inputs(B, S, hidden, pads):
    enc = torch.randn(B, S, hidden)
    emask = torch.ones(B, S, dtype=torch.long)
    for row, p in enumerate(pads):
        if p:
            emask[row, -p:] = 0
    return enc, emask


def _ours(cross: bool, **over):
    cfg = bigbird.BigBirdConfig(**tiny_kwargs(is_decoder=True, add_cross_attention=cross, hidden_dropout_prob=0.0,
                                              attention_probs_dropout_prob=0.0, **over))
    return bigbird.BigBirdForCausalLM(cfg).eval()


def _bert_oracle(ours_folder):
    """transformers' BertLMHeadModel with the weights of a saved BigBird causal LM (same layer, same names)."""
    cfg = bigbird.BigBirdConfig.from_pretrained(ours_folder)
    bert_cfg = transformers.BertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size,
        hidden_act=cfg.hidden_act, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        max_position_embeddings=cfg.max_position_embeddings, type_vocab_size=cfg.type_vocab_size,
        layer_norm_eps=cfg.layer_norm_eps, pad_token_id=cfg.pad_token_id, is_decoder=True,
        add_cross_attention=cfg.add_cross_attention)
    bert = transformers.BertLMHeadModel.from_pretrained(ours_folder, config=bert_cfg)
    return bert.eval()


@pytest.mark.parametrize("cross", [False, True], ids=["self-only", "cross"])
@pytest.mark.parametrize("chunks", [(7,), (1,) * 7, (3, 1, 2, 1)], ids=["one-call", "token-by-token", "mixed"])
def test_cached_steps_equal_full_forward(cross, chunks):
    """Logits of a cached step-by-step run equal the uncached forward at every real position (left padding)."""
    model = _ours(cross)
    B, n = 3, sum(chunks)
    ids, mask = make_left_padded_batch(B, n, (0, 2, 4))
    kw = {}
    if cross:
        enc, emask = _encoder_inputs(B, 5, 32, (0, 2, 1))
        kw = dict(encoder_hidden_states=enc, encoder_attention_mask=emask)
    with torch.no_grad():
        full = model(ids, attention_mask=mask, **kw).logits
        past, start, errs = None, 0, []
        for size in chunks:
            end = start + size
            step_kw = dict(kw)
            if past is not None and cross:
                step_kw.pop("encoder_hidden_states")  # the cached cross keys/values are reused
            out = model(ids[:, start:end], attention_mask=mask[:, :end], past_key_values=past, use_cache=True, **step_kw)
            past = out.past_key_values
            real = mask[:, start:end].bool()
            errs.append((out.logits - full[:, start:end])[real].abs().max().item())
            assert len(past) == 2 and past[0][0].shape == (B, 4, end, 8) and len(past[0]) == (4 if cross else 2)
            start = end
    print("max error per step:", errs)
    assert max(errs) <= TOL


@pytest.mark.parametrize("cross", [False, True], ids=["self-only", "cross"])
def test_transformers_cache_objects_are_accepted_and_updated(cross):
    """A transformers DynamicCache / EncoderDecoderCache gives the same logits as our tuples and is returned updated."""
    model = _ours(cross)
    ids, mask = make_left_padded_batch(2, 6, (0, 3))
    kw = {}
    if cross:
        enc, emask = _encoder_inputs(2, 4, 32, (0, 1))
        kw = dict(encoder_hidden_states=enc, encoder_attention_mask=emask)
    hf_cache = transformers.DynamicCache()
    if cross:
        hf_cache = transformers.EncoderDecoderCache(hf_cache, transformers.DynamicCache())
    with torch.no_grad():
        full = model(ids, attention_mask=mask, **kw).logits
        a = model(ids[:, :4], attention_mask=mask[:, :4], past_key_values=hf_cache, **kw)
        assert a.past_key_values is hf_cache and hf_cache.get_seq_length() == 4
        b = model(ids[:, 4:], attention_mask=mask, past_key_values=hf_cache, **kw)
        assert hf_cache.get_seq_length() == 6
    err = (b.logits - full[:, 4:]).abs().max().item()
    print("error:", err)
    assert err <= TOL


def test_causal_lm_cache_parity_with_transformers(tmp_path):
    """transformers' BigBirdForCausalLM (original_full, is_decoder) with its DynamicCache vs ours, through a checkpoint."""
    hf, ours = hf_and_ours("BigBirdForCausalLM", tmp_path)
    ids, mask = make_left_padded_batch(3, 9, (0, 1, 3))
    with torch.no_grad():
        a1 = hf(ids[:, :6], attention_mask=mask[:, :6], use_cache=True, cache=transformers.DynamicCache())
        a2 = hf(ids[:, 6:], attention_mask=mask, use_cache=True, cache=a1.cache)
        b1 = ours(ids[:, :6], attention_mask=mask[:, :6], use_cache=True)
        b2 = ours(ids[:, 6:], attention_mask=mask, past_key_values=b1.past_key_values)
    real = mask.bool()
    e1 = assert_close(b1.logits[real[:, :6]], a1.logits[real[:, :6]], TOL, "prompt logits")
    e2 = assert_close(b2.logits, a2.logits, TOL, "cached step logits")
    for layer, (k, v) in enumerate(b2.past_key_values):
        assert_close(k, a2.cache.layers[layer].keys, TOL, f"layer {layer} keys")
        assert_close(v, a2.cache.layers[layer].values, TOL, f"layer {layer} values")
    print("errors:", e1, e2)


def test_cross_attention_parity_and_checkpoint_names(tmp_path):
    """A transformers BigBird decoder checkpoint with cross-attention loads into ours (HF's `crossattention` names),
    gives BertLMHeadModel's outputs on the same weights, and what we save loads back into transformers."""
    hf, ours = hf_and_ours("BigBirdForCausalLM", tmp_path, add_cross_attention=True)
    assert any(".crossattention.self.key." in k for k in ours.state_dict())
    bert = _bert_oracle(tmp_path / "hf_BigBirdForCausalLM")
    ids, mask = make_left_padded_batch(3, 8, (0, 2, 5))
    enc, emask = _encoder_inputs(3, 6, 32, (0, 3, 1))
    with torch.no_grad():
        ref = bert(ids, attention_mask=mask, encoder_hidden_states=enc, encoder_attention_mask=emask).logits
        got = ours(ids, attention_mask=mask, encoder_hidden_states=enc, encoder_attention_mask=emask).logits
    real = mask.bool()
    err = assert_close(got[real], ref[real], TOL, "logits with cross-attention")
    print("error vs BertLMHeadModel:", err)

    ours.save_pretrained(tmp_path / "ours")
    back, info = transformers.BigBirdForCausalLM.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    for k, v in hf.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_self_only_decoder_matches_transformers_full_forward(tmp_path):
    """Without cross-attention, one uncached forward equals transformers' BigBirdForCausalLM (left padding)."""
    hf, ours = hf_and_ours("BigBirdForCausalLM", tmp_path)
    ids, mask = make_left_padded_batch(2, 11, (0, 4))
    with torch.no_grad():
        a = hf(ids, attention_mask=mask).logits
        b = ours(ids, attention_mask=mask).logits
    real = mask.bool()
    print("error:", assert_close(b[real], a[real], TOL, "logits"))


def test_logits_to_keep():
    model = _ours(False)
    ids, mask = make_left_padded_batch(2, 6, (0, 1))
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        last2 = model(ids, attention_mask=mask, logits_to_keep=2).logits
        picked = model(ids, attention_mask=mask, logits_to_keep=torch.tensor([1, 4])).logits
    assert last2.shape == (2, 2, VOCAB) and torch.allclose(last2, full[:, -2:], atol=TOL)
    assert torch.allclose(picked, full[:, [1, 4]], atol=TOL)
    with pytest.raises(ValueError, match="logits_to_keep=0"):
        model(ids, labels=ids, logits_to_keep=1)


def test_bare_decoder_model_returns_its_cache():
    """BigBirdModel with is_decoder=True takes and returns the cache too."""
    cfg = bigbird.BigBirdConfig(**tiny_kwargs(is_decoder=True, hidden_dropout_prob=0.0))
    model = bigbird.BigBirdModel(cfg).eval()
    ids = torch.randint(3, VOCAB, (2, 5))
    with torch.no_grad():
        full = model(ids).last_hidden_state
        a = model(ids[:, :3], use_cache=True)
        b = model(ids[:, 3:], past_key_values=a.past_key_values)
    assert torch.allclose(b.last_hidden_state, full[:, 3:], atol=TOL)
    assert b.past_key_values[1][0].shape == (2, 4, 5, 8)


# ---------------------------------------------------------------------------------------------- bad input


def test_bad_cache_and_encoder_inputs_raise_clear_errors():
    model = _ours(True)
    other = _ours(False, num_attention_heads=2)
    ids = torch.randint(3, VOCAB, (2, 4))
    enc = torch.randn(2, 3, 32)
    with torch.no_grad():
        past = model(ids, encoder_hidden_states=enc, use_cache=True).past_key_values
        foreign = other(ids, use_cache=True).past_key_values
        with pytest.raises(ValueError, match="another model"):
            model(ids[:, :1], past_key_values=foreign)
        with pytest.raises(ValueError, match="another batch"):
            model(ids[:1, :1], past_key_values=past)
        with pytest.raises(ValueError, match="layers but this model has"):
            model(ids[:, :1], past_key_values=past[:1])
        with pytest.raises(ValueError, match="no cross-attention"):
            other(ids[:, :1], past_key_values=past)
        with pytest.raises(ValueError, match="hidden_size=32, got 16"):
            model(ids, encoder_hidden_states=torch.randn(2, 3, 16))
        with pytest.raises(ValueError, match="encoder_attention_mask must have shape"):
            model(ids, encoder_hidden_states=enc, encoder_attention_mask=torch.ones(2, 4))
        with pytest.raises(ValueError, match="no cross-attention"):
            other(ids, encoder_hidden_states=enc)
        with pytest.raises(ValueError, match=r"attention_mask must have shape \(batch, cached \+ seq_len\)"):
            model(ids[:, :1], attention_mask=torch.ones(2, 1), past_key_values=past)
        with pytest.raises(ValueError, match="after 4 cached tokens exceeds max_position_embeddings=512"):
            model(torch.randint(3, VOCAB, (2, 509)), past_key_values=past)
        encoder = bigbird.BigBirdModel(bigbird.BigBirdConfig(**tiny_kwargs()))
        with pytest.raises(ValueError, match="need causal attention"):
            encoder(ids, use_cache=True)
    with pytest.raises(ValueError, match="needs is_decoder=True"):
        bigbird.BigBirdForCausalLM(bigbird.BigBirdConfig(**tiny_kwargs(add_cross_attention=True)))


def test_why_cross_attention_parity_uses_bert(tmp_path):
    """transformers' BigBird decoder layer feeds the encoder states to its self-attention: with cross-attention
    its logits at a position ignore every earlier decoder token. Ours (and Bert's) do not. If this starts
    failing, transformers fixed it and test_cross_attention_parity_and_checkpoint_names can use BigBird itself."""
    hf, ours = hf_and_ours("BigBirdForCausalLM", tmp_path, add_cross_attention=True)
    ids = torch.randint(3, VOCAB, (1, 6))
    changed = ids.clone()
    changed[0, 0] = 3 + (ids[0, 0] - 2) % (VOCAB - 3)  # another token at position 0
    enc = torch.randn(1, 4, 32)
    with torch.no_grad():
        hf_diff = (hf(ids, encoder_hidden_states=enc).logits - hf(changed, encoder_hidden_states=enc).logits)[0, 1:]
        our_diff = (ours(ids, encoder_hidden_states=enc).logits - ours(changed, encoder_hidden_states=enc).logits)[0, 1:]
    assert hf_diff.abs().max() == 0 and our_diff.abs().max() > 0
