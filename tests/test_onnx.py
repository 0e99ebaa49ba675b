"""ONNX export (dynamo exporter) run in ONNX Runtime on CPU: one file per head for every batch size and
length, equal to PyTorch to 1e-4; the ``bigbird export onnx`` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

_WHY = "needs onnx, onnxscript and onnxruntime: pip install 'bigbird-kernels[onnx]'"
pytest.importorskip("onnx", reason=_WHY)
pytest.importorskip("onnxscript", reason=_WHY)
ort = pytest.importorskip("onnxruntime", reason=_WHY)

from test_export import EXPORTABLE, _inputs  # noqa: E402
from test_model_utils import tiny_kwargs  # noqa: E402

import bigbird  # noqa: E402
from bigbird.cli import main  # noqa: E402
from bigbird.export import export_onnx  # noqa: E402

TOL = 1e-4
# (batch, length) from one file: block multiples and not (padded in the graph), threshold + 1, the maximum
SHAPES = ((2, 80), (3, 101), (1, 73), (2, 256))


def _model(name: str, **over):
    torch.manual_seed(0)
    config = bigbird.BigBirdConfig(**tiny_kwargs(max_position_embeddings=256, num_hidden_layers=1, **over))
    return getattr(bigbird, name)(config).eval()


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _assert_matches(session, model, name, shapes):
    for B, n in shapes:
        ids, mask, types = _inputs(name, B, n)
        with torch.no_grad():
            want = model(input_ids=ids, attention_mask=mask, token_type_ids=types)
        got = session.run(None, dict(input_ids=ids.numpy(), attention_mask=mask.numpy(), token_type_ids=types.numpy()))
        assert [o.name for o in session.get_outputs()] == list(want.keys())
        for g, w in zip(got, want.to_tuple()):
            assert g.shape == tuple(w.shape)
            err = float(np.abs(g - w.numpy()).max())
            assert err <= TOL, (name, B, n, err)


@pytest.mark.parametrize("name", EXPORTABLE)
def test_onnx_runtime_equals_pytorch_at_every_shape_from_one_file(name, tmp_path):
    model = _model(name)
    path = export_onnx(model, tmp_path / "model.onnx")
    session = _session(path)
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    _assert_matches(session, model, name, SHAPES)


def test_cli_exports_a_checkpoint_folder(tmp_path, capsys):
    model = _model("BigBirdForMaskedLM")
    model.save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "mlm.onnx"
    assert main(["export", "onnx", "--model", str(tmp_path / "ckpt"), "-o", str(out)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record == dict(path=str(out), head="BigBirdForMaskedLM", inputs=["input_ids", "attention_mask", "token_type_ids"],
                          outputs=["logits"], min_length=73, max_length=256)
    _assert_matches(_session(out), model, "BigBirdForMaskedLM", ((2, 96), (1, 130)))


@pytest.mark.parametrize("mode", ["seeded", "resample"])
def test_cli_refuses_random_layout_modes_by_name(mode, tmp_path, capsys):
    _model("BigBirdModel", layout_mode=mode).save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "model.onnx"
    assert main(["export", "onnx", "--model", str(tmp_path / "ckpt"), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("bigbird export onnx: error: ") and f"layout_mode='{mode}'" in err
    assert not out.exists()


def test_cli_refuses_an_unknown_head(tmp_path, capsys):
    _model("BigBirdModel").save_pretrained(tmp_path / "ckpt")
    assert main(["export", "onnx", "--model", str(tmp_path / "ckpt"), "--head", "Linear", "-o",
                 str(tmp_path / "m.onnx")]) == 1
    assert "head 'Linear' is not a bigbird model class" in capsys.readouterr().err
