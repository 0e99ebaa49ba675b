"""patch_bigbird / unpatch_bigbird on transformers' BigBird and BigBird-Pegasus models."""

import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    BigBirdConfig,
    BigBirdForMaskedLM,
    BigBirdForQuestionAnswering,
    BigBirdForSequenceClassification,
    BigBirdPegasusConfig,
    BigBirdPegasusForConditionalGeneration,
)
from transformers.models.big_bird.modeling_big_bird import (  # noqa: E402
    BigBirdBlockSparseAttention,
    BigBirdSelfAttention,
)

import bigbird_kernels.integrations.transformers as integ  # noqa: E402
from bigbird_kernels.integrations.transformers import (  # noqa: E402
    UnsupportedTransformersError,
    check_transformers_support,
    is_patched,
    patch_bigbird,
    unpatch_bigbird,
)

BS, R = 16, 2  # HF runs block_sparse only above (5 + 2r) * bs = 144 tokens


def _bigbird_config(**kw):
    cfg = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
               max_position_embeddings=1024, block_size=BS, num_random_blocks=R, attention_type="block_sparse",
               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=3)
    cfg.update(kw)
    return BigBirdConfig(**cfg)


def _batch(B, L, vocab=97):
    ids = torch.randint(2, vocab, (B, L))
    mask = torch.ones(B, L, dtype=torch.long)
    for b in range(1, B):
        mask[b, L - 17 * b - 5:] = 0  # right padding of different lengths
    return ids, mask


def _sparse_modules(model):
    return [m for m in model.modules() if isinstance(m, BigBirdBlockSparseAttention)]


def _tensors(out):
    return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("cls", [BigBirdForQuestionAnswering, BigBirdForSequenceClassification], ids=lambda c: c.__name__)
def test_patched_model_equals_unpatched(cls, training):
    model = cls(_bigbird_config()).train(training)
    ids, mask = _batch(3, 330)  # padded to 336 inside HF; 21 blocks
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        assert model.bert.attention_type == "block_sparse"
        weights = {k: v.clone() for k, v in model.state_dict().items()}
        patch_bigbird(model, backend="reference")
        assert is_patched(model) and len(_sparse_modules(model)) == 2
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    for name, t in _tensors(ref).items():
        err = (out[name] - t).abs().max().item()
        assert err <= 1e-5, f"{name}: max |patched - HF| = {err:.3e}"
    for a, b in zip(out.hidden_states, ref.hidden_states):
        assert (a - b).abs().max().item() <= 1e-5
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), f"weight {k} changed"


def test_patched_gradients_equal_unpatched_in_training():
    torch.manual_seed(torch.initial_seed())
    model = BigBirdForMaskedLM(_bigbird_config(num_hidden_layers=1)).train()
    ids, mask = _batch(2, 340)
    labels = ids.masked_fill(mask == 0, -100)

    def grads():
        model.zero_grad()
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ref = grads()
    patch_bigbird(model)
    ours = grads()
    assert ref.keys() == ours.keys()
    for n in ref:
        err = (ours[n] - ref[n]).abs().max().item()
        assert err <= 1e-5 * max(1.0, ref[n].abs().max().item()), f"grad {n}: {err:.3e}"


def test_unpatch_restores_original_forward_and_outputs():
    model = BigBirdForSequenceClassification(_bigbird_config()).eval()
    ids, mask = _batch(2, 300)
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
        patch_bigbird(model, backend="reference")
        patch_bigbird(model, backend="auto", layout_mode="hf")  # re-patching updates the settings
        fwd = _sparse_modules(model)[0].__dict__["forward"]
        assert fwd.backend == "auto" and fwd.original is integ._MISSING
        unpatch_bigbird(model)
        after = model(input_ids=ids, attention_mask=mask).logits
    assert not is_patched(model)
    for m in _sparse_modules(model):
        assert "forward" not in m.__dict__
        assert m.forward.__func__ is BigBirdBlockSparseAttention.forward
    assert torch.equal(before, after)
    # an instance-level forward that existed before patching is restored as it was
    m0 = _sparse_modules(model)[0]
    custom = m0.forward
    m0.forward = custom
    patch_bigbird(model)
    unpatch_bigbird(model)
    assert m0.__dict__["forward"] is custom


def test_attention_probs_only_when_requested_and_true_probabilities(monkeypatch):
    calls = []
    real = integ.block_sparse_attention_probs
    monkeypatch.setattr(integ, "block_sparse_attention_probs", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = BigBirdForSequenceClassification(_bigbird_config())
    ids, mask = _batch(2, 330)
    real_rows = torch.nn.functional.pad(mask, (0, 6)).bool()  # HF pads to 336
    for training in (True, False):
        model.train(training)
        with torch.no_grad():
            ref = model(input_ids=ids, attention_mask=mask, output_attentions=True)
            patch_bigbird(model)
            calls.clear()
            plain = model(input_ids=ids, attention_mask=mask)
            assert calls == [] and plain.attentions is None
            out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
            assert len(calls) == 2
            model.config.output_attentions = True  # the config switch is honoured too
            assert len(model(input_ids=ids, attention_mask=mask).attentions) == 2
            model.config.output_attentions = False
            unpatch_bigbird(model)
        for ours, hf in zip(out.attentions, ref.attentions):
            assert ours.shape == hf.shape == (2, 4, 336, 336)
            sums = ours.sum(-1).transpose(1, 2)[real_rows]
            torch.testing.assert_close(sums, torch.ones_like(sums), atol=1e-5, rtol=0)
            assert (ours.transpose(1, 2)[~real_rows] == 0).all()
            if training:  # no duplicated key block at this length: HF's matrix is the true one
                err = (ours - hf).abs().transpose(1, 2)[real_rows].max().item()
                assert err <= 1e-5, err
            else:  # HF's scatter_ drops the duplicated block-0 copies: its rows sum to less than 1
                assert hf.sum(-1).transpose(1, 2)[real_rows].min() < 0.9


def test_original_full_layers_are_left_alone():
    model = BigBirdForSequenceClassification(_bigbird_config()).eval()
    ids, mask = _batch(2, 100)  # <= 144 tokens: HF switches to original_full for good
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
    assert model.bert.attention_type == "original_full"
    patch_bigbird(model)
    assert not is_patched(model) and not _sparse_modules(model)
    assert all("forward" not in m.__dict__ for m in model.modules() if isinstance(m, BigBirdSelfAttention))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, ref)
    full = BigBirdForMaskedLM(_bigbird_config(attention_type="original_full"))
    assert patch_bigbird(full) is full and not is_patched(full)


def test_patch_then_short_input_switch_still_runs_hf_full_attention():
    model = BigBirdForSequenceClassification(_bigbird_config()).eval()
    patch_bigbird(model)
    ids, mask = _batch(2, 120)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask).logits  # HF replaces the patched modules
    assert model.bert.attention_type == "original_full" and not is_patched(model)
    assert torch.isfinite(out).all()


def test_bigbird_pegasus_encoder_patched_equals_unpatched():
    cfg = BigBirdPegasusConfig(
        vocab_size=97, d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=512,
        block_size=BS, num_random_blocks=R, attention_type="block_sparse", dropout=0.0, attention_dropout=0.0,
        activation_dropout=0.0, encoder_layerdrop=0.0, decoder_layerdrop=0.0,
    )
    model = BigBirdPegasusForConditionalGeneration(cfg)
    ids, mask = _batch(2, 330)
    dec = torch.randint(2, 97, (2, 9))
    for training in (False, True):
        model.train(training)
        with torch.no_grad():
            ref = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec)
            patch_bigbird(model, backend="reference")
            assert is_patched(model)
            out = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, output_attentions=True)
            unpatch_bigbird(model)
            again = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec)
        for name in ("encoder_last_hidden_state", "logits"):
            err = (out[name] - ref[name]).abs().max().item()
            assert err <= 1e-5, f"{name} ({'train' if training else 'eval'}): {err:.3e}"
            assert torch.equal(again[name], ref[name])
        assert len(out.encoder_attentions) == 2 and out.encoder_attentions[0].shape == (2, 4, 336, 336)


def test_refuses_unknown_transformers_version(monkeypatch):
    model = BigBirdForSequenceClassification(_bigbird_config())
    # transformers' lazy module may replace itself in sys.modules while submodules load: patch the live one
    installed = sys.modules["transformers"]
    for version in ("4.46.3", "6.0.0"):
        monkeypatch.setattr(installed, "__version__", version)
        with pytest.raises(UnsupportedTransformersError, match=version.replace(".", r"\.")):
            patch_bigbird(model)
        assert not is_patched(model)
    monkeypatch.setattr(installed, "__version__", "5.99.0")
    assert check_transformers_support() == "5.99.0"


def test_refuses_changed_attention_signature(monkeypatch):
    model = BigBirdForSequenceClassification(_bigbird_config())

    def forward(self, hidden_states, band_mask=None, from_mask=None, to_mask=None, from_blocked_mask=None,
                to_blocked_mask=None, output_attentions=False, **kwargs):  # a 4.x-style extra argument
        raise AssertionError("never called")

    monkeypatch.setattr(BigBirdBlockSparseAttention, "forward", forward)
    with pytest.raises(UnsupportedTransformersError, match="BigBirdBlockSparseAttention.forward"):
        patch_bigbird(model)
    assert not is_patched(model)
    monkeypatch.undo()

    def algo(self, query_layer, key_layer, value_layer, band_mask, from_mask, to_mask, from_blocked_mask,
             to_blocked_mask, n_heads, n_rand_blocks, attention_head_size, from_block_size, to_block_size,
             batch_size, from_seq_len, to_seq_len, seed, plan_from_length, plan_num_rand_blocks, output_attentions):
        raise AssertionError("never called")

    monkeypatch.setattr(BigBirdBlockSparseAttention, "bigbird_block_sparse_attention", algo)
    with pytest.raises(UnsupportedTransformersError, match="bigbird_block_sparse_attention"):
        patch_bigbird(model)


def test_rejects_non_bigbird_models_and_bad_arguments():
    with pytest.raises(TypeError, match="BigBird"):
        patch_bigbird(torch.nn.Linear(2, 2))
    model = BigBirdForSequenceClassification(_bigbird_config())
    with pytest.raises(ValueError, match="layout_mode"):
        patch_bigbird(model, layout_mode="google")
    with pytest.raises(ValueError, match="backend"):
        patch_bigbird(model, backend="fast")
    assert not is_patched(model)


@pytest.mark.parametrize("mode", ["seeded", "resample"])
def test_other_layout_modes_run(mode):
    model = BigBirdForSequenceClassification(_bigbird_config()).eval()
    ids, mask = _batch(2, 330)
    patch_bigbird(model, layout_mode=mode)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask).logits
    assert torch.isfinite(out).all()
    if mode == "seeded":  # HF's training layout in eval == HF in train mode (dropout is 0)
        unpatch_bigbird(model)
        with torch.no_grad():
            ref = model.train()(input_ids=ids, attention_mask=mask).logits
        assert (out - ref).abs().max().item() <= 1e-5
