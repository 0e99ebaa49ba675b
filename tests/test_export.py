"""torch.export of the model and every encoder head: one program for every batch size and length."""

from __future__ import annotations

import pytest
import torch

from test_model_utils import SEP, make_batch, tiny_kwargs

import bigbird
from bigbird.export import export_program, length_range
from bigbird_kernels import block_sparse_attention, get_layout
from bigbird_kernels.exportable import hf_eval_block_sparse_attention

# encoder heads (BigBirdForCausalLM is causal: full attention, refused below)
EXPORTABLE = (
    "BigBirdModel",
    "BigBirdForPreTraining",
    "BigBirdForMaskedLM",
    "BigBirdForSequenceClassification",
    "BigBirdForMultipleChoice",
    "BigBirdForTokenClassification",
    "BigBirdForQuestionAnswering",
)
# (batch, length): block multiples and not (padded in the graph), the threshold + 1, the maximum
SHAPES = ((2, 80), (3, 101), (1, 73), (2, 256))
TOL = 1e-5


def _model(name: str, **over):
    torch.manual_seed(0)
    config = bigbird.BigBirdConfig(**tiny_kwargs(max_position_embeddings=256, **over))
    return getattr(bigbird, name)(config).eval()


def _inputs(name: str, B: int, n: int):
    pad = (0, 7, n // 3)[:B]
    sep_at = [5, 9, None][:B] if name == "BigBirdForQuestionAnswering" else None
    ids, mask = make_batch(B, n, pad=pad, choices=2 if name == "BigBirdForMultipleChoice" else None, sep_at=sep_at)
    types = (torch.arange(n) >= n // 2).long().expand_as(ids).contiguous()
    return ids, mask, types


@pytest.mark.parametrize("name", EXPORTABLE)
def test_exported_program_equals_eager_at_every_shape(name):
    model = _model(name)
    program = export_program(model).module()
    for B, n in SHAPES:
        ids, mask, types = _inputs(name, B, n)
        with torch.no_grad():
            want = model(input_ids=ids, attention_mask=mask, token_type_ids=types).to_tuple()
            got = program(ids, mask, types)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.shape == w.shape
            assert (g - w).abs().max().item() <= TOL, (name, B, n)


def test_one_program_has_symbolic_batch_and_length():
    program = export_program(_model("BigBirdModel"))
    shape = program.graph_signature.user_inputs[0]
    ids = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == shape)
    batch, length = ids.meta["val"].shape
    assert not isinstance(batch, int) and not isinstance(length, int)
    lo, hi = length_range(_model("BigBirdModel").config)
    assert (lo, hi) == (73, 256)  # above the threshold (72 tokens), up to max_position_embeddings


def test_lengths_outside_the_range_are_refused():
    program = export_program(_model("BigBirdModel")).module()
    for n, guard in ((72, ">= 73"), (257, "<= 256")):  # the full-attention threshold; past max_position_embeddings
        ids, mask, types = _inputs("BigBirdModel", 1, n)
        with pytest.raises(AssertionError, match=f"Guard failed: input_ids.size\\(\\)\\[1\\] {guard}"):
            program(ids, mask, types)


@pytest.mark.parametrize("mode", ["seeded", "resample"])
def test_random_layout_modes_are_refused_by_name(mode):
    model = _model("BigBirdModel", layout_mode=mode)
    with pytest.raises(ValueError, match=f"layout_mode='{mode}'"):
        export_program(model)


def test_training_mode_and_decoders_are_refused():
    with pytest.raises(ValueError, match="in training"):
        export_program(_model("BigBirdModel").train())
    with pytest.raises(ValueError, match="encoders"):
        export_program(_model("BigBirdForCausalLM"))
    with pytest.raises(TypeError, match="bigbird"):
        export_program(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="output_attentions=True"):
        export_program(_model("BigBirdModel", output_attentions=True))
    with pytest.raises(ValueError, match="output_hidden_states=True"):
        export_program(_model("BigBirdModel", output_hidden_states=True))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("nb,r,window,global_blocks", [
    (5, 0, 3, (0, -1)), (6, 2, 3, (0, -1)), (9, 3, 5, (0, -1)), (8, 1, 1, (0, 3, -1)), (7, 2, 3, (1,)),
])
def test_traceable_attention_equals_the_op_on_the_hf_eval_layout(seed, nb, r, window, global_blocks):
    gen = torch.Generator().manual_seed(seed)
    B, H, bs, D = 2, 3, 4, 8
    S = nb * bs
    q, k, v = (torch.randn(B, H, S, D, generator=gen, dtype=torch.float64) for _ in range(3))
    mask = torch.ones(B, S, dtype=torch.bool)
    mask[1, S - bs - 3:] = False
    layout = get_layout("hf", layer_idx=0, seq_len=S, block_size=bs, num_random_blocks=r, num_heads=H,
                        training=False, window=window, global_blocks=global_blocks)
    for m in (None, mask):
        want = block_sparse_attention(q, k, v, layout, attention_mask=m, backend="reference")
        got = hf_eval_block_sparse_attention(q, k, v, m, block_size=bs, num_random_blocks=r, window=window,
                                             global_blocks=global_blocks)
        assert (got - want).abs().max().item() <= 1e-12


def test_question_answering_finds_the_question_inside_the_graph():
    model = _model("BigBirdForQuestionAnswering")
    program = export_program(model).module()
    ids, mask, types = _inputs("BigBirdForQuestionAnswering", 2, 96)
    ids[0, 20] = SEP  # a later SEP: the question still ends at the first one
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask, token_type_ids=types).start_logits
        got = program(ids, mask, types)[0]
    assert (got - want).abs().max().item() <= TOL


def test_onnx_extra_is_declared_and_installed_by_the_test_extra():
    import tomllib
    from pathlib import Path

    from packaging.requirements import Requirement

    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    onnx = {Requirement(r).name for r in extras["onnx"]}
    assert onnx == {"onnx", "onnxscript", "onnxruntime"}
    assert onnx <= {Requirement(r).name for r in extras["test"]}  # CI runs tests/test_onnx.py


def test_torch_export_of_the_model_itself_refuses_a_seeded_layout():
    model = _model("BigBirdModel", layout_mode="seeded")
    ids, mask, types = _inputs("BigBirdModel", 2, 80)
    with pytest.raises(ValueError, match="cannot export block-sparse attention with layout_mode='seeded'"):
        torch.export.export(model, (ids, mask, types))
