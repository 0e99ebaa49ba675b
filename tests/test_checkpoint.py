"""from_pretrained / save_pretrained: round trips both ways, cross-head loading, strict key errors,
.bin and sharded files, tied weights, bad files, and hub ids resolved offline from an HF cache."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from resources import fill_hub_cache
from test_model_utils import HEADS, assert_close, hf_and_ours, hf_model, make_batch, tiny_kwargs, transformers

import bigbird
from bigbird import BigBirdConfig

TOL = 1e-4


def _run(model, name, n=90):
    if name == "BigBirdForMultipleChoice":
        ids, mask = make_batch(2, n, pad=(0, 5), choices=2)
    else:
        ids, mask = make_batch(2, n, pad=(0, 5), sep_at=[4, 6] if "Question" in name else None)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
    return out.last_hidden_state if name == "BigBirdModel" else (
        out.prediction_logits if name == "BigBirdForPreTraining" else (
            out.start_logits.clamp(min=-1e3) if "Question" in name else out.logits)), (ids, mask)


@pytest.mark.parametrize("name", HEADS)
def test_save_pretrained_loads_in_transformers_and_back(name, tmp_path):
    """ours -> save -> transformers: no missing/unexpected keys, same outputs; -> ours again: identical."""
    cfg = BigBirdConfig(**tiny_kwargs(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    if name == "BigBirdForCausalLM":
        cfg = cfg.copy(is_decoder=True, attention_type="original_full")
    ours = getattr(bigbird, name)(cfg).eval()
    with torch.no_grad():  # non-trivial biases everywhere
        for p in ours.parameters():
            p.add_(0.02 * torch.randn_like(p))
    ours.save_pretrained(tmp_path / "s")
    files = sorted(os.listdir(tmp_path / "s"))
    assert files == ["config.json", "model.safetensors"]
    keys = set(load_file(str(tmp_path / "s" / "model.safetensors")))
    if name in ("BigBirdForPreTraining", "BigBirdForMaskedLM", "BigBirdForCausalLM"):
        assert "cls.predictions.decoder.weight" not in keys and "cls.predictions.bias" in keys  # stored once
    hf, info = getattr(transformers, name).from_pretrained(tmp_path / "s", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    hf.eval()
    mine, inputs = _run(ours, name)
    with torch.no_grad():
        ids, mask = inputs
        ref = hf(input_ids=ids, attention_mask=mask)
    ref = ref.last_hidden_state if name == "BigBirdModel" else (
        ref.prediction_logits if name == "BigBirdForPreTraining" else (
            ref.start_logits.clamp(min=-1e3) if "Question" in name else ref.logits))
    assert_close(mine, ref, TOL, f"{name} saved by us, run by transformers")
    back = getattr(bigbird, name).from_pretrained(tmp_path / "s")
    for k, v in ours.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    assert json.loads((tmp_path / "s" / "config.json").read_text())["architectures"] == [name]


def test_transformers_checkpoint_round_trip_through_ours(tmp_path):
    hf, ours = hf_and_ours("BigBirdForPreTraining", tmp_path)
    ours.save_pretrained(tmp_path / "again")
    hf2 = transformers.BigBirdForPreTraining.from_pretrained(tmp_path / "again").eval()
    for k, v in hf.state_dict().items():
        assert torch.equal(hf2.state_dict()[k], v), k


def test_base_model_checkpoint_into_heads(tmp_path):
    """A BigBirdModel checkpoint (no 'bert.' prefix) loads into a head; head weights must be allowed."""
    hf = hf_model("BigBirdModel")
    hf.save_pretrained(tmp_path / "base")
    with pytest.raises(ValueError) as e:
        bigbird.BigBirdForSequenceClassification.from_pretrained(tmp_path / "base")
    msg = str(e.value)
    assert "missing keys (4)" in msg and "classifier.dense.weight" in msg and "classifier.out_proj.bias" in msg
    assert "allow_missing=('classifier.*',)" in msg
    m, info = bigbird.BigBirdForSequenceClassification.from_pretrained(
        tmp_path / "base", allow_missing=("classifier.*",), num_labels=4, output_loading_info=True)
    assert sorted(info["missing_keys"]) == ["classifier.dense.bias", "classifier.dense.weight",
                                            "classifier.out_proj.bias", "classifier.out_proj.weight"]
    assert m.classifier.out_proj.weight.shape == (4, 32) and m.classifier.out_proj.weight.std() > 0
    assert torch.equal(m.bert.embeddings.word_embeddings.weight, hf.embeddings.word_embeddings.weight)
    ids, mask = make_batch(2, 100, pad=(0, 9))
    with torch.no_grad():
        assert_close(m.bert(ids, mask).last_hidden_state, hf(ids, mask).last_hidden_state, TOL, "encoder")


def test_head_checkpoints_across_heads(tmp_path):
    hf = hf_model("BigBirdForPreTraining")
    hf.save_pretrained(tmp_path / "pt")
    # pre-training -> bare model: 'bert.' stripped, cls.* dropped
    base, info = bigbird.BigBirdModel.from_pretrained(tmp_path / "pt", output_loading_info=True)
    assert any(k.startswith("cls.") for k in info["unexpected_keys"]) and not info["missing_keys"]
    # pre-training -> masked LM: seq_relationship dropped, decoder tied
    mlm = bigbird.BigBirdForMaskedLM.from_pretrained(tmp_path / "pt")
    assert mlm.cls.predictions.decoder.weight is mlm.bert.embeddings.word_embeddings.weight
    assert torch.equal(mlm.cls.predictions.bias, hf.cls.predictions.bias)
    # pre-training -> QA: no pooler in QA (dropped), qa_classifier must be allowed
    with pytest.raises(ValueError, match="qa_classifier"):
        bigbird.BigBirdForQuestionAnswering.from_pretrained(tmp_path / "pt")
    qa, info = bigbird.BigBirdForQuestionAnswering.from_pretrained(
        tmp_path / "pt", allow_missing=("qa_classifier.*",), output_loading_info=True)
    assert "bert.pooler.weight" in info["unexpected_keys"]
    # token classification checkpoint -> sequence classification: classifier.weight is another head's
    tok = hf_model("BigBirdForTokenClassification", num_labels=3)
    tok.save_pretrained(tmp_path / "tok")
    with pytest.raises(ValueError) as e:
        bigbird.BigBirdForSequenceClassification.from_pretrained(tmp_path / "tok")
    assert "unexpected keys (2): classifier.weight, classifier.bias" in str(e.value) or "classifier.weight" in str(e.value)
    bigbird.BigBirdForSequenceClassification.from_pretrained(tmp_path / "tok", allow_missing=("classifier.*",))


def test_strict_errors_name_every_key(tmp_path):
    hf = hf_model("BigBirdForMaskedLM")
    hf.save_pretrained(tmp_path / "m")
    state = load_file(str(tmp_path / "m" / "model.safetensors"))
    del state["bert.encoder.layer.1.output.dense.bias"]
    del state["cls.predictions.transform.dense.weight"]
    state["bert.encoder.layer.7.attention.self.query.weight"] = torch.zeros(2, 2)
    state["bert.embeddings.position_embeddings.weight"] = torch.zeros(300, 32)
    save_file(state, str(tmp_path / "m" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError) as e:
        bigbird.BigBirdForMaskedLM.from_pretrained(tmp_path / "m")
    msg = str(e.value)
    for k in ("bert.encoder.layer.1.output.dense.bias", "cls.predictions.transform.dense.weight",
              "bert.encoder.layer.7.attention.self.query.weight", "bert.embeddings.position_embeddings.weight",
              "(300, 32)", "(512, 32)", "model.safetensors"):
        assert k in msg, f"{k} not named in: {msg}"
    m = bigbird.BigBirdForMaskedLM.from_pretrained(
        tmp_path / "m", allow_missing=("bert.encoder.layer.1.output.dense.bias", "cls.predictions.transform.*",
                                       "bert.embeddings.position_embeddings.weight"),
        ignore_unexpected=("bert.encoder.layer.7.*",))
    assert m.bert.embeddings.position_embeddings.weight.shape == (512, 32)
    assert torch.count_nonzero(m.bert.encoder.layer[1].output.dense.bias) == 0  # freshly initialised: zeros


def test_pytorch_model_bin_with_buffers_and_tied_copies(tmp_path):
    """Old-style .bin: torch.load(weights_only=True), position_ids buffer and decoder copies accepted."""
    hf, _ = hf_and_ours("BigBirdForMaskedLM", tmp_path)
    folder = tmp_path / "bin"
    folder.mkdir()
    shutil.copy(tmp_path / "hf_BigBirdForMaskedLM" / "config.json", folder)
    state = {k: v.clone() for k, v in hf.state_dict().items()}
    state["bert.embeddings.position_ids"] = torch.arange(512)[None]
    state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"].clone()
    state["cls.predictions.decoder.bias"] = state["cls.predictions.bias"].clone()
    torch.save(state, folder / "pytorch_model.bin")
    ours = bigbird.BigBirdForMaskedLM.from_pretrained(folder)
    ids, mask = make_batch(2, 100, pad=(0, 3))
    with torch.no_grad():
        assert_close(ours(ids, mask).logits, hf(ids, mask).logits, TOL, ".bin logits")
    # a pickle that needs code execution is refused, never unpickled
    torch.save({"w": torch.zeros(1), "obj": _Evil()}, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match="weights_only"):
        bigbird.BigBirdForMaskedLM.from_pretrained(folder)


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_sharded_safetensors(tmp_path):
    hf = hf_model("BigBirdForMaskedLM")
    hf.save_pretrained(tmp_path / "sh", max_shard_size="20KB")
    assert (tmp_path / "sh" / "model.safetensors.index.json").exists()
    ours = bigbird.BigBirdForMaskedLM.from_pretrained(tmp_path / "sh")
    ids, mask = make_batch(1, 80)
    with torch.no_grad():
        assert_close(ours(ids, mask).logits, hf(ids, mask).logits, TOL, "sharded")


def test_untied_word_embeddings(tmp_path):
    hf, ours = hf_and_ours("BigBirdForMaskedLM", tmp_path, tie_word_embeddings=False)
    assert ours.cls.predictions.decoder.weight is not ours.bert.embeddings.word_embeddings.weight
    assert ours.cls.predictions.decoder.bias is not ours.cls.predictions.bias
    ids, mask = make_batch(2, 90, pad=(0, 4))
    with torch.no_grad():
        assert_close(ours(ids, mask).logits, hf(ids, mask).logits, TOL, "untied")
    ours.save_pretrained(tmp_path / "u")
    hf2, info = transformers.BigBirdForMaskedLM.from_pretrained(tmp_path / "u", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert torch.equal(hf2.cls.predictions.decoder.weight, hf.cls.predictions.decoder.weight)


def test_dtype_device_and_overrides(tmp_path):
    hf = hf_model("BigBirdForSequenceClassification", num_labels=3)
    hf.save_pretrained(tmp_path / "c")
    m = bigbird.BigBirdForSequenceClassification.from_pretrained(
        tmp_path / "c", dtype="bf16", device="cpu", layout_mode="seeded", attention_backend="reference")
    assert m.dtype == torch.bfloat16 and m.device.type == "cpu" and not m.training
    assert m.config.layout_mode == "seeded" and m.config.num_labels == 3
    m.save_pretrained(tmp_path / "c16")
    assert json.loads((tmp_path / "c16" / "config.json").read_text())["dtype"] == "bfloat16"
    back = bigbird.BigBirdForSequenceClassification.from_pretrained(tmp_path / "c16")
    assert back.dtype == torch.bfloat16  # None keeps the checkpoint's dtype
    with pytest.raises(ValueError, match="unknown dtype"):
        bigbird.BigBirdForSequenceClassification.from_pretrained(tmp_path / "c", dtype="int3")


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        bigbird.BigBirdModel.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"config\.json.*empty|empty.*config\.json"):
        bigbird.BigBirdModel.from_pretrained(tmp_path / "empty")
    BigBirdConfig(**tiny_kwargs()).save_pretrained(tmp_path / "empty")
    with pytest.raises(FileNotFoundError) as e:
        bigbird.BigBirdModel.from_pretrained(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(e.value) and "model.safetensors" in str(e.value) \
        and "pytorch_model.bin" in str(e.value)
    (tmp_path / "empty" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(ValueError, match="model.safetensors"):
        bigbird.BigBirdModel.from_pretrained(tmp_path / "empty")
    hf = hf_model("BigBirdModel")
    hf.save_pretrained(tmp_path / "trunc")
    data = (tmp_path / "trunc" / "model.safetensors").read_bytes()
    (tmp_path / "trunc" / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt.*model.safetensors"):
        bigbird.BigBirdModel.from_pretrained(tmp_path / "trunc")


# --------------------------------------------------------------------------------------------------
# hub ids, offline, from a cache folder laid out as huggingface_hub lays it out
# --------------------------------------------------------------------------------------------------


def test_hub_id_offline_from_hf_home(tmp_path, monkeypatch):
    hf, _ = hf_and_ours("BigBirdForMaskedLM", tmp_path)
    home = tmp_path / "hf_home"
    commit = fill_hub_cache(home / "hub", "someorg/tiny-bigbird", tmp_path / "hf_BigBirdForMaskedLM")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    ids, mask = make_batch(2, 90, pad=(0, 4))
    with torch.no_grad():
        ref = hf(ids, mask).logits
    for kw in ({}, {"revision": commit}, {"revision": "main"}):
        ours = bigbird.BigBirdForMaskedLM.from_pretrained("someorg/tiny-bigbird", **kw)
        with torch.no_grad():
            assert_close(ours(ids, mask).logits, ref, TOL, f"hub {kw}")
    cfg = BigBirdConfig.from_pretrained("someorg/tiny-bigbird")
    assert cfg.hidden_size == 32
    with pytest.raises(FileNotFoundError, match="someorg/not-there.*offline"):
        bigbird.BigBirdForMaskedLM.from_pretrained("someorg/not-there")


def test_hub_id_offline_with_cache_dir(tmp_path, monkeypatch):
    hf = hf_model("BigBirdModel")
    hf.save_pretrained(tmp_path / "src")
    fill_hub_cache(tmp_path / "cache", "org/base", tmp_path / "src")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "elsewhere"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    m = bigbird.BigBirdModel.from_pretrained("org/base", cache_dir=tmp_path / "cache", local_files_only=True)
    assert torch.equal(m.embeddings.word_embeddings.weight, hf.embeddings.word_embeddings.weight)
    # weights absent from the cached snapshot: a clear error naming what was looked for
    os.remove(tmp_path / "cache" / "models--org--base" / "snapshots" / os.listdir(
        tmp_path / "cache" / "models--org--base" / "snapshots")[0] / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="no weights found.*model.safetensors.*pytorch_model.bin"):
        bigbird.BigBirdModel.from_pretrained("org/base", cache_dir=tmp_path / "cache", local_files_only=True)


def test_config_and_checkpoint_do_not_import_each_other():
    """File resolution lives in bigbird.hub; config imports it, checkpoint imports config: no cycle."""
    import ast
    from pathlib import Path

    root = Path(bigbird.__file__).parent

    def bigbird_imports(module):
        tree = ast.parse((root / f"{module}.py").read_text(encoding="utf-8"))
        return {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1}

    assert bigbird_imports("hub") == set()
    assert "checkpoint" not in bigbird_imports("config") and "hub" in bigbird_imports("config")
    assert "config" in bigbird_imports("checkpoint") and "hub" in bigbird_imports("checkpoint")
    from bigbird.checkpoint import resolve_checkpoint_dir
    from bigbird.hub import resolve_checkpoint_dir as hub_resolve

    assert resolve_checkpoint_dir is hub_resolve
