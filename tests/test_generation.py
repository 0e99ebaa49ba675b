"""generate(): greedy parity with transformers, sampling (temperature, top-k, top-p, seeds), stopping, errors."""

from __future__ import annotations

import pytest
import torch

from test_model_utils import VOCAB, hf_and_ours, make_left_padded_batch, tiny_kwargs

import bigbird
from bigbird.generation import next_tokens

transformers = pytest.importorskip("transformers")


def _ours(**over):
    cfg = bigbird.BigBirdConfig(**tiny_kwargs(is_decoder=True, hidden_dropout_prob=0.0, **over))
    return bigbird.BigBirdForCausalLM(cfg).eval()


@pytest.mark.parametrize("eos", [None, "int", "list"])
def test_greedy_generation_matches_transformers(eos, tmp_path):
    """Same tokens as transformers' generate on the same random model, left-padded batch, per-row stopping."""
    hf, ours = hf_and_ours("BigBirdForCausalLM", tmp_path)
    n, k = 7, 12
    ids, mask = make_left_padded_batch(3, n, (0, 2, 5))
    free = ours.generate(ids, attention_mask=mask, max_new_tokens=k, eos_token_id=None)
    # end-of-sequence ids that do occur: row 0's third new token (and row 1's fifth)
    eos_id = {None: None, "int": int(free[0, n + 2]), "list": [int(free[1, n + 4]), int(free[0, n + 2])]}[eos]
    kw = dict(max_new_tokens=k, eos_token_id=eos_id, pad_token_id=0)
    ref = hf.generate(ids, attention_mask=mask, do_sample=False, **kw)
    got = ours.generate(ids, attention_mask=mask, **kw)
    print("transformers:", ref.tolist(), "\nours:", got.tolist())
    assert torch.equal(got, ref)
    if eos is None:
        assert torch.equal(got, free)
        return
    eos_set = {eos_id} if isinstance(eos_id, int) else set(eos_id)
    ends = []
    for row in range(3):
        new = got[row, n:].tolist()
        hit = next((i for i, t in enumerate(new) if t in eos_set), None)
        assert new[: hit if hit is not None else len(new)] == free[row, n: n + len(new)].tolist()[: hit if hit is not None else len(new)]
        if hit is not None:
            assert all(t == 0 for t in new[hit + 1:])  # a finished row is padded
        ends.append(hit)
    assert ends[0] is not None and ends[0] <= 2
    if all(e is not None for e in ends):
        assert got.shape[1] == n + max(ends) + 1  # stops when every row finished
    else:
        assert got.shape[1] == n + k


def test_greedy_generation_with_cross_attention_equals_uncached_argmax():
    """Each generated token is the argmax of the uncached forward over everything generated before it."""
    model = _ours(add_cross_attention=True)
    ids, mask = make_left_padded_batch(2, 5, (0, 2))
    enc = torch.randn(2, 6, 32)
    emask = torch.ones(2, 6, dtype=torch.long)
    emask[1, 4:] = 0
    out = model.generate(ids, attention_mask=mask, max_new_tokens=6, eos_token_id=None,
                         encoder_hidden_states=enc, encoder_attention_mask=emask)
    assert out.shape == (2, 11)
    with torch.no_grad():
        for t in range(5, 11):
            full_mask = torch.cat([mask, torch.ones(2, t - 5, dtype=torch.long)], dim=1)
            pos = (full_mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(out[:, :t], attention_mask=full_mask, position_ids=pos, encoder_hidden_states=enc,
                           encoder_attention_mask=emask).logits[:, -1]
            assert torch.equal(logits.argmax(-1), out[:, t])


def test_sampling_is_reproducible_and_limits_hold():
    model = _ours()
    ids, mask = make_left_padded_batch(2, 4, (0, 1))
    kw = dict(attention_mask=mask, max_new_tokens=8, do_sample=True, eos_token_id=None)
    a = model.generate(ids, seed=123, temperature=1.5, **kw)
    b = model.generate(ids, seed=123, temperature=1.5, **kw)
    g = torch.Generator().manual_seed(123)
    c = model.generate(ids, generator=g, temperature=1.5, **kw)
    assert torch.equal(a, b) and torch.equal(a, c)
    greedy = model.generate(ids, attention_mask=mask, max_new_tokens=8, eos_token_id=None)
    assert torch.equal(model.generate(ids, seed=1, top_k=1, **kw), greedy)
    assert torch.equal(model.generate(ids, seed=2, top_p=1e-6, **kw), greedy)


def test_next_tokens_top_k_and_top_p_keep_the_right_sets():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(4000, 1)
    g = torch.Generator().manual_seed(0)
    picked = next_tokens(logits, do_sample=True, top_k=2, generator=g)
    assert set(picked.tolist()) == {0, 1}
    picked = next_tokens(logits, do_sample=True, top_p=0.8, generator=g)  # 0.5 + 0.3 reaches 0.8
    assert set(picked.tolist()) == {0, 1}
    picked = next_tokens(logits, do_sample=True, top_p=0.81, generator=g)
    assert set(picked.tolist()) == {0, 1, 2}
    frac = (next_tokens(logits, do_sample=True, generator=g) == 0).float().mean().item()
    assert abs(frac - 0.5) < 0.05  # untouched distribution: 4000 draws, 5 sigma is about 0.04


def test_generation_errors():
    model = _ours(max_position_embeddings=16)
    ids = torch.randint(3, VOCAB, (2, 10))
    with pytest.raises(ValueError, match="generation past max_position_embeddings=16: prompt length 10 "
                                         r"\+ max_new_tokens 7 = 17"):
        model.generate(ids, max_new_tokens=7)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[0, -2:] = 0
    with pytest.raises(ValueError, match="left-padded"):
        model.generate(ids, attention_mask=mask, max_new_tokens=2)
    for bad, match in ((dict(max_new_tokens=0), "max_new_tokens"),
                       (dict(do_sample=True, temperature=0.0), "temperature"),
                       (dict(do_sample=True, top_k=-1), "top_k"),
                       (dict(do_sample=True, top_p=1.5), "top_p"),
                       (dict(eos_token_id="x"), "eos_token_id")):
        with pytest.raises(ValueError, match=match):
            model.generate(ids, **{"max_new_tokens": 2, **bad})
