"""The BigBird encoder-decoder against transformers' EncoderDecoderModel on the same checkpoint.

The oracle is transformers' ``EncoderDecoderModel`` with the checkpoint's BigBird encoder (block-sparse:
ours reproduces Hugging Face's block-sparse attention, so no switch to ``original_full`` is needed) and,
as decoder, ``BertLMHeadModel`` loaded with the checkpoint's decoder weights: transformers' BigBird
decoder layer feeds the encoder states to its self-attention as well (its decoder tokens never attend
to each other), while Bert's is the standard decoder layer with the same parameter names.
"""

from __future__ import annotations

import pytest
import torch

from test_model_utils import VOCAB, assert_close, hf_model, make_batch, tiny_kwargs

from bigbird import BigBirdEncoderDecoderModel

transformers = pytest.importorskip("transformers")

TOL = 1e-5
START, PAD = 1, 0


def _checkpoint(tmp_path, **decoder_over):
    """A transformers EncoderDecoderModel of two random BigBirds, saved; returns (folder, oracle)."""
    encoder = hf_model("BigBirdModel")
    decoder = hf_model("BigBirdForCausalLM", add_cross_attention=True, **decoder_over)
    model = transformers.EncoderDecoderModel(encoder=encoder, decoder=decoder)
    model.config.decoder_start_token_id, model.config.pad_token_id = START, PAD
    folder = tmp_path / "bigbird2bigbird"
    model.save_pretrained(folder)

    saved = transformers.EncoderDecoderModel.from_pretrained(folder).eval()
    dc = saved.config.decoder
    bert_cfg = transformers.BertConfig(
        vocab_size=dc.vocab_size, hidden_size=dc.hidden_size, num_hidden_layers=dc.num_hidden_layers,
        num_attention_heads=dc.num_attention_heads, intermediate_size=dc.intermediate_size, hidden_act=dc.hidden_act,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=dc.max_position_embeddings,
        type_vocab_size=dc.type_vocab_size, layer_norm_eps=dc.layer_norm_eps, pad_token_id=dc.pad_token_id,
        is_decoder=True, add_cross_attention=True)
    bert = transformers.BertLMHeadModel(bert_cfg)
    missing, unexpected = bert.load_state_dict(saved.decoder.state_dict(), strict=False)
    assert not missing and all(k.startswith("bert.pooler.") for k in unexpected), (missing, unexpected)
    oracle = transformers.EncoderDecoderModel(encoder=saved.encoder, decoder=bert).eval()
    if hasattr(saved, "enc_to_dec_proj"):  # widths differ: the oracle gets the checkpoint's projection
        oracle.enc_to_dec_proj.load_state_dict(saved.enc_to_dec_proj.state_dict())
    oracle.config.decoder_start_token_id, oracle.config.pad_token_id = START, PAD
    return folder, oracle


@pytest.mark.filterwarnings("ignore:Version v4.12.0 introduces:FutureWarning")  # transformers' note on labels
def test_encoder_decoder_matches_transformers(tmp_path):
    folder, oracle = _checkpoint(tmp_path)
    ours = BigBirdEncoderDecoderModel.from_pretrained(folder)
    ids, mask = make_batch(2, 100, pad=(0, 13))  # > 72 tokens: block-sparse encoder in both
    labels = torch.randint(3, VOCAB, (2, 6))
    labels[1, 4:] = -100
    with torch.no_grad():
        ref = oracle(input_ids=ids, attention_mask=mask, labels=labels)
        got = ours(ids, attention_mask=mask, labels=labels)
    e_enc = assert_close(got.encoder_last_hidden_state[mask.bool()], ref.encoder_last_hidden_state[mask.bool()], TOL,
                         "encoder_last_hidden_state")
    e_log = assert_close(got.logits, ref.logits, TOL, "decoder logits")
    e_loss = assert_close(got.loss, ref.loss, TOL, "loss")
    print("errors: encoder", e_enc, "logits", e_log, "loss", e_loss)


def test_encoder_decoder_greedy_generation_matches_transformers(tmp_path):
    folder, oracle = _checkpoint(tmp_path)
    ours = BigBirdEncoderDecoderModel.from_pretrained(folder)
    ids, mask = make_batch(3, 90, pad=(0, 20, 7))
    kw = dict(max_new_tokens=10, eos_token_id=None, pad_token_id=PAD)
    ref = oracle.generate(input_ids=ids, attention_mask=mask, decoder_start_token_id=START, do_sample=False, **kw)
    got = ours.generate(ids, attention_mask=mask, **kw)
    print("transformers:", ref.tolist(), "\nours:", got.tolist())
    assert torch.equal(got, ref)


def test_encoder_decoder_cached_decoding_equals_full_forward(tmp_path):
    folder, _ = _checkpoint(tmp_path)
    ours = BigBirdEncoderDecoderModel.from_pretrained(folder)
    ids, mask = make_batch(2, 40, pad=(0, 9))
    dec = torch.randint(3, VOCAB, (2, 5))
    with torch.no_grad():
        full = ours(ids, attention_mask=mask, decoder_input_ids=dec).logits
        enc, states = ours.encode(ids, mask)
        past = None
        for t in range(5):
            out = ours(attention_mask=mask, encoder_outputs=enc, decoder_input_ids=dec[:, t:t + 1],
                       past_key_values=past, use_cache=True)
            past = out.past_key_values
            assert_close(out.logits[:, 0], full[:, t], 1e-5, f"step {t}")


def test_encoder_decoder_loading_errors(tmp_path):
    folder, _ = _checkpoint(tmp_path)
    with pytest.raises(ValueError, match="not an encoder-decoder config"):
        BigBirdEncoderDecoderModel.from_pretrained(_plain_bigbird(tmp_path))
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    state.pop("decoder.bert.encoder.layer.0.crossattention.self.key.weight")
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing decoder\.bert\.encoder\.layer\.0\.crossattention\.self\.key\.weight"):
        BigBirdEncoderDecoderModel.from_pretrained(folder)


def _plain_bigbird(tmp_path):
    folder = tmp_path / "plain"
    hf_model("BigBirdModel").save_pretrained(folder)
    return folder


def test_encoder_decoder_with_different_widths_uses_the_projection(tmp_path):
    """A decoder narrower than the encoder: transformers adds enc_to_dec_proj; ours loads and applies it."""
    folder, oracle = _checkpoint(tmp_path, hidden_size=16, num_attention_heads=2, intermediate_size=24)
    ours = BigBirdEncoderDecoderModel.from_pretrained(folder)
    assert ours.enc_to_dec_proj is not None and tiny_kwargs()["hidden_size"] == 32
    ids, mask = make_batch(2, 80, pad=(0, 5))
    dec = torch.randint(3, VOCAB, (2, 4))
    with torch.no_grad():
        ref = oracle(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        got = ours(ids, attention_mask=mask, decoder_input_ids=dec).logits
    print("error:", assert_close(got, ref, TOL, "logits"))


def test_save_pretrained_loads_back_in_transformers_and_ours(tmp_path):
    folder, _ = _checkpoint(tmp_path)
    ours = BigBirdEncoderDecoderModel.from_pretrained(folder)
    ours.save_pretrained(tmp_path / "saved")
    hf, info = transformers.EncoderDecoderModel.from_pretrained(tmp_path / "saved", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    original = transformers.EncoderDecoderModel.from_pretrained(folder)
    for k, v in original.state_dict().items():
        assert torch.equal(hf.state_dict()[k], v), k
    again = BigBirdEncoderDecoderModel.from_pretrained(tmp_path / "saved")
    ids, mask = make_batch(2, 30, pad=(0, 4))
    dec = torch.randint(3, VOCAB, (2, 3))
    with torch.no_grad():
        assert torch.equal(again(ids, attention_mask=mask, decoder_input_ids=dec).logits,
                           ours(ids, attention_mask=mask, decoder_input_ids=dec).logits)
