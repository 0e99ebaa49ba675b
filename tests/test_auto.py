"""bigbird.AutoConfig / AutoModel* / AutoTokenizer: the class transformers' Auto classes pick, the same
outputs, and non-BigBird checkpoints refused by name."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from test_model_utils import assert_close, hf_model, make_batch, transformers
from test_tokenizer import HUB_CONFIG, tiny_model  # noqa: F401 - the fixture

import bigbird

AUTOS = (
    ("AutoModel", "BigBirdModel"),
    ("AutoModelForPreTraining", "BigBirdForPreTraining"),
    ("AutoModelForMaskedLM", "BigBirdForMaskedLM"),
    ("AutoModelForCausalLM", "BigBirdForCausalLM"),
    ("AutoModelForSequenceClassification", "BigBirdForSequenceClassification"),
    ("AutoModelForMultipleChoice", "BigBirdForMultipleChoice"),
    ("AutoModelForTokenClassification", "BigBirdForTokenClassification"),
    ("AutoModelForQuestionAnswering", "BigBirdForQuestionAnswering"),
)


def _output(out):
    for name in ("logits", "prediction_logits", "start_logits", "last_hidden_state"):
        if getattr(out, name, None) is not None:
            return getattr(out, name)
    raise AssertionError(f"no output in {type(out).__name__}")


@pytest.mark.parametrize("auto, head", AUTOS)
def test_auto_model_picks_the_class_transformers_picks(auto, head, tmp_path):
    hf = hf_model(head)
    hf.save_pretrained(tmp_path / "ckpt")
    ours = getattr(bigbird, auto).from_pretrained(tmp_path / "ckpt")
    hf_auto = getattr(transformers, auto).from_pretrained(tmp_path / "ckpt").eval()
    assert type(ours).__name__ == type(hf_auto).__name__ == head
    ids, mask = make_batch(2, 40, pad=(0, 3), choices=2 if "Multiple" in head else None)
    with torch.no_grad():
        assert_close(_output(ours(input_ids=ids, attention_mask=mask)), _output(hf_auto(input_ids=ids, attention_mask=mask)),
                     1e-4, auto)
    assert type(getattr(bigbird, auto).from_config(ours.config)).__name__ == head


def test_auto_model_on_a_head_checkpoint_is_the_base_model(tmp_path):
    hf_model("BigBirdForMaskedLM").save_pretrained(tmp_path / "mlm")
    assert type(bigbird.AutoModel.from_pretrained(tmp_path / "mlm")) is bigbird.BigBirdModel
    assert type(transformers.AutoModel.from_pretrained(tmp_path / "mlm")).__name__ == "BigBirdModel"
    # a head the checkpoint lacks is an error unless allowed, as everywhere in bigbird
    with pytest.raises(ValueError, match="missing keys.*classifier"):
        bigbird.AutoModelForSequenceClassification.from_pretrained(tmp_path / "mlm")
    m = bigbird.AutoModelForSequenceClassification.from_pretrained(tmp_path / "mlm", allow_missing=("classifier.*",))
    assert isinstance(m, bigbird.BigBirdForSequenceClassification)


def test_auto_config_and_options_pass_through(tmp_path):
    hf_model("BigBirdForSequenceClassification", num_labels=4).save_pretrained(tmp_path / "c")
    cfg = bigbird.AutoConfig.from_pretrained(tmp_path / "c")
    assert isinstance(cfg, bigbird.BigBirdConfig) and cfg.num_labels == 4
    assert bigbird.AutoConfig.from_pretrained(tmp_path / "c" / "config.json", layout_mode="seeded").layout_mode == "seeded"
    m = bigbird.AutoModelForSequenceClassification.from_pretrained(tmp_path / "c", torch_dtype="bfloat16",
                                                                    attn_implementation="eager")
    assert m.dtype == torch.bfloat16 and m.config.attention_backend == "reference"
    with pytest.raises(TypeError, match="'num_lables'"):
        bigbird.AutoModelForSequenceClassification.from_pretrained(tmp_path / "c", num_lables=3)
    with pytest.raises(TypeError, match="is not instantiated"):
        bigbird.AutoModel()


@pytest.mark.parametrize("config, match", [
    ({"model_type": "bert", "architectures": ["BertForMaskedLM"]}, "is a 'bert' checkpoint"),
    ({"architectures": ["RobertaForMaskedLM"]}, r"architectures \['RobertaForMaskedLM'\]"),
])
def test_non_bigbird_checkpoints_are_refused_by_name(config, match, tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps(config))
    for auto in ("AutoConfig", "AutoModel", "AutoModelForMaskedLM"):
        with pytest.raises(ValueError, match=match):
            getattr(bigbird, auto).from_pretrained(tmp_path / "other")


def test_auto_tokenizer(tiny_model, tmp_path):  # noqa: F811 - the fixture
    folder = tmp_path / "tok"
    shutil.copytree(tiny_model, folder)
    (folder / "tokenizer_config.json").write_text(json.dumps(HUB_CONFIG))
    tok = bigbird.AutoTokenizer.from_pretrained(folder)
    assert isinstance(tok, bigbird.BigBirdTokenizer) and tok.mask_token == "[MASK]"
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    assert tok("ka lo mi [MASK] ne")["input_ids"] == hf("ka lo mi [MASK] ne")["input_ids"]
    (folder / "tokenizer_config.json").write_text(json.dumps(dict(HUB_CONFIG, tokenizer_class="BertTokenizer")))
    with pytest.raises(ValueError, match="'BertTokenizer' tokenizer"):
        bigbird.AutoTokenizer.from_pretrained(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps(HUB_CONFIG))
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="is a 'bert' checkpoint"):
        bigbird.AutoTokenizer.from_pretrained(folder)
