"""``bigbird export onnx``: a checkpoint folder (or hub id) to one ONNX file for every batch size and length.

    bigbird export onnx --model DIR -o model.onnx
    bigbird export onnx --model DIR --head BigBirdForMaskedLM -o mlm.onnx

The head is the one ``config.json`` names in ``architectures`` (``--head`` overrides it; default
``BigBirdModel``). The checkpoint must use ``layout_mode`` ``hf`` (the default). Prints one JSON line:
``{path, head, inputs, outputs, min_length, max_length}``. Needs ``pip install 'bigbird-kernels[onnx]'``.
"""

from __future__ import annotations

import argparse
import json

__all__ = ["add_export_parser", "run_export_onnx"]


def add_export_parser(sub, formatter_class=argparse.RawDescriptionHelpFormatter) -> None:
    """Register the ``export`` subcommand (with its ``onnx`` target) on the ``bigbird`` subparsers ``sub``."""
    p = sub.add_parser("export", help="export a checkpoint (ONNX)", description=__doc__.split("\n\n", 1)[1],
                       formatter_class=formatter_class)
    targets = p.add_subparsers(dest="export_target", metavar="FORMAT", required=True)
    onnx = targets.add_parser("onnx", help="an ONNX file (dynamo exporter), dynamic batch and length",
                              description=__doc__.split("\n\n", 1)[1], formatter_class=formatter_class)
    onnx.add_argument("--model", required=True, metavar="DIR_OR_HUB_ID", help="a checkpoint folder or hub id")
    onnx.add_argument("--revision", help="hub revision (branch, tag or commit) for a hub id")
    onnx.add_argument("--head", metavar="CLASS", help="model class, e.g. BigBirdForMaskedLM (default: from config.json)")
    onnx.add_argument("-o", "--output", required=True, metavar="FILE", help="the .onnx file to write")
    onnx.add_argument("--opset", type=int, metavar="N", help="ONNX opset version (default: the exporter's)")
    onnx.set_defaults(func=run_export_onnx)


def run_export_onnx(args) -> int:
    from .export import INPUT_NAMES, export_onnx, length_range, load_for_export, output_names

    kwargs = {} if args.revision is None else dict(revision=args.revision)
    model = load_for_export(args.model, head=args.head, **kwargs)
    path = export_onnx(model, args.output, opset_version=args.opset)
    lo, hi = length_range(model.config)
    print(json.dumps(dict(path=str(path), head=type(model).__name__, inputs=list(INPUT_NAMES),
                          outputs=output_names(model), min_length=lo, max_length=hi)))
    return 0
