"""Export a BigBird model (or any task head) with ``torch.export`` and to ONNX.

    from bigbird.export import export_program, export_onnx
    program = export_program(model)          # torch.export.ExportedProgram
    export_onnx("path/to/checkpoint", "model.onnx")

One exported program (and one ONNX file) serves every batch size and every length above the
full-attention threshold, up to ``max_position_embeddings``: block-sparse attention runs on the ``hf``
eval layout, built inside the graph from the symbolic length
(:mod:`bigbird_kernels.exportable`), and inputs that are not a block multiple are padded inside the
graph, as in eager. Inputs: ``input_ids``, ``attention_mask`` and ``token_type_ids``, ``(batch, length)``
int64; outputs: the head's output fields, in order (e.g. ``last_hidden_state``, ``pooler_output``).

Which layouts can be exported: ``layout_mode="hf"`` in eval only. ``"seeded"`` fixes random blocks per
length (drawn on the host, different for each length: one program could not serve every length);
``"resample"`` draws on every call; ``"hf"`` in training draws per layer. Those are refused by name.
Lengths at or below ``config.short_input_threshold`` take the full-attention path, a different graph:
the exported length range starts above it. Value checks of eager (token ids in range) are not in the
graph: out-of-range ids are the caller's responsibility.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.fx.experimental._config  # backed_size_oblivious (see export_program)
from torch import nn

from .atomic import write_files_atomically

__all__ = ["INPUT_NAMES", "export_program", "export_onnx", "length_range", "load_for_export", "output_names"]

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


class _Exportable(nn.Module):
    """``model`` with positional tensor inputs and a tuple of tensors out (what export and ONNX need)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return out.to_tuple()


def _config(model: nn.Module):
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "block_size"):
        raise TypeError(f"model must be a bigbird BigBirdModel or task head, got {type(model).__name__}")
    return config


def _check_model(model: nn.Module) -> None:
    from .modeling import _check_exportable

    c = _config(model)
    _check_exportable(c, model.training, output_attentions=c.output_attentions)
    if c.output_hidden_states:
        raise ValueError("cannot export with config.output_hidden_states=True (one output per field); set it to False")
    if c.attention_type != "block_sparse":
        raise ValueError(f"export supports attention_type='block_sparse', got {c.attention_type!r}")
    from .heads import BigBirdForCausalLM

    if isinstance(model, BigBirdForCausalLM) or c.is_decoder or c.add_cross_attention:
        raise ValueError(f"export supports encoders (causal attention is full attention), got {type(model).__name__} "
                         f"with is_decoder={c.is_decoder}, add_cross_attention={c.add_cross_attention}")


def length_range(config) -> tuple[int, int]:
    """``(min, max)`` lengths one exported program serves: above the full-attention threshold, and up to
    ``max_position_embeddings`` rounded down to a block multiple (longer inputs would pad past it)."""
    bs = config.block_size
    return config.short_input_threshold + 1, (config.max_position_embeddings // bs) * bs


def _multiple_choice(model: nn.Module) -> bool:
    from .heads import BigBirdForMultipleChoice

    return isinstance(model, BigBirdForMultipleChoice)


def _example(config, batch: int = 2, choices: int | None = None):
    """Example inputs ``(batch[, choices], n)``, ``n`` the smallest block multiple in the length range
    (its value is not baked in)."""
    lo, hi = length_range(config)
    bs = config.block_size
    n = -(-lo // bs) * bs
    if n > hi:
        raise ValueError(f"max_position_embeddings={config.max_position_embeddings} leaves no length above "
                         f"short_input_threshold={config.short_input_threshold} to export block-sparse attention for")
    shape = (batch, n) if choices is None else (batch, choices, n)
    ids = torch.full(shape, config.pad_token_id, dtype=torch.long)
    ids[..., 0] = 0
    return ids, torch.ones(shape, dtype=torch.long), torch.zeros(shape, dtype=torch.long)


def _dynamic_shapes(config, multiple_choice: bool):
    lo, hi = length_range(config)
    dims = {0: torch.export.Dim("batch", min=1, max=1024)}
    if multiple_choice:
        dims[1] = torch.export.Dim("choices", min=1, max=64)
    dims[len(dims)] = torch.export.Dim("length", min=lo, max=hi)
    return {name: dims for name in INPUT_NAMES}


def _example_for(model: nn.Module, batch: int = 2):
    device = next(model.parameters()).device
    return tuple(t.to(device) for t in _example(_config(model), batch, 2 if _multiple_choice(model) else None))


def output_names(model: nn.Module) -> list[str]:
    """The names of the exported outputs, in order (the head's output fields that are set)."""
    _check_model(model)
    with torch.no_grad():
        out = model(**dict(zip(INPUT_NAMES, _example_for(model, batch=1))))
    return list(out.keys())


def export_program(model: nn.Module) -> torch.export.ExportedProgram:
    """``torch.export.export`` of ``model`` (a ``BigBirdModel`` or a task head, on the CPU, in eval, layout
    ``hf``) with dynamic batch and length; inputs ``(input_ids, attention_mask, token_type_ids)``, each
    ``(batch, length)`` (``(batch, choices, length)`` for multiple choice, choices dynamic too).

    Raises ValueError naming the layout mode for ``seeded``/``resample`` or training mode.
    """
    _check_model(model)
    c = _config(model)
    # size-oblivious: a dimension of size 1 (one example, one choice) takes the same graph as any other
    with torch.no_grad(), torch.fx.experimental._config.patch(backed_size_oblivious=True):
        return torch.export.export(_Exportable(model), _example_for(model),
                                   dynamic_shapes=_dynamic_shapes(c, _multiple_choice(model)))


def load_for_export(name_or_path, *, head: str | None = None, **kwargs) -> nn.Module:
    """The checkpoint ``name_or_path`` (a folder or hub id) as the head its ``config.json`` names in
    ``architectures`` (or ``head``, a class name such as ``"BigBirdForMaskedLM"``; default
    ``BigBirdModel``), in eval; ``kwargs`` go to ``from_pretrained``."""
    import bigbird

    from .auto import AutoConfig
    from .modeling import BigBirdPreTrainedModel

    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"expected a model or a checkpoint folder / hub id, got {type(name_or_path).__name__}")
    if head is None:
        architectures = AutoConfig.from_pretrained(str(name_or_path), **kwargs).architectures or ["BigBirdModel"]
        head = architectures[0]
    cls = getattr(bigbird, str(head), None)
    if not (isinstance(cls, type) and issubclass(cls, BigBirdPreTrainedModel)):
        raise ValueError(f"head {head!r} is not a bigbird model class (e.g. BigBirdModel, BigBirdForMaskedLM)")
    return cls.from_pretrained(str(name_or_path), **kwargs).eval()


def export_onnx(model_or_dir, path, *, head: str | None = None, opset_version: int | None = None) -> Path:
    """Write ``model_or_dir`` to the ONNX file ``path`` with the dynamo exporter (``torch.onnx.export``
    of :func:`export_program`'s program): one file for every batch size and every length in
    :func:`length_range`. Returns the path.

    Args:
        model_or_dir: a model (in eval, ``layout_mode="hf"``), or a checkpoint folder / hub id, loaded
            by :func:`load_for_export` with ``head``.
        path: the ``.onnx`` file, written atomically (a failed export leaves an old file untouched).
        opset_version: ONNX opset (default: the exporter's).

    The file's inputs are ``input_ids``, ``attention_mask`` and ``token_type_ids``, int64
    ``(batch, length)``; its outputs are named by :func:`output_names`. Needs
    ``pip install 'bigbird-kernels[onnx]'`` (onnx, onnxscript; onnxruntime to run the file).
    """
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError as e:
        raise ImportError("export_onnx needs onnx and onnxscript: pip install 'bigbird-kernels[onnx]'") from e
    model = model_or_dir if isinstance(model_or_dir, nn.Module) else load_for_export(model_or_dir, head=head)
    names = output_names(model)
    program = export_program(model)
    kwargs = {} if opset_version is None else dict(opset_version=opset_version)
    onnx_program = torch.onnx.export(program, (), dynamo=True, input_names=list(INPUT_NAMES),
                                     output_names=names, verbose=False, **kwargs)
    path = Path(path)
    write_files_atomically(path.parent, {path.name: lambda tmp: onnx_program.save(str(tmp), external_data=False)})
    return path
