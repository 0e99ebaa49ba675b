"""Hugging Face habits on from_pretrained (torch_dtype, device_map, attn_implementation, hub options,
unknown keywords) and push_to_hub refused by name on models, configs and tokenizers."""

from __future__ import annotations

import pytest
import torch

from resources import fill_hub_cache
from test_model_utils import hf_model

import bigbird
from bigbird import BigBirdConfig


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny transformers BigBirdForSequenceClassification checkpoint (3 labels, float32)."""
    folder = tmp_path_factory.mktemp("habits") / "cls"
    hf_model("BigBirdForSequenceClassification", num_labels=3).save_pretrained(folder)
    return folder


CLS = bigbird.BigBirdForSequenceClassification


def test_torch_dtype_is_dtype(ckpt):
    assert CLS.from_pretrained(ckpt, torch_dtype=torch.bfloat16).dtype == torch.bfloat16
    assert CLS.from_pretrained(ckpt, torch_dtype="float16").dtype == torch.float16
    assert CLS.from_pretrained(ckpt, torch_dtype="auto").dtype == torch.float32  # the checkpoint's
    assert CLS.from_pretrained(ckpt, dtype="bf16", torch_dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype=torch.float16 and torch_dtype=torch.bfloat16 disagree"):
        CLS.from_pretrained(ckpt, dtype=torch.float16, torch_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="unknown dtype 'int3'"):
        CLS.from_pretrained(ckpt, torch_dtype="int3")


def test_device_map(ckpt):
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    assert CLS.from_pretrained(ckpt, device_map="auto").device.type == auto
    for spelling in ("cpu", torch.device("cpu")):
        assert CLS.from_pretrained(ckpt, device_map=spelling).device.type == "cpu"
    assert CLS.from_pretrained(ckpt, device="cpu", device_map="cpu").device.type == "cpu"
    with pytest.raises(ValueError, match="device_map as a dict"):
        CLS.from_pretrained(ckpt, device_map={"": "cpu"})
    with pytest.raises(ValueError, match="device_map='balanced' is not supported"):
        CLS.from_pretrained(ckpt, device_map="balanced")
    if not torch.cuda.is_available():
        for spelling in ("cuda", 0, "cuda:1", torch.device("cuda")):
            with pytest.raises(ValueError, match="asks for CUDA, but torch sees no CUDA device"):
                CLS.from_pretrained(ckpt, device_map=spelling)
    with pytest.raises(ValueError, match="device='cpu' and device_map='meta' disagree"):
        CLS.from_pretrained(ckpt, device="cpu", device_map="meta")


def test_attn_implementation_maps_to_backends(ckpt):
    expected = {"eager": "reference", "sdpa": "sdpa", "flash_attention_2": "auto", "flex_attention": "flex"}
    for name, backend in expected.items():
        assert CLS.from_pretrained(ckpt, attn_implementation=name).config.attention_backend == backend, name
    m = CLS.from_pretrained(ckpt, attn_implementation="eager", attention_backend="reference")
    assert m.config.attention_backend == "reference"
    with pytest.raises(ValueError, match="attn_implementation='flash_attention_3' is not supported"):
        CLS.from_pretrained(ckpt, attn_implementation="flash_attention_3")
    with pytest.raises(ValueError, match="attn_implementation='sdpa' means attention_backend='sdpa'"):
        CLS.from_pretrained(ckpt, attn_implementation="sdpa", attention_backend="reference")


def test_eager_and_sdpa_give_the_same_outputs(ckpt):
    ids = torch.randint(3, 100, (2, 100))  # past the short-input threshold (72): block-sparse runs
    with torch.no_grad():
        eager = CLS.from_pretrained(ckpt, attn_implementation="eager")(input_ids=ids).logits
        sdpa = CLS.from_pretrained(ckpt, attn_implementation="sdpa")(input_ids=ids).logits
    torch.testing.assert_close(sdpa, eager, atol=1e-4, rtol=1e-4)


def test_unknown_keywords_are_type_errors_naming_them(ckpt):
    with pytest.raises(TypeError, match="'num_lables'"):
        CLS.from_pretrained(ckpt, num_lables=5)
    with pytest.raises(TypeError, match="'trust_remote_code', 'use_safetensors'"):
        CLS.from_pretrained(ckpt, use_safetensors=True, trust_remote_code=True)
    with pytest.raises(TypeError, match="'layot_mode'"):
        CLS.from_pretrained(ckpt, config=BigBirdConfig(num_labels=3), layot_mode="seeded")
    with pytest.raises(TypeError, match="'hiden_size'"):
        BigBirdConfig.from_pretrained(ckpt, hiden_size=8)


def test_config_fields_override(ckpt):
    """Config fields (and num_labels, add_pooling_layer) passed as keywords override, as in transformers."""
    m = CLS.from_pretrained(ckpt, num_labels=5, layout_mode="seeded", allow_missing=("classifier.*",))
    assert m.config.num_labels == 5 and m.config.layout_mode == "seeded"
    assert BigBirdConfig.from_pretrained(ckpt, num_labels=4).num_labels == 4
    assert BigBirdConfig.from_pretrained(ckpt, torch_dtype="bfloat16").dtype == "bfloat16"
    assert bigbird.BigBirdModel.from_pretrained(ckpt, add_pooling_layer=False).pooler is None


def test_unknown_config_json_keys_can_be_overridden(ckpt, tmp_path):
    import json
    import shutil

    folder = tmp_path / "extra"
    shutil.copytree(ckpt, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["my_field"] = 1
    (folder / "config.json").write_text(json.dumps(cfg))
    assert CLS.from_pretrained(folder, my_field=2).config.my_field == 2


def test_hub_options_reach_the_cache(ckpt, tmp_path, monkeypatch):
    commit = fill_hub_cache(tmp_path / "cache", "org/cls", ckpt)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "elsewhere"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    m = CLS.from_pretrained("org/cls", cache_dir=tmp_path / "cache", revision=commit, local_files_only=True)
    assert m.config.num_labels == 3
    with pytest.raises(FileNotFoundError, match="org/cls.*offline"):
        CLS.from_pretrained("org/cls", local_files_only=True)  # not in the default cache


def test_push_to_hub_is_refused_by_name(ckpt):
    model = CLS.from_pretrained(ckpt)
    for obj, what in ((model, "model"), (model.config, "config")):
        with pytest.raises(NotImplementedError, match=rf"push_to_hub is not supported.*{what}\.save_pretrained"):
            obj.push_to_hub("me/my-model")
